"""OpenAI CLIP ViT-B/32 as the official evaluator runs it, through open_clip.

The official evaluator loads ``ViT-B-32.pt`` with OpenAI's ``clip`` package (``jit=False``): the
TorchScript archive's state dict is rebuilt into an eager model whose linear/conv/attention weights
are float16 ("manually cast fp16 mode"); on CUDA it stays fp16, on CPU it is cast to fp32.
``open_clip.load_openai_model`` does the same, and accepts a plain state dict in the OpenAI key
layout too. The image transform is CLIP's own: short side to 224 (bicubic), centre crop 224, CLIP
mean/std (:func:`clip_preprocess`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from narrastream._compat import ensure_torchvision

ensure_torchvision()
import open_clip  # noqa: E402
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD  # noqa: E402
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, convert_weights_to_fp16  # noqa: E402
from torchvision.transforms import InterpolationMode  # noqa: E402
from torchvision.transforms.v2 import functional as TF  # noqa: E402

ClipArch = Literal["vitb32", "tiny"]
Precision = Literal["fp32", "fp16"]
IMAGE_SIZE = 224
#: (embed_dim, vision tower, text tower) of each architecture; OpenAI layout, QuickGELU
CLIP_ARCHS: dict[str, tuple[int, CLIPVisionCfg, CLIPTextCfg]] = {
    "vitb32": (
        512,
        CLIPVisionCfg(layers=12, width=768, patch_size=32, image_size=224),
        CLIPTextCfg(context_length=77, vocab_size=49408, width=512, heads=8, layers=12),
    ),
    "tiny": (
        32,
        CLIPVisionCfg(layers=1, width=64, patch_size=32, image_size=224),
        CLIPTextCfg(context_length=77, vocab_size=1000, width=64, heads=1, layers=1),
    ),
}


def set_clip_precision(model: CLIP, precision: Precision) -> CLIP:
    """OpenAI's fp16 mode (linear, conv and attention weights in fp16) or a full fp32 model."""
    if precision == "fp16":
        convert_weights_to_fp16(model)
    elif precision == "fp32":
        model.float()
    else:
        raise ValueError(f"unknown CLIP precision {precision!r}; use 'fp32' or 'fp16'")
    return model


def build_clip_vit(arch: ClipArch = "vitb32") -> CLIP:
    """A randomly initialised CLIP (``vitb32``: ViT-B/32; ``tiny``: 64-wide, one block per tower), fp32.

    The weights are rounded through float16, as OpenAI's checkpoints store them, so a saved state dict
    reloads through :func:`load_clip_checkpoint` to the very same model.
    """
    if arch not in CLIP_ARCHS:
        raise ValueError(f"unknown CLIP architecture {arch!r}; known: {sorted(CLIP_ARCHS)}")
    embed_dim, vision_cfg, text_cfg = CLIP_ARCHS[arch]
    model = CLIP(embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=True)
    return set_clip_precision(set_clip_precision(model, "fp16"), "fp32").eval()


def load_clip_checkpoint(path: Path | str, *, precision: Precision = "fp32", device: torch.device | str = "cpu") -> CLIP:
    """An OpenAI CLIP checkpoint (TorchScript archive or plain OpenAI-layout state dict), architecture inferred."""
    with warnings.catch_warnings():
        # open_clip first tries every file as TorchScript (the official format); not actionable here
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated")
        return open_clip.load_openai_model(str(path), precision=precision, device=str(device)).eval()


def clip_preprocess(frames: np.ndarray) -> torch.Tensor:
    """Frames ``(N, H, W, 3)`` uint8 -> ``(N, 3, 224, 224)`` float32, as CLIP's own transform.

    Short side to 224 (bicubic, antialiased, rounded back to uint8 as PIL does), centre crop 224,
    ``ToTensor``, CLIP normalisation.
    """
    pixels = torch.from_numpy(np.require(frames, dtype=np.uint8, requirements=["C", "W"])).permute(0, 3, 1, 2)
    pixels = TF.resize(pixels, [IMAGE_SIZE], interpolation=InterpolationMode.BICUBIC, antialias=True)
    pixels = TF.center_crop(pixels, [IMAGE_SIZE, IMAGE_SIZE])
    return TF.normalize(pixels.float().div_(255.0), list(OPENAI_DATASET_MEAN), list(OPENAI_DATASET_STD))
