"""Helpers of the streaming equivalence tests: our DiT loaded from the fixture's seeded weights through the
checkpoint loader a method's config names, and our pipeline run on the fixture's seeded inputs.

The fixtures come from ``tools/equivalence/make_fixtures.py`` (``wan_forward``, ``self_forcing``, ``longlive``,
``memflow``, ``iamflow``, ``deep_forcing``, ``rolling_forcing``)
(docs/equivalence.md); the shared inputs (tiny configuration, text features, noise sequence) from
``tools/equivalence/streaming_inputs.py``, loaded from its file like ``seeded.py``.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from equivalence_support import REPO, Fixture, seeded
from narrastream.streaming import pipeline as pipeline_module
from narrastream.streaming import rolling as rolling_module
from narrastream.streaming import sampler as sampler_module
from narrastream.streaming.pipeline import StreamingSpec, StreamingWanPipeline
from narrastream.streaming.wan_model import CausalWanTransformer, WanConfig, load_wan_state_dict


def _load_inputs():
    name = "narrastream_equivalence_streaming_inputs"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tools" / "equivalence" / "streaming_inputs.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


si = _load_inputs()
assert si.seeded is seeded


def model_params(name: str) -> dict[str, Any]:
    """``params`` of ``eval_configs/model/<name>.yaml`` with the 3-frame blocks of the releases."""
    params = yaml.safe_load((REPO / "eval_configs" / "model" / f"{name}.yaml").read_text())["params"]
    return dict(params, block_frames=si.BLOCK_FRAMES)


def wan_config(fixture: Fixture) -> WanConfig:
    cfg = dict(fixture.config["wan"])
    assert cfg == si.TINY_WAN, "the fixture was made with another configuration than streaming_inputs.TINY_WAN"
    return WanConfig(dim=cfg["dim"], num_layers=cfg["num_layers"], num_heads=cfg["num_heads"], ffn_dim=cfg["ffn_dim"],
                     freq_dim=cfg["freq_dim"], text_dim=cfg["text_dim"], text_len=cfg["text_len"], in_dim=cfg["in_dim"],
                     out_dim=cfg["out_dim"], patch_size=tuple(cfg["patch_size"]), qk_norm=cfg["qk_norm"],
                     cross_attn_norm=cfg["cross_attn_norm"], eps=cfg["eps"])


def load_ours(fixture: Fixture, tmp_path: Path, method: str) -> CausalWanTransformer:
    """Our DiT with the authors' seeded state dict, written as the method's released checkpoint (the
    ``weights.dit`` entry of its model config: nesting key and ``model.`` prefix) and read back by
    :func:`load_wan_state_dict` (strict) with that entry's ``key`` / ``strip_prefix``; a fixture made with
    the authors' LoRA also gets its seeded adapter, saved as ``{"generator_lora": PEFT keys}`` and merged by
    :func:`merge_lora` with its defaults (rank 256, alpha 256), as the ``streaming_wan`` adapter loads it."""
    entry = model_params(method)["weights"]["dit"]
    state = {f"{entry.get('strip_prefix') or ''}{k}": v for k, v in fixture.state_dict().items()}
    path = tmp_path / entry["filename"]
    if path.suffix == ".safetensors":  # IAMFlow's: its FP8 format is read by another loader (not compared here)
        from safetensors.torch import save_file

        assert not entry.get("key")
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({entry["key"]: state} if entry.get("key") else state, path)
    model = CausalWanTransformer(wan_config(fixture)).eval()
    load_wan_state_dict(model, path, key=entry.get("key"), strip_prefix=entry.get("strip_prefix"))
    if "lora_keys" in fixture.meta:  # the adapter as the release ships it, merged as the adapter does
        from narrastream.streaming.lora import ADAPTER_KEY, merge_lora

        lora_entry = model_params(method)["weights"]["lora"]
        lora = seeded.state_dict(fixture.meta["weights_seed"], fixture.meta["lora_keys"], {})
        lora_path = tmp_path / lora_entry["filename"]
        torch.save({ADAPTER_KEY: lora}, lora_path)
        model = merge_lora(model, lora_path).eval()
    return model


def check_inputs(fixture: Fixture) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    """The seeded text features and block noise, proved equal to the tool's by their checksums."""
    seed = fixture.meta["inputs_seed"]
    spec = fixture.meta["inputs"]
    contexts = si.stream_contexts(seed, len(spec["contexts"]["checksums"]), fixture.config.get("mix"))
    for c, want in zip(contexts, spec["contexts"]["checksums"]):
        assert np.allclose(seeded.checksum(c), want, rtol=1e-9, atol=1e-6), "text features do not regenerate"
    frames = fixture.config["frames"]
    noise = [si.block_noise(seed, b) for b in range(frames // si.BLOCK_FRAMES)]
    assert np.allclose(seeded.checksum(np.concatenate(noise, axis=2)), spec["noise"]["checksum"], rtol=1e-9, atol=1e-6)
    return [si.to_tensor(c) for c in contexts], noise


class TextStandIn:
    """Our text encoder's interface (``encode(prompts) -> [N, L, text_dim]``) on the seeded features."""

    def __init__(self, prompts: list[str], contexts: list[torch.Tensor]) -> None:
        self.table = dict(zip(prompts, contexts))

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return torch.cat([self.table[p] for p in prompts])


class RecordingDecoder:
    """Our streaming decoder's interface; records each block's latents (what is compared)."""

    def __init__(self) -> None:
        self.latents: list[torch.Tensor] = []

    def reset(self) -> None:
        self.latents.clear()

    def decode_chunk(self, x0: torch.Tensor) -> torch.Tensor:
        self.latents.append(x0.detach().clone())
        return torch.zeros(x0.shape[0], 3, x0.shape[2], 8, 8)


class RollingDraws:
    """The noise of Rolling Forcing's schedule, in the order our loop draws it: per window, the newest block's
    starting noise (``block_noise``) before the forward, then each block not at its last step re-noised
    (its k-th draw: ``renoise(seed, block, k)``), oldest first. The tool hands their loop the same values
    (``streaming_fixtures.rolling_randn_like``)."""

    def __init__(self, seed: int, num_blocks: int, steps: int) -> None:
        self.seed = seed
        self.order: list[tuple[str, int, int]] = []
        for w in range(num_blocks + steps - 1):
            first, last = max(0, w - steps + 1), min(num_blocks - 1, w)
            if w < num_blocks:
                self.order.append(("start", w, 0))
            self.order += [("renoise", b, w - b + 1) for b in range(first, last + 1) if w - b < steps - 1]
        self.calls = 0

    def next(self, shape: tuple[int, ...]) -> torch.Tensor:
        kind, block, k = self.order[self.calls]
        self.calls += 1
        x = si.block_noise(self.seed, block) if kind == "start" else si.renoise(self.seed, block, k)
        assert tuple(x.shape) == tuple(shape), f"draw {self.calls} ({kind} of block {block}): shape {tuple(shape)}"
        return si.to_tensor(x)

    def done(self) -> bool:
        return self.calls == len(self.order)


def rolling_draws(seed: int, num_blocks: int, steps: int) -> RollingDraws:
    return RollingDraws(seed, num_blocks, steps)


@dataclass
class PipelineRun:
    """What the tests compare from one run of our pipeline."""

    latents: np.ndarray  # [1, C, F, H, W], every block's x0
    recached: dict[int, tuple[np.ndarray, np.ndarray]]  # switch frame -> the whole KV cache after the re-cache
    cache: Any  # the StreamingCache as the video ended
    calls: list[tuple[int, bool, float | None]]  # (start frame, commit, transition_alpha) of every DiT forward
    details: dict[str, Any]  # StreamResult.details (prompt distances, ...)
    forwards: list[tuple[int, int, bool]]  # (start frame, frames, commit) of every DiT forward

    def block_alphas(self) -> list[float | None]:
        """The SPT alpha of each block (its first forward's)."""
        seen: dict[int, float | None] = {}
        for start, _, alpha in self.calls:
            seen.setdefault(start, alpha)
        return [seen[s] for s in sorted(seen)]


def run_pipeline(fixture: Fixture, model: CausalWanTransformer, params: dict[str, Any],
                 monkeypatch: pytest.MonkeyPatch) -> PipelineRun:
    """Our ``StreamingWanPipeline.generate`` on the fixture's stream: its prompts, switches, text features
    and noise; the K/V caches are read (as [L, B, n * tokens, H, D], sink first) after each re-cache."""
    stream = fixture.config
    contexts, noise = check_inputs(fixture)
    seed = fixture.meta["inputs_seed"]
    spec = StreamingSpec.from_config(params)
    if spec.schedule == "rolling_window":
        draws = rolling_draws(seed, len(noise), len(spec.denoising_steps))
        monkeypatch.setattr(rolling_module, "draw_noise", lambda shape, generator, **kw: draws.next(shape))
    else:
        blocks = iter(range(len(noise)))
        renoise = si.NoiseSequence(seed)
        monkeypatch.setattr(pipeline_module, "draw_noise",
                            lambda shape, generator, **kw: si.to_tensor(noise[next(blocks)]))
        monkeypatch.setattr(sampler_module, "draw_noise", lambda shape, generator, **kw: si.to_tensor(renoise.next()))
    prompts = [f"prompt {i}" for i in range(stream["prompts"])]
    pipe = StreamingWanPipeline(model, TextStandIn(prompts, contexts), RecordingDecoder(), spec)
    snapshots: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    original = pipe._recache

    def recache(cache: Any, bank: Any, latents: torch.Tensor, context: torch.Tensor, start: int) -> None:
        original(cache, bank, latents, context, start)
        kv = cache.self_attn
        k, v = kv.export_frames(kv.stored_frames())
        snapshots[start] = (k.numpy().copy(), v.numpy().copy())

    monkeypatch.setattr(pipe, "_recache", recache)
    caches: list[Any] = []
    new_cache = model.new_cache
    monkeypatch.setattr(model, "new_cache", lambda *a, **kw: caches.append(new_cache(*a, **kw)) or caches[-1])
    calls: list[tuple[int, bool, float | None]] = []
    forwards: list[tuple[int, int, bool]] = []
    forward = model.forward

    def recording_forward(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append((kwargs["start_frame"], bool(kwargs.get("commit")), kwargs.get("transition_alpha")))
        forwards.append((kwargs["start_frame"], int(args[0].shape[2]), bool(kwargs.get("commit"))))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", recording_forward)
    result = pipe.generate(prompts, seed=0, seconds_per_segment=stream["seconds_per_segment"], fps=stream["fps"],
                           height=si.PIXEL_HEIGHT, width=si.PIXEL_WIDTH)
    assert list(result.plan.switches) == stream["switches"] and result.plan.num_latent_frames == stream["frames"]
    if spec.schedule == "rolling_window":
        assert draws.done(), "the rolling schedule did not draw every block's noise"
    else:
        assert renoise.calls == 3 * len(noise) and next(blocks, None) is None, "the noise was not drawn block by block"
    latents = torch.cat(pipe.decoder.latents, dim=2).numpy()
    return PipelineRun(latents, snapshots, caches[0], calls, result.details, forwards)
