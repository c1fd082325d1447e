"""Deep Forcing's and Rolling Forcing's policies against the authors' code, on the same seeded DiT and inputs.

Fixtures (tools/equivalence/make_fixtures.py; docs/equivalence.md gives commits, streams and shims):

* ``deep_forcing``: cvlab-kaist/DeepForcing @ ea9961a, their ``CausalInferencePipeline.inference`` with the
  model their wrapper builds for ``DS_PC_inference.sh`` (``self_forcing_dmd_sink10.yaml``: 21 frames, sink 10;
  Budget 16, Recent 4, top-C reuse limit 7): 22 blocks, 8 Participative Compressions (at frames 21, 27, ...,
  63), the deep sink re-placed in RoPE time at each, a hard switch at 33 routed as the
  ``deep_forcing-official`` runner does. Against ``model=deep_forcing``. Besides the latents, the tokens each
  compression keeps (per layer, their ``_mkv_select_indices``) and the final choice counts are compared
  exactly: both are integers, and a different choice moves the latents by far more than rounding.
* ``deep_forcing_ds``: their Deep-Sink-only model (``causal_model_DS.py``, ``--is_ds_only 1`` with
  ``self_forcing_dmd_sink14.yaml``): 10 blocks, overflows evicting from frame 21, a hard switch at 15; against
  ``model=deep_forcing`` with ``cache.compression: none``, ``cache.sink_size: 14``.
* ``rolling_forcing``: TencentARC/RollingForcing @ a1477d0, ``inference_rolling_forcing`` with their
  ``causal_model.py`` (anchor = first block, working cache, 21 frames attended, 24-frame buffer): 12 blocks in
  16 windows of up to 5 blocks at 5 noise levels, evictions from block 8's commit on, 3 prompts switching at
  12 and 24 (a window takes its newest block's prompt, as the ``rolling_forcing-official`` runner routes them).
  Against ``model=rolling_forcing`` (``schedule.window_prompt: newest``).

Tolerance: as test_equivalence_streaming_methods.py (float32 on both sides; atol 1e-4 + rtol 1e-4 on O(1)
latents). Measured: docs/equivalence.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from equivalence_support import Fixture, assert_close
from equivalence_streaming_support import load_ours, model_params, run_pipeline
from narrastream.streaming import deep_sink as deep_sink_module

ATOL, RTOL = 1e-4, 1e-4


def _deep_forcing_params(cfg: dict[str, Any]) -> dict[str, Any]:
    params = model_params("deep_forcing")
    assert params["cache"] == {"policy": "deep_sink", "local_attn_size": 21, "sink_size": 10,
                               "compression": "participative", "budget": 16, "recent": 4, "max_reuse": 7}
    assert params["transition"] == {"policy": "hard"} and params["denoising_steps"] == cfg["denoising_steps"]
    if cfg["compression"] == "none":  # the release's Deep Sink only, which it runs with sink 14
        params["cache"] = dict(params["cache"], compression="none", sink_size=cfg["sink_size"])
    else:
        assert {k: params["cache"][k] for k in ("local_attn_size", "sink_size", "budget", "recent", "max_reuse")} == {
            k: cfg[k] for k in ("local_attn_size", "sink_size", "budget", "recent", "max_reuse")}
    return params


@torch.no_grad()
def test_deep_forcing_sink_compression_and_hard_switch(tmp_path, monkeypatch):
    fixture = Fixture("deep_forcing")
    cfg = fixture.config
    keeps: list[np.ndarray] = []
    keep = deep_sink_module.participative_keep

    def recording_keep(*args: Any, **kwargs: Any):
        kept, chosen = keep(*args, **kwargs)
        keeps.append(kept.numpy().copy())
        return kept, chosen

    monkeypatch.setattr(deep_sink_module, "participative_keep", recording_keep)
    run = run_pipeline(fixture, load_ours(fixture, tmp_path, "deep_forcing"), _deep_forcing_params(cfg), monkeypatch)
    # the same tokens kept at every compression of every layer (their indices into cache + new block)
    theirs = fixture.outputs["keep_indices"]
    assert fixture.meta["compressions_per_layer"] == 8 and len(keeps) == len(theirs) == 16
    for n, (ours_keep, row) in enumerate(zip(keeps, theirs)):
        want = row[row >= 0].astype(np.int64)
        same = np.array_equal(ours_keep, want)
        assert same, (f"compression {n // 2}, layer {n % 2}: ours keeps {sorted(set(ours_keep) - set(want))[:8]}, "
                      f"theirs {sorted(set(want) - set(ours_keep))[:8]} instead")
    kv = run.cache.self_attn
    assert kv.compressions == 8 and kv.lengths == fixture.meta["cached_tokens"]
    assert kv.sink_start == fixture.meta["sink_time_start"] == [47, 47]
    counts = np.stack([kv.counts[layer, :n].numpy() for layer, n in enumerate(kv.lengths)])
    assert fixture.meta["max_topc_count"] == 7  # the reuse limit was reached, so it acted in later choices
    assert np.array_equal(counts, fixture.outputs["final_topc_counts"].astype(np.int64))
    assert_close("deep_forcing latents", run.latents, fixture.outputs["latents"], atol=ATOL, rtol=RTOL)


@torch.no_grad()
def test_deep_sink_only(tmp_path, monkeypatch):
    fixture = Fixture("deep_forcing_ds")
    cfg = fixture.config
    run = run_pipeline(fixture, load_ours(fixture, tmp_path, "deep_forcing"), _deep_forcing_params(cfg), monkeypatch)
    kv = run.cache.self_attn
    assert kv.compressions == 3 and kv.sink_start == fixture.meta["sink_time_start"] == [6, 6]
    assert kv.lengths == fixture.meta["cached_tokens"] == [21 * 6, 21 * 6]  # full: sink 14 + the last 7 frames
    assert_close("deep_forcing_ds latents", run.latents, fixture.outputs["latents"], atol=ATOL, rtol=RTOL)


@torch.no_grad()
def test_rolling_forcing_windows_anchor_and_switches(tmp_path, monkeypatch):
    fixture = Fixture("rolling_forcing")
    cfg = fixture.config
    params = model_params("rolling_forcing")
    assert params["cache"] == {"policy": "rolling_anchor", "local_attn_size": cfg["local_attn_size"],
                               "cache_frames": cfg["cache_frames"]}
    assert params["schedule"] == {"policy": "rolling_window", "window_prompt": cfg["window_prompt"]}
    assert params["denoising_steps"] == cfg["denoising_steps"] and params["transition"] == {"policy": "hard"}
    run = run_pipeline(fixture, load_ours(fixture, tmp_path, "rolling_forcing"), params, monkeypatch)
    # their loop: a forward per window, then a context pass (updating_cache) of the window's oldest block,
    # also for the first 4 windows, whose oldest block is not yet clean; ours commits each block once, when clean
    theirs = [(start, frames) for start, frames, commit in fixture.meta["forwards"] if not commit]
    ours = [(start, frames) for start, frames, commit in run.forwards if not commit]
    assert ours == theirs
    committed = [start for start, _, commit in fixture.meta["forwards"] if commit]
    assert [start for start, _, commit in run.forwards if commit] == sorted(set(committed))
    assert run.details["rolling"]["mixed_latent_ranges"] == [[0, 12], [12, 24]]
    assert_close("rolling_forcing latents", run.latents, fixture.outputs["latents"], atol=ATOL, rtol=RTOL)
