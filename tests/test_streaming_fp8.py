"""FP8 E4M3 attention linears, the IAMFlow FP8 checkpoint format, and LoRA merging (spec §5).

Everything runs on a tiny stand-in with Wan's module names (blocks.<i>.{self,cross}_attn.{q,k,v,o},
blocks.<i>.ffn.{0,2}), so only the naming contract with the real DiT is exercised.
"""

from __future__ import annotations

import copy
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from narrastream.streaming import fp8
from narrastream.streaming.fp8 import (
    FP8_DTYPE,
    FP8Linear,
    dequantize_weight,
    fp8_state_dict,
    is_fp8_checkpoint,
    load_fp8_checkpoint,
    quantize_model,
    quantize_weight,
    save_fp8_checkpoint,
    scaled_mm_linear,
)

DIM, FFN_DIM, N_BLOCKS, IN_DIM = 32, 64, 3, 16
ATTN_NAMES = [f"blocks.{i}.{a}.{p}" for i in range(N_BLOCKS) for a in ("self_attn", "cross_attn") for p in "qkvo"]
FFN_NAMES = [f"blocks.{i}.ffn.{j}" for i in range(N_BLOCKS) for j in (0, 2)]


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(DIM, DIM) for _ in range(4))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.q(x) @ self.k(context).transpose(-1, -2) / math.sqrt(DIM), dim=-1)
        return self.o(weights @ self.v(context))


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn, self.cross_attn = _Attention(), _Attention()
        self.ffn = nn.Sequential(nn.Linear(DIM, FFN_DIM), nn.GELU(approximate="tanh"), nn.Linear(FFN_DIM, DIM))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(x, x)
        x = x + self.cross_attn(x, context)
        return x + self.ffn(x)


class StandInDiT(nn.Module):
    """Wan-named toy DiT: a patch linear and a head outside the blocks must never be touched."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embedding = nn.Linear(IN_DIM, DIM)
        self.blocks = nn.ModuleList(_Block() for _ in range(N_BLOCKS))
        self.head = nn.Linear(DIM, IN_DIM)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.patch_embedding(x)
        for block in self.blocks:
            h = block(h, context)
        return self.head(h)


class Wrapper(nn.Module):
    """Mimics the released ``model.`` prefix (WanDiffusionWrapper.model)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model


def _model(seed: int, dtype: torch.dtype = torch.float32) -> StandInDiT:
    torch.manual_seed(seed)
    return StandInDiT().to(dtype)


def _inputs(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return torch.randn(2, 5, IN_DIM, generator=g).to(dtype), torch.randn(2, 7, DIM, generator=g).to(dtype)


@pytest.fixture
def fresh_warning(monkeypatch):
    monkeypatch.setattr(fp8, "_fallback_warned", False)


# --------------------------------------------------------------------------- quantization


def test_quantize_weight_hand_values():
    # Row 0: scale = 448/448 = 1; 0.3 -> 0.3125 (ulp 1/32 in [0.25, 0.5)); 17 is a tie between
    # 16 and 18 (ulp 2 in [16, 32)) and rounds to the even mantissa, 16. Row 1 (zero) gets scale 1.
    # Row 2: scale = 896/448 = 2, so -896 -> -448 exactly and 3 -> 1.5.
    w = torch.tensor([[448.0, 1.0, 0.3, -17.0], [0.0, 0.0, 0.0, 0.0], [-896.0, 3.0, 0.0, 2.0]])
    q, scale = quantize_weight(w)
    assert q.dtype == FP8_DTYPE and scale.dtype == torch.float32 and scale.shape == (3, 1)
    assert scale.flatten().tolist() == [1.0, 1.0, 2.0]
    assert q.float().tolist() == [[448.0, 1.0, 0.3125, -16.0], [0.0] * 4, [-448.0, 1.5, 0.0, 1.0]]


def test_quantize_error_within_e4m3_bound():
    # E4M3 has 3 mantissa bits: round-to-nearest in the normal range (|w/scale| >= 2^-6) errs by
    # at most half an ulp = 2^-4 of the value's binade start, hence <= 2^-4 |w|. Below 2^-6 the
    # subnormal spacing is 2^-9, so the absolute error is <= 2^-10 * scale (half a spacing; the
    # brief's scale * 2^-9 is the looser full spacing). The factor 1 + 2^-20 covers the fp32
    # divide and multiply around the cast.
    g = torch.Generator().manual_seed(0)
    magnitudes = 10.0 ** (-6 * torch.rand(64, 256, generator=g))  # spans normal and subnormal codes
    w = torch.randn(64, 256, generator=g) * magnitudes
    q, scale = quantize_weight(w)
    err = (dequantize_weight(q, scale, torch.float32) - w).abs()
    scaled = w.abs() / scale
    normal = scaled >= 2.0**-6
    slack = 1 + 2.0**-20
    assert normal.sum() > 1000 and (~normal).sum() > 1000  # both regimes are exercised
    assert torch.all(err[normal] <= 2.0**-4 * w.abs()[normal] * slack)
    assert torch.all(err[~normal] <= (2.0**-10 * scale.expand_as(w))[~normal] * slack)
    # The bound is nearly reached, so a finer format (e.g. bf16 left unquantized) would fail here.
    assert (err[normal] / w.abs()[normal]).max() > 2.0**-5
    # The per-row absmax maps to +-448 and comes back to itself.
    assert torch.equal(q.float().abs().amax(dim=1), torch.full((64,), 448.0))
    torch.testing.assert_close(dequantize_weight(q, scale, torch.float32).abs().amax(1), w.abs().amax(1), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_linear_cpu_forward_matches_dequantized_and_warns_once(dtype, caplog, fresh_warning):
    torch.manual_seed(1)
    linear = nn.Linear(DIM, 48)
    module = FP8Linear.from_linear(linear)
    assert module.weight.dtype == FP8_DTYPE and module.weight_scale.shape == (48, 1)
    assert module.bias.dtype == torch.bfloat16
    x = torch.randn(3, 4, DIM).to(dtype)
    with caplog.at_level(logging.WARNING, logger=fp8.__name__):
        y1 = module(x)
        y2 = module(x)
    expected = F.linear(x, dequantize_weight(module.weight, module.weight_scale, dtype), module.bias.to(dtype))
    # the CPU path IS F.linear on the dequantized weight: the same operations on the same shapes
    assert y1.dtype == dtype and torch.equal(y1, expected) and torch.equal(y2, expected)
    warnings = [r for r in caplog.records if r.name == fp8.__name__ and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dequantized" in warnings[0].getMessage()
    # Close to the float layer (FP8 weight error only).
    torch.testing.assert_close(y1.float(), linear(x.float()), rtol=0.1, atol=0.1)


def test_fp8_linear_without_bias(fresh_warning):
    torch.manual_seed(2)
    linear = nn.Linear(DIM, DIM, bias=False)
    module = FP8Linear.from_linear(linear)
    x = torch.randn(4, DIM)
    assert module.bias is None
    assert torch.equal(module(x), F.linear(x, dequantize_weight(module.weight, module.weight_scale, torch.float32)))
    assert module.compute_dtype == torch.bfloat16
    with pytest.raises(TypeError, match="compute_dtype"):  # x.to(layer.weight.dtype) is a caller bug
        module(x.to(module.weight.dtype))


def test_scaled_mm_linear_rowwise_scales():
    """The GPU GEMM path, run through torch's CPU ``_scaled_mm``, against a hand reference.

    Reference: quantize each token with scale amax/448, dequantize, multiply by the dequantized
    weight in fp32, add the bf16 bias; the kernel then rounds to bf16 (rel. 2^-8).
    """
    torch.manual_seed(3)
    module = FP8Linear.from_linear(nn.Linear(DIM, 48))
    x = torch.randn(2, 5, DIM, dtype=torch.bfloat16)
    x[0, 0] = 0  # an all-zero token must not produce NaN
    y = scaled_mm_linear(x, module.weight, module.weight_scale, module.bias)
    assert y.shape == (2, 5, 48) and y.dtype == torch.bfloat16 and torch.isfinite(y).all()

    x2 = x.reshape(-1, DIM).float()
    x_scale = (x2.abs().amax(1, keepdim=True) / 448).clamp(min=1e-12)
    x_deq = (x2 / x_scale).to(FP8_DTYPE).float() * x_scale
    ref = x_deq @ dequantize_weight(module.weight, module.weight_scale, torch.float32).T + module.bias.float()
    torch.testing.assert_close(y.reshape(-1, 48).float(), ref, rtol=2.0**-7, atol=1e-2)
    assert torch.equal(y[0, 0], module.bias)  # zero token -> bias only


# --------------------------------------------------------------------------- model surgery


def test_quantize_model_replaces_exactly_the_attention_linears():
    model = _model(0)
    replaced = quantize_model(model)
    assert sorted(replaced) == sorted(ATTN_NAMES) and len(replaced) == 8 * N_BLOCKS
    modules = dict(model.named_modules())
    assert all(isinstance(modules[n], FP8Linear) for n in ATTN_NAMES)
    assert all(type(modules[n]) is nn.Linear for n in FFN_NAMES + ["patch_embedding", "head"])
    assert sum(isinstance(m, FP8Linear) for m in model.modules()) == 8 * N_BLOCKS

    wrapped = Wrapper(_model(0))  # the optional "model." prefix matches too
    assert len(quantize_model(wrapped)) == 8 * N_BLOCKS
    with pytest.raises(ValueError, match="no module name matches"):
        quantize_model(_model(0), pattern=r"^blocks\.\d+\.ffn\.fc1$")  # the released, dead FFN pattern
    with pytest.raises(TypeError, match="not nn.Linear"):
        quantize_model(_model(0), pattern=r"^blocks\.\d+\.ffn$")


def test_dtype_casts_do_not_touch_fp8_buffers():
    model = _model(0)
    quantize_model(model)
    before = {n: m.weight.clone() for n, m in model.named_modules() if isinstance(m, FP8Linear)}
    model.to(torch.bfloat16)
    model.half()
    model.float()
    for name, module in model.named_modules():
        if isinstance(module, FP8Linear):
            assert module.weight.dtype == FP8_DTYPE and module.weight_scale.dtype == torch.float32
            assert module.bias.dtype == torch.bfloat16
            assert torch.equal(module.weight.float(), before[name].float())
    assert model.blocks[0].ffn[0].weight.dtype == torch.float32  # ordinary layers did follow
    model.to("meta")  # a device move still applies
    assert model.blocks[0].self_attn.q.weight.device.type == "meta"
    assert model.blocks[0].self_attn.q.weight.dtype == FP8_DTYPE


# --------------------------------------------------------------------------- checkpoint format


@pytest.mark.parametrize("prefix", ["", "model."])
def test_fp8_checkpoint_roundtrip(tmp_path, prefix, fresh_warning):
    source = _model(0, torch.bfloat16)
    quantize_model(source)
    path = tmp_path / "dit_fp8.safetensors"
    save_fp8_checkpoint(source, path, prefix=prefix)

    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        dtypes = {k: f.get_slice(k).get_dtype() for k in keys}
    assert all(k.startswith(prefix) for k in keys)
    q = f"{prefix}blocks.1.cross_attn.v"
    assert (dtypes[q + ".weight"], dtypes[q + ".weight_scale"], dtypes[q + ".bias"]) == ("F8_E4M3", "F32", "BF16")
    assert dtypes[f"{prefix}blocks.1.ffn.0.weight"] == "BF16" and dtypes[f"{prefix}head.weight"] == "BF16"
    assert sum(d == "F8_E4M3" for d in dtypes.values()) == 8 * N_BLOCKS
    assert is_fp8_checkpoint(path)

    target = _model(99)  # different float weights, fp32
    loaded = load_fp8_checkpoint(target, path)
    assert sorted(loaded) == sorted(ATTN_NAMES)
    assert all(type(target.get_submodule(n)) is nn.Linear for n in FFN_NAMES)
    target.to(torch.bfloat16)
    x, ctx = _inputs(torch.bfloat16)
    # load_state_dict copies the file's bits into the model's own tensors: the same operations on the same shapes
    assert torch.equal(target(x, ctx), source(x, ctx))

    wrapped = Wrapper(_model(99))  # a wrapper-shaped model takes both key styles too
    load_fp8_checkpoint(wrapped, path)
    assert isinstance(wrapped.model.blocks[2].self_attn.o, FP8Linear)


def test_is_fp8_checkpoint_false_for_float_files(tmp_path):
    model = _model(0, torch.bfloat16)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "float.safetensors"))
    torch.save(model.state_dict(), tmp_path / "float.pt")
    assert not is_fp8_checkpoint(tmp_path / "float.safetensors")
    assert not is_fp8_checkpoint(tmp_path / "float.pt")
    with pytest.raises(FileNotFoundError):
        is_fp8_checkpoint(tmp_path / "absent.safetensors")
    with pytest.raises(ValueError, match="not an FP8 checkpoint"):
        load_fp8_checkpoint(_model(1), tmp_path / "float.safetensors")


def test_fp8_checkpoint_errors_name_the_keys(tmp_path):
    source = _model(0)
    quantize_model(source)
    tensors = {k: v.cpu().contiguous() for k, v in fp8_state_dict(source).items()}
    del tensors["blocks.0.ffn.2.bias"]
    tensors["blocks.2.self_attn.k.weight_scale"] = torch.ones(DIM + 1, 1)
    tensors["blocks.1.cross_attn.q.weight"] = tensors["blocks.1.cross_attn.q.weight"].to(torch.bfloat16)
    tensors["blocks.0.extra.weight"] = torch.zeros(2, dtype=torch.bfloat16)
    path = tmp_path / "broken.safetensors"
    save_file(tensors, str(path))

    target = _model(1)
    with pytest.raises(ValueError) as info:
        load_fp8_checkpoint(target, path)
    message = str(info.value)
    assert str(path) in message
    assert "missing keys (1)" in message and "blocks.0.ffn.2.bias" in message
    assert "unexpected keys (1)" in message and "blocks.0.extra.weight" in message
    assert "blocks.2.self_attn.k.weight_scale: file (33, 1) vs model (32, 1)" in message
    assert "blocks.1.cross_attn.q.weight: torch.bfloat16, expected torch.float8_e4m3fn" in message
    assert not any(isinstance(m, FP8Linear) for m in target.modules())  # checked before any change

    ok = load_file(str(path))
    ok.pop("blocks.0.extra.weight")
    ok["blocks.0.ffn.2.bias"] = torch.zeros(DIM, dtype=torch.bfloat16)
    ok["blocks.2.self_attn.k.weight_scale"] = torch.ones(DIM, 1)
    ok["blocks.1.cross_attn.q.weight"] = ok["blocks.1.cross_attn.q.weight"].to(FP8_DTYPE)
    save_file(ok, str(path))
    assert len(load_fp8_checkpoint(_model(1), path)) == 8 * N_BLOCKS  # the repaired file loads
    ok["blocks.0.ffn.0.weight_scale"] = torch.ones(FFN_DIM, 1)  # a scale marks ffn.0 as FP8...
    save_file(ok, str(path))
    with pytest.raises(ValueError, match=r"blocks\.0\.ffn\.0\.weight: torch\.bfloat16, expected"):
        load_fp8_checkpoint(_model(1), path)  # ...so its weight must then be fp8


# --------------------------------------------------------------------------- LoRA

RANK, ALPHA = 4, 8  # scaling alpha / rank = 2, so a dropped scaling factor would show


def _random_adapter(model: nn.Module, targets: list[str], key_prefix: str = "base_model.model.") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    adapter = {}
    for name in targets:
        linear = model.get_submodule(name)
        adapter[f"{key_prefix}{name}.lora_A.weight"] = torch.randn(RANK, linear.in_features, generator=g) * 0.1
        adapter[f"{key_prefix}{name}.lora_B.weight"] = torch.randn(linear.out_features, RANK, generator=g) * 0.1
    return adapter


def _peft():
    """peft, imported the way lora.py does it; skipped (visibly, -ra) where it is not installed."""
    from narrastream.streaming import lora

    try:
        return lora._import_peft()
    except ImportError as exc:
        pytest.skip(str(exc))


def test_lora_defaults_and_targets():
    _peft()
    from narrastream.streaming.lora import lora_config, lora_target_modules

    targets = lora_target_modules(_model(0))
    assert targets == sorted(ATTN_NAMES + FFN_NAMES) and len(targets) == 10 * N_BLOCKS
    config = lora_config(targets)
    assert (config.r, config.lora_alpha, config.lora_dropout) == (256, 256, 0.0)
    assert set(config.target_modules) == set(targets)


def test_lora_merge_matches_unmerged_peft_then_quantizes(tmp_path, fresh_warning):
    peft = _peft()
    from narrastream.streaming.lora import lora_target_modules, merge_lora

    base = _model(0)
    targets = lora_target_modules(base)
    adapter = _random_adapter(base, targets)
    torch.save({"generator_lora": adapter, "step": torch.tensor(5)}, tmp_path / "lora.pt")

    reference = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets))
    peft.set_peft_model_state_dict(reference, adapter)
    w0 = base.blocks[1].ffn[2].weight.detach().clone()

    merged = merge_lora(base, tmp_path / "lora.pt", rank=RANK, alpha=ALPHA)
    assert all(type(merged.get_submodule(n)) is nn.Linear for n in targets)
    assert not any("lora" in k for k in merged.state_dict())
    # W' = W + (alpha / rank) B A, by hand.
    a, b = adapter["base_model.model.blocks.1.ffn.2.lora_A.weight"], adapter["base_model.model.blocks.1.ffn.2.lora_B.weight"]
    torch.testing.assert_close(merged.blocks[1].ffn[2].weight, w0 + (ALPHA / RANK) * b @ a, rtol=1e-6, atol=1e-6)
    x, ctx = _inputs()
    with torch.no_grad():
        expected = reference(x, ctx)
        got = merged(x, ctx)
    assert not torch.allclose(expected, _model(0)(x, ctx), atol=1e-2)  # the adapter matters
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    # Same adapter as raw safetensors with the wrapper's "model." keys and PEFT's adapter name.
    raw = {k.replace("base_model.model.", "model.").replace(".weight", ".default.weight"): v for k, v in adapter.items()}
    save_file(raw, str(tmp_path / "lora.safetensors"))
    merged2 = merge_lora(_model(0), tmp_path / "lora.safetensors", rank=RANK, alpha=ALPHA)
    assert torch.equal(merged2.blocks[1].ffn[2].weight, merged.blocks[1].ffn[2].weight)

    assert len(quantize_model(merged)) == 8 * N_BLOCKS  # merge first, then quantize (IAMFlow export)
    with torch.no_grad():
        quantized = merged(x, ctx)
    assert (quantized - expected).norm() / expected.norm() < 0.05  # FP8 weight noise only


def test_lora_adapter_that_matches_nothing_is_rejected():
    _peft()
    from narrastream.streaming.lora import lora_target_modules, merge_lora

    base = _model(0)
    adapter = _random_adapter(base, lora_target_modules(base))
    adapter["base_model.model.blocks.0.self_attn.qq.lora_A.weight"] = torch.zeros(RANK, DIM)
    with pytest.raises(ValueError, match=r"keys matching no target linear \(1\): blocks\.0\.self_attn\.qq\.lora_A"):
        merge_lora(base, adapter, rank=RANK, alpha=ALPHA)
    assert type(base.blocks[0].self_attn.q) is nn.Linear  # validated before PEFT touched the model
    with pytest.raises(ValueError, match=r"shape mismatches .*rank 256"):  # the default rank 256 does not fit
        merge_lora(base, _random_adapter(base, lora_target_modules(base)))
    with pytest.raises(ValueError, match=r"missing keys \(60\)"):
        merge_lora(base, {}, rank=RANK, alpha=ALPHA)
