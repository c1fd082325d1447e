"""Deep Forcing and Rolling Forcing as configurations of the streaming generator: Deep Forcing's cache
(Participative Compression's choice, the sink's growth and re-placement in RoPE time, Deep Sink only),
Rolling Forcing's schedule (the windows, each block's noise level, the joint forward and the commit order),
its anchor cache, prompt switching in both, the released weights' layout, the configs, and the
end-to-end runs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from narrastream.config import compose_config
from narrastream.streaming.deep_sink import DeepSinkPolicy, participative_keep, sink_time_start
from narrastream.streaming.kv_cache import CachePolicy
from narrastream.streaming.pipeline import StreamingSpec, StreamingWanPipeline
from narrastream.streaming.rolling import (
    RollingAnchorPolicy,
    block_step,
    effective_plan,
    rolling_windows,
    window_prompt,
)
from narrastream.streaming.rope import Rope3D
from narrastream.streaming.sampler import warp_denoising_steps
from narrastream.streaming.switches import plan_switches

HEADS, HEAD_DIM, LAYERS = 2, 16, 2


# ----- a driver that calls a cache the way CausalWanTransformer.forward does ------------------------------
class Driver:
    """begin_forward, then per layer attention_kv (and write when committing), then advance; keys are RoPE'd
    at their absolute frames from raw keys kept here, so tests can recompute what the cache should hold."""

    def __init__(self, policy, frame_tokens: int = 2, seed: int = 0):
        self.rope = Rope3D(HEAD_DIM)
        self.t = frame_tokens
        self.cache = policy.make_cache(rope=self.rope, num_layers=LAYERS, batch_size=1, frame_tokens=frame_tokens,
                                       num_heads=HEADS, head_dim=HEAD_DIM, device="cpu", dtype=torch.float32)
        self.gen = torch.Generator().manual_seed(seed)
        self.raw: dict[int, torch.Tensor] = {}  # committed frame -> raw keys of layer 0
        self.seen: list[dict] = []  # per forward: what layer 0 attended

    def _rand(self, frames: int) -> torch.Tensor:
        return torch.randn(1, frames * self.t, HEADS, HEAD_DIM, generator=self.gen)

    def forward(self, start: int, frames: int, commit: bool) -> None:
        grid = (frames, 1, self.t)
        self.cache.begin_forward(start, frames, commit)
        for layer in range(LAYERS):
            raw = self._rand(frames)
            k = self.rope.apply(raw, start, grid)
            q = self.rope.apply(self._rand(frames), start, grid)
            v = self._rand(frames)
            sk, sv, lk, lv = self.cache.attention_kv(layer, k, v, q)
            if layer == 0:
                self.seen.append({"start": start, "frames": frames, "commit": commit, "q": q,
                                  "keys": torch.cat([sk, lk], 1), "raw": raw})
            if commit:
                self.cache.write(layer, k, v)
                if layer == 0:
                    for f in range(frames):
                        self.raw[start + f] = raw[:, f * self.t:(f + 1) * self.t]
        if commit:
            self.cache.advance(start, frames)

    def block(self, start: int, frames: int, steps: int = 4) -> None:
        """A Self-Forcing block: ``steps`` denoising forwards, then the context pass."""
        for _ in range(steps):
            self.forward(start, frames, commit=False)
        self.forward(start, frames, commit=True)


# ----- Deep Forcing: Participative Compression and the deep sink ------------------------------------------
def test_participative_keep_keeps_sink_recent_and_the_top_c_in_order():
    scores = torch.tensor([9.0] * 3 + [0.1, 5.0, 0.2, 4.0, 0.3, 3.0] + [9.0] * 2)  # 3 sink, 6 candidates, 2 recent
    keep, chosen = participative_keep(scores, total=11, sink=3, recent=2, top_c=2, counts=None, max_reuse=0)
    assert chosen.tolist() == [4, 6]  # the two best candidates, in their original order
    assert keep.tolist() == [0, 1, 2, 4, 6, 9, 10]
    counts = torch.zeros(11, dtype=torch.long)
    counts[4] = 7  # chosen max_reuse times already: no longer a candidate
    keep, chosen = participative_keep(scores, 11, 3, 2, 2, counts, max_reuse=7)
    assert chosen.tolist() == [6, 8] and 4 not in keep.tolist()
    keep, chosen = participative_keep(scores, 11, 3, 2, 0, None, 0)  # no top-C: sink and recent only
    assert keep.tolist() == [0, 1, 2, 9, 10] and chosen.numel() == 0


def test_sink_time_start_reproduces_the_release_arithmetic():
    t = 1560
    # DS + PC, the release's first compression at frame 21: 16 frames kept, the sink moves 21 - 16 = 5 frames
    assert sink_time_start(21, 16 * t, 10 * t, 21 * t, t) == 5
    assert sink_time_start(27, 16 * t, 10 * t, 21 * t, t) == 11  # then 6 frames per compression (2 blocks)
    # Deep Sink only (full 21-frame cache): the first eviction leaves it at 0, then 3 frames per block
    assert sink_time_start(21, 21 * t, 10 * t, 21 * t, t) == 0
    assert sink_time_start(24, 21 * t, 10 * t, 21 * t, t) == 3


def test_deep_forcing_cache_over_many_blocks():
    """The released geometry (21 frames, sink 10, budget 16, recent 4, blocks of 3): the cache fills at frame
    21, then overflows every second block; it is cut to 16 frames' worth of tokens (13 committed + the block),
    the top-C tokens are the candidates the recent queries score highest, and the sink moves 6 frames per
    compression; every forward attends to at most 21 frames."""
    policy = DeepSinkPolicy()
    drv = Driver(policy, frame_tokens=2)
    t, cache = drv.t, drv.cache
    history = []
    for block in range(16):
        start = 3 * block
        before = cache.compressions
        drv.forward(start, 3, commit=False)  # the first denoising forward: where an overflow is handled
        fwd = drv.seen[-1]
        history.append((start, cache.compressions - before, cache.lengths[0], cache.sink_start[0]))
        assert fwd["keys"].shape[1] <= 21 * t
        for _ in range(3):
            drv.forward(start, 3, commit=False)
        drv.forward(start, 3, commit=True)
        assert cache.lengths[0] <= 21 * t
    overflows = [start for start, n, _, _ in history if n]
    assert overflows == [21, 27, 33, 39, 45]
    for start, n, length, sink in history:
        if n:
            assert length == 13 * t and sink == start - 16  # 5, 11, 17, ...
    assert cache.lengths == [16 * t] * LAYERS and cache.first_frame == 0 and cache.end_frame == 48


def test_participative_compression_chooses_by_the_recent_queries_score():
    policy = DeepSinkPolicy(local_attn_size=7, sink_size=2, budget=5, recent=2, max_reuse=0)
    drv = Driver(policy, frame_tokens=3, seed=1)
    t, cache = drv.t, drv.cache
    for block in range(7):  # blocks of one frame: the 8th frame overflows
        drv.block(block, 1)
    keys_before = cache.k[0, :, :cache.lengths[0]].clone()
    queries = torch.cat([f["q"] for f in drv.seen[-1:]], dim=1)  # the last forward: the context pass of frame 6
    drv.forward(7, 1, commit=False)
    new_q, new_k = drv.seen[-1]["q"], drv.seen[-1]["keys"][:, -t:]
    recent = torch.cat([queries, new_q], dim=1)[:, -2 * t:]  # the last 2 frames of queries, the new block's included
    keys = torch.cat([keys_before, new_k], dim=1)
    # the score by another path: per head q.k summed over the recent queries, then over heads
    per_head = torch.stack([(recent[0, :, h] @ keys[0, :, h].T).sum(0) for h in range(HEADS)]).sum(0)
    expected = per_head / (math.sqrt(HEAD_DIM) * HEADS)
    assert torch.allclose(cache.token_scores(0, keys), expected, rtol=1e-5, atol=1e-5)  # float32, two summation orders
    total = keys.shape[1]
    # top-C: budget 5 - sink 2 - recent 2 = 1 frame of tokens
    top = (expected[2 * t:total - 2 * t].topk(t).indices + 2 * t).sort().values
    kept = torch.cat([keys_before[:, :2 * t], keys_before[:, top], keys_before[:, total - 2 * t:total - t]], dim=1)
    assert cache.lengths[0] == 4 * t
    sink_kept = cache.k[0, :, :2 * t]
    assert torch.equal(cache.k[0, :, 2 * t:4 * t], kept[:, 2 * t:])  # top-C then the recent frame, in order
    # the sink was moved in RoPE time, nothing else about it changed: compare with RoPE at the new start
    target = cache.sink_start[0]
    assert target == 7 - 3 - 2  # tail: 3 frames after the sink (top-C, recent, the new block)
    raw = torch.cat([drv.raw[0], drv.raw[1]], dim=1)
    assert torch.allclose(sink_kept, drv.rope.apply(raw, target, (2, 1, t)), atol=1e-5)


@pytest.mark.parametrize("max_reuse", [1, 100])
def test_max_reuse_retires_tokens_chosen_too_often(max_reuse):
    policy = DeepSinkPolicy(local_attn_size=7, sink_size=2, budget=5, recent=2, max_reuse=max_reuse)
    drv = Driver(policy, frame_tokens=2, seed=3)
    highest = 0
    for block in range(30):
        drv.block(block, 1)
        highest = max(highest, int(drv.cache.counts[0, :drv.cache.lengths[0]].max()))
    assert drv.cache.compressions == 8  # frames 7, 10, ..., 28: 5 frames kept, an overflow every 3 blocks
    if max_reuse == 1:
        assert highest == 1  # a token chosen once is dropped at the next compression
    else:
        assert highest >= 2  # without the limit some tokens are chosen again


def test_deep_sink_only_evicts_first_in_first_out_and_moves_the_sink_each_block():
    policy = DeepSinkPolicy(local_attn_size=21, sink_size=10, compression="none")
    drv = Driver(policy, frame_tokens=1)
    sinks = []
    for block in range(10):
        drv.forward(3 * block, 3, commit=False)
        sinks.append(drv.cache.sink_start[0])
        drv.forward(3 * block, 3, commit=True)
    assert sinks[:7] == [None] * 7 and sinks[7:] == [0, 3, 6]
    stored = drv.cache.k[0, :, :21]
    raw = torch.cat([drv.raw[f] for f in list(range(10)) + list(range(19, 30))], dim=1)
    expected_tail = torch.cat([drv.rope.apply(drv.raw[f], f, (1, 1, 1)) for f in range(19, 30)], dim=1)
    assert torch.allclose(stored[:, 10:], expected_tail, atol=1e-6)  # frames 19..29 at their own positions
    assert torch.allclose(stored[:, :10], drv.rope.apply(raw[:, :10], 6, (10, 1, 1)), atol=1e-5)


def test_rope_time_shift_equals_rope_at_the_new_position():
    rope = Rope3D(HEAD_DIM)
    raw = torch.randn(1, 3 * 2 * 4, HEADS, HEAD_DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    at5 = rope.apply(raw, 5, (3, 2, 4))
    assert torch.allclose(rope.shift_time(at5, 7), rope.apply(raw, 12, (3, 2, 4)), atol=1e-12)
    assert torch.allclose(rope.shift_time(at5, -5), rope.apply(raw, 0, (3, 2, 4)), atol=1e-12)
    assert rope.shift_time(at5, 0) is at5


# ----- Rolling Forcing: the schedule and the anchor cache --------------------------------------------------
def test_rolling_windows_and_each_blocks_noise_level():
    windows = rolling_windows(7, 5)
    assert windows == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 5), (2, 6), (3, 6), (4, 6), (5, 6), (6, 6)]
    for block in range(7):
        seen = [(w, block_step(w, block)) for w, (a, b) in enumerate(windows) if a <= block <= b]
        assert [step for _, step in seen] == [0, 1, 2, 3, 4]  # enters noisiest, leaves clean, one step per window
        last_window = seen[-1][0]
        assert windows[last_window][0] == block  # its last step is taken as the window's oldest block
    steps = warp_denoising_steps((1000, 800, 600, 400, 200))
    full = [steps[block_step(6, b)] for b in range(2, 7)]  # window 6: oldest to newest
    assert full == sorted(full) and full[-1] == 1000.0 and full[0] == steps[-1]


def test_anchor_cache_attends_like_the_release():
    """The released geometry: blocks of 3, windows of 5 blocks, 21 frames attended, a 24-frame buffer."""
    policy = RollingAnchorPolicy(local_attn_size=21, cache_frames=24, anchor_frames=3)
    drv = Driver(policy, frame_tokens=1)
    cache, t = drv.cache, drv.t
    nb, w_blocks = 12, 5
    for w, (first, last) in enumerate(rolling_windows(nb, w_blocks)):
        frames = 3 * (last - first + 1)
        drv.forward(3 * first, frames, commit=False)
        shift, others = cache.attended_frames()
        keys = drv.seen[-1]["keys"]
        if first == 0:
            assert keys.shape[1] == frames  # windows at frame 0 attend to themselves only
        else:
            working = max(0, 21 - frames - 3)
            expected = list(range(max(3, 3 * first - working), 3 * first))
            assert others == expected and shift == (expected[0] if expected else 3 * first) - 3
            assert keys.shape[1] == 3 + len(expected) + frames <= 21
            anchor = torch.cat([drv.raw[f] for f in range(3)], dim=1)  # re-placed right before the working cache
            assert torch.allclose(keys[:, :3 * t], drv.rope.apply(anchor, shift, (3, 1, t)), atol=1e-5)
        if block_step(w, first) == w_blocks - 1:  # the oldest block is clean: its context pass
            drv.forward(3 * first, 3, commit=True)
            keys, low = drv.seen[-1]["keys"], 3 * first + 3 - 21  # the last 21 frames, its own block included
            if first == 0:
                assert keys.shape[1] == 3 * t  # the first block's context pass: itself only
                continue
            anchor = 3 if low <= 0 else 0  # at its own position while within reach
            assert cache.attended_frames() == (0, list(range(max(low, 3), 3 * first)))
            assert keys.shape[1] == (anchor + len(range(max(low, 3), 3 * first)) + 3) * t
            if anchor:
                raw = torch.cat([drv.raw[f] for f in range(3)], dim=1)
                assert torch.allclose(keys[:, :3 * t], drv.rope.apply(raw, 0, (3, 1, t)), atol=1e-5)
    assert cache.end_frame == 36 and cache.stored_frames() == [0, 1, 2] + list(range(15, 36))  # FIFO past the anchor


def _recording(dit):
    calls = []

    def hook(module, args, kwargs, output):
        t = args[1]
        times = t.flatten().tolist() if torch.is_tensor(t) else [float(t)]
        calls.append({"start": kwargs["start_frame"], "frames": args[0].shape[2], "t": times,
                      "commit": kwargs.get("commit", False)})

    handle = dit.register_forward_hook(hook, with_kwargs=True)
    return calls, handle


@pytest.fixture(scope="module")
def parts():
    pytest.importorskip("diffusers")
    from narrastream.streaming.tiny import build_tiny

    return build_tiny(seed=0)


GEOMETRY = dict(seconds_per_segment=2, fps=4, height=48, width=64)  # 2 latent frames per prompt
PROMPTS = [f"Step {k}: in the cafe corner table, Noah works." for k in range(3)]


def rolling_spec(**kw) -> StreamingSpec:
    kw.setdefault("cache", RollingAnchorPolicy(local_attn_size=7, cache_frames=8, anchor_frames=1))
    return StreamingSpec(block_frames=1, transition="hard", memory="none", schedule="rolling_window",
                         denoising_steps=(1000, 800, 600, 400, 200), **kw)


def test_rolling_pipeline_denoises_windows_jointly_and_commits_each_block_once(parts):
    dit, text, decoder = parts
    spec = rolling_spec()
    calls, handle = _recording(dit)
    try:
        result = StreamingWanPipeline(dit, text, decoder, spec).generate(PROMPTS, seed=0, **GEOMETRY)
    finally:
        handle.remove()
    nb = 6
    # the window's timesteps are one float32 tensor, as the release's shared_timestep
    steps = [float(torch.tensor(s, dtype=torch.float32)) for s in warp_denoising_steps(spec.denoising_steps)]
    windows = rolling_windows(nb, 5)
    expected = []
    for w, (first, last) in enumerate(windows):
        expected.append({"start": first, "frames": last - first + 1,
                         "t": [steps[block_step(w, b)] for b in range(first, last + 1)], "commit": False})
        if block_step(w, first) == 4:
            expected.append({"start": first, "frames": 1, "t": [0.0], "commit": True})
    assert calls == expected
    assert result.details["dit_forwards"] == len(windows) + nb
    assert result.frames.shape[0] == 1 + 4 * (nb - 1) and result.plan.switches == (2, 4)
    for key in ("end_to_end", "loop", "core_dit", "method_overhead", "output_decode", "memory"):
        assert key in result.timings
    again = StreamingWanPipeline(dit, text, decoder, spec).generate(PROMPTS, seed=0, **GEOMETRY)
    assert np.array_equal(result.frames, again.frames)  # same ops, same seed: bit-identical


def test_a_window_is_one_forward_without_a_mask(parts):
    """The oldest block's prediction depends on the newest block of the same window (joint denoising)."""
    dit = parts[0]
    policy = RollingAnchorPolicy(local_attn_size=7, cache_frames=8, anchor_frames=1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, dit.cfg.in_dim, 5, 6, 8, generator=gen)
    context = torch.randn(1, 4, dit.cfg.text_dim, generator=gen)
    t = torch.tensor([[200.0, 400.0, 600.0, 800.0, 1000.0]])
    with torch.inference_mode():
        a = dit(x, t, context, start_frame=0, cache=dit.new_cache(1, 6, 8, policy))
        y = x.clone()
        y[:, :, -1] += 1.0
        b = dit(y, t, context, start_frame=0, cache=dit.new_cache(1, 6, 8, policy))
    assert (a[:, :, 0] - b[:, :, 0]).abs().max() > 1e-4


def test_rolling_window_prompt_rules():
    plan = plan_switches(3, seconds_per_segment=10, fps=16, block=3)  # switches at 39, 78
    windows = rolling_windows(plan.num_blocks, 5)
    newest = [window_prompt(plan, a, b, "newest") for a, b in windows]
    oldest = [window_prompt(plan, a, b, "oldest") for a, b in windows]
    assert newest.index(1) == 13 and oldest.index(1) == 13 + 4  # block 13 starts at frame 39
    shown, mixed = effective_plan(plan, "oldest", 5)
    assert shown.switches == (51, 90) and mixed == [[39, 51], [78, 90]]
    shown, mixed = effective_plan(plan, "newest", 5)
    assert shown.switches == (39, 78) and mixed == [[27, 39], [66, 78]]
    tiny = plan_switches(3, seconds_per_segment=2, fps=4, block=1)
    with pytest.raises(ValueError, match="longer than 4 latent frames"):
        effective_plan(tiny, "oldest", 5)


def test_prompt_switches_keep_the_cache_and_change_only_what_follows(parts):
    dit, text, decoder = parts
    same = [PROMPTS[0]] * 3
    deep = StreamingSpec(cache=DeepSinkPolicy(local_attn_size=4, sink_size=1, budget=3, recent=1),
                         transition="hard", memory="none", block_frames=1)
    longer = dict(GEOMETRY, seconds_per_segment=8)  # 8 latent frames per prompt: longer than the window
    for spec, geometry, prompts in ((deep, GEOMETRY, PROMPTS), (rolling_spec(), longer, PROMPTS[:2])):
        pipe = StreamingWanPipeline(dit, text, decoder, spec)
        switched = pipe.generate(prompts, seed=0, **geometry)
        single = pipe.generate(same[:len(prompts)], seed=0, **geometry)
        first = switched.plan.pixel_starts[1]
        if spec.schedule == "block":
            assert np.array_equal(switched.frames[:first], single.frames[:first])
            # the cache is not reset at a switch: it overflows as often as in the one-prompt run
            assert switched.details["deep_sink"] == single.details["deep_sink"]
            assert switched.details["deep_sink"]["overflows"] == 1  # at frame 4, after the switch at 2
        else:  # the newest rule: the previous segment's last blocks take their later steps under the new prompt
            assert switched.details["rolling"]["mixed_latent_ranges"] == [[4, 8]] and first == 1 + 4 * 7
            untouched = 1 + 4 * (4 - 1)  # the pixels of latent frames 0..3
            assert np.array_equal(switched.frames[:untouched], single.frames[:untouched])
            assert not np.array_equal(switched.frames[untouched:first], single.frames[untouched:first])
        assert not np.array_equal(switched.frames, single.frames)


def test_deep_sink_without_an_overflow_is_a_plain_sink_cache(parts):
    """Before the cache fills, Deep Forcing attends to every frame, as a sink cache that holds them all."""
    dit, text, decoder = parts
    deep = StreamingSpec(cache=DeepSinkPolicy(), transition="hard", memory="none", block_frames=1)
    plain = StreamingSpec(cache=CachePolicy.sink(21, 10, sma=False), transition="hard", memory="none",
                          block_frames=1)
    a = StreamingWanPipeline(dit, text, decoder, deep).generate(PROMPTS, seed=3, **GEOMETRY)
    b = StreamingWanPipeline(dit, text, decoder, plain).generate(PROMPTS, seed=3, **GEOMETRY)
    assert a.details["deep_sink"]["overflows"] == 0
    # the same keys in the same order through SDPA; a uint8 frame may still round differently
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).max() <= 1


# ----- specs and configs -----------------------------------------------------------------------------------
def test_specs_refuse_what_the_methods_cannot_do():
    with pytest.raises(ValueError, match="memory.policy must be none"):
        StreamingSpec(cache=DeepSinkPolicy(), memory="narrative", bank_size=3)
    with pytest.raises(ValueError, match="re-cache"):
        StreamingSpec(cache=DeepSinkPolicy(), transition="kv_recache")
    with pytest.raises(ValueError, match="whole block"):
        StreamingSpec(cache=DeepSinkPolicy(recent=2), transition="hard", block_frames=3)
    with pytest.raises(ValueError, match="go together"):
        StreamingSpec(cache=CachePolicy.sink(12, 3), schedule="rolling_window", transition="hard")
    with pytest.raises(ValueError, match="exceed"):
        StreamingSpec(cache=RollingAnchorPolicy(local_attn_size=12, cache_frames=24, anchor_frames=3),
                      schedule="rolling_window", transition="hard", denoising_steps=(1000, 800, 600, 400, 200))
    with pytest.raises(ValueError, match="budget"):
        DeepSinkPolicy(budget=30)


def test_adapter_turns_bad_method_settings_into_config_errors():
    from narrastream.adapters.base import AdapterConfigError
    from narrastream.adapters.streaming_wan import StreamingWanGenerator

    params = compose_config(["model=deep_forcing", "preset=tiny"])["model"]["params"]
    with pytest.raises(AdapterConfigError, match="budget"):
        StreamingWanGenerator(**{**params, "cache": {**params["cache"], "budget": 30}})
    params = compose_config(["model=rolling_forcing", "preset=tiny"])["model"]["params"]
    with pytest.raises(AdapterConfigError, match="window_prompt"):
        StreamingWanGenerator(**{**params, "schedule": {"policy": "rolling_window", "window_prompt": "middle"}})


@pytest.mark.parametrize("model, dit_file, hub", [
    ("deep_forcing", "self_forcing_dmd.pt", "gdhe17/Self-Forcing"),
    ("rolling_forcing", "rolling_forcing_dmd.pt", "TencentARC/RollingForcing"),
])
def test_model_configs(model, dit_file, hub):
    params = compose_config([f"model={model}"])["model"]["params"]
    spec = StreamingSpec.from_config(params)
    assert params["method"] == model and params["size"] == "full" and spec.block_frames == 3
    assert params["weights"]["dit"]["filename"] == dit_file and params["weights"]["dit"]["hub_repo"] == hub
    if model == "deep_forcing":
        assert spec.cache == DeepSinkPolicy(local_attn_size=21, sink_size=10, budget=16, recent=4, max_reuse=7)
        assert spec.transition == "hard" and spec.schedule == "block" and len(spec.denoising_steps) == 4
    else:
        assert spec.cache == RollingAnchorPolicy(local_attn_size=21, cache_frames=24, anchor_frames=3)
        assert spec.schedule == "rolling_window" and spec.denoising_steps == (1000, 800, 600, 400, 200)
    tiny = StreamingSpec.from_config(compose_config([f"model={model}", "preset=tiny"])["model"]["params"])
    assert tiny.block_frames == 1


def test_rolling_forcing_checkpoint_layout_loads_through_the_original_loader(parts, tmp_path):
    """The release's EMA weights: ``generator_ema`` with the wrapper's ``model.`` prefix and FSDP's
    ``_fsdp_wrapped_module.`` parts, which their inference.py removes."""
    from narrastream.streaming.tiny import tiny_dit_config
    from narrastream.streaming.wan_model import CausalWanTransformer, load_wan_state_dict

    dit = parts[0]
    state = {}
    for key, value in dit.state_dict().items():
        parts_ = key.split(".")
        if parts_[0] == "blocks":  # FSDP wraps each transformer block
            key = f"blocks.{parts_[1]}._fsdp_wrapped_module." + ".".join(parts_[2:])
        state[f"model._fsdp_wrapped_module.{key}"] = value.clone()
    torch.save({"generator_ema": state, "generator": {}}, tmp_path / "rolling_forcing_dmd.pt")
    params = compose_config(["model=rolling_forcing"])["model"]["params"]["weights"]["dit"]
    fresh = CausalWanTransformer(tiny_dit_config())
    load_wan_state_dict(fresh, tmp_path / "rolling_forcing_dmd.pt", key=params["key"],
                        strip_prefix=params["strip_prefix"], drop_key_parts=params["drop_key_parts"])
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), dit.state_dict().values()))
    with pytest.raises(ValueError, match="missing keys"):  # without the mapping the layout does not load
        load_wan_state_dict(fresh, tmp_path / "rolling_forcing_dmd.pt", key="generator_ema", strip_prefix="model.")


@pytest.mark.parametrize("model, names", [
    ("deep_forcing", ["self_forcing_dmd.pt", "gdhe17/Self-Forcing"]),
    ("rolling_forcing", ["rolling_forcing_dmd.pt", "TencentARC/RollingForcing"]),
])
def test_missing_checkpoints_exit_2_naming_the_file_and_the_hub(tmp_path, model, names):
    env = {**__import__("os").environ, "NARRASTREAM_WEIGHTS": str(tmp_path / "weights"), "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-m", "narrastream.run", f"model={model}", "data.limit=1",
                           f"run.dir={tmp_path / 'run'}", "stage=generate"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    for name in names:
        assert name in proc.stderr, proc.stderr[-3000:]


# ----- end to end ------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("model, overrides", [
    # the tiny preset's 12 latent frames never fill the released 21-frame cache: a smaller one makes the
    # compression and the sink's move run end to end
    ("deep_forcing", ["model.params.cache.local_attn_size=6", "model.params.cache.sink_size=2",
                      "model.params.cache.budget=4", "model.params.cache.recent=2"]),
    ("rolling_forcing", ["model.params.cache.local_attn_size=7", "model.params.cache.cache_frames=8"]),
])
def test_tiny_runs_write_videos_sidecars_and_leaderboard_rows(tmp_path, model, overrides):
    pytest.importorskip("diffusers")
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "narrastream.run", f"model={model}", "preset=tiny", "data.limit=1",
                           f"run.dir={run_dir}", "video.segmentation=native",
                           "protocol.run_metrics=[subject_consistency,boundary_smoothness]", *overrides],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sidecar = json.loads((run_dir / "videos" / model / "0-s0.json").read_text())
    assert sidecar["num_frames"] == 1 + 4 * (12 - 1) and sidecar["switch_frames"] == [5, 13, 21, 29, 37]
    assert sidecar["extra"]["method"] == model and (run_dir / "videos" / model / "0-s0.mp4").is_file()
    for key in ("end_to_end", "loop", "core_dit", "method_overhead", "memory", "output_decode"):
        assert key in sidecar["timings"]
    assert sidecar["timings"]["core_dit"] > 0
    if model == "deep_forcing":
        assert sidecar["extra"]["deep_sink"]["overflows"] > 0
    else:
        assert sidecar["extra"]["rolling"]["windows"] == 12 + 4
    board = [line.split(",") for line in (run_dir / "leaderboard.csv").read_text().splitlines()]
    row = dict(zip(board[0], board[1]))
    assert row["model"] == model and row["source"] == "run" and row["config_id"]
