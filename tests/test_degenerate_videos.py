"""Degenerate inputs give a recorded status for every metric: never a crash, never a made-up score."""

from __future__ import annotations

import numpy as np
import pytest

from narrastream.config import compose_config
from narrastream.data.script import Script
from narrastream.metrics import MetricContext, build_metric
from narrastream.metrics.backbones import BackboneProvider
from narrastream.video import SegmentedVideo, SegmentRule

PROTOCOL = compose_config(["preset=tiny"])["protocol"]
RUN_METRICS = PROTOCOL["run_metrics"]


@pytest.fixture(scope="module")
def provider() -> BackboneProvider:
    return BackboneProvider({"source": "random", "size": "tiny"})


def _score_all(video: SegmentedVideo, provider: BackboneProvider) -> dict:
    script = Script(id=0, prompts=tuple(f"p{k}" for k in range(video.num_segments)))
    ctx = MetricContext(script=script, backbones=provider)
    return {name: build_metric(name, PROTOCOL["metrics"][name]).compute(video, ctx) for name in RUN_METRICS}


def _check(result) -> None:
    assert result.status in ("ok", "fallback", "failed", "skipped")
    if result.status in ("ok", "fallback"):
        assert 0.0 <= result.score <= 1.0
    else:
        assert result.score is None and result.reason


def test_black_video(provider):
    frames = np.zeros((24, 48, 64, 3), np.uint8)
    results = _score_all(SegmentedVideo.from_frames(frames, 4.0, 3, rule=SegmentRule(segment_seconds=2)), provider)
    for result in results.values():
        _check(result)


def test_one_frame_segments(provider):
    frames = np.random.default_rng(0).integers(0, 255, (3, 48, 64, 3), dtype=np.uint8)
    video = SegmentedVideo.from_frames(frames, 1.0, 3, rule=SegmentRule(segment_seconds=1))
    results = _score_all(video, provider)
    for result in results.values():
        _check(result)
    assert results["temporal_flickering"].status == "failed"  # no pair in any segment
    assert results["subject_consistency"].status == "fallback"  # 1-frame segments: local 1.0, recorded


def test_single_segment(provider):
    frames = np.random.default_rng(1).integers(0, 255, (8, 48, 64, 3), dtype=np.uint8)
    results = _score_all(SegmentedVideo.from_frames(frames, 4.0, 1, rule=SegmentRule(segment_seconds=2)), provider)
    for result in results.values():
        _check(result)
    assert results["boundary_smoothness"].status in ("failed", "skipped")  # no seam to measure


def test_scores_are_bit_identical_across_providers(provider):
    frames = np.random.default_rng(2).integers(0, 255, (24, 48, 64, 3), dtype=np.uint8)
    video = SegmentedVideo.from_frames(frames, 4.0, 3, rule=SegmentRule(segment_seconds=2))
    first = {k: r.score for k, r in _score_all(video, provider).items()}
    second = {k: r.score for k, r in _score_all(video, BackboneProvider({"source": "random", "size": "tiny"})).items()}
    assert first == second
