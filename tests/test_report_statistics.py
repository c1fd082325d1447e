"""Bootstrap intervals and paired comparisons (narrastream.report.bootstrap) against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from narrastream.protocol.aggregate import aggregate, dimension_scores
from narrastream.report.bootstrap import (
    BootstrapSettings,
    aggregate_weighted,
    intervals,
    paired,
    resample_counts,
    script_scores,
)
from narrastream.results.records import Record

DIMS = {"quality": ["a", "b"], "temporal": ["c"]}
METRICS = ["a", "b", "c"]


def rec(sid: int, metric: str, score, status: str = "ok", seed: int = 0, model: str = "m") -> Record:
    return Record(run_id="r", model=model, script_id=sid, seed=seed, metric=metric, score=score, status=status,
                  protocol="p", metric_version="v", cache_key=f"{model}-{sid}-{seed}-{metric}",
                  reason="it failed" if status == "failed" else None)


def table(values: dict[int, dict[str, float | None]], model: str = "m"):
    records = [rec(sid, m, v, "ok" if v is not None else "failed", model=model)
               for sid, row in values.items() for m, v in row.items()]
    return records, script_scores(records, METRICS)


def test_two_scripts_zero_and_one_give_the_interval_zero_to_one():
    """Resample means of {0, 1} are 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4: the 95% interval is [0, 1]."""
    _, scores = table({0: {"a": 0.0}, 1: {"a": 1.0}})
    found = intervals(scores, None, BootstrapSettings(resamples=4000, seed=1)).as_dict()
    value, low, high = found["a"]
    assert value == 0.5 and low == 0.0 and high == 1.0


def test_large_sample_interval_matches_the_normal_approximation():
    """400 scripts half 0, half 1: mean 0.5, SE 0.5/20 = 0.025, so about [0.451, 0.549]."""
    _, scores = table({sid: {"a": float(sid % 2)} for sid in range(400)})
    value, low, high = intervals(scores, None, BootstrapSettings(resamples=4000, seed=0)).as_dict()["a"]
    assert value == 0.5
    assert low == pytest.approx(0.5 - 1.96 * 0.025, abs=0.006) and high == pytest.approx(0.5 + 1.96 * 0.025, abs=0.006)


def test_each_resample_recomputes_the_whole_aggregation():
    """The matrix form equals a plain loop: draw scripts, average each metric over the drawn scripts' valid
    scores, then dimensions and overall by the official rule (missing cells included)."""
    rng = np.random.default_rng(5)
    values = {sid: {"a": float(rng.random()), "b": None if sid % 4 == 0 else float(rng.random()),
                    "c": float(rng.random())} for sid in range(9)}
    _, scores = table(values)
    settings = BootstrapSettings(resamples=50, seed=3)
    counts = resample_counts(scores.n, settings)
    fast = aggregate_weighted(scores, counts, DIMS)
    draws = np.random.default_rng(settings.seed).integers(0, scores.n, size=(settings.resamples, scores.n))
    for r, drawn in enumerate(draws):
        assert counts[r].sum() == scores.n and np.array_equal(np.bincount(drawn, minlength=scores.n), counts[r])
        means = {}
        for m in METRICS:
            got = [values[int(scores.scripts[i])][m] for i in drawn if values[int(scores.scripts[i])][m] is not None]
            means[m] = sum(got) / len(got) if got else None
        expected = dimension_scores(means, DIMS)
        row = dict(zip([*METRICS, *DIMS, "overall"], fast[r]))
        for key in [*METRICS, *DIMS, "overall"]:
            want = means.get(key, expected.get(key))
            assert (want is None and math.isnan(row[key])) or row[key] == pytest.approx(want, abs=1e-12), key


def test_point_estimates_are_the_leaderboard_values_with_seeds_and_failures():
    """A script with two seeds counts two items (as the leaderboard's mean); a failed cell counts nothing."""
    records = [rec(0, "a", 0.2), rec(0, "a", 0.4, seed=1), rec(1, "a", 0.9), rec(2, "a", None, "failed"),
               rec(0, "b", 0.5), rec(1, "b", 0.7), rec(0, "c", 0.1), rec(2, "c", 0.3)]
    scores = script_scores(records, METRICS)
    found = intervals(scores, DIMS, BootstrapSettings(resamples=200)).as_dict()
    row = aggregate(records, DIMS).iloc[0]
    for key in [*METRICS, *DIMS, "overall"]:
        assert found[key][0] == pytest.approx(row[key], abs=1e-12), key
    assert found["a"][0] == pytest.approx((0.2 + 0.4 + 0.9) / 3)


def test_a_single_script_has_a_value_but_no_interval():
    _, scores = table({7: {"a": 0.3, "b": 0.5, "c": 0.9}})
    found = intervals(scores, DIMS, BootstrapSettings()).as_dict()
    for key in [*METRICS, *DIMS, "overall"]:
        value, low, high = found[key]
        assert math.isfinite(value) and math.isnan(low) and math.isnan(high), key


def test_ties_give_a_zero_width_interval():
    _, scores = table({sid: {"a": 0.6} for sid in range(10)})
    assert intervals(scores, None, BootstrapSettings()).as_dict()["a"] == pytest.approx((0.6, 0.6, 0.6), abs=1e-12)


def test_missing_metric_gives_no_dimension_overall_or_interval():
    """A partial row (metric b never scored): quality and overall undefined, their intervals too; the rest have one."""
    _, scores = table({sid: {"a": sid / 10, "c": 1 - sid / 10} for sid in range(6)})
    found = intervals(scores, DIMS, BootstrapSettings(resamples=300)).as_dict()
    assert all(math.isnan(x) for key in ("b", "quality", "overall") for x in found[key])
    assert all(math.isfinite(x) for key in ("a", "c", "temporal") for x in found[key])
    assert found["a"][1] <= found["a"][0] <= found["a"][2]


def test_same_seed_same_interval_other_seed_other_interval():
    _, scores = table({sid: {"a": float(np.sin(sid) ** 2)} for sid in range(30)})
    one = intervals(scores, None, BootstrapSettings(seed=0)).as_dict()["a"]
    assert intervals(scores, None, BootstrapSettings(seed=0)).as_dict()["a"] == one
    assert intervals(scores, None, BootstrapSettings(seed=1)).as_dict()["a"] != one


def test_paired_difference_has_the_known_sign_even_when_the_rows_intervals_overlap():
    """B = A - 0.02 on every script, scripts spread over [0.1, 0.9]: each row's own interval is wide and they
    overlap, but the paired difference is exactly 0.02 with a zero-width interval: significant, A better."""
    rng = np.random.default_rng(0)
    base = {sid: float(rng.uniform(0.1, 0.9)) for sid in range(40)}
    _, a = table({sid: {"a": v, "b": v, "c": v} for sid, v in base.items()}, "A")
    _, b = table({sid: {"a": v - 0.02, "b": v - 0.02, "c": v - 0.02} for sid, v in base.items()}, "B")
    settings = BootstrapSettings(resamples=500)
    ia, ib = intervals(a, DIMS, settings).as_dict(), intervals(b, DIMS, settings).as_dict()
    assert ia["overall"][1] < ib["overall"][2]  # the rows' own intervals overlap
    diff = paired(a, b, DIMS, settings)
    assert np.allclose(diff.difference, 0.02) and np.allclose(diff.low, 0.02) and np.allclose(diff.high, 0.02)
    assert diff.significant.all()
    reverse = paired(b, a, DIMS, settings)
    assert np.allclose(reverse.difference, -0.02) and reverse.significant.all() and (reverse.high < 0).all()


def test_paired_noise_is_not_significant_and_mde_scales_with_se():
    rng = np.random.default_rng(1)
    _, a = table({sid: {"a": float(rng.random())} for sid in range(60)}, "A")
    _, b = table({sid: {"a": float(rng.random())} for sid in range(60)}, "B")
    diff = paired(a, b, None, BootstrapSettings(resamples=1000))
    j = diff.columns.index("a")
    assert diff.low[j] < 0 < diff.high[j] and not diff.significant[j]
    assert diff.mde[j] == pytest.approx((1.959964 + 0.841621) * diff.se[j], rel=1e-5)
    assert diff.half_width[j] == pytest.approx((diff.high[j] - diff.low[j]) / 2)


def test_paired_uses_only_scripts_and_cells_both_rows_have():
    """A has scripts 0-3, B has 2-5 and failed metric a on script 3: a is compared on script 2 only."""
    _, a = table({sid: {"a": 0.5 + sid / 100} for sid in range(4)}, "A")
    _, b = table({2: {"a": 0.4}, 3: {"a": None}, 4: {"a": 0.9}, 5: {"a": 0.9}}, "B")
    diff = paired(a, b, None, BootstrapSettings())
    j = diff.columns.index("a")
    assert diff.scripts[j] == 1 and diff.difference[j] == pytest.approx(0.52 - 0.4)
    assert math.isnan(diff.low[j]) and not diff.significant[j]  # one shared script: no interval


def test_identical_rows_tie_exactly():
    _, a = table({sid: {"a": sid / 7, "b": 0.5, "c": 0.25} for sid in range(7)}, "A")
    diff = paired(a, a, DIMS, BootstrapSettings())
    assert np.allclose(diff.difference, 0) and np.allclose(diff.low, 0) and np.allclose(diff.high, 0)
    assert not diff.significant.any()


def test_settings_are_checked():
    with pytest.raises(ValueError, match="resamples"):
        BootstrapSettings(resamples=0)
    with pytest.raises(ValueError, match="level"):
        BootstrapSettings(level=1.5)


def test_settings_from_the_run_config_name_the_bad_key():
    from narrastream.report.bootstrap import BootstrapConfigError

    assert BootstrapSettings.from_config({"resamples": "200", "seed": 3}) == BootstrapSettings(resamples=200, seed=3)
    assert BootstrapSettings.from_config(None) == BootstrapSettings()
    with pytest.raises(BootstrapConfigError, match="report.bootstrap.sed: unknown key"):
        BootstrapSettings.from_config({"sed": 1})
    with pytest.raises(BootstrapConfigError, match="report.bootstrap: bootstrap resamples must be >= 1"):
        BootstrapSettings.from_config({"resamples": 0})
