"""LanguageBind_Video_FT (video tower + text tower) as the official dynamic_trajectory runs it.

The model (``LanguageBind/LanguageBind_Video_FT`` on the Hugging Face hub) is a CLIP ViT-L/14 layout
with LanguageBind's video additions:

* **video tower**: CLIP vision embeddings (patch 14, 224 px, class token), ``pre_layrnorm``, 24 encoder
  layers of width 1024 (16 heads, MLP 4096, GELU, LayerNorm eps 1e-5), ``post_layernorm`` on the class
  token. Every layer first runs a *temporal* block over the 8 frames of each patch position: add the
  layer's ``temporal_embedding`` (1, 8, 1024), ``temporal_layer_norm1``, ``temporal_attn`` (a CLIP
  attention), residual; then the usual spatial attention + MLP. The pooled class tokens of the 8
  frames are averaged, then ``visual_projection`` (1024 -> 768, no bias);
* **text tower**: the CLIP text transformer (width 768, 12 layers, 12 heads, MLP 3072, vocab 49408,
  77 positions, causal mask), ``final_layer_norm``, pooled at the end-of-text token (the highest id:
  ``argmax(input_ids)``), ``text_projection`` (768 -> 768, no bias);
* ``logit_scale`` (unused by the metric: embeddings are L2-normalised).

Facts come from the public LanguageBind code (``languagebind/video/modeling_video.py``) and the hub
``config.json`` (``add_time_attn: true``, ``num_frames: 8``, ``lora_r: 0``, ``video_decode_backend:
decord``, vision ``hidden_act: gelu``). Loading a checkpoint always reads its own ``config.json``, so
the built architecture is the checkpoint's, not a copy of these numbers (:func:`arch_from_config`;
an activation absent from the file means the config class default, CLIP's ``quick_gelu``). The
``full`` random build (no file) assumes GELU in both towers.

**Decision: transformers' CLIP modules, not the ``languagebind`` package.** The ``languagebind``
package pins ``transformers<5`` (its ``modeling_video.py`` imports ``_expand_mask`` and other
private helpers that transformers 5's CLIP module no longer has) and pulls ``peft``/``pytorchvideo``/
``decord``; installing it would downgrade the whole environment for one metric. The model differs from a CLIP only by the temporal block, so the towers are built from
transformers 5's ``CLIPTextModel``, ``CLIPVisionEmbeddings``, ``CLIPAttention`` and a subclass of
``CLIPEncoderLayer`` (:class:`TemporalCLIPEncoderLayer`). Module names follow the official ones, so
the official state dict loads *strictly*; the only key mapping (:func:`map_official_state_dict`)
drops the ``position_ids`` buffers that older transformers saved (they are ``arange`` constants
here). Attention is eager, fp32, as the official evaluator runs it.

**Video transform** (:func:`video_preprocess`, the official decord transform written with torchvision
tensor ops): frames / 255, OpenAI CLIP mean/std, ``ShortSideScale(224)`` (pytorchvideo: the short side
to 224, the long side ``floor(long / short * 224)``, bilinear, ``align_corners=False``, no antialias),
centre crop 224 (``round((size - 224) / 2)`` offsets). The official transform then applies
``RandomHorizontalFlipVideo(p=0.5)`` *at inference*; **we never flip**: the flip makes the official
embeddings nondeterministic (protocol §6.4), and a deterministic score is worth more than reproducing
a coin toss. Frames are picked by the caller (the metric uses ``linspace_indices(n, 8)``).

**Text**: the model's own CLIP BPE tokenizer from the same directory (``vocab.json``/``merges.txt``/
``tokenizer.json``), ``max_length=77``, padding to 77, truncation at 77 tokens, as the official.
transformers 5 loads it as its (tokenizers-backed) ``CLIPTokenizer`` from the same ``vocab.json``/
``merges.txt``, offline (``local_files_only``). The official ``LanguageBindVideoTokenizer`` subclasses
transformers 4's *slow* ``CLIPTokenizer``, which, with ``ftfy`` installed (the official requirements pin
``ftfy==6.3.1``), cleans each text before BPE: ``ftfy.fix_text``, whitespace runs to one space, strip,
lower case. The fast tokenizer skips ``ftfy``, so curly quotes and apostrophes stay as they are and
tokenise differently (``’s`` becomes ``âĢ Ļ s`` instead of ``'s``: one of the 1,944 official prompts
gets 56 tokens instead of 52, so another text embedding). :func:`clean_text` applies the official
clean-up before any tokenizer (:func:`tokenize`, used by :meth:`VideoTextEncoder.encode_texts`); on
ASCII prompts it only lower-cases and collapses whitespace, which the fast tokenizer does anyway.
Random (test) builds have no tokenizer files; they use :class:`HashTokenizer`, a deterministic
offline stand-in with the same interface (never used with checkpoint files).

**Where the model comes from** (:func:`resolve_languagebind_dir`): the model is a *directory*
(config + weights + tokenizer), resolved in this order: an explicit path (``backbones.paths.
languagebind_video=DIR``; a file inside DIR, e.g. ``DIR/pytorch_model.bin``, means its directory),
``backbones.dir`` (else ``$NARRASTREAM_WEIGHTS``) ``/LanguageBind_Video_FT``, the user cache
``cache_dir()/weights/LanguageBind_Video_FT``, then the Hugging Face hub cache of
``LanguageBind/LanguageBind_Video_FT`` (downloaded there unless ``allow_download=False`` or ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from narrastream._compat import ensure_torchvision
from narrastream.checkpoints import compare_state
from narrastream.metrics.backbones.execution import Execution

ensure_torchvision()
from torchvision.transforms import InterpolationMode  # noqa: E402
from torchvision.transforms.v2 import functional as TF  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig  # noqa: E402
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer, CLIPVisionEmbeddings  # noqa: E402

log = logging.getLogger(__name__)

BACKBONE_NAME = "languagebind_video"
HUB_REPO = "LanguageBind/LanguageBind_Video_FT"
#: the directory name users put under ``$NARRASTREAM_WEIGHTS`` (and the official ``./pretrained/``)
DIRNAME = "LanguageBind_Video_FT"
#: the files of the official download (protocol §2.3.2)
MODEL_FILES: tuple[str, ...] = (
    "config.json", "merges.txt", "pytorch_model.bin", "special_tokens_map.json",
    "tokenizer.json", "tokenizer_config.json", "vocab.json",
)
#: weight files looked for in a model directory, in this order
WEIGHT_FILES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES: tuple[str, ...] = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

IMAGE_SIZE = 224
CONTEXT_LENGTH = 77
OPENAI_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
#: keys of older checkpoints that are constant buffers here (``arange`` position ids), dropped on load
IGNORED_KEY_PATTERN = re.compile(r"^(text_model|vision_model)\.embeddings\.position_ids$")


# ------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class LanguageBindArch:
    """The architecture numbers of a LanguageBind video model (``full`` is LanguageBind_Video_FT)."""

    projection_dim: int = 768
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_mlp: int = 3072
    vocab_size: int = 49408
    context_length: int = CONTEXT_LENGTH
    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vision_mlp: int = 4096
    patch_size: int = 14
    image_size: int = IMAGE_SIZE
    num_frames: int = 8
    text_act: str = "gelu"
    vision_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    logit_scale_init: float = 2.6592


ARCHS: dict[str, LanguageBindArch] = {
    "full": LanguageBindArch(),
    "tiny": LanguageBindArch(
        projection_dim=16, text_width=32, text_layers=1, text_heads=2, text_mlp=64, vocab_size=512,
        vision_width=32, vision_layers=2, vision_heads=2, vision_mlp=64, patch_size=32,
    ),
}


def arch_from_config(config: Mapping[str, Any]) -> LanguageBindArch:
    """The architecture of an official ``config.json`` (``text_config`` / ``vision_config``).

    Raises:
        ValueError: for a model this implementation does not cover (LoRA weights, no temporal
            attention, audio-style position sizes), with the offending values.
    """
    try:
        text, vision = config["text_config"], config["vision_config"]
    except KeyError as e:
        raise ValueError(f"config.json has no {e.args[0]!r}; not a LanguageBind model config") from None
    if int(vision.get("lora_r", 0) or 0) != 0:
        raise ValueError(f"vision_config.lora_r={vision['lora_r']}: LoRA checkpoints are not supported (Video_FT has 0)")
    if not vision.get("add_time_attn", False):
        raise ValueError("vision_config.add_time_attn is false: not a LanguageBind video tower")
    if text.get("add_time_attn", False):
        raise ValueError("text_config.add_time_attn is true: not supported")
    if int(vision.get("num_mel_bins", 0) or 0) and int(vision.get("target_length", 0) or 0):
        raise ValueError("vision_config has num_mel_bins/target_length: an audio tower, not a video tower")
    return LanguageBindArch(
        projection_dim=int(config.get("projection_dim", text.get("projection_dim", 768))),
        text_width=int(text["hidden_size"]),
        text_layers=int(text["num_hidden_layers"]),
        text_heads=int(text["num_attention_heads"]),
        text_mlp=int(text["intermediate_size"]),
        vocab_size=int(text.get("vocab_size", 49408)),
        context_length=int(text.get("max_position_embeddings", CONTEXT_LENGTH)),
        vision_width=int(vision["hidden_size"]),
        vision_layers=int(vision["num_hidden_layers"]),
        vision_heads=int(vision["num_attention_heads"]),
        vision_mlp=int(vision["intermediate_size"]),
        patch_size=int(vision["patch_size"]),
        image_size=int(vision.get("image_size", IMAGE_SIZE)),
        num_frames=int(vision.get("num_frames", 8)),
        # a key absent from a saved config has the config class's default: CLIP's quick_gelu
        text_act=str(text.get("hidden_act", "quick_gelu")),
        vision_act=str(vision.get("hidden_act", "quick_gelu")),
        layer_norm_eps=float(vision.get("layer_norm_eps", 1e-5)),
        logit_scale_init=float(config.get("logit_scale_init_value", 2.6592)),
    )


def config_dict(arch: LanguageBindArch) -> dict[str, Any]:
    """A ``config.json`` in the official layout (the fields this module reads), for saved test models."""
    return {
        "architectures": ["LanguageBindVideo"],
        "model_type": "LanguageBindVideo",
        "projection_dim": arch.projection_dim,
        "logit_scale_init_value": arch.logit_scale_init,
        "text_config": {
            "hidden_size": arch.text_width, "num_hidden_layers": arch.text_layers,
            "num_attention_heads": arch.text_heads, "intermediate_size": arch.text_mlp,
            "vocab_size": arch.vocab_size, "max_position_embeddings": arch.context_length,
            "hidden_act": arch.text_act, "layer_norm_eps": arch.layer_norm_eps,
            "projection_dim": arch.projection_dim, "add_time_attn": False,
        },
        "vision_config": {
            "hidden_size": arch.vision_width, "num_hidden_layers": arch.vision_layers,
            "num_attention_heads": arch.vision_heads, "intermediate_size": arch.vision_mlp,
            "patch_size": arch.patch_size, "image_size": arch.image_size, "num_frames": arch.num_frames,
            "hidden_act": arch.vision_act, "layer_norm_eps": arch.layer_norm_eps,
            "projection_dim": arch.projection_dim, "add_time_attn": True, "lora_r": 0,
            "force_patch_dropout": 0.0, "num_mel_bins": 0, "target_length": 0,
            "video_decode_backend": "decord",
        },
    }


def _text_config(arch: LanguageBindArch) -> CLIPTextConfig:
    config = CLIPTextConfig(
        vocab_size=arch.vocab_size, hidden_size=arch.text_width, intermediate_size=arch.text_mlp,
        projection_dim=arch.projection_dim, num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads, max_position_embeddings=arch.context_length,
        hidden_act=arch.text_act, layer_norm_eps=arch.layer_norm_eps, attention_dropout=0.0,
        # CLIP's <|startoftext|> / <|endoftext|> are the two highest ids (49406, 49407 for the full vocab)
        bos_token_id=arch.vocab_size - 2, eos_token_id=arch.vocab_size - 1, pad_token_id=1,
    )
    config._attn_implementation = "eager"
    return config


def _vision_config(arch: LanguageBindArch) -> CLIPVisionConfig:
    config = CLIPVisionConfig(
        hidden_size=arch.vision_width, intermediate_size=arch.vision_mlp, projection_dim=arch.projection_dim,
        num_hidden_layers=arch.vision_layers, num_attention_heads=arch.vision_heads,
        image_size=arch.image_size, patch_size=arch.patch_size, hidden_act=arch.vision_act,
        layer_norm_eps=arch.layer_norm_eps, attention_dropout=0.0,
    )
    config._attn_implementation = "eager"
    return config


# ------------------------------------------------------------------------------------------ model


class TemporalCLIPEncoderLayer(CLIPEncoderLayer):
    """A CLIP encoder layer preceded by LanguageBind's temporal attention over the frames of a clip.

    Input ``(B*T, N, D)`` with the ``T`` frames of a clip consecutive. Before the spatial block:
    ``x += temporal_embedding`` per frame (only when ``T > 1``), then for every patch position
    ``x += temporal_attn(temporal_layer_norm1(x))`` across the ``T`` frames.
    """

    def __init__(self, config: CLIPVisionConfig, num_frames: int) -> None:
        super().__init__(config)
        self.num_frames = int(num_frames)
        self.temporal_embedding = nn.Parameter(torch.zeros(1, self.num_frames, config.hidden_size))
        nn.init.normal_(self.temporal_embedding, std=config.hidden_size ** -0.5)
        self.temporal_attn = CLIPAttention(config)
        self.temporal_layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        bt, n, d = hidden_states.shape
        t = self.num_frames
        if bt % t:
            raise ValueError(f"{bt} frames is not a whole number of {t}-frame clips")
        b = bt // t
        if t != 1:
            hidden_states = (hidden_states.view(b, t, n, d) + self.temporal_embedding[:, :t, None, :]).view(bt, n, d)
        residual = hidden_states
        per_patch = hidden_states.view(b, t, n, d).permute(0, 2, 1, 3).reshape(b * n, t, d)
        per_patch, _ = self.temporal_attn(self.temporal_layer_norm1(per_patch), attention_mask=None)
        hidden_states = residual + per_patch.view(b, n, t, d).permute(0, 2, 1, 3).reshape(bt, n, d)
        return super().forward(hidden_states, None, **kwargs)


class _VideoEncoder(nn.Module):
    def __init__(self, config: CLIPVisionConfig, num_frames: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TemporalCLIPEncoderLayer(config, num_frames) for _ in range(config.num_hidden_layers))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(hidden_states, None)
        return hidden_states


class VideoTransformer(nn.Module):
    """The video tower: ``(B, T, 3, H, W)`` -> ``(B, width)``, the mean of the frames' pooled class tokens."""

    def __init__(self, config: CLIPVisionConfig, num_frames: int) -> None:
        super().__init__()
        self.num_frames = int(num_frames)
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = _VideoEncoder(config, num_frames)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 5 or pixel_values.shape[1] != self.num_frames:
            raise ValueError(f"pixel_values must be (B, {self.num_frames}, 3, H, W), got {tuple(pixel_values.shape)}")
        b, t = pixel_values.shape[:2]
        hidden = self.embeddings(pixel_values.flatten(0, 1))
        hidden = self.encoder(self.pre_layrnorm(hidden))
        pooled = self.post_layernorm(hidden[:, 0, :])
        return pooled.view(b, t, -1).mean(dim=1)


class LanguageBindVideoModel(nn.Module):
    """LanguageBind video + text towers with the official parameter names (``text_model.*``,
    ``vision_model.*``, ``visual_projection``, ``text_projection``, ``logit_scale``)."""

    def __init__(self, arch: LanguageBindArch) -> None:
        super().__init__()
        self.arch = arch
        self.text_model = CLIPTextModel(_text_config(arch))
        self.vision_model = VideoTransformer(_vision_config(arch), arch.num_frames)
        self.visual_projection = nn.Linear(arch.vision_width, arch.projection_dim, bias=False)
        self.text_projection = nn.Linear(arch.text_width, arch.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(arch.logit_scale_init)))
        #: set by :func:`load_languagebind` (the checkpoint's tokenizer); None for random builds
        self.tokenizer: Any = None

    @property
    def dim(self) -> int:
        return self.arch.projection_dim

    def video_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected (not normalised) video features of ``(B, T, 3, H, W)`` pixels."""
        return self.visual_projection(self.vision_model(pixel_values))

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Projected (not normalised) text features, pooled at ``argmax(input_ids)`` (the end-of-text token)."""
        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), input_ids.to(torch.int).argmax(dim=-1)]
        return self.text_projection(pooled)


def build_languagebind(arch: str | LanguageBindArch = "full") -> LanguageBindVideoModel:
    """A randomly initialised model (``full``: LanguageBind_Video_FT's architecture; ``tiny``: tests), fp32, eval.

    Under ``torch.device("meta")`` this allocates nothing (key and shape listings).
    """
    if isinstance(arch, str):
        if arch not in ARCHS:
            raise ValueError(f"unknown LanguageBind architecture {arch!r}; known: {sorted(ARCHS)}")
        arch = ARCHS[arch]
    return LanguageBindVideoModel(arch).eval()


# ------------------------------------------------------------------------------------------ weights


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not match the model; the message lists them."""


def map_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official key layout -> ours: identical names; ``*.embeddings.position_ids`` buffers
    (saved by transformers < 4.31, constant ``arange`` here) are dropped.

    Example:
        >>> sorted(map_official_state_dict({"text_model.embeddings.position_ids": torch.arange(3), "logit_scale": torch.tensor(1.0)}))
        ['logit_scale']
    """
    return {key: value for key, value in state_dict.items() if not IGNORED_KEY_PATTERN.match(key)}


def load_official_state_dict(model: LanguageBindVideoModel, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> LanguageBindVideoModel:
    """Strictly load an official-layout state dict; every missing, unexpected or mis-shaped key is listed."""
    mapped = map_official_state_dict(state_dict)
    diff = compare_state(model.state_dict(), mapped)
    missing, unexpected = diff.missing, diff.unexpected
    shapes = [f"{k}: checkpoint {got} vs model {want}" for k, got, want in diff.shapes]
    if diff:
        def listing(title: str, keys: Sequence[str]) -> list[str]:
            return [f"{title} ({len(keys)}):"] + [f"  {k}" for k in keys[:50]] + ([f"  ... {len(keys) - 50} more"] if len(keys) > 50 else [])
        lines = [f"{source}: does not match the LanguageBind video model (strict load)"]
        if missing:
            lines += listing("missing keys (in the model, not in the checkpoint)", missing)
        if unexpected:
            lines += listing("unmapped keys (in the checkpoint, not in the model)", unexpected)
        if shapes:
            lines += listing("shape mismatches", shapes)
        raise CheckpointMismatchError("\n".join(lines))
    model.load_state_dict({k: v.float() for k, v in mapped.items()}, strict=True)
    return model


def find_weights_file(directory: Path | str) -> Path:
    """The weights file of a model directory (``model.safetensors`` first, else ``pytorch_model.bin``)."""
    directory = Path(directory)
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"{directory}: no weights file ({' or '.join(WEIGHT_FILES)})")


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.bin`` file (``torch.load(weights_only=True)``, no code runs)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    return dict(state)


def load_tokenizer(directory: Path | str) -> Any:
    """The checkpoint's CLIP BPE tokenizer from ``directory``, offline (``local_files_only``).

    It does not clean text as the official tokenizer does: pass texts through :func:`tokenize`.
    """
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(directory), local_files_only=True)


_WHITESPACE = re.compile(r"\s+")


def clean_text(text: str) -> str:
    r"""The official CLIP tokenizer's clean-up before BPE: ``ftfy.fix_text``, whitespace collapsed, lower case.

    As transformers' slow ``CLIPTokenizer`` with ``ftfy`` installed (the official tokenizer's base):
    ``re.sub(r"\s+", " ", ftfy.fix_text(text)).strip().lower()``; curly quotes become straight ones,
    mojibake is repaired. Idempotent, so a tokenizer that cleans again changes nothing.

    >>> clean_text("Mina\u2019s  \u201cred\u201d scarf\n")
    'mina\'s "red" scarf'
    """
    import ftfy

    return _WHITESPACE.sub(" ", ftfy.fix_text(text)).strip().lower()


def tokenize(tokenizer: Any, texts: Sequence[str], context_length: int = CONTEXT_LENGTH) -> dict[str, torch.Tensor]:
    """Token ids and attention mask of ``texts`` as the official tokenizer makes them.

    Each text goes through :func:`clean_text`, then ``tokenizer`` (padding to and truncation at
    ``context_length`` tokens, 77 for LanguageBind).
    """
    if isinstance(texts, str):
        raise TypeError("tokenize takes a list of strings")
    return tokenizer([clean_text(t) for t in texts], max_length=context_length, padding="max_length",
                     truncation=True, return_tensors="pt")


def load_languagebind(path: Path | str, *, with_tokenizer: bool = True) -> LanguageBindVideoModel:
    """Load a model directory (or a weights file inside it): its ``config.json``, weights (strict) and tokenizer."""
    path = Path(path).expanduser()
    directory = path if path.is_dir() else path.parent
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory}: no config.json (a LanguageBind model directory has {', '.join(MODEL_FILES)})")
    arch = arch_from_config(json.loads(config_path.read_text()))
    weights = path if path.is_file() else find_weights_file(directory)
    with torch.device("meta"):
        model = build_languagebind(arch)
    model = model.to_empty(device="cpu")
    state = read_state_dict(weights)
    load_official_state_dict(model, state, source=str(weights))
    _reset_buffers(model)
    if with_tokenizer:
        model.tokenizer = load_tokenizer(directory)
    return model.eval()


def _reset_buffers(model: LanguageBindVideoModel) -> None:
    """Non-persistent ``position_ids`` buffers are not in state dicts; rebuild them after ``to_empty``."""
    for module in model.modules():
        ids = getattr(module, "position_ids", None)
        if isinstance(ids, torch.Tensor):
            ids.copy_(torch.arange(ids.shape[-1]).expand_as(ids))


def save_languagebind(model: LanguageBindVideoModel, directory: Path | str, *, safetensors: bool = False) -> Path:
    """Write ``config.json`` and the weights in the official layout (tests and conversions); returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config_dict(model.arch), indent=2))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if safetensors:
        from safetensors.torch import save_file

        save_file(state, str(directory / "model.safetensors"))
    else:
        torch.save(state, str(directory / "pytorch_model.bin"))
    return directory


# ------------------------------------------------------------------------------------------ resolution


def _folder_spec():
    from narrastream.metrics.backbones.weights import FolderSpec

    return FolderSpec(
        name=BACKBONE_NAME, dirname=DIRNAME, hub_repo=HUB_REPO, allow_patterns=MODEL_FILES,
        needs=f"config.json, {' or '.join(WEIGHT_FILES)} and the tokenizer files",
        required=("config.json", "|".join(WEIGHT_FILES)), description="LanguageBind_Video_FT",
        config_key=f"backbones.paths.{BACKBONE_NAME}")


def resolve_languagebind_dir(
    path: Path | str | None = None, *, weights_dir: Path | str | None = None, allow_download: bool = True
) -> Path:
    """The local model directory: explicit ``path`` (a directory, or a file inside one),
    ``weights_dir`` (else ``$NARRASTREAM_WEIGHTS``) ``/LanguageBind_Video_FT``, the user cache
    ``cache_dir()/weights/LanguageBind_Video_FT``, the Hugging Face hub cache, then a download from the
    hub unless ``allow_download`` is false or ``HF_HUB_OFFLINE`` is set. A directory counts when it has
    ``config.json`` and a weights file.

    Raises:
        WeightsNotFoundError: nowhere to be found (a FileNotFoundError); the message lists the places tried.
    """
    from narrastream.metrics.backbones.weights import resolve_folder

    directory = None
    if path is not None:
        explicit = Path(path).expanduser()
        directory = explicit if explicit.is_dir() or not explicit.suffix else explicit.parent
    return resolve_folder(_folder_spec(), path=directory, weights_dir=weights_dir, allow_download=allow_download)


def resolve_languagebind_weights(
    path: Path | str | None = None, *, weights_dir: Path | str | None = None, allow_download: bool = True
) -> Path:
    """The weights file inside :func:`resolve_languagebind_dir` (what manifests hash)."""
    return find_weights_file(resolve_languagebind_dir(path, weights_dir=weights_dir, allow_download=allow_download))


# ------------------------------------------------------------------------------------------ inputs


def short_side_size(height: int, width: int, size: int = IMAGE_SIZE) -> tuple[int, int]:
    """pytorchvideo's ``ShortSideScale`` target: the short side to ``size``, the long one ``floor(long/short*size)``.

    >>> short_side_size(480, 832)
    (224, 388)
    >>> short_side_size(832, 480)
    (388, 224)
    """
    if width < height:
        return int(math.floor(height / width * size)), size
    return size, int(math.floor(width / height * size))


def video_preprocess(clips: np.ndarray | torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Clips ``(N, T, H, W, 3)`` uint8 -> ``(N, T, 3, size, size)`` float32, the official transform without the flip.

    /255, OpenAI mean/std, short side to ``size`` (bilinear, ``align_corners=False``, no antialias;
    after normalisation, as the official order), centre crop ``size``.
    """
    pixels = torch.as_tensor(np.asarray(clips)) if not isinstance(clips, torch.Tensor) else clips
    if pixels.ndim != 5 or pixels.shape[-1] != 3 or pixels.dtype != torch.uint8:
        raise ValueError(f"clips must be (N, T, H, W, 3) uint8, got {pixels.dtype} {tuple(pixels.shape)}")
    n, t, h, w, _ = pixels.shape
    x = pixels.permute(0, 1, 4, 2, 3).reshape(n * t, 3, h, w).to(torch.float32).div_(255.0)
    x = TF.normalize(x, list(OPENAI_MEAN), list(OPENAI_STD))
    x = TF.resize(x, list(short_side_size(h, w, size)), interpolation=InterpolationMode.BILINEAR, antialias=False)
    x = TF.center_crop(x, [size, size])
    return x.reshape(n, t, 3, size, size).contiguous()


class HashTokenizer:
    """A deterministic offline stand-in for the CLIP tokenizer, for random-weight builds only.

    Lower-cased words and punctuation (CLIP's pattern, roughly) map to ``1 + crc32(word) % (V - 3)``;
    ``<start>`` is ``V - 2`` and ``<end>`` ``V - 1`` (the highest id, so ``argmax`` pooling finds it),
    padding 0; truncation keeps the start and end tokens within ``max_length``.

    >>> tok = HashTokenizer(vocab_size=100)
    >>> out = tok(["a cat"], max_length=6, padding="max_length", truncation=True, return_tensors="pt")
    >>> out["input_ids"].shape, out["input_ids"][0, 0].item(), out["attention_mask"][0].tolist()
    (torch.Size([1, 6]), 98, [1, 1, 1, 1, 0, 0])
    """

    _pattern = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]+")

    def __init__(self, vocab_size: int) -> None:
        if vocab_size < 4:
            raise ValueError("vocab_size must be at least 4")
        self.vocab_size = vocab_size

    def __call__(self, texts: Sequence[str], *, max_length: int = CONTEXT_LENGTH, padding: str = "max_length",
                 truncation: bool = True, return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        v = self.vocab_size
        rows = []
        for text in texts:
            ids = [1 + zlib.crc32(w.encode()) % (v - 3) for w in self._pattern.findall(text.lower())]
            if truncation:
                ids = ids[: max_length - 2]
            rows.append([v - 2, *ids, v - 1])
        input_ids = torch.zeros(len(rows), max_length, dtype=torch.long)
        mask = torch.zeros(len(rows), max_length, dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row[:max_length])
            mask[i, : len(row)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}


# ------------------------------------------------------------------------------------------ encoder


class VideoTextEncoder:
    """LanguageBind for metrics: uint8 clips and strings in, L2-normalised float32 ``(N, D)`` on the CPU out.

    Preprocessing runs on the CPU; the forward passes on ``device`` in fp32 (as the official evaluator),
    batched, under ``inference_mode``. No random flip: the same input always gives the same output.
    """

    def __init__(self, model: LanguageBindVideoModel, tokenizer: Any = None, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, execution: Execution | None = None) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(self.device, dtype).eval()
        self.tokenizer = tokenizer if tokenizer is not None else (model.tokenizer or HashTokenizer(model.arch.vocab_size))
        self.dim = model.dim
        self.num_frames = model.arch.num_frames
        self.context_length = model.arch.context_length
        self.image_size = model.arch.image_size
        self.execution = execution or Execution(device=self.device, batch_size=4)

    def encode_videos(self, clips: np.ndarray | torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Embeddings ``(N, D)`` of clips ``(N, T, H, W, 3)`` uint8, ``T`` the model's frame count (8);
        ``batch_size`` clips per forward (default: the configured one)."""
        if len(clips) and np.shape(clips)[1] != self.num_frames:
            raise ValueError(f"clips must have {self.num_frames} frames each, got shape {tuple(np.shape(clips))}")
        size = self.execution.batch_for(requested=batch_size)

        def step(start: int, stop: int) -> torch.Tensor:
            pixels = video_preprocess(clips[start:stop], self.image_size).to(self.device, self.dtype)
            return F.normalize(self.model.video_features(pixels), dim=-1).float().cpu()

        with self.execution.running(len(clips)):
            return torch.cat([torch.empty(0, self.dim), *self.execution.map(len(clips), step, size)])

    def encode_texts(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Embeddings ``(N, D)`` of strings (cleaned as the official tokenizer, :func:`tokenize`; padded to
        77 tokens, truncated at 77, as the official)."""
        if isinstance(texts, str):
            raise TypeError("encode_texts takes a list of strings")

        def step(start: int, stop: int) -> torch.Tensor:
            tokens = tokenize(self.tokenizer, list(texts[start:stop]), self.context_length)
            ids = tokens["input_ids"].to(self.device)
            mask = tokens.get("attention_mask")
            features = self.model.text_features(ids, mask.to(self.device) if mask is not None else None)
            return F.normalize(features, dim=-1).float().cpu()

        with self.execution.running(len(texts)):
            return torch.cat([torch.empty(0, self.dim), *self.execution.map(len(texts), step, batch_size)])


# ------------------------------------------------------------------------------------------ provider


__all__ = [
    "ARCHS", "BACKBONE_NAME", "CheckpointMismatchError", "HUB_REPO", "HashTokenizer",
    "LanguageBindArch", "LanguageBindVideoModel", "TemporalCLIPEncoderLayer", "VideoTextEncoder",
    "arch_from_config", "build_languagebind", "clean_text", "config_dict", "load_languagebind",
    "load_official_state_dict", "load_tokenizer", "map_official_state_dict", "resolve_languagebind_dir",
    "resolve_languagebind_weights", "save_languagebind", "tokenize", "video_preprocess",
]
