"""The subject/background consistency formula (protocol §2.1.1), on hand-computed examples.

Features are unit vectors in the plane at chosen angles, so every similarity is a cosine of a known
angle and every expected value below is written out by hand. The protocol constants come from the
protocol YAML, so a changed constant there fails these tests too.
"""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from narrastream.metrics.functional.consistency import (
    consistency_score,
    local_pairs,
    medoid_index,
    segment_local_score,
    similarity_matrix,
)
from narrastream.paths import config_dir
from narrastream.protocol.pooling import resolve_segment_weights

CONSISTENCY_METRICS = ("subject_consistency", "background_consistency")
FORMULA_KEYS = (
    "local_weight", "inter_weight", "inter_adjacent_weight", "inter_anchor_weight", "intra_quantile", "inter_quantile",
)


def protocol_params(metric: str = "subject_consistency") -> dict:
    with open(config_dir() / "protocol" / "narrastream_v1.yaml") as f:
        return yaml.safe_load(f)["metrics"][metric]


def formula_params(metric: str = "subject_consistency") -> dict:
    params = protocol_params(metric)
    return {key: params[key] for key in FORMULA_KEYS}


def c(degrees: float) -> float:
    return math.cos(math.radians(degrees))


def at(*degrees: float) -> torch.Tensor:
    """Unit vectors at the given angles (float32, as the backbones emit features)."""
    rad = torch.tensor(degrees, dtype=torch.float64).deg2rad()
    return torch.stack([rad.cos(), rad.sin()], dim=1).float()


@pytest.mark.parametrize("metric", CONSISTENCY_METRICS)
def test_protocol_yaml_holds_the_spec_constants(metric):
    params = protocol_params(metric)
    assert params["positions"] == [0.1, 0.3, 0.5, 0.7, 0.9]
    assert (params["local_weight"], params["inter_weight"]) == (0.34, 0.66)
    assert (params["inter_adjacent_weight"], params["inter_anchor_weight"]) == (0.5, 0.5)
    assert (params["intra_quantile"], params["inter_quantile"]) == (0.25, 0.25)
    assert params["backbone"] == {"subject_consistency": "dino_vitb16", "background_consistency": "clip_vitb32"}[metric]


def test_local_pairs():
    assert local_pairs(5) == [(0, 1), (1, 2), (2, 3), (3, 4), (0, 2), (2, 4)]
    assert local_pairs(4) == [(0, 1), (1, 2), (2, 3), (0, 2)]
    assert local_pairs(3) == [(0, 1), (1, 2)]
    assert local_pairs(2) == [(0, 1)]
    assert local_pairs(1) == [] and local_pairs(0) == []


def test_similarity_clips_negative_cosines_and_is_symmetric():
    sim = similarity_matrix(at(0, 60, 150) * torch.tensor([[2.0], [0.5], [3.0]]))  # norms do not matter
    assert sim.dtype == torch.float64
    assert sim[0, 1] == pytest.approx(0.5, abs=1e-7)
    assert sim[1, 2] == pytest.approx(0.0, abs=1e-7)  # cos 90
    assert sim[0, 2] == 0.0 and sim[2, 0] == 0.0  # cos 150 < 0 is clipped
    assert torch.equal(sim, sim.T)


def test_segment_local_score_p25_of_six_pairs():
    # frames at 0, 10, 20, 30, 40 degrees: pairs (0,1) (1,2) (2,3) (3,4) -> cos 10; (0,2) (2,4) -> cos 20
    # sorted [c20, c20, c10, c10, c10, c10]; p25 position 1.25 -> 0.75 * c20 + 0.25 * c10
    sim = similarity_matrix(at(0, 10, 20, 30, 40))
    assert segment_local_score(sim, 0.25) == pytest.approx(0.75 * c(20) + 0.25 * c(10), abs=1e-7)


def test_segment_local_score_conventions():
    assert segment_local_score(similarity_matrix(at(30)), 0.25) == 1.0
    assert segment_local_score(similarity_matrix(torch.empty(0, 2)), 0.25) == 0.0


def test_medoid_ties():
    two = similarity_matrix(at(0, 50))
    assert medoid_index(two) == 1  # always frame 1
    assert medoid_index(torch.ones(4, 4, dtype=torch.float64)) == 2  # all tied: the centre
    # 0 and 2 tie (0.55), both one frame from the centre 1: the lower index wins
    sim = torch.tensor([[1.0, 0.2, 0.9], [0.2, 1.0, 0.2], [0.9, 0.2, 1.0]], dtype=torch.float64)
    assert medoid_index(sim) == 0
    # 0 and 3 tie, 3 is closer to the centre 2 of five frames: it wins over the lower index
    sim = torch.full((5, 5), 0.1, dtype=torch.float64)
    sim.fill_diagonal_(1.0)
    sim[0, 3] = sim[3, 0] = 0.9
    assert medoid_index(sim) == 3
    # two frames whose diagonals differ by rounding (1.0 and 0.9999999999999999, from float32 features
    # normalised in float64): the off-diagonal sums are the same number, an exact tie, so frame 1.
    # Subtracting the diagonal from the row sum used to break this tie towards frame 0.
    repro = similarity_matrix(torch.tensor([[1.0, 0.9, 1.1], [0.7, -0.3, 1.2]], dtype=torch.float32))
    assert repro[0, 0].item() != repro[1, 1].item()  # the rounding that broke the tie is there
    assert medoid_index(repro) == 1
    # same similarities to the others in another order still tie exactly (exactly rounded sums)
    sim = torch.tensor([[1.0, 0.1, 0.7, 0.2], [0.1, 1.0, 0.2, 0.7], [0.7, 0.2, 1.0, 0.3],
                        [0.2, 0.7, 0.3, 1.0]], dtype=torch.float64)
    assert medoid_index(sim) == 2  # 2 and 3 tie at (0.7 + 0.2 + 0.3) / 3; 2 is the centre
    # no tie: the most central frame
    assert medoid_index(similarity_matrix(at(50, 60, 100))) == 1
    with pytest.raises(ValueError):
        medoid_index(torch.empty(0, 0))


# Three segments: 5 frames (0..40 deg), 3 frames (50, 60, 100), 2 frames (100, 130).
SEGMENTS = [at(0, 10, 20, 30, 40), at(50, 60, 100), at(100, 130)]
# local: p25 of [c20, c20, c10 x4]; p25 of [c10, c40] (K=3: pairs (0,1), (1,2)); the only pair c30
LOCALS = [0.75 * c(20) + 0.25 * c(10), 0.75 * c(40) + 0.25 * c(10), c(30)]
# medoids: 20 deg (frame 2), 60 deg (frame 1), 130 deg (frame 1 of 2)
ADJACENT = [c(40), c(70)]            # S(20, 60), S(60, 130)
ANCHOR = [c(40), 0.0]                # S(20, 60), S(20, 130) = max(0, cos 110)
P25_ADJACENT = 0.75 * c(70) + 0.25 * c(40)
P25_ANCHOR = 0.75 * 0.0 + 0.25 * c(40)
INTER = 0.5 * P25_ADJACENT + 0.5 * P25_ANCHOR


@pytest.mark.parametrize("metric", CONSISTENCY_METRICS)
def test_three_segments_with_planner_weights(metric):
    weights, reason = resolve_segment_weights([20, 30, 50], 3)
    assert reason is None
    score, items, fallbacks = consistency_score(SEGMENTS, weights, **formula_params(metric))
    local = 0.2 * LOCALS[0] + 0.3 * LOCALS[1] + 0.5 * LOCALS[2]
    assert score == pytest.approx(0.34 * local + 0.66 * INTER, abs=1e-7)
    assert fallbacks == []
    segments, summary = items[:3], items[3]
    assert [item["local"] for item in segments] == pytest.approx(LOCALS, abs=1e-7)
    assert [item["medoid"] for item in segments] == [2, 1, 1]
    assert [item["frames"] for item in segments] == [[0, 1, 2, 3, 4], [0, 1, 2], [0, 1]]
    assert summary["inter_adjacent_similarities"] == pytest.approx(ADJACENT, abs=1e-7)
    assert summary["inter_anchor_similarities"] == pytest.approx(ANCHOR, abs=1e-7)
    assert summary["inter_adjacent"] == pytest.approx(P25_ADJACENT, abs=1e-7)
    assert summary["inter_anchor"] == pytest.approx(P25_ANCHOR, abs=1e-7)
    assert summary["inter"] == pytest.approx(INTER, abs=1e-7)


def test_uniform_fallback_is_recorded_and_used():
    weights, reason = resolve_segment_weights(None, 3)
    assert reason == "segment_weights: uniform (no narrative annotations)"
    score, _, _ = consistency_score(SEGMENTS, weights, **formula_params())
    assert score == pytest.approx(0.34 * sum(LOCALS) / 3 + 0.66 * INTER, abs=1e-7)


def test_frame_indices_are_recorded():
    _, items, _ = consistency_score(
        SEGMENTS, [1 / 3] * 3, frame_indices=[[16, 48, 80, 111, 143], [1, 4, 7], [0, 1]], **formula_params()
    )
    assert items[0]["frames"] == [16, 48, 80, 111, 143] and items[0]["medoid_frame"] == 80
    assert items[1]["medoid_frame"] == 4


def test_empty_segment_counts_zero_and_is_not_bridged():
    features = [at(0, 30), torch.empty(0, 2), at(60, 70)]
    score, items, fallbacks = consistency_score(features, [1 / 3] * 3, **formula_params())
    # no adjacent pair (both touch the empty segment); the anchor compares segments 0 and 2 only
    medoid_0, medoid_2 = 30, 70  # frame 1 of each 2-frame segment
    local = (c(30) + 0.0 + c(10)) / 3
    inter = c(medoid_2 - medoid_0)  # anchor alone, its weight renormalised to 1
    assert score == pytest.approx(0.34 * local + 0.66 * inter, abs=1e-7)
    assert items[1]["local"] == 0.0 and items[1]["medoid"] is None
    assert items[3]["inter_adjacent"] is None
    assert fallbacks == ["segment 1: no sampled frame, local score 0.0 and no representative"]


def test_empty_first_segment_moves_the_anchor():
    # the official anchors on the first segment that has frames (here segment 1), not on segment 0
    features = [torch.empty(0, 2), at(0, 30), at(60, 70), at(80, 90)]  # medoids: 30, 70, 90 deg
    score, items, _ = consistency_score(features, [1 / 4] * 4, **formula_params())
    summary = items[4]
    assert summary["inter_anchor_segment"] == 1
    assert summary["inter_anchor_similarities"] == pytest.approx([c(40), c(60)], abs=1e-7)  # S(30,70), S(30,90)
    assert summary["inter_adjacent_similarities"] == pytest.approx([c(40), c(20)], abs=1e-7)
    adjacent = 0.75 * c(40) + 0.25 * c(20)
    anchor = 0.75 * c(60) + 0.25 * c(40)
    local = (0.0 + c(30) + c(10) + c(10)) / 4
    assert score == pytest.approx(0.34 * local + 0.66 * (0.5 * adjacent + 0.5 * anchor), abs=1e-7)


def test_only_one_segment_with_frames_has_no_anchor():
    score, items, _ = consistency_score([torch.empty(0, 2), at(0, 30)], [0.5, 0.5], **formula_params())
    assert items[2]["inter_anchor"] is None and items[2]["inter_anchor_segment"] == 1
    assert score == pytest.approx((0.0 + c(30)) / 2, abs=1e-7)  # local only


def test_single_segment_scores_local_only():
    score, items, fallbacks = consistency_score([at(0, 10, 20, 30, 40)], [1.0], **formula_params())
    assert score == pytest.approx(LOCALS[0], abs=1e-7)
    assert items[1]["inter"] is None
    assert fallbacks == ["inter: no pair of segment representatives to compare, score = local only"]


def test_one_frame_segment_is_flagged():
    features = [at(0, 10, 20, 30, 40), at(25)]
    score, items, fallbacks = consistency_score(features, [0.5, 0.5], **formula_params())
    assert items[1]["local"] == 1.0
    assert fallbacks == ["segment 1: 1 sampled frame, local score 1.0 by convention"]
    inter = c(5)  # one adjacent and one anchor value, both S(20, 25)
    assert score == pytest.approx(0.34 * (LOCALS[0] + 1.0) / 2 + 0.66 * inter, abs=1e-7)


def test_no_segment_gives_no_score():
    assert consistency_score([], [], **formula_params()) == (None, [], [])


def test_weight_count_must_match():
    with pytest.raises(ValueError, match="2 segment weights for 3 segments"):
        consistency_score(SEGMENTS, [0.5, 0.5], **formula_params())
