"""The streaming pipeline and its adapter on tiny seeded components: frame and switch arithmetic,
determinism, each transition and memory policy, checkpoint loading from files, and missing weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from narrastream.config import compose_config
from narrastream.streaming.kv_cache import CachePolicy
from narrastream.streaming.memory import NarrativeMemory, StreamState, build_memory, text_relevance
from narrastream.streaming.pipeline import StreamingSpec, StreamingWanPipeline
from narrastream.streaming.tiny import build_tiny

pytest.importorskip("diffusers")
PROMPTS = [f"Step {k}: in the cafe corner table, Noah works." for k in range(3)]
GEOMETRY = dict(seconds_per_segment=2, fps=4, height=48, width=64)  # 2 latent frames per prompt


@pytest.fixture(scope="module")
def parts():
    return build_tiny(seed=0)


def run(parts, spec: StreamingSpec, seed: int = 0, prompts=PROMPTS, agent=None):
    dit, text_encoder, decoder = parts
    return StreamingWanPipeline(dit, text_encoder, decoder, spec, memory_agent=agent).generate(
        prompts, seed=seed, **GEOMETRY)


def spec(**kw) -> StreamingSpec:
    kw.setdefault("cache", CachePolicy.sink(6, 2, sma=False))
    return StreamingSpec(block_frames=1, **kw)


def test_frames_switches_and_determinism(parts):
    first = run(parts, spec(transition="hard"))
    assert first.frames.shape == (1 + 4 * (6 - 1), 48, 64, 3) and first.frames.dtype == np.uint8
    assert first.plan.switches == (2, 4) and first.plan.pixel_starts == (0, 5, 13)
    again = run(parts, spec(transition="hard"))
    assert np.array_equal(first.frames, again.frames)  # seeded noise: bit-identical
    assert not np.array_equal(first.frames, run(parts, spec(transition="hard"), seed=1).frames)
    assert first.details["dit_forwards"] == 6 * 5  # 4 denoise + 1 context per block
    t = first.timings
    assert t["end_to_end"] >= t["loop"] + t["output_decode"] - 1e-6 and t["core_dit"] > 0


def test_each_transition_policy_changes_the_video_after_the_first_switch(parts):
    videos = {name: run(parts, spec(transition=name)).frames for name in ("hard", "soft", "kv_recache")}
    start = 5  # pixel frame where prompt 1 starts: everything before is the same first prompt
    for a in videos.values():
        assert np.array_equal(a[:start], videos["hard"][:start])
    assert not np.array_equal(videos["soft"], videos["hard"]) and not np.array_equal(videos["kv_recache"], videos["hard"])


def test_soft_transition_records_the_prompt_distance(parts):
    result = run(parts, spec(transition="soft"))
    assert len(result.details["prompt_distances"]) == 2 and all(0 <= d <= 2 for d in result.details["prompt_distances"])


def test_kv_recache_rewinds_the_local_window_only(parts):
    dit = parts[0]
    cache = dit.new_cache(1, 6, 8, CachePolicy.sink(6, 2, sma=False))
    x = torch.randn(1, dit.cfg.in_dim, 1, 6, 8)
    ctx = torch.randn(1, 4, dit.cfg.text_dim)
    with torch.inference_mode():
        for f in range(5):
            dit(x, 0.0, ctx, start_frame=f, cache=cache, commit=True)
    kv = cache.self_attn
    assert kv.stored_frames() == [0, 1, 2, 3, 4] and kv.local_frames() == [2, 3, 4]
    kv.rewind(3)
    assert kv.stored_frames() == [0, 1, 2] and kv.end_frame == 3
    with pytest.raises(ValueError, match="cannot rewind"):
        kv.rewind(1)  # the sink is protected


def test_narrative_memory_keeps_the_most_text_relevant_frames():
    text = torch.ones(1, 2, 1, 4)
    frames = torch.stack([torch.full((1, 3, 1, 4), v) for v in (0.5, -1.0, 2.0)])
    assert text_relevance(text, frames).tolist() == pytest.approx([1.0, -2.0, 4.0])


@pytest.mark.parametrize("compress, lengths", [
    ("per_frame", [1, 1, 2, 2, 2, 2]),  # written when recorded, capped at 2 frames
    ("every_forward", [0, 1, 1, 2, 2, 2]),  # the release: staged, written before the next block's first forward
])
def test_narrative_memory_fills_the_bank(parts, compress, lengths):
    seen = []

    class Spy(NarrativeMemory):
        def after_commit(self, block_index, start_frame, num_frames, state):
            super().after_commit(block_index, start_frame, num_frames, state)
            seen.append(state.bank.length)

    import narrastream.streaming.pipeline as pipeline_module

    original = pipeline_module.build_memory
    pipeline_module.build_memory = lambda policy, **kw: Spy(bank_size=2, record_interval=2, compress=compress)
    try:
        result = run(parts, spec(transition="kv_recache", memory="narrative", bank_size=2, record_interval=2,
                                 memory_compress=compress))
    finally:
        pipeline_module.build_memory = original
    assert seen == lengths  # a candidate every 2 blocks (blocks 0, 2, 4)
    # per_frame compresses once, when the 3rd frame is recorded; every_forward before block 5's first forward
    assert result.details["memory"] == {"compress": compress, "recorded_frames": 3, "compressions": 1}


def test_release_bank_compression_repeats_the_latest_frame_and_scores_zero_keys_after_a_switch():
    """every_forward: once over budget, each refresh keeps the top (bank - 1) frames in topk order and appends
    the latest recorded frame again; with no text keys (after a switch) every score is 0."""
    from types import SimpleNamespace

    from narrastream.streaming.kv_cache import CrossAttentionCache

    frame = {f: torch.full((1, 1, 2, 1, 4), float(f)) for f in range(4)}  # [L, B, N, H, D], value = frame id

    class Committed:
        def export_frames(self, frames):
            return frame[frames[0]], -frame[frames[0]]

    class Bank:
        def write(self, k, v):
            self.ids = [int(x) for x in k[0, 0, ::2, 0, 0].tolist()]

    cross = CrossAttentionCache()
    cross.set(torch.zeros(1), [torch.ones(1, 3, 1, 4)], [torch.ones(1, 3, 1, 4)])  # favours larger frame ids
    state = SimpleNamespace(cache=SimpleNamespace(self_attn=Committed(), cross_attn=cross), bank=Bank())
    memory = NarrativeMemory(bank_size=3, record_interval=1, compress="every_forward")
    for block in range(3):
        memory.after_commit(block, block, 1, state)
        memory.refresh_bank(state)
        memory.refresh_bank(state)  # a later block: the same slot again
    assert state.bank.ids == [0, 1, 2] and memory.compressions == 0
    memory.after_commit(3, 3, 1, state)
    memory.refresh_bank(state)
    assert state.bank.ids == [2, 1, 3]  # top 2 in topk order, then the new frame
    memory.refresh_bank(state)
    assert state.bank.ids == [3, 2, 3]  # the latest frame is appended again
    cross.reset()  # a switch: no text keys, every score 0, torch.topk's tie order decides
    memory.refresh_bank(state)
    ties = torch.zeros(1, 3).topk(2, dim=1).indices[0].tolist()
    assert state.bank.ids == [[3, 2, 3][i] for i in ties] + [3] and memory.compressions == 3


def test_identity_memory_is_a_hook_that_needs_an_agent(parts):
    with pytest.raises(ValueError, match="needs an identity-aware memory agent"):
        build_memory("identity")
    calls = []

    class Agent:
        def on_prompt_start(self, state: StreamState):
            calls.append(("prompt", state.prompt_index))

        def after_commit(self, block_index, start_frame, num_frames, state):
            calls.append(("block", block_index))

    run(parts, spec(memory="identity", bank_size=2), agent=Agent())
    assert [c for c in calls if c[0] == "prompt"] == [("prompt", 0), ("prompt", 1), ("prompt", 2)]
    assert [c[1] for c in calls if c[0] == "block"] == list(range(6))


@pytest.mark.parametrize("model, cache, transition, memory", [
    ("self_forcing", "rolling", "hard", "none"),
    ("longlive", "sink", "kv_recache", "none"),
    ("memflow", "sink", "kv_recache", "narrative"),
    ("iamflow_backbone", "sink", "soft", "none"),
])
def test_model_configs_name_their_policies_and_checkpoints(model, cache, transition, memory):
    params = compose_config([f"model={model}"])["model"]["params"]
    parsed = StreamingSpec.from_config(params)
    assert (parsed.cache.kind, parsed.transition, parsed.memory) == (cache, transition, memory)
    assert parsed.block_frames == 3 and params["size"] == "full"
    assert params["weights"]["dit"]["hub_repo"] and params["weights"]["wan"]["hub_repo"]
    tiny = compose_config([f"model={model}", "preset=tiny"])["model"]["params"]
    assert tiny["size"] == "tiny" and tiny["block_frames"] == 1
    assert (parsed.cache.sma, parsed.spt.adaptive) == ((model == "iamflow_backbone"), True)


def _save_diffusers_wan(folder: Path, parts) -> None:
    _, text_encoder, decoder = parts
    text_encoder.model.save_pretrained(folder / "text_encoder")
    text_encoder.tokenizer.save_pretrained(folder / "tokenizer")
    decoder.vae.save_pretrained(folder / "vae")


def test_adapter_loads_checkpoint_files_in_the_original_layouts(parts, tmp_path):
    """The full-size loading code on tiny files: a Wan-layout DiT (.safetensors), a Diffusers folder,
    then the same DiT exported as an IAMFlow FP8 checkpoint."""
    from safetensors.torch import save_file

    from narrastream.adapters.streaming_wan import StreamingWanGenerator
    from narrastream.streaming.fp8 import quantize_model, save_fp8_checkpoint
    from narrastream.streaming.tiny import tiny_dit_config

    dit = parts[0]
    save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, str(tmp_path / "dit.safetensors"))
    _save_diffusers_wan(tmp_path / "wan", parts)
    arch = {k: getattr(tiny_dit_config(), k) for k in ("dim", "num_layers", "num_heads", "ffn_dim", "freq_dim",
                                                         "text_dim", "text_len", "in_dim", "out_dim")}
    params = compose_config(["model=longlive"])["model"]["params"]
    params.update(block_frames=1, dtype="float32", device="cpu", architecture=arch)
    params["weights"] = {"dit": {"path": str(tmp_path / "dit.safetensors"), "filename": "dit.safetensors"},
                         "wan": {"path": str(tmp_path / "wan")}}
    generator = StreamingWanGenerator(**params)
    generator.prepare([])
    loaded = generator.pipeline.dit
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), dit.state_dict().values()))
    assert generator.loaded["fp8"] is False

    import copy

    fp8 = copy.deepcopy(dit)
    quantize_model(fp8)
    save_fp8_checkpoint(fp8, tmp_path / "dit_fp8.safetensors")
    params["weights"]["dit"] = {"path": str(tmp_path / "dit_fp8.safetensors"), "filename": "dit_fp8.safetensors"}
    generator = StreamingWanGenerator(**params)
    generator.prepare([])
    assert generator.loaded["fp8"] is True
    assert type(generator.pipeline.dit.blocks[0].self_attn.q).__name__ == "FP8Linear"


def test_adapter_missing_weights_name_the_file_and_the_config_key(tmp_path, monkeypatch):
    from narrastream.adapters.streaming_wan import StreamingWanGenerator
    from narrastream.metrics.backbones import WeightsNotFoundError

    monkeypatch.setenv("NARRASTREAM_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    params = compose_config(["model=memflow"])["model"]["params"]
    with pytest.raises(WeightsNotFoundError) as info:
        StreamingWanGenerator(**params).prepare([])
    message = str(info.value)
    assert "memflow_base.pt" in message and "model.params.weights.dit.path" in message
    assert str(tmp_path) in message and "KlingTeam/MemFlow" in message


def test_sidecar_facts_from_the_adapter(tmp_path):
    from narrastream.adapters.base import GenerationRequest
    from narrastream.adapters.streaming_wan import StreamingWanGenerator
    from narrastream.data.script import Script

    params = compose_config(["model=iamflow_backbone", "preset=tiny"])["model"]["params"]
    generator = StreamingWanGenerator(**params)
    script = Script(id=0, prompts=tuple(PROMPTS))
    video = generator.generate(GenerationRequest(script=script, seed=0, output_path=tmp_path / "v.mp4",
                                                 **{k: v for k, v in GEOMETRY.items()}))
    assert video.switch_frames == [5, 13] and video.num_frames == 21 and (tmp_path / "v.mp4").is_file()
    assert video.extra["policies"]["transition"] == "soft" and video.extra["weights"]["fp8"] is True
    for key in ("end_to_end", "loop", "core_dit", "method_overhead", "output_decode"):
        assert key in video.timings
    json.dumps(video.extra)  # the sidecar must serialise


# ----- LongLive's KV re-cache: the release's one forward (default) and ours block by block ----------------
RECACHE_POLICY = CachePolicy.sink(12, 3, sma=False)  # the released LongLive cache: sink 3, 12 frames


def _committed_stream(dit, frames: int, context: torch.Tensor, block: int = 3):
    """A cache holding ``frames`` seeded clean latent frames committed block by block under ``context``."""
    latents = torch.randn(1, dit.cfg.in_dim, frames, 4, 4, generator=torch.Generator().manual_seed(3))
    cache = dit.new_cache(1, 4, 4, RECACHE_POLICY)
    with torch.inference_mode():
        for start in range(0, frames, block):
            dit(latents[:, :, start:start + block], 0.0, context, start_frame=start, cache=cache, commit=True)
    return cache, latents


def _recache(parts, cache, latents, context, start: int, mode: str) -> None:
    dit = parts[0]
    pipeline = StreamingWanPipeline(dit, None, None, StreamingSpec(cache=RECACHE_POLICY, transition="kv_recache",
                                                                   recache=mode, block_frames=3))
    cache.cross_attn.reset()
    with torch.inference_mode():
        pipeline._recache(cache, None, latents, context, start)


def _contexts(dit):
    g = torch.Generator().manual_seed(4)
    return torch.randn(1, 5, dit.cfg.text_dim, generator=g), torch.randn(1, 5, dit.cfg.text_dim, generator=g)


def test_release_recache_ranges():
    """The frames NVlabs/LongLive's switch re-runs (the last min(12, start)) and those whose K/V it writes:
    its sink protection is on only when that range does not start at frame 0."""
    from narrastream.streaming.transition import KvRecachePolicy

    policy = KvRecachePolicy(max_frames=12)
    assert [policy.rewritten_range(s, 3) for s in (39, 15, 13, 12, 9, 2)] == [
        (30, 39), (6, 15), (4, 13), (0, 12), (0, 9), (0, 2)]
    assert policy.rewritten_range(39, 0) == (27, 39)  # no sink (rolling cache): the whole range
    assert KvRecachePolicy(max_frames=None).rewritten_range(39, 3) == (0, 39)  # global attention


def test_one_forward_recache_from_frame_zero_equals_a_bidirectional_recompute(parts):
    """While the stream fits in the window (switch at 9 <= 12 frames) the release rewrites every frame,
    the sink included, in one forward where all of them see each other: the cached K/V then equal those
    of a full (uncached) forward of the 9 frames under the new prompt with no mask."""
    dit = parts[0]
    old, new = _contexts(dit)
    cache, latents = _committed_stream(dit, 9, old)
    sink_before = cache.self_attn.k_sink.clone()
    _recache(parts, cache, latents, new, 9, "one_forward")
    assert cache.self_attn.stored_frames() == list(range(9)) and cache.self_attn.end_frame == 9
    got_k, got_v = cache.self_attn.export_frames(list(range(9)))

    recorded = []
    originals = [blk.self_attn.key_value for blk in dit.blocks]

    def recording(original):
        def key_value(h):
            k, v = original(h)
            recorded.append((dit.rope.apply(k, 0, (9, 2, 2)), v))
            return k, v
        return key_value

    try:
        for blk, original in zip(dit.blocks, originals):
            blk.self_attn.key_value = recording(original)
        with torch.inference_mode():
            dit.forward_full(latents, 0.0, new, block_frames=9, policy=CachePolicy.rolling(9))
    finally:
        for blk in dit.blocks:
            del blk.self_attn.key_value
    want_k = torch.stack([k for k, _ in recorded])
    want_v = torch.stack([v for _, v in recorded])
    # the same arithmetic through two attention paths (cache concat vs masked full SDPA): float32 rounding
    torch.testing.assert_close(got_k, want_k, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_v, want_v, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(cache.self_attn.k_sink, sink_before, atol=1e-4)  # the sink was re-encoded

    per_block, _ = _committed_stream(dit, 9, old)
    _recache(parts, per_block, latents, new, 9, "per_block")
    assert torch.equal(per_block.self_attn.k_sink, sink_before)  # ours keeps the sink (never written)


def test_one_forward_recache_keeps_the_sink_and_lets_the_window_see_itself(parts):
    """Past the window (switch at 18 > 12) the release rewrites the 9 local frames [9, 18), the sink
    protected, and each of them sees all the others: a later frame's latent changes an earlier frame's
    re-cached K/V. Block by block (ours), frame 9 only sees its own block and the sink."""
    import copy

    dit = parts[0]
    old, new = _contexts(dit)
    cache, latents = _committed_stream(dit, 18, old)
    kv = cache.self_attn
    assert kv.stored_frames() == [0, 1, 2, *range(9, 18)]
    later = latents.clone()
    later[:, :, 17] += 1.0  # the last frame of the window
    k9 = {}
    for mode in ("one_forward", "per_block"):
        for name, source in (("same", latents), ("later", later)):
            c = copy.deepcopy(cache)
            _recache(parts, c, source, new, 18, mode)
            assert c.self_attn.stored_frames() == kv.stored_frames() and c.self_attn.end_frame == 18
            assert torch.equal(c.self_attn.k_sink, kv.k_sink) and torch.equal(c.self_attn.v_sink, kv.v_sink)
            assert not torch.allclose(c.self_attn.k_ring, kv.k_ring, atol=1e-4)  # the window was rewritten
            k9[mode, name] = c.self_attn.frame_kv(dit.cfg.num_layers - 1, 9)[0].clone()
    assert not torch.allclose(k9["one_forward", "same"], k9["one_forward", "later"], atol=1e-6)
    # block by block, frame 9's computation never reads frame 17: the same operations on the same inputs
    assert torch.equal(k9["per_block", "same"], k9["per_block", "later"])
    assert not torch.allclose(k9["one_forward", "same"], k9["per_block", "same"], atol=1e-6)


def test_recache_modes_in_the_pipeline_and_the_configs(parts):
    one = run(parts, spec(transition="kv_recache"))
    per_block = run(parts, spec(transition="kv_recache", recache="per_block"))
    assert one.details["recache"] == "one_forward" and per_block.details["recache"] == "per_block"
    start = 5  # pixel frame where prompt 1 starts: before it both runs do the same operations
    assert np.array_equal(one.frames[:start], per_block.frames[:start])
    assert not np.array_equal(one.frames, per_block.frames)
    assert "recache" not in run(parts, spec(transition="hard")).details
    for model in ("longlive", "memflow"):
        params = compose_config([f"model={model}"])["model"]["params"]
        assert StreamingSpec.from_config(params).recache == "one_forward"  # the release by default
    params["transition"]["recache"] = "per_block"
    assert StreamingSpec.from_config(params).recache == "per_block"
    with pytest.raises(ValueError, match="transition.recache='both'"):
        StreamingSpec(transition="kv_recache", recache="both")


def test_model_configs_run_activations_in_the_weights_dtype():
    """bf16 residuals by default, as the released causal models (no autocast); float32 on request."""
    from narrastream.streaming.wan_model import WanConfig

    for model in ("self_forcing", "longlive", "memflow", "iamflow_backbone", "iamflow"):
        params = compose_config([f"model={model}"])["model"]["params"]
        assert params["dtype"] == "bfloat16" and params["architecture"] == {"residual_dtype": None}
    assert WanConfig(residual_dtype="float32").residual_dtype == "float32"
    with pytest.raises(ValueError, match="residual_dtype='bfloat16'"):
        WanConfig(residual_dtype="bfloat16")
