"""FP8 (E4M3) attention linears for the Wan DiT and the IAMFlow FP8 checkpoint format (spec §5).

IAMFlow ships its DiT as a safetensors file in which the 240 attention linears
(``blocks.<i>.{self_attn,cross_attn}.{q,k,v,o}``) hold a float8_e4m3fn ``weight`` with a
float32 per-output-channel ``weight_scale`` and a bf16 ``bias``; every other tensor is bf16.
Weights are quantized statically per output channel; activations are quantized dynamically
per token at run time, and the GEMM runs on FP8 tensor cores (``torch._scaled_mm`` with
row-wise scales) on GPUs of compute capability >= 8.9. Elsewhere the weight is dequantized
and a plain ``F.linear`` runs, after a one-time warning, so CPU tests exercise the same numbers.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from narrastream.checkpoints import compare_state

logger = logging.getLogger(__name__)

FP8_DTYPE = torch.float8_e4m3fn
E4M3_MAX = 448.0  # largest finite float8_e4m3fn value
# The 8 attention linears per block (30 blocks -> 240). The released quantizer also lists
# ffn.fc1/fc2, which never match Wan's nn.Sequential names ffn.0/ffn.2: the FFN stays bf16.
ATTENTION_LINEAR_PATTERN = r"^(model\.)?blocks\.\d+\.(self_attn|cross_attn)\.(q|k|v|o)$"
MODEL_PREFIX = "model."  # wrapper prefix that some released checkpoints carry
SCALE_SUFFIX = ".weight_scale"
_MIN_ACT_SCALE = 1e-12  # keeps all-zero tokens from dividing by zero
_SCALED_MM_MIN_CAPABILITY = (8, 9)  # Ada / Hopper and newer have FP8 tensor cores
_SCALED_MM_ALIGNMENT = 16  # cuBLASLt/CUTLASS need K and N divisible by 16
_fallback_warned = False  # the dequantized path warns once per process


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel E4M3 quantization: scale_o = max_i |W_oi| / 448, W_q = W / scale.

    Returns ``(weight_q [out, in] float8_e4m3fn, scale [out, 1] float32)``. An all-zero row gets
    scale 1 (any scale reproduces it exactly) instead of a 0/0.
    """
    if weight.dim() != 2:
        raise ValueError(f"quantize_weight expects a 2-D [out, in] weight, got shape {tuple(weight.shape)}")
    w = weight.detach().float()
    amax = w.abs().amax(dim=1, keepdim=True)
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    # W/scale can exceed 448 by one fp32 ulp; the E4M3 cast does not saturate, so clamp first.
    weight_q = (w / scale).clamp(-E4M3_MAX, E4M3_MAX).to(FP8_DTYPE)
    return weight_q, scale


def dequantize_weight(weight_q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Inverse of :func:`quantize_weight` (up to rounding), computed in fp32, returned in ``dtype``."""
    return (weight_q.float() * scale.float()).to(dtype)


@functools.lru_cache(maxsize=None)
def _cuda_capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _scaled_mm_supported(x: torch.Tensor, weight_q: torch.Tensor) -> bool:
    """True when the FP8 tensor-core GEMM can run: CUDA, capability >= 8.9, 16-aligned K and N."""
    if x.device.type != "cuda" or weight_q.device != x.device:
        return False
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    if _cuda_capability(index) < _SCALED_MM_MIN_CAPABILITY:
        return False
    out_features, in_features = weight_q.shape
    return in_features % _SCALED_MM_ALIGNMENT == 0 and out_features % _SCALED_MM_ALIGNMENT == 0


def scaled_mm_linear(
    x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``x @ (weight_q * weight_scale).T + bias`` via ``torch._scaled_mm`` with row-wise scales.

    Activations get a dynamic per-token scale (amax over the feature dim / 448). Row-wise
    ``_scaled_mm`` wants: mat1 [M, K] fp8 row-major, mat2 [K, N] fp8 column-major (the transpose
    view of the row-major [N, K] weight), scale_a [M, 1] fp32, scale_b [1, N] fp32 (both
    contiguous), a bf16 bias and out_dtype bf16. The result is cast back to ``x.dtype``.
    """
    out_features, in_features = weight_q.shape
    lead_shape = x.shape[:-1]
    x2d = x.reshape(-1, in_features).float()
    x_scale = (x2d.abs().amax(dim=1, keepdim=True) / E4M3_MAX).clamp(min=_MIN_ACT_SCALE)
    x_q = (x2d / x_scale).clamp(-E4M3_MAX, E4M3_MAX).to(FP8_DTYPE)
    out = torch._scaled_mm(
        x_q,
        weight_q.t(),
        scale_a=x_scale,
        scale_b=weight_scale.reshape(1, out_features).contiguous(),
        bias=None if bias is None else bias.to(torch.bfloat16),
        out_dtype=torch.bfloat16,
    )
    return out.to(x.dtype).reshape(*lead_shape, out_features)


def _warn_fallback_once(x: torch.Tensor) -> None:
    global _fallback_warned
    if not _fallback_warned:
        _fallback_warned = True
        logger.warning(
            "FP8Linear: no FP8 tensor-core GEMM for input on %s (needs CUDA capability >= %d.%d and "
            "16-aligned shapes); using a dequantized %s F.linear instead (slower, same weights).",
            x.device,
            *_SCALED_MM_MIN_CAPABILITY,
            x.dtype,
        )


class FP8Linear(nn.Module):
    """A linear layer stored as E4M3 weight + fp32 per-channel scale + bf16 bias (all buffers).

    The three tensors are buffers, not parameters: they are frozen inference weights. Their
    dtypes are part of the format, so :meth:`_apply` lets ``.to(device)`` move them but ignores
    dtype casts (``model.to(torch.bfloat16)`` would otherwise turn the fp8 weight into bf16 and
    round the fp32 scales). Casting back after the fact would not be lossless for the scales.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: torch.device | str | None = None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=FP8_DTYPE, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, 1, dtype=torch.float32, device=device))
        self.register_buffer(
            "bias", torch.zeros(out_features, dtype=torch.bfloat16, device=device) if bias else None
        )

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "FP8Linear":
        """Quantize an ``nn.Linear`` (any float dtype) into a new module on the same device."""
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device=linear.weight.device)
        weight_q, scale = quantize_weight(linear.weight)
        module.weight.copy_(weight_q)
        module.weight_scale.copy_(scale)
        if linear.bias is not None:
            module.bias.copy_(linear.bias.detach().to(torch.bfloat16))
        return module

    @property
    def compute_dtype(self) -> torch.dtype:
        """Activation dtype this layer is meant to run in (``weight.dtype`` is fp8, never an activation dtype)."""
        return torch.bfloat16

    def dequantized_weight(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return dequantize_weight(self.weight, self.weight_scale, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point() or x.dtype.itemsize == 1:
            raise TypeError(
                f"FP8Linear expects bf16/fp16/fp32 activations, got {x.dtype}; cast inputs to "
                "layer.compute_dtype, not to layer.weight.dtype (which is float8_e4m3fn)"
            )
        if _scaled_mm_supported(x, self.weight):
            return scaled_mm_linear(x, self.weight, self.weight_scale, self.bias)
        _warn_fallback_once(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> "FP8Linear":
        for name, buf in self._buffers.items():
            if buf is None:
                continue
            moved = fn(buf)
            if moved.dtype != buf.dtype:  # a dtype cast: keep the format, honour only the device
                moved = buf.to(device=moved.device)
            self._buffers[name] = moved
        return self

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, fp8=e4m3fn"


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def quantize_model(model: nn.Module, pattern: str = ATTENTION_LINEAR_PATTERN) -> list[str]:
    """Replace, in place, every ``nn.Linear`` whose qualified name matches ``pattern`` by an FP8Linear.

    Returns the replaced names. Raises if nothing matches, or if a match is not an ``nn.Linear``
    (quantize LoRA-merged, plain models only).
    """
    regex = re.compile(pattern)
    matches = [(name, module) for name, module in model.named_modules() if name and regex.match(name)]
    if not matches:
        raise ValueError(f"quantize_model: no module name matches {pattern!r}")
    wrong = [f"{name} ({type(module).__name__})" for name, module in matches if type(module) is not nn.Linear]
    if wrong:
        raise TypeError(f"quantize_model: modules matching {pattern!r} are not nn.Linear: {', '.join(wrong[:10])}")
    for name, module in matches:
        _replace_module(model, name, FP8Linear.from_linear(module))
    logger.info("quantize_model: %d linears -> FP8 E4M3", len(matches))
    return [name for name, _ in matches]


def _fp8_module_names(model: nn.Module) -> set[str]:
    return {name for name, module in model.named_modules() if isinstance(module, FP8Linear)}


def fp8_state_dict(model: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """The IAMFlow FP8 layout: FP8Linear buffers kept as-is (fp8 / fp32 / bf16), other floats bf16.

    ``prefix`` (e.g. ``"model."``) is prepended to every key, as in the released file.
    """
    fp8_names = _fp8_module_names(model)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        module_name = key.rpartition(".")[0]
        if module_name not in fp8_names and tensor.is_floating_point():
            tensor = tensor.to(torch.bfloat16)
        out[prefix + key] = tensor.detach()
    return out


def save_fp8_checkpoint(model: nn.Module, path: str | Path, prefix: str = "") -> None:
    """Write :func:`fp8_state_dict` as safetensors (CPU, contiguous)."""
    from safetensors.torch import save_file

    tensors = {k: v.cpu().contiguous() for k, v in fp8_state_dict(model, prefix).items()}
    save_file(tensors, str(path), metadata={"format": "pt", "quantization": "fp8-e4m3-per-channel"})


def is_fp8_checkpoint(path: str | Path) -> bool:
    """True for a ``.safetensors`` file holding at least one float8_e4m3fn tensor (read from headers only)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix != ".safetensors":
        return False
    with safe_open(str(path), framework="pt") as f:
        return any(f.get_slice(key).get_dtype() == "F8_E4M3" for key in f.keys())


def _align_prefix(tensors: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Add or strip the optional ``model.`` wrapper prefix so file keys use the model's naming."""
    file_prefixed = all(k.startswith(MODEL_PREFIX) for k in tensors)
    model_prefixed = all(k.startswith(MODEL_PREFIX) for k in model_keys)
    if file_prefixed and not model_prefixed:
        return {k[len(MODEL_PREFIX):]: v for k, v in tensors.items()}
    if model_prefixed and not file_prefixed:
        return {MODEL_PREFIX + k: v for k, v in tensors.items()}
    return tensors


def _format_keys(title: str, items: list[str], limit: int = 20) -> str:
    shown = "\n    ".join(items[:limit])
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {title} ({len(items)}):\n    {shown}{more}"


def load_fp8_checkpoint(model: nn.Module, path: str | Path) -> list[str]:
    """Load an IAMFlow FP8 safetensors file into a float model, strictly.

    Every module with a ``<name>.weight_scale`` entry in the file must be an ``nn.Linear`` (or an
    FP8Linear) in ``model``; those are replaced by FP8Linear. All keys and shapes are checked
    before anything is changed, and a ValueError lists missing / unexpected / mismatched keys.
    Non-FP8 tensors are copied into the model's own dtype. Returns the FP8 module names.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FP8 checkpoint not found: {path}")
    model_state = model.state_dict()
    tensors = _align_prefix(load_file(str(path)), set(model_state))

    fp8_names = sorted(k[: -len(SCALE_SUFFIX)] for k in tensors if k.endswith(SCALE_SUFFIX))
    if not fp8_names:
        raise ValueError(f"{path}: no '*{SCALE_SUFFIX}' tensors, this is not an FP8 checkpoint")
    modules = dict(model.named_modules())
    expected = {k: tuple(v.shape) for k, v in model_state.items()}
    problems: list[str] = []
    bad_modules = []
    for name in fp8_names:
        module = modules.get(name)
        if isinstance(module, nn.Linear):
            expected[name + SCALE_SUFFIX] = (module.out_features, 1)
        elif not isinstance(module, FP8Linear):
            bad_modules.append(f"{name} ({'absent' if module is None else type(module).__name__})")
    if bad_modules:
        problems.append(_format_keys("FP8 entries whose module is not a linear in the model", bad_modules))

    diff = compare_state(expected, tensors)
    missing, unexpected = diff.missing, diff.unexpected
    shapes = [f"{k}: file {got} vs model {want}" for k, got, want in diff.shapes]
    dtypes = sorted(
        f"{name}.{buf}: {tensors[name + '.' + buf].dtype}, expected {dtype}"
        for name in fp8_names
        for buf, dtype in (("weight", FP8_DTYPE), ("weight_scale", torch.float32))
        if name + "." + buf in tensors and tensors[name + "." + buf].dtype != dtype
    )
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("shape mismatches", shapes), ("wrong FP8 dtypes", dtypes)):
        if items:
            problems.append(_format_keys(title, items))
    if problems:
        raise ValueError(f"cannot load FP8 checkpoint {path}:\n" + "\n".join(problems))

    for name in fp8_names:
        module = modules[name]
        if isinstance(module, nn.Linear):
            _replace_module(
                model, name,
                FP8Linear(module.in_features, module.out_features, bias=module.bias is not None, device=module.weight.device),
            )
    model.load_state_dict(tensors, strict=True)
    logger.info("loaded FP8 checkpoint %s: %d FP8 linears, %d tensors", path, len(fp8_names), len(tensors))
    return fp8_names
