"""The streaming methods' block loops against the authors' pipelines, on the same seeded DiT and inputs.

Fixtures (tools/equivalence/make_fixtures.py; docs/equivalence.md gives commits, streams and shims):

* ``self_forcing``: Self-Forcing @ 33593df, ``CausalInferencePipeline.inference`` with a 12-frame rolling
  window (no sink), 7 blocks (the first eviction at block 4), 2 prompts with a hard switch at frame 9 routed
  into their loop as the ``self_forcing-official`` runner does; against ``model=self_forcing``.
* ``longlive``: LongLive @ e52d9ef, ``InteractiveCausalInferencePipeline.inference``: sink 3 + window of 12,
  10 blocks, switches at 9 (re-cache from frame 0, the sink rewritten) and 18 (sink kept, frames 9..17
  rewritten), ``global_sink``; against ``model=longlive`` (``transition.recache: one_forward``);
  ``longlive_lora``: the same with their LoRA (rank 256) on the generator, against our merged adapter.
* ``iamflow_spt`` / ``iamflow_hard``: IAMFlow @ 7dda1d3's backbone loop (no agents), soft (adaptive SPT) and
  hard (``no_transition``) switches; against ``model=iamflow_backbone``.

Our side runs :class:`StreamingWanPipeline.generate` with the method's own ``eval_configs/model`` params, its
DiT loaded by :func:`load_wan_state_dict` from a file laid out as the method's released checkpoint, the
fixture's text features and noise (drawn in the same order; docs/equivalence.md, "noise").

Tolerance: float32 on both sides. Every block's latents go through 4 DiT passes and 3 re-noisings and feed
the next blocks through the cache, so per-pass rounding (~1e-6) accumulates; the warped timestep 833.33 is
float32 in their loop and float64 in ours (the time embedding's phases differ by 2e-5). atol 1e-4 + rtol 1e-4
on O(1) latents leaves a margin of ~10x over what was measured (docs/equivalence.md); a wrong cache rule
(eviction, window, sink, switch) moves latents by O(1e-3 - 1e-1).
"""

from __future__ import annotations

import pytest
import torch

from equivalence_support import Fixture, assert_close
from equivalence_streaming_support import load_ours, model_params, run_pipeline

ATOL, RTOL = 1e-4, 1e-4


@torch.no_grad()
def test_self_forcing_rolling_cache_and_hard_switch(tmp_path, monkeypatch):
    fixture = Fixture("self_forcing")
    params = model_params("self_forcing")
    assert params["cache"] == {"policy": "rolling", "local_attn_size": fixture.config["local_attn_size"], "sma": False}
    assert params["transition"]["policy"] == "hard"
    run = run_pipeline(fixture, load_ours(fixture, tmp_path, "self_forcing"), params, monkeypatch)
    assert_close("self_forcing latents", run.latents, fixture.outputs["latents"], atol=ATOL, rtol=RTOL)
    kv = run.cache.self_attn
    assert kv.stored_frames() == list(range(fixture.config["frames"] - 12, fixture.config["frames"]))
    k, v = kv.export_frames(kv.stored_frames())
    assert_close("final cache K", k, fixture.outputs["final_cache_k"], atol=ATOL, rtol=RTOL)
    assert_close("final cache V", v, fixture.outputs["final_cache_v"], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", ["longlive", "longlive_lora"])
@torch.no_grad()
def test_longlive_sink_window_and_kv_recache(name, tmp_path, monkeypatch):
    """``longlive_lora``: the same stream with their rank-256 LoRA on every linear of the blocks, applied by
    their ``configure_lora_for_model`` + ``peft.set_peft_model_state_dict``; ours merges the adapter file."""
    fixture = Fixture(name)
    cfg = fixture.config
    params = model_params("longlive")
    assert params["cache"] == {"policy": "sink", "local_attn_size": cfg["local_attn_size"], "sink_size": cfg["sink_size"],
                               "sma": False}
    assert params["transition"] == {"policy": "kv_recache", "recache": "one_forward"} and cfg["global_sink"]
    run = run_pipeline(fixture, load_ours(fixture, tmp_path, "longlive"), params, monkeypatch)
    assert_close(f"{name} latents", run.latents, fixture.outputs["latents"], atol=ATOL, rtol=RTOL)
    assert sorted(run.recached) == cfg["switches"]
    for switch, (k, v) in run.recached.items():
        # the whole cache right after the re-cache: sink then window, as their buffer holds it
        assert_close(f"K after the re-cache at {switch}", k, fixture.outputs[f"recache{switch}/k"], atol=ATOL, rtol=RTOL)
        assert_close(f"V after the re-cache at {switch}", v, fixture.outputs[f"recache{switch}/v"], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", ["iamflow_spt", "iamflow_hard"])
@torch.no_grad()
def test_iamflow_backbone_soft_and_hard_switch(name, tmp_path, monkeypatch):
    """IAMFlow @ 7dda1d3, its backbone loop without agents (``InteractiveCausalInferencePipeline``): sink 3 +
    window of 12 with SMA on (no bank: nothing to route), 15 blocks, switches at 15 and 30; ``iamflow_spt``:
    the adaptive cosine soft prompt transition of configs/iamflow.yaml (windows 6 then 15 frames: the first
    ramp completes, the second is still running at the end); ``iamflow_hard``: their ``no_transition`` (the KV
    cache kept, the new prompt's cross-attention K/V computed). Against ``model=iamflow_backbone`` (and its
    ``transition.policy: hard``)."""
    fixture = Fixture(name)
    cfg = fixture.config
    params = model_params("iamflow_backbone")
    assert params["cache"] == {"policy": "sink", "local_attn_size": cfg["local_attn_size"], "sink_size": cfg["sink_size"],
                               "sma": cfg["sma"]}
    if cfg["transition"] == "soft":
        spt = cfg["spt"]
        assert params["transition"] == {"policy": "soft", "curve": spt["base_scheduler"], "adaptive": True,
                                        "min_window": spt["min_window"], "max_window": spt["max_window"],
                                        "delay_frames": spt["delay_frames"]}
    else:
        params["transition"] = {"policy": "hard"}
    run = run_pipeline(fixture, load_ours(fixture, tmp_path, "iamflow_backbone"), params, monkeypatch)
    assert_close(f"{name} latents", run.latents, fixture.outputs["latents"], atol=ATOL, rtol=RTOL)
    if cfg["transition"] == "soft":
        # the prompts' distances (float32 means on both sides), then the same alpha for every block
        assert run.details["prompt_distances"] == pytest.approx(fixture.meta["prompt_distances"], rel=1e-5)
        assert fixture.meta["spt_windows"] == [6, 15]
        assert run.block_alphas() == pytest.approx(fixture.meta["block_alphas"], abs=1e-12)
    else:
        assert all(alpha is None for _, _, alpha in run.calls)
