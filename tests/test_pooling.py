"""The official aggregation primitives (protocol §2, "Shared aggregation primitives")."""

from __future__ import annotations

import numpy as np
import pytest

from narrastream.protocol.pooling import (
    percentile_linear,
    remap_affine_power,
    resolve_segment_weights,
    reverse_weighted_mean,
    transition_weights,
    weighted_mean,
)


def test_percentile_cases_of_the_spec():
    six = [0.9, 0.1, 0.5, 0.3, 0.7, 0.2]  # sorted: 0.1 0.2 0.3 0.5 0.7 0.9
    assert percentile_linear(six, 0.25) == pytest.approx(0.75 * 0.2 + 0.25 * 0.3, abs=1e-15)
    five = [0.4, 0.8, 0.1, 0.6, 0.3]  # sorted: 0.1 0.3 0.4 0.6 0.8
    assert percentile_linear(five, 0.25) == 0.3
    seven = [0.05, 0.95, 0.5, 0.6, 0.2, 0.9, 0.1]  # sorted: .05 .1 .2 .5 .6 .9 .95
    assert percentile_linear(seven, 0.84) == pytest.approx(0.96 * 0.9 + 0.04 * 0.95, abs=1e-15)


@pytest.mark.parametrize("q", [0.0, 0.1, 0.25, 0.5, 0.84, 0.9, 1.0])
@pytest.mark.parametrize("n", [1, 2, 5, 6, 7, 30])
def test_percentile_matches_numpy_linear(q, n):
    values = np.random.default_rng(n).random(n)
    assert percentile_linear(values.tolist(), q) == pytest.approx(float(np.percentile(values, 100 * q)), abs=1e-12)


def test_percentile_rejects_empty_and_bad_q():
    with pytest.raises(ValueError, match="empty"):
        percentile_linear([], 0.25)
    with pytest.raises(ValueError, match="quantile"):
        percentile_linear([1.0], 25)


def test_weighted_mean_and_its_errors():
    assert weighted_mean([0.2, 0.8], [1, 3]) == pytest.approx(0.65)
    with pytest.raises(ValueError, match="2 values but 1 weights"):
        weighted_mean([0.2, 0.8], [1])
    with pytest.raises(ValueError, match="sum"):
        weighted_mean([0.2, 0.8], [0, 0])
    with pytest.raises(ValueError, match="sum"):
        weighted_mean([0.2, 0.8], [1, -2])


def test_planner_weights_are_clamped_then_normalised():
    weights, reason = resolve_segment_weights([0, 50, 150, 100, -3, 99], 6)  # -> 1 50 100 100 1 99 (sum 351)
    assert reason is None
    assert weights == pytest.approx([1 / 351, 50 / 351, 100 / 351, 100 / 351, 1 / 351, 99 / 351], abs=1e-15)


def test_float_weights_are_only_normalised():
    weights, reason = resolve_segment_weights([0.5, 0.25, 0.25, 1.0], 4)
    assert reason is None
    assert weights == [0.25, 0.125, 0.125, 0.5]


@pytest.mark.parametrize(
    ("weights", "n", "reason"),
    [
        (None, 6, "segment_weights: uniform (no narrative annotations)"),
        ([10, 20, 30, 10, 20, 10], 7, "segment_weights: uniform (6 weights for 7 segments)"),
        ([0.0, 0.0], 2, "segment_weights: uniform (unusable weights [0.0, 0.0])"),
        ([0.5, float("nan")], 2, "segment_weights: uniform (non-numeric weights [0.5, nan])"),
    ],
)
def test_uniform_fallback_says_why(weights, n, reason):
    assert resolve_segment_weights(weights, n) == ([1 / n] * n, reason)


def test_transition_weights():
    assert transition_weights([0.1, 0.2, 0.3, 0.4]) == pytest.approx([0.3, 0.5, 0.7])
    assert transition_weights([1.0]) == []


def test_remap_affine_power():
    assert remap_affine_power(0.9, floor=0.6) == pytest.approx(0.75)
    assert remap_affine_power(0.9, floor=0.6, power=2.0) == pytest.approx(0.5625)
    assert remap_affine_power(0.9, floor=0.6, ceiling=0.8) == 1.0
    assert remap_affine_power(1.5, floor=0.5) == 1.0  # v is clamped to [-1, 1]
    assert remap_affine_power(-0.5, floor=-1.0) == pytest.approx(0.25)
    assert remap_affine_power(0.7, floor=0.6, power=0.0) == pytest.approx(0.5 ** 1e-6)  # power bounded by 1e-6
    with pytest.raises(ValueError, match="ceiling"):
        remap_affine_power(0.5, floor=1.0)


def test_reverse_weighted_mean():
    assert reverse_weighted_mean([0.0, 0.5, 1.0]) == pytest.approx((0.0 * 1 + 0.5 * 2 + 1.0 * 3) / 6)
    with pytest.raises(ValueError):
        reverse_weighted_mean([])
