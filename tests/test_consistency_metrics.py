"""subject_consistency and background_consistency end to end on small synthetic videos, tiny random backbones."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from narrastream.data.script import Script
from narrastream.metrics import MetricContext, build_metric
from narrastream.metrics.backbones import BackboneProvider
from narrastream.paths import config_dir
from narrastream.video import SegmentedVideo, SegmentRule

METRICS = ("subject_consistency", "background_consistency")
FPS, SECONDS, SEGMENTS, HEIGHT, WIDTH = 5.0, 2.0, 3, 48, 80  # 10 frames per segment


def protocol_params(name: str) -> dict:
    with open(config_dir() / "protocol" / "narrastream_v1.yaml") as f:
        return yaml.safe_load(f)["metrics"][name]


@pytest.fixture(scope="module")
def provider() -> BackboneProvider:
    return BackboneProvider({"source": "random", "size": "tiny"})


def video_of(frames: np.ndarray, switch_frames: list[int] | None = None) -> SegmentedVideo:
    return SegmentedVideo.from_frames(
        frames, FPS, SEGMENTS, rule=SegmentRule(segment_seconds=SECONDS), switch_frames=switch_frames
    )


def noise_frames(seed: int = 0) -> np.ndarray:
    n = int(FPS * SECONDS) * SEGMENTS
    return np.random.default_rng(seed).integers(0, 256, (n, HEIGHT, WIDTH, 3), dtype=np.uint8)


def still_frames() -> np.ndarray:
    """The same smooth picture in every frame."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    picture = np.stack([x * 3, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    return np.repeat(picture[None], int(FPS * SECONDS) * SEGMENTS, axis=0)


def context(provider: BackboneProvider, weights=None) -> MetricContext:
    script = Script(id=0, prompts=("a", "b", "c"))
    return MetricContext(script=script, backbones=provider, segment_weights=weights)


@pytest.mark.parametrize("name", METRICS)
def test_uniform_fallback_is_reported(name, provider):
    metric = build_metric(name, protocol_params(name))
    result = metric.compute(video_of(noise_frames()), context(provider))
    assert 0.0 <= result.score <= 1.0
    assert result.status == "fallback"
    assert result.fallbacks == ["segment_weights: uniform (no narrative annotations)"]
    segments, summary = result.items[:SEGMENTS], result.items[SEGMENTS]
    assert [item["frames"] for item in segments] == [[1, 3, 4, 6, 8]] * SEGMENTS  # positional, n = 10
    assert [item["weight"] for item in segments] == pytest.approx([1 / 3] * 3)
    assert len(summary["inter_adjacent_similarities"]) == len(summary["inter_anchor_similarities"]) == 2


@pytest.mark.parametrize("name", METRICS)
def test_planner_weights_give_an_ok_result(name, provider):
    metric = build_metric(name, protocol_params(name))
    video = video_of(noise_frames())
    result = metric.compute(video, context(provider, weights=[20, 30, 50]))
    assert result.status == "ok" and result.fallbacks == []
    assert [item["weight"] for item in result.items[:SEGMENTS]] == pytest.approx([0.2, 0.3, 0.5])
    assert 0.0 <= result.score <= 1.0
    assert metric.compute(video, context(provider, weights=[1, 1])).fallbacks == [
        "segment_weights: uniform (2 weights for 3 segments)"
    ]


@pytest.mark.parametrize("name", METRICS)
def test_a_still_video_is_more_consistent_than_noise(name, provider):
    metric = build_metric(name, protocol_params(name))
    still = metric.compute(video_of(still_frames()), context(provider)).score
    noise = metric.compute(video_of(noise_frames()), context(provider)).score
    assert still == pytest.approx(1.0, abs=1e-6)
    assert noise < still


@pytest.mark.parametrize("name", METRICS)
def test_same_input_same_score(name, provider):
    metric = build_metric(name, protocol_params(name))
    first = metric.compute(video_of(noise_frames(1)), context(provider))
    again = build_metric(name, protocol_params(name)).compute(
        video_of(noise_frames(1)), context(BackboneProvider({"source": "random", "size": "tiny"}))
    )
    assert first.score == again.score and first.items == again.items


@pytest.mark.parametrize("name", METRICS)
def test_all_sampled_frames_go_through_one_embed_call(name, provider, monkeypatch):
    params = {**protocol_params(name), "batch_size": 4}
    embedder = provider.get(params["backbone"])
    calls = []
    original = embedder.embed

    def counting_embed(frames: np.ndarray, batch_size: int = 32):
        calls.append((len(frames), batch_size))
        return original(frames, batch_size)

    monkeypatch.setattr(embedder, "embed", counting_embed)
    build_metric(name, params).compute(video_of(noise_frames()), context(provider))
    assert calls == [(5 * SEGMENTS, 4)]


def test_a_one_frame_segment_is_flagged(provider):
    frames = noise_frames()[:21]  # native switches at 10 and 20: segments of 10, 10 and 1 frames
    result = build_metric("subject_consistency", protocol_params("subject_consistency")).compute(
        video_of(frames, switch_frames=[10, 20]), context(provider, weights=[1, 1, 1])
    )
    assert result.status == "fallback"
    assert result.fallbacks == ["segment 2: 1 sampled frame, local score 1.0 by convention"]
    assert result.items[2]["frames"] == [0] and result.items[2]["local"] == 1.0


def test_missing_protocol_parameters_are_an_error():
    params = protocol_params("subject_consistency")
    del params["inter_quantile"]
    with pytest.raises(ValueError, match="inter_quantile"):
        build_metric("subject_consistency", params)


def test_metric_declarations():
    subject = build_metric("subject_consistency", protocol_params("subject_consistency"))
    background = build_metric("background_consistency", protocol_params("background_consistency"))
    assert (subject.dimension, subject.backbones) == ("quality", ("dino_vitb16",))
    assert (background.dimension, background.backbones) == ("quality", ("clip_vitb32",))
    assert subject.version == background.version == "v2_local_p25_inter_medoid_r2"
