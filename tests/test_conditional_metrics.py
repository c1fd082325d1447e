"""conditional_adjacent and conditional_longrange (protocol §2.2.2, §2.2.3): formulas and metrics.

The formula tests use unit vectors in the plane at chosen cosines, so every expected number below is
written out by hand; the constants come from the protocol YAML, so a changed constant there (or in
the formulas) fails them. The metric tests run the tiny random DINO on small synthetic videos.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from narrastream.data.script import Script
from narrastream.metrics import MetricContext, build_metric
from narrastream.metrics.backbones import BackboneProvider
from narrastream.metrics.functional.conditional import (
    adjacent_score,
    descriptor_cosine,
    longrange_score,
    map_similarity,
    segment_descriptor,
    shrink_toward_uniform,
)
from narrastream.metrics.temporal.conditional_longrange import normalise_entity_groups
from narrastream.paths import config_dir
from narrastream.protocol.annotations import ScriptAnnotations
from narrastream.protocol.pooling import resolve_segment_weights
from narrastream.video import SegmentedVideo, SegmentRule

ADJACENT, LONGRANGE = "conditional_adjacent", "conditional_longrange"
FPS, SECONDS, SEGMENTS, HEIGHT, WIDTH = 5.0, 2.0, 3, 32, 48  # 10 frames per segment
NO_WEIGHTS = "segment_weights: uniform (no narrative annotations)"


def protocol_params(name: str) -> dict:
    with open(config_dir() / "protocol" / "narrastream_v1.yaml") as f:
        return yaml.safe_load(f)["metrics"][name]


def mapping(name: str) -> dict:
    p = protocol_params(name)
    return {"floor": p["similarity_floor"], "ceiling": p["similarity_ceiling"], "power": p["similarity_power"]}


def longrange_params() -> dict:
    p = protocol_params(LONGRANGE)
    return {**mapping(LONGRANGE), "target_weight_alpha": p["target_weight_alpha"],
            "sample_weight_alpha": p["sample_weight_alpha"]}


def unit(degrees: float) -> torch.Tensor:
    rad = math.radians(degrees)
    return torch.tensor([math.cos(rad), math.sin(rad)], dtype=torch.float64)


def acos_deg(c: float) -> float:
    return math.degrees(math.acos(c))


# ------------------------------------------------------------------ protocol constants


def test_protocol_yaml_holds_the_spec_constants():
    adjacent, longrange = protocol_params(ADJACENT), protocol_params(LONGRANGE)
    assert adjacent == {"backbone": "dino_vitb16", "similarity_floor": 0.79, "similarity_ceiling": 1.0,
                        "similarity_power": 2.0}
    assert longrange == {"backbone": "dino_vitb16", "similarity_floor": 0.58, "similarity_ceiling": 1.0,
                         "similarity_power": 1.5, "target_weight_alpha": 0.7, "sample_weight_alpha": 0.0}


def test_metric_declarations():
    adjacent = build_metric(ADJACENT, protocol_params(ADJACENT))
    longrange = build_metric(LONGRANGE, protocol_params(LONGRANGE))
    assert (adjacent.dimension, longrange.dimension) == ("temporal", "temporal")
    assert adjacent.backbones == longrange.backbones == ("dino_vitb16",)
    assert adjacent.version == "v3_affine_power_raw"
    assert longrange.version == "v4_affine_power_weightshrink_raw"


@pytest.mark.parametrize("name,key", [(ADJACENT, "similarity_power"), (LONGRANGE, "target_weight_alpha")])
def test_missing_protocol_parameters_are_an_error(name, key):
    params = protocol_params(name)
    del params[key]
    with pytest.raises(ValueError, match=key):
        build_metric(name, params)


# ------------------------------------------------------------------ descriptor, cosine, remap


def test_descriptor_is_the_unnormalised_mean_of_the_frame_features():
    d = segment_descriptor(torch.stack([unit(0), unit(90)]).float())
    assert d.dtype == torch.float64
    assert d.tolist() == pytest.approx([0.5, 0.5])
    assert float(torch.linalg.vector_norm(d)) == pytest.approx(math.sqrt(0.5))  # not renormalised
    # a mean over frames, not the first frame or a medoid: 0, 0, 90 degrees -> (2/3, 1/3), cos 2/sqrt(5)
    d = segment_descriptor(torch.stack([unit(0), unit(0), unit(90)]))
    assert descriptor_cosine(d, unit(0)) == pytest.approx(2 / math.sqrt(5), abs=1e-12)
    assert segment_descriptor(torch.empty(0, 4)).tolist() == [0.0] * 4


def test_cosine_is_not_clipped_and_a_zero_descriptor_gives_zero():
    assert descriptor_cosine(unit(0), unit(120)) == pytest.approx(-0.5)
    assert descriptor_cosine(3 * unit(0), 0.5 * unit(60)) == pytest.approx(0.5)
    assert descriptor_cosine(torch.zeros(2, dtype=torch.float64), unit(0)) == 0.0


def test_adjacent_mapping_floor_079_power_2():
    m = mapping(ADJACENT)
    assert map_similarity(0.895, **m) == pytest.approx(0.25, abs=1e-12)  # (0.105 / 0.21)^2
    assert map_similarity(0.9475, **m) == pytest.approx(0.5625, abs=1e-12)  # 0.75^2
    assert map_similarity(0.79, **m) == 0.0 and map_similarity(-1.0, **m) == 0.0
    assert map_similarity(1.0, **m) == 1.0 and map_similarity(1.2, **m) == 1.0


def test_longrange_mapping_floor_058_power_15():
    m = mapping(LONGRANGE)
    assert map_similarity(0.79, **m) == pytest.approx(0.5 ** 1.5, abs=1e-12)  # (0.21 / 0.42)^1.5
    assert map_similarity(0.895, **m) == pytest.approx(0.75 ** 1.5, abs=1e-12)  # (0.315 / 0.42)^1.5
    assert map_similarity(0.58, **m) == 0.0 and map_similarity(1.0, **m) == 1.0


def test_shrink_toward_uniform():
    assert shrink_toward_uniform([0.1, 0.4], 0.7) == pytest.approx([0.29, 0.71])  # 0.7 [0.2, 0.8] + 0.15
    assert shrink_toward_uniform([1, 1, 4], 0.7) == pytest.approx([0.7 / 6 + 0.1, 0.7 / 6 + 0.1, 0.7 * 4 / 6 + 0.1])
    assert shrink_toward_uniform([3, 1], 0.0) == [0.5, 0.5]
    assert shrink_toward_uniform([3, 1], 1.0) == [0.75, 0.25]
    assert shrink_toward_uniform([0, 0], 0.7) is None and shrink_toward_uniform([], 0.7) is None
    with pytest.raises(ValueError, match="alpha"):
        shrink_toward_uniform([1, 2], 1.5)


# ------------------------------------------------------------------ adjacent_score


def adjacent_descriptors() -> list[torch.Tensor]:
    """cos(d0, d1) = 0.895, cos(d1, d2) = 0 (never kept below), cos(d2, d3) = 0.9475."""
    a1 = acos_deg(0.895)
    return [unit(0), unit(a1), unit(a1 + 90), unit(a1 + 90 + acos_deg(0.9475))]


def test_adjacent_weighted_mean_over_kept_transitions_with_transition_weights():
    weights, reason = resolve_segment_weights([10, 20, 30, 40], 4)  # -> 0.1 0.2 0.3 0.4
    assert reason is None
    score, items, fallbacks = adjacent_score(adjacent_descriptors(), [True, False, True], weights,
                                             **mapping(ADJACENT))
    # t = (0.3, 0.5, 0.7); kept 0 and 2: (0.3 * 0.25 + 0.7 * 0.5625) / (0.3 + 0.7)
    assert score == pytest.approx(0.46875, abs=1e-12)
    assert fallbacks == []
    assert [item["weight"] for item in items] == pytest.approx([0.3, 0.5, 0.7])
    assert [item["keep"] for item in items] == [True, False, True]
    assert items[0]["raw"] == pytest.approx(0.895) and items[0]["mapped"] == pytest.approx(0.25)
    assert items[1]["raw"] is None and items[1]["mapped"] is None
    assert items[2]["raw"] == pytest.approx(0.9475) and items[2]["mapped"] == pytest.approx(0.5625)
    assert items[1]["segments"] == [1, 2]


def test_adjacent_uniform_weights_give_the_plain_mean_and_none_kept_gives_none():
    uniform = [0.25] * 4
    score, _, _ = adjacent_score(adjacent_descriptors(), [True, False, True], uniform, **mapping(ADJACENT))
    assert score == pytest.approx((0.25 + 0.5625) / 2, abs=1e-12)
    score, _, _ = adjacent_score(adjacent_descriptors(), [True, True, True], uniform, **mapping(ADJACENT))
    assert score == pytest.approx((0.25 + 0.0 + 0.5625) / 3, abs=1e-12)  # cos 0 -> 0
    score, items, _ = adjacent_score(adjacent_descriptors(), [False] * 3, uniform, **mapping(ADJACENT))
    assert score is None and [item["raw"] for item in items] == [None] * 3
    with pytest.raises(ValueError, match="continuity flags"):
        adjacent_score(adjacent_descriptors(), [True], uniform, **mapping(ADJACENT))


def test_adjacent_zero_descriptor_is_flagged_when_compared():
    d = adjacent_descriptors()
    d[3] = torch.zeros(2, dtype=torch.float64)
    score, _, fallbacks = adjacent_score(d, [True, False, True], [0.25] * 4, **mapping(ADJACENT))
    assert score == pytest.approx(0.25 / 2)
    assert fallbacks == ["segment 3: no frame, zero descriptor (its cosines are 0)"]
    assert adjacent_score(d, [True, False, False], [0.25] * 4, **mapping(ADJACENT))[2] == []


# ------------------------------------------------------------------ longrange_score

M079 = 0.5 ** 1.5  # mapped cos 0.79 (long-range constants)


def longrange_descriptors() -> list[torch.Tensor]:
    """cos(d2, d0) = 0.79, d3 = d2 (cos 1), d1 at 90 degrees from d2."""
    return [unit(acos_deg(0.79)), unit(90), unit(0), unit(0)]


WEIGHTS = [10, 20, 30, 40]  # planner integers -> 0.1 0.2 0.3 0.4


def planner() -> list[float]:
    return resolve_segment_weights(WEIGHTS, 4)[0]


def test_longrange_first_listed_anchor_and_shrunk_target_weights():
    score, items, fallbacks = longrange_score(longrange_descriptors(), {"cup": (2, 0, 3)}, planner(),
                                              **longrange_params())
    # anchor 2 (first listed, not the smallest); targets 0 and 3: weights 0.1, 0.4 -> 0.2, 0.8 -> 0.29, 0.71
    assert score == pytest.approx(0.29 * M079 + 0.71 * 1.0, abs=1e-12)
    assert fallbacks == []
    (item,) = items
    assert (item["anchor"], item["targets"]) == (2, [0, 3])
    assert item["raw"] == pytest.approx([0.79, 1.0]) and item["mapped"] == pytest.approx([M079, 1.0])
    assert item["target_weights"] == pytest.approx([0.29, 0.71])
    assert item["pooling"] == "target_weighted" and item["weight"] == pytest.approx(1.0)


def test_longrange_duplicate_targets_count():
    score, items, _ = longrange_score(longrange_descriptors(), {"cup": [2, 0, 0, 3]}, planner(), **longrange_params())
    # targets 0, 0, 3: weights 0.1 0.1 0.4 -> 1/6 1/6 4/6 -> 0.7 w + 0.1
    low, high = 0.7 / 6 + 0.1, 0.7 * 4 / 6 + 0.1
    assert items[0]["target_weights"] == pytest.approx([low, low, high])
    assert score == pytest.approx(2 * low * M079 + high, abs=1e-12)


def test_longrange_without_planner_weights_falls_back_to_reverse_weighted():
    score, items, fallbacks = longrange_score(longrange_descriptors(), {"cup": [2, 0, 3]}, None, **longrange_params())
    assert score == pytest.approx((1 * M079 + 2 * 1.0) / 3, abs=1e-12)  # target l weighs l / k: later counts more
    assert items[0]["pooling"] == "reverse_weighted" and items[0]["target_weights"] is None
    assert fallbacks == ["entity cup: targets pooled reverse_weighted (no planner weights)"]
    score, _, _ = longrange_score(longrange_descriptors(), {"cup": [2, 3, 0]}, None, **longrange_params())
    assert score == pytest.approx((1 * 1.0 + 2 * M079) / 3, abs=1e-12)  # listed order matters


def test_longrange_sample_is_the_plain_mean_over_qualifying_entities():
    groups = {"cup": [2, 0, 3], "lamp": [1, 1], "door": [3]}  # lamp: its anchor repeated (cos 1); door: 1 index
    score, items, fallbacks = longrange_score(longrange_descriptors(), groups, planner(), **longrange_params())
    cup = 0.29 * M079 + 0.71
    assert score == pytest.approx((cup + 1.0) / 2, abs=1e-12)  # alpha 0: coverage 0.8 vs 0.4 does not matter
    assert fallbacks == []
    assert items[0]["score"] == pytest.approx(cup) and items[1]["score"] == 1.0 and items[2]["score"] is None
    assert [items[0]["weight"], items[1]["weight"], items[2]["weight"]] == [0.5, 0.5, None]


def test_longrange_coverage_weights_count_duplicates_when_alpha_is_positive():
    groups = {"cup": [2, 0, 3], "lamp": [1, 1]}
    params = {**longrange_params(), "sample_weight_alpha": 0.5}
    score, items, _ = longrange_score(longrange_descriptors(), groups, planner(), **params)
    # coverage cup 0.3 + 0.1 + 0.4 = 0.8, lamp 0.2 + 0.2 = 0.4 (duplicate counted) -> 2/3, 1/3 -> 0.5 c + 0.25
    cup = 0.29 * M079 + 0.71
    assert items[0]["weight"] == pytest.approx(7 / 12) and items[1]["weight"] == pytest.approx(5 / 12)
    assert score == pytest.approx(7 / 12 * cup + 5 / 12 * 1.0, abs=1e-12)
    score, _, fallbacks = longrange_score(longrange_descriptors(), groups, None, **params)
    assert fallbacks[-1] == "entities: plain mean (no planner weights)"


def test_longrange_without_a_qualifying_entity_gives_none():
    score, items, fallbacks = longrange_score(longrange_descriptors(), {"cup": [2], "lamp": [0]}, planner(),
                                              **longrange_params())
    assert score is None and fallbacks == [] and [item["score"] for item in items] == [None, None]
    with pytest.raises(ValueError, match="outside"):
        longrange_score(longrange_descriptors(), {"cup": [2, 4]}, planner(), **longrange_params())


def test_normalise_entity_groups():
    assert normalise_entity_groups({"cup": (3, 0, 0)}, 4) == ({"cup": [3, 0, 0]}, [])
    assert normalise_entity_groups({"cup": (3, 9, -1, 0), "ghost": (7,)}, 4) == (
        {"cup": [3, 0]},
        ["entity cup: segment indices [9, -1] outside 0..3 dropped",
         "entity ghost: segment indices [7] outside 0..3 dropped"],
    )
    assert normalise_entity_groups({"ghost": (7,)}, 2)[0] == {"main_subject": [0, 1]}
    assert normalise_entity_groups({"ghost": (7,)}, 2)[1][-1] == (
        "entity_groups: main_subject = all segments (no entity index inside the video)")
    assert normalise_entity_groups({}, 2) == (
        {"main_subject": [0, 1]}, ["entity_groups: main_subject = all segments (no entity groups)"])


# ------------------------------------------------------------------ the metrics on synthetic videos


@pytest.fixture(scope="module")
def provider() -> BackboneProvider:
    return BackboneProvider({"source": "random", "size": "tiny"})


def video_of(frames: np.ndarray) -> SegmentedVideo:
    return SegmentedVideo.from_frames(frames, FPS, SEGMENTS, rule=SegmentRule(segment_seconds=SECONDS))


def noise_frames(seed: int = 0) -> np.ndarray:
    n = int(FPS * SECONDS) * SEGMENTS
    return np.random.default_rng(seed).integers(0, 256, (n, HEIGHT, WIDTH, 3), dtype=np.uint8)


def still_frames() -> np.ndarray:
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    picture = np.stack([x * 3, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    return np.repeat(picture[None], int(FPS * SECONDS) * SEGMENTS, axis=0)


def context(provider: BackboneProvider, annotations: ScriptAnnotations | None = None) -> MetricContext:
    return MetricContext(script=Script(id=0, prompts=("a", "b", "c")), backbones=provider, annotations=annotations)


def compute(name: str, frames: np.ndarray, provider, annotations=None):
    return build_metric(name, protocol_params(name)).compute(video_of(frames), context(provider, annotations))


def test_adjacent_without_annotations_keeps_every_transition(provider):
    result = compute(ADJACENT, noise_frames(), provider)
    assert 0.0 <= result.score <= 1.0 and result.status == "fallback"
    assert result.fallbacks == ["continuity: all transitions kept (no annotations)", NO_WEIGHTS]
    assert [item["keep"] for item in result.items] == [True, True]
    assert [item["weight"] for item in result.items] == pytest.approx([2 / 3, 2 / 3])
    assert result.details["frames"] == [[0, 2, 5, 7, 9]] * SEGMENTS  # quartile frames, n = 10


def test_adjacent_with_annotations(provider):
    ann = ScriptAnnotations(script_id=0, segment_weights=(20, 30, 50), continuity=(False, True))
    result = compute(ADJACENT, noise_frames(), provider, ann)
    assert result.status == "ok" and result.fallbacks == []
    assert [item["weight"] for item in result.items] == pytest.approx([0.5, 0.8])
    assert result.items[0]["raw"] is None
    assert result.score == pytest.approx(result.items[1]["mapped"])  # the only kept transition
    assert 0.0 <= result.score <= 1.0


def test_adjacent_with_no_kept_transition_is_skipped(provider, monkeypatch):
    ann = ScriptAnnotations(script_id=0, continuity=(False, False))
    metric = build_metric(ADJACENT, protocol_params(ADJACENT))
    monkeypatch.setattr(provider, "get", lambda name: pytest.fail("nothing to encode"))
    result = metric.compute(video_of(noise_frames()), context(provider, ann))
    assert (result.status, result.score) == ("skipped", None)
    assert "no transition is marked continuous" in result.reason


def test_adjacent_with_the_wrong_number_of_flags_fails(provider):
    result = compute(ADJACENT, noise_frames(), provider, ScriptAnnotations(script_id=0, continuity=(True,)))
    assert (result.status, result.score) == ("failed", None)
    assert result.reason == "1 continuity flags for 2 transitions"


def test_identical_segments_score_one(provider):
    adjacent = compute(ADJACENT, still_frames(), provider)
    longrange = compute(LONGRANGE, still_frames(), provider)
    assert adjacent.score == pytest.approx(1.0, abs=1e-6)
    assert longrange.score == pytest.approx(1.0, abs=1e-6)
    assert compute(ADJACENT, noise_frames(), provider).score < adjacent.score


def test_longrange_without_annotations_uses_main_subject(provider):
    result = compute(LONGRANGE, noise_frames(), provider)
    assert 0.0 <= result.score <= 1.0 and result.status == "fallback"
    assert result.fallbacks == [
        "entity_groups: main_subject = all segments (no annotations)",
        NO_WEIGHTS,
        "entity main_subject: targets pooled reverse_weighted (no planner weights)",
    ]
    (item,) = result.items
    assert (item["entity"], item["anchor"], item["targets"]) == ("main_subject", 0, [1, 2])
    assert result.score == pytest.approx((item["mapped"][0] + 2 * item["mapped"][1]) / 3)


def test_longrange_with_annotations(provider):
    ann = ScriptAnnotations(script_id=0, segment_weights=(20, 30, 50),
                            entity_groups={"cup": (2, 0, 9), "lamp": (1,)})
    result = compute(LONGRANGE, noise_frames(), provider, ann)
    assert result.status == "fallback"
    assert result.fallbacks == ["entity cup: segment indices [9] outside 0..2 dropped"]
    cup, lamp = result.items
    assert (cup["anchor"], cup["targets"], lamp["score"]) == (2, [0], None)
    assert result.score == pytest.approx(cup["mapped"][0]) and 0.0 <= result.score <= 1.0
    ok = compute(LONGRANGE, noise_frames(), provider, ScriptAnnotations(
        script_id=0, segment_weights=(20, 30, 50), entity_groups={"cup": (2, 0, 1)}))
    assert ok.status == "ok" and ok.fallbacks == []


def test_longrange_without_a_qualifying_entity_is_skipped(provider):
    ann = ScriptAnnotations(script_id=0, entity_groups={"cup": (2,), "lamp": (1, 5)})
    result = compute(LONGRANGE, noise_frames(), provider, ann)
    assert (result.status, result.score) == ("skipped", None)
    assert "no entity appears in 2 or more segments" in result.reason
    assert result.fallbacks == ["entity lamp: segment indices [5] outside 0..2 dropped"]


@pytest.mark.parametrize("name", [ADJACENT, LONGRANGE])
def test_same_input_same_score(name, provider):
    first = compute(name, noise_frames(1), provider)
    again = compute(name, noise_frames(1), BackboneProvider({"source": "random", "size": "tiny"}))
    assert first.score == again.score and first.items == again.items


@pytest.mark.parametrize("name", [ADJACENT, LONGRANGE])
def test_every_segment_is_encoded_once_in_one_call(name, provider, monkeypatch):
    embedder = provider.get("dino_vitb16")
    calls = []
    original = embedder.embed

    def counting_embed(frames: np.ndarray, batch_size: int = 32):
        calls.append(len(frames))
        return original(frames, batch_size)

    monkeypatch.setattr(embedder, "embed", counting_embed)
    result = compute(name, noise_frames(2), provider)
    assert calls == [5 * SEGMENTS]
    # the same numbers as encoding each compared segment on its own, as the official code does
    video = video_of(noise_frames(2))
    own = [segment_descriptor(original(video.frames_at(k, [0, 2, 5, 7, 9]))) for k in range(SEGMENTS)]
    if name == ADJACENT:
        expected = [descriptor_cosine(own[0], own[1]), descriptor_cosine(own[1], own[2])]
        assert [item["raw"] for item in result.items] == pytest.approx(expected, abs=1e-6)
    else:
        expected = [descriptor_cosine(own[0], own[1]), descriptor_cosine(own[0], own[2])]
        assert result.items[0]["raw"] == pytest.approx(expected, abs=1e-6)


def test_both_conditional_metrics_share_one_encoding_per_video(provider, monkeypatch):
    embedder = provider.get("dino_vitb16")
    calls = []
    original = embedder.embed
    monkeypatch.setattr(embedder, "embed", lambda frames, **kw: calls.append(len(frames)) or original(frames, **kw))
    video, ctx = video_of(noise_frames(3)), context(provider)
    shared = [build_metric(name, protocol_params(name)).compute(video, ctx).score
              for name in ("conditional_adjacent", "conditional_longrange")]
    assert len(calls) == 1  # the second metric reused the descriptors
    alone = [build_metric(name, protocol_params(name)).compute(video, context(provider)).score
             for name in ("conditional_adjacent", "conditional_longrange")]
    assert shared == alone and len(calls) == 3
