"""Batching and precision of the backbones (narrastream/metrics/backbones/execution.py).

Batching changes which operations run together, never the formula: results of different batch sizes agree within
stated tolerances (never bit for bit: batched convolutions round differently); the same batch size twice is bit-equal.

Tolerances: RAFT flow 1e-3 px absolute (tiny network, 64x48 frames); flicker pair errors and scores 1e-5; AMT
per-frame errors 0.05 gray levels (a prediction on the edge of an integer may truncate one level differently);
embeddings 1e-5.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from narrastream.data.script import Script
from narrastream.metrics import MetricContext, build_metric
from narrastream.metrics.backbones import BackboneProvider
from narrastream.metrics.backbones.execution import REFERENCE_PIXELS, Execution
from narrastream.metrics.functional.flicker import luma, pair_flicker_error, pair_flicker_errors
from narrastream.metrics.functional.motion import frame_abs_errors
from narrastream.video import SegmentedVideo, SegmentRule
from narrastream.video.device import IndexedFrames

H, W = 48, 64
FLICKER = {"backbone": "raft_things", "num_frames": 8, "raft_iters": 4, "fb_consistency_alpha": 0.01,
           "fb_consistency_beta": 0.5, "min_mask_ratio": 0.05, "pair_quantile": 0.9, "segment_quantile": 0.84,
           "tau": 0.5}


@pytest.fixture(scope="module")
def provider():
    return BackboneProvider({"source": "random", "size": "tiny", "device": "cpu"})


def smooth_frames(n: int, seed: int = 0) -> np.ndarray:
    """A moving, slowly changing pattern (not noise: flows and interpolations have something to find)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    phase = rng.random(3) * 6.28
    frames = [np.stack([127 + 100 * np.sin((x + 2 * t) / 7 + phase[c] + 0.1 * t) * np.cos((y - t) / 9) for c in range(3)],
                       axis=-1) for t in range(n)]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def video_of(frames: np.ndarray, segments: int = 3) -> SegmentedVideo:
    return SegmentedVideo.from_frames(frames, 4.0, segments, rule=SegmentRule(segment_seconds=len(frames) / segments / 4))


def context(provider) -> MetricContext:
    return MetricContext(script=Script(id=0, prompts=("a", "b", "c")), backbones=provider, segment_weights=[2, 1, 1])


# ---------------------------------------------------------------------------------------- Execution
def test_batch_size_scales_with_pixels_for_resolution_networks():
    raft = Execution(batch_size=8, per_pixels=True)
    assert raft.batch_for(480, 832) == 8
    assert raft.batch_for(48, 64) == 8 * REFERENCE_PIXELS // (48 * 64) == 1040  # a tiny video: all pairs at once
    assert raft.batch_for(960, 1664) == 2 and raft.batch_for(4000, 4000) == 1  # larger frames: fewer, at least 1
    assert raft.batch_for(48, 64, requested=3) == 3  # an explicit size wins
    assert Execution(batch_size=32).batch_for(48, 64) == 32  # fixed-size inputs (DINO, CLIP, VTSS, LanguageBind)
    with pytest.raises(ValueError, match="positive"):
        Execution(batch_size=0)
    with pytest.raises(ValueError, match="precision"):
        Execution(precision="fp8")


def test_out_of_memory_halves_the_batch_and_retries():
    execution = Execution(device=torch.device("cuda"), batch_size=8)  # map() only looks at the device type
    seen = []

    def step(start, stop):
        seen.append(stop - start)
        if stop - start > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return list(range(start, stop))

    out = execution.map(7, step, 8)
    assert [i for batch in out for i in batch] == list(range(7))  # every item once, in order
    assert seen == [7, 4, 2, 2, 2, 1] and execution.stats.oom_halvings == 2 and execution.stats.max_batch == 2
    with pytest.raises(torch.cuda.OutOfMemoryError):  # at batch size 1 it is raised
        execution.map(1, lambda a, b: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("x")), 1)
    cpu = Execution(batch_size=8)
    with pytest.raises(torch.cuda.OutOfMemoryError):  # never caught off CUDA
        cpu.map(4, lambda a, b: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("x")), 4)


def test_running_counts_calls_items_and_forwards(provider):
    raft = provider.get("raft_things")
    before = dict(vars(raft.execution.stats))
    frames = smooth_frames(5)
    raft.flow(frames[:-1], frames[1:], iters=2, batch_size=3)
    stats = raft.execution.stats
    assert stats.calls == before["calls"] + 1 and stats.items == before["items"] + 4
    assert stats.forwards == before["forwards"] + 2 and stats.seconds > before["seconds"]
    assert stats.peak_memory_bytes is None  # CPU: no CUDA peak
    runtime = provider.runtime()["raft_things"]
    assert runtime["batch_size"] == 8 and runtime["batch_size_per"] == "832x480 frame"
    assert runtime["precision"] == "fp32" and runtime["device"] == "cpu" and runtime["load_seconds"] > 0


def test_configured_batch_sizes_reach_the_wrappers():
    provider = BackboneProvider({"source": "random", "size": "tiny", "device": "cpu",
                                 "batch_size": {"raft_things": 2, "dino_vitb16": None}})
    assert provider.batch_size_of("raft_things") == 2 and provider.batch_size_of("dino_vitb16") == 32
    assert provider.get("raft_things").execution.batch_size == 2
    assert BackboneProvider({"device": "cuda"}).batch_size_of("amt_s") == 16  # the CUDA default


# ---------------------------------------------------------------------------------------- RAFT, flicker
def test_raft_flow_agrees_across_batch_sizes(provider):
    raft = provider.get("raft_things")
    frames = smooth_frames(7)
    a, b = frames[:-1], frames[1:]
    one = raft.flow(a, b, iters=4, batch_size=1)
    whole = raft.flow(a, b, iters=4)  # default: all 6 pairs of a 64x48 video in one forward
    assert torch.equal(whole, raft.flow(a, b, iters=4))  # the same shapes twice: bit-equal
    torch.testing.assert_close(one, whole, atol=1e-3, rtol=0)
    # frames gathered lazily (IndexedFrames, as on a GPU) give the same flow as stacked copies
    gathered = raft.flow(IndexedFrames(frames, range(6)), IndexedFrames(frames, range(1, 7)), iters=4)
    assert torch.equal(gathered, whole)


def test_pair_flicker_errors_batched_equal_one_pair_at_a_time():
    torch.manual_seed(0)
    n = 5
    ya, yb = torch.rand(n, 1, H, W) * 255, torch.rand(n, 1, H, W) * 255
    fw = torch.randn(n, 2, H, W) * 2
    bw = -fw + 0.3 * torch.randn(n, 2, H, W)
    bw[3] = torch.randn(2, H, W) * 30  # an inconsistent pair: the in-bounds fallback
    constants = {"alpha": 0.01, "beta": 0.5, "min_mask_ratio": 0.05, "quantile": 0.9}
    batched = pair_flicker_errors(ya, yb, fw, bw, **constants)
    single = [pair_flicker_error(ya[i], yb[i], fw[i], bw[i], **constants) for i in range(n)]
    assert [info["mask"] for _, info in batched] == [info["mask"] for _, info in single]
    assert "in_bounds" in [info["mask"] for _, info in batched]
    for (e1, i1), (e2, i2) in zip(batched, single):
        assert e1 == pytest.approx(e2, abs=1e-6)
        assert i1["consistency_ratio"] == pytest.approx(i2["consistency_ratio"], abs=1e-12)
        assert list(i1) == ["mask", "consistency_ratio", "in_bounds_ratio"]


def test_flicker_and_boundary_scores_do_not_depend_on_the_batch_size(provider):
    video = video_of(smooth_frames(24))
    for name, params in (("temporal_flickering", FLICKER),
                         ("boundary_smoothness", {"backbone": "raft_things", "raft_iters": 4, "window": 2,
                                                  "flow_tolerance_abs": 0.02, "flow_tolerance_rel": 0.5})):
        whole = build_metric(name, params).compute(video, context(provider))
        single = build_metric(name, {**params, "batch_size": 1}).compute(video, context(provider))
        assert whole.status == single.status and whole.score == pytest.approx(single.score, abs=1e-5)
        assert build_metric(name, params).identity() == build_metric(name, {**params, "batch_size": 1}).identity()


# ---------------------------------------------------------------------------------------- AMT
def test_amt_errors_on_the_device_path_equal_the_host_formula(provider):
    amt = provider.get("amt_s")
    frames = smooth_frames(9)
    a, b, t = frames[0:8:2], frames[2:9:2], frames[1:8:2]
    predicted = amt.interpolate(a, b, batch_size=2)
    # the same batches: the same predictions, and the integer sums give exactly the host formula
    assert amt.frame_errors(a, b, t, batch_size=2) == frame_abs_errors(t, predicted)
    one = amt.frame_errors(a, b, t, batch_size=1)
    whole = amt.frame_errors(a, b, t)
    assert whole == pytest.approx(one, abs=0.05)


def test_motion_smoothness_batched_across_segments_equals_per_segment(provider):
    video = video_of(smooth_frames(24))  # 3 segments of 8 frames: 3 interpolations each
    metric = build_metric("motion_smoothness", {"backbone": "amt_s", "tau": 3.0})
    result = metric.compute(video, context(provider))
    amt = provider.get("amt_s")
    for k, item in enumerate(result.items):
        segment = video.segment(k)
        own = frame_abs_errors(segment[1:6:2], amt.interpolate(segment[0:6:2], segment[2:7:2], batch_size=1))
        assert item["interpolations"] == 3 and item["frame_errors"] == pytest.approx(own, abs=0.05)
        assert item["raw_error"] == pytest.approx(float(np.mean(own)), abs=0.05)
    per_pair = build_metric("motion_smoothness", {"backbone": "amt_s", "tau": 3.0, "batch_size": 1})
    assert per_pair.compute(video, context(provider)).score == pytest.approx(result.score, abs=0.05 / 3)


# ---------------------------------------------------------------------------------------- fixed-size inputs
def test_embedders_agree_across_batch_sizes(provider):
    frames = smooth_frames(6)
    for name in ("dino_vitb16", "clip_vitb32"):
        embedder = provider.get(name)
        torch.testing.assert_close(embedder.embed(frames, batch_size=1), embedder.embed(frames), atol=1e-5, rtol=0)
    scorer = provider.get("vtss_koala")
    clips = np.random.default_rng(1).integers(0, 256, (3, 4, 56, 56, 3), dtype=np.uint8)
    torch.testing.assert_close(torch.stack(scorer.quality_maps(clips, batch_size=1)),
                               torch.stack(scorer.quality_maps(clips)), atol=1e-5, rtol=0)
    encoder = provider.get("languagebind_video")
    videos = np.stack([smooth_frames(encoder.num_frames, seed=s) for s in range(3)])
    torch.testing.assert_close(encoder.encode_videos(videos, batch_size=1), encoder.encode_videos(videos),
                               atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------- bf16
def test_bf16_runs_under_autocast_and_stays_close():
    """bf16 keeps float32 weights and autocasts the forward: it runs on the CPU, changes the numbers a little,
    and every record says so (precision_of, identity, runtime)."""
    fp32 = BackboneProvider({"source": "random", "size": "tiny", "device": "cpu"})
    bf16 = BackboneProvider({"source": "random", "size": "tiny", "device": "cpu", "precision": "bf16"})
    frames = smooth_frames(7)
    a, b = frames[:-1], frames[1:]
    reference = fp32.get("raft_things").flow(a, b, iters=4)
    flow = bf16.get("raft_things").flow(a, b, iters=4)
    assert flow.dtype == torch.float32 and torch.isfinite(flow).all()
    assert not torch.equal(flow, reference)  # autocast did something
    assert (flow - reference).abs().mean() < 0.25 * reference.abs().mean() + 1e-2
    assert bf16.precision_of("raft_things") == "bf16" and bf16.identity("raft_things")["precision"] == "bf16"
    assert bf16.identity("raft_things")["dtype"] == "float32"  # the weights stay float32
    assert bf16.runtime()["raft_things"]["precision"] == "bf16"
    features = bf16.get("dino_vitb16").embed(frames)
    cosine = (features * fp32.get("dino_vitb16").embed(frames)).sum(-1)
    assert features.dtype == torch.float32 and bool((cosine > 0.99).all())
    errors = bf16.get("amt_s").frame_errors(frames[0:6:2], frames[2:7:2], frames[1:6:2])
    assert all(math.isfinite(e) for e in errors)


# ---------------------------------------------------------------------------------------- frames
def test_video_frames_for_the_backbones():
    frames = smooth_frames(24)
    video = video_of(frames)  # 3 segments of 8
    on_cpu = video.device_frames("cpu")
    assert np.shares_memory(on_cpu.numpy(), video.frames)  # no copy on the CPU
    positions = video.positions(1, [0, 7])
    assert positions.tolist() == [8, 15]
    with pytest.raises(IndexError, match="segment 1 has 8 frames"):
        video.positions(1, [8])
    taken = video.take([3, 20, 3])
    assert isinstance(taken, np.ndarray) and np.array_equal(taken, frames[[3, 20, 3]])
    assert isinstance(video.take([3], "cpu"), np.ndarray)
    with pytest.raises(IndexError, match="24 frames"):
        video.take([24])
    lazy = IndexedFrames(on_cpu, [5, 1, 9, 2])
    assert lazy.shape == (4, H, W, 3) and lazy.dtype == torch.uint8
    assert np.array_equal(lazy[1:3].numpy(), frames[[1, 9]])
    with pytest.raises(IndexError):
        IndexedFrames(on_cpu, [30])
    video.release_device()  # nothing to release on the CPU; harmless
