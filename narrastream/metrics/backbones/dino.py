"""DINO ViT-B/16 as the official evaluator runs it, built on timm's ``VisionTransformer``.

The module's parameter names are those of the official DINO checkpoint (``cls_token``, ``pos_embed``,
``patch_embed.proj.*``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``, ``norm.*``),
so ``dino_vitbase16_pretrain.pth`` loads with ``strict=True``. Two behaviours of DINO's own
``vision_transformer.py`` that timm does differently are reproduced:

- position embeddings are resized with DINO's ``interpolate_pos_encoding`` (bicubic, the
  ``+0.1`` scale-factor offset, no antialias), not timm's ``resample_abs_pos_embed``;
- the patch convolution silently drops the last ``H % 16`` rows and ``W % 16`` columns (a 224x388
  input gives a 14x24 grid), where timm would assert divisibility.

The evaluator feeds the whole frame resized on its short side (no centre crop), see
:func:`dino_preprocess`.
"""

from __future__ import annotations

import argparse
import logging
import math
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from narrastream._compat import ensure_torchvision

ensure_torchvision()
from timm.models.vision_transformer import VisionTransformer  # noqa: E402
from torchvision.transforms import InterpolationMode  # noqa: E402
from torchvision.transforms.v2 import functional as TF  # noqa: E402

log = logging.getLogger(__name__)

DinoArch = Literal["vitb16", "tiny"]
#: embed_dim, depth, num_heads of each architecture (patch 16, MLP ratio 4, qkv bias, image 224)
DINO_ARCHS: dict[str, dict[str, int]] = {
    "vitb16": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "tiny": {"embed_dim": 48, "depth": 2, "num_heads": 2},
}
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
RESIZE_SHORT_SIDE = 224
_WRAPPER_KEYS = ("teacher", "student", "state_dict", "model")


class DinoVisionTransformer(VisionTransformer):
    """timm's ViT with DINO's position-embedding interpolation and patch-grid truncation."""

    def interpolate_pos_encoding(self, grid_h: int, grid_w: int, square_input: bool) -> torch.Tensor:
        r"""DINO's ``interpolate_pos_encoding`` for a ``grid_h x grid_w`` patch grid.

        The stored :math:`\sqrt N \times \sqrt N` grid is resized bicubically with scale factors
        :math:`((h_0 + 0.1)/\sqrt N, (w_0 + 0.1)/\sqrt N)`. As in DINO, the stored embeddings are used
        unchanged only when the grid has ``N`` patches *and* the input image is square.
        """
        num_patches = self.pos_embed.shape[1] - 1
        if grid_h * grid_w == num_patches and square_input:
            return self.pos_embed
        side = math.sqrt(num_patches)
        dim = self.pos_embed.shape[-1]
        grid = self.pos_embed[:, 1:].reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((grid_h + 0.1) / side, (grid_w + 0.1) / side), mode="bicubic")
        if tuple(grid.shape[-2:]) != (grid_h, grid_w):
            raise RuntimeError(f"position grid resized to {tuple(grid.shape[-2:])}, expected {(grid_h, grid_w)}")
        return torch.cat((self.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)), dim=1)

    def _pos_embed(self, x: torch.Tensor, square_input: bool | None = None) -> torch.Tensor:
        """Prepend the class token to NHWC patch tokens and add DINO-interpolated position embeddings."""
        batch, grid_h, grid_w, dim = x.shape
        square = grid_h == grid_w if square_input is None else square_input
        tokens = torch.cat((self.cls_token.expand(batch, -1, -1), x.reshape(batch, grid_h * grid_w, dim)), dim=1)
        return self.pos_drop(tokens + self.interpolate_pos_encoding(grid_h, grid_w, square))

    def forward_features(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        """Normalised tokens ``(B, 1 + h*w, D)``: DINO's ``prepare_tokens``, the blocks, the final norm."""
        height, width = x.shape[-2:]
        patch_h, patch_w = self.patch_embed.patch_size
        x = self.patch_embed(x[..., : height - height % patch_h, : width - width % patch_w])
        x = self._pos_embed(x, square_input=height == width)
        for block in self.blocks:
            x = block(x, attn_mask=attn_mask, is_causal=is_causal)
        return self.norm(x)


def _init_weights(model: DinoVisionTransformer) -> None:
    """timm's ViT initialisation, drawn with ``normal_`` where timm uses ``trunc_normal_``.

    ``trunc_normal_`` goes through ``erfinv_``, whose CPU results were seen to differ in the last bit
    between two processes given the same seed, and seeded random backbones must be bit-identical
    everywhere. At std 0.02 timm's truncation at +-2 never applies, so the distribution is the same.
    LayerNorm and the patch convolution keep their own (uniform-based) initialisation.
    """
    with torch.no_grad():
        nn.init.normal_(model.pos_embed, std=0.02)
        nn.init.normal_(model.cls_token, std=1e-6)
        for module in model.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)


def build_dino_vit(arch: DinoArch = "vitb16", *, device: torch.device | str | None = None) -> DinoVisionTransformer:
    """A randomly initialised DINO ViT (``vitb16``: ViT-B/16; ``tiny``: the same class, 48-d, 2 blocks).

    ``device="meta"`` builds the structure without allocating its weights.
    """
    if arch not in DINO_ARCHS:
        raise ValueError(f"unknown DINO architecture {arch!r}; known: {sorted(DINO_ARCHS)}")
    model = DinoVisionTransformer(
        img_size=224,
        patch_size=16,
        num_classes=0,
        global_pool="token",
        class_token=True,
        mlp_ratio=4.0,
        qkv_bias=True,
        dynamic_img_size=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        act_layer=nn.GELU,
        weight_init="skip",
        device=device,
        **DINO_ARCHS[arch],
    )
    _init_weights(model)
    return model


def _unwrap_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The backbone state dict inside a plain, ``teacher``/``student`` or ``state_dict`` checkpoint."""
    state = checkpoint
    for key in _WRAPPER_KEYS:
        if isinstance(state.get(key), dict):
            log.debug("DINO checkpoint: using its %r entry", key)
            state = state[key]
            break
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):  # DINO's MultiCropWrapper: backbone + projection head
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    return state


def load_dino_checkpoint(model: DinoVisionTransformer, path: Path | str) -> DinoVisionTransformer:
    """Load a DINO checkpoint into ``model`` with ``strict=True``.

    Accepts the official backbone state dict and training checkpoints that wrap it (``teacher``,
    preferred, or ``student``, ``state_dict``; ``module.`` / ``backbone.`` prefixes).

    Raises:
        ValueError: the keys or shapes are not those of ``model`` (the message lists them).
    """
    with torch.serialization.safe_globals([argparse.Namespace]):  # DINO training checkpoints store their args
        checkpoint = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: not a state dict (got {type(checkpoint).__name__})")
    state = _unwrap_state_dict(checkpoint)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(state) & set(expected) if state[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        def listing(keys: list[str]) -> str:
            return ", ".join(keys[:10]) + (f", ... ({len(keys)} in all)" if len(keys) > 10 else "") or "none"

        raise ValueError(
            f"{path}: not a DINO checkpoint of this architecture. Missing keys: {listing(missing)}. "
            f"Unexpected keys: {listing(unexpected)}. Shape mismatches (file vs model): {listing(mismatched)}."
        )
    model.load_state_dict(state, strict=True)
    return model


def dino_preprocess(frames: np.ndarray) -> torch.Tensor:
    """Frames ``(N, H, W, 3)`` uint8 -> ``(N, 3, h, w)`` float32, as the official DINO transform.

    torchvision ``Resize(224)``: the short side becomes 224 and the long side ``int(224 * long / short)``
    (bilinear, antialiased; 832x480 -> 388x224), no centre crop, then ``ToTensor`` and ImageNet
    normalisation.
    """
    pixels = torch.from_numpy(np.require(frames, dtype=np.uint8, requirements=["C", "W"])).permute(0, 3, 1, 2)
    pixels = TF.resize(pixels, [RESIZE_SHORT_SIDE], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return TF.normalize(pixels.float().div_(255.0), list(IMAGENET_MEAN), list(IMAGENET_STD))
