"""Merge a LongLive / MemFlow PEFT LoRA adapter into the Wan DiT's base weights (spec §5).

Those students ship as base DiT + LoRA (r = 256, alpha = 256, dropout 0) on every nn.Linear
inside each transformer block: self/cross-attention q/k/v/o and ffn.0/ffn.2 (10 per block,
300 for the 30-block model). We merge once at load time, so inference runs a plain model and
FP8 quantization (``fp8.quantize_model``) can follow, as in IAMFlow's export tool.
``peft`` is imported lazily: the rest of the package does not need it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from narrastream.checkpoints import compare_state

logger = logging.getLogger(__name__)

LORA_RANK = 256
LORA_ALPHA = 256
LORA_DROPOUT = 0.0
ADAPTER_KEY = "generator_lora"  # LongLive / MemFlow checkpoints nest the adapter under this key
BLOCK_PATTERN = r"^(model\.)?blocks\.\d+\."  # LoRA targets every nn.Linear below a block
PEFT_PREFIX = "base_model.model."  # prefix of get_peft_model_state_dict keys
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B)(\.default)?\.weight$")


def _import_peft() -> Any:
    from narrastream._compat import ensure_torchvision

    ensure_torchvision()  # peft imports transformers models, which import torchvision; see narrastream._compat
    try:
        import peft
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("LoRA merging needs the 'peft' package: pip install peft") from exc
    return peft


def lora_target_modules(model: nn.Module) -> list[str]:
    """Qualified names of every ``nn.Linear`` inside a transformer block (``blocks.<i>.…``)."""
    regex = re.compile(BLOCK_PATTERN)
    return sorted(name for name, m in model.named_modules() if isinstance(m, nn.Linear) and regex.match(name))


def lora_config(target_modules: list[str], rank: int = LORA_RANK, alpha: int = LORA_ALPHA, dropout: float = LORA_DROPOUT) -> Any:
    """The PEFT ``LoraConfig`` used by LongLive / MemFlow / IAMFlow (exact module names as targets)."""
    peft = _import_peft()
    return peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules))


def load_lora_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an adapter from ``.safetensors`` or ``.pt``; a ``generator_lora`` entry is unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    elif path.suffix in (".pt", ".pth", ".bin"):
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"{path}: unsupported LoRA checkpoint suffix {path.suffix!r} (.pt or .safetensors)")
    if isinstance(state, Mapping) and ADAPTER_KEY in state:
        state = state[ADAPTER_KEY]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a tensor state dict (raw PEFT keys or under {ADAPTER_KEY!r})")
    return dict(state)


def _normalize_key(key: str, strip_model_prefix: bool) -> str:
    """``[base_model.model.][model.]<module>.lora_X[.default].weight`` -> ``<module>.lora_X.weight``."""
    if key.startswith(PEFT_PREFIX):
        key = key[len(PEFT_PREFIX):]
    if strip_model_prefix and key.startswith("model."):
        key = key[len("model."):]
    match = _LORA_KEY.match(key)
    return f"{match['module']}.{match['part']}.weight" if match else key


def _check_adapter(
    adapter: Mapping[str, torch.Tensor], model: nn.Module, targets: list[str], rank: int, source: str
) -> dict[str, torch.Tensor]:
    """Normalize keys and check them against the targets before the model is touched."""
    strip = not any(t.startswith("model.") for t in targets)
    state = {_normalize_key(k, strip): v for k, v in adapter.items()}
    expected: dict[str, tuple[int, int]] = {}
    for name in targets:
        linear = model.get_submodule(name)
        expected[f"{name}.lora_A.weight"] = (rank, linear.in_features)
        expected[f"{name}.lora_B.weight"] = (linear.out_features, rank)
    diff = compare_state(expected, state)
    unexpected, missing = diff.unexpected, diff.missing
    shapes = [f"{k}: adapter {got} vs expected {want} (rank {rank})" for k, got, want in diff.shapes]
    problems = [
        f"  {title} ({len(items)}): {', '.join(items[:10])}{' ...' if len(items) > 10 else ''}"
        for title, items in (("keys matching no target linear", unexpected), ("missing keys", missing),
                             ("shape mismatches", shapes))
        if items
    ]
    if problems:
        raise ValueError(f"LoRA adapter {source} does not fit the model ({len(targets)} target linears):\n" + "\n".join(problems))
    return state


def merge_lora(
    model: nn.Module,
    adapter: str | Path | Mapping[str, torch.Tensor],
    *,
    rank: int = LORA_RANK,
    alpha: int = LORA_ALPHA,
) -> nn.Module:
    """Inject a PEFT LoRA, load ``adapter`` (path or state dict), merge, and return the plain model.

    W <- W + (alpha / rank) * B @ A for every target linear; the returned module has ordinary
    ``nn.Linear`` layers again (PEFT modifies ``model`` in place). Adapter keys are validated
    first: a key that matches no target linear, a missing key or a wrong rank raises ValueError.
    """
    peft = _import_peft()
    source = str(adapter) if isinstance(adapter, (str, Path)) else "<state dict>"
    state = load_lora_state_dict(adapter) if isinstance(adapter, (str, Path)) else dict(adapter)
    targets = lora_target_modules(model)
    if not targets:
        raise ValueError(f"merge_lora: the model has no nn.Linear matching {BLOCK_PATTERN!r}")
    state = _check_adapter(state, model, targets, rank, source)

    peft_model = peft.get_peft_model(model, lora_config(targets, rank, alpha))
    result = peft.set_peft_model_state_dict(peft_model, {PEFT_PREFIX + k: v for k, v in state.items()})
    not_loaded = [k for k in result.missing_keys if "lora_" in k]
    if not_loaded or result.unexpected_keys:
        raise RuntimeError(f"PEFT did not load LoRA {source}: missing={not_loaded[:10]}, unexpected={result.unexpected_keys[:10]}")
    merged = peft_model.merge_and_unload()
    logger.info("merged LoRA %s into %d linears (rank %d, alpha %d)", source, len(targets), rank, alpha)
    return merged
