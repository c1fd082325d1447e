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


def test_narrative_memory_fills_the_bank(parts):
    seen = []

    class Spy(NarrativeMemory):
        def after_commit(self, block_index, start_frame, num_frames, state):
            super().after_commit(block_index, start_frame, num_frames, state)
            seen.append(state.bank.length)

    import narrastream.streaming.pipeline as pipeline_module

    original = pipeline_module.build_memory
    pipeline_module.build_memory = lambda policy, **kw: Spy(bank_size=2, record_interval=2)
    try:
        run(parts, spec(transition="kv_recache", memory="narrative", bank_size=2, record_interval=2))
    finally:
        pipeline_module.build_memory = original
    assert seen == [1, 1, 2, 2, 2, 2]  # a candidate every 2 blocks, capped at 2 frames


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
