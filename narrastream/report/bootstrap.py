"""Bootstrap confidence intervals over scripts, for leaderboard cells and paired differences.

The unit that is resampled is the **script**: the 324 scripts are a sample of the narratives the
benchmark stands for, and a model's seeds (and a script's segments) are not independent of their
script. One resample draws ``n`` scripts with replacement and recomputes **the whole aggregation**
on them, exactly as the leaderboard computes it from all scripts:

* a metric's score is the mean of its valid item scores (an item is a script x seed), so a
  resample's metric score is ``sum(item scores of the drawn scripts) / count(items)``: a script drawn
  twice counts twice, and a script without a valid score for the metric (failed, skipped) adds
  nothing to that metric;
* a dimension is the mean of its metric scores and ``overall`` the mean of the dimensions, each
  only when every part has a score (:func:`narrastream.protocol.aggregate.dimension_scores`).

The interval is the percentile interval of the resampled statistic (2.5 % and 97.5 % for 95 %). A
row with fewer than two scripts with a value gets no interval: one script says nothing about how
the score varies between scripts. A paired comparison draws the same scripts for both rows, from the
scripts both have a value for, so what the two rows share cancels out of the difference.

Everything is seeded (``BootstrapSettings.seed``): the same records give the same intervals, on
any machine. Resampling is done with a count matrix (``resamples x scripts``), so 1000 resamples of
324 scripts x 11 metrics is one matrix product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Iterable, Mapping, Sequence

import numpy as np

from narrastream.results.records import Record

#: statuses whose score counts (as in narrastream.protocol.aggregate)
VALID_STATUSES = ("ok", "fallback")


class BootstrapConfigError(ValueError):
    """Bad ``report.bootstrap`` settings in the run config (the message names the key)."""


@dataclass(frozen=True)
class BootstrapSettings:
    """How intervals are computed; written beside every interval (CSV columns, report, results file)."""

    resamples: int = 1000
    seed: int = 0
    level: float = 0.95

    def __post_init__(self) -> None:
        if self.resamples < 1:
            raise ValueError(f"bootstrap resamples must be >= 1, got {self.resamples}")
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"interval level must be in (0, 1), got {self.level}")

    @classmethod
    def from_config(cls, section: Mapping[str, object] | None) -> "BootstrapSettings":
        """From the run config's ``report.bootstrap`` (``resamples``, ``seed``, ``level``); errors name the key."""
        section = dict(section or {})
        unknown = sorted(set(section) - {"resamples", "seed", "level"})
        if unknown:
            raise BootstrapConfigError(f"report.bootstrap.{unknown[0]}: unknown key (known: resamples, seed, level)")
        try:
            values = {k: (float if k == "level" else int)(v) for k, v in section.items()}  # type: ignore[arg-type]
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise BootstrapConfigError(f"report.bootstrap: {exc}") from None

    def describe(self) -> str:
        return (f"{self.level:.0%} percentile bootstrap intervals over scripts, {self.resamples} resamples, "
                f"seed {self.seed}")


@dataclass
class ScriptScores:
    """One leaderboard row's valid item scores, summed per script and column.

    ``sums[i, j]`` is the sum of the valid scores of script ``scripts[i]`` for column ``columns[j]``
    (over its seeds), ``counts[i, j]`` their number. Columns are metrics (or any per-script series,
    e.g. the per-switch values of the report).
    """

    scripts: np.ndarray
    columns: list[str]
    sums: np.ndarray
    counts: np.ndarray

    @property
    def n(self) -> int:
        return len(self.scripts)

    def subset(self, scripts: Sequence[int]) -> "ScriptScores":
        """The rows of ``scripts`` (absent ones get zero counts), in that order."""
        where = {int(s): i for i, s in enumerate(self.scripts)}
        sums = np.zeros((len(scripts), len(self.columns)))
        counts = np.zeros((len(scripts), len(self.columns)))
        for k, s in enumerate(scripts):
            if (i := where.get(int(s))) is not None:
                sums[k], counts[k] = self.sums[i], self.counts[i]
        return ScriptScores(np.asarray(list(scripts), dtype=int), list(self.columns), sums, counts)


def script_scores(records: Iterable[Record], columns: Sequence[str]) -> ScriptScores:
    """Sum and count the valid scores of ``records`` (one row's latest records) per script and metric.

    Every script with a record is a row, even one with no valid score (it counts as a script the row
    covers: a failed video is part of the sample).
    """
    index = {c: j for j, c in enumerate(columns)}
    cells: dict[int, dict[int, tuple[float, int]]] = {}
    for rec in records:
        row = cells.setdefault(int(rec.script_id), {})
        j = index.get(rec.metric)
        if j is None or rec.status not in VALID_STATUSES or not _is_number(rec.score):
            continue
        total, count = row.get(j, (0.0, 0))
        row[j] = (total + float(rec.score), count + 1)
    return from_cells(cells, columns)


def from_cells(cells: Mapping[int, Mapping[int, tuple[float, int]]], columns: Sequence[str]) -> ScriptScores:
    """A :class:`ScriptScores` from ``{script: {column index: (sum, count)}}``."""
    scripts = sorted(cells)
    sums = np.zeros((len(scripts), len(columns)))
    counts = np.zeros((len(scripts), len(columns)))
    for i, s in enumerate(scripts):
        for j, (total, count) in cells[s].items():
            sums[i, j], counts[i, j] = total, count
    return ScriptScores(np.asarray(scripts, dtype=int), list(columns), sums, counts)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def score_columns(dimensions: Mapping[str, Sequence[str]]) -> list[str]:
    """Metric, dimension and overall columns, in leaderboard order."""
    return [*(m for ms in dimensions.values() for m in ms), *dimensions, "overall"]


def aggregate_weighted(scores: ScriptScores, weights: np.ndarray,
                       dimensions: Mapping[str, Sequence[str]] | None) -> np.ndarray:
    """The aggregation for each row of ``weights`` (how often each script counts): ``(R, C)``.

    Columns are ``scores.columns`` followed, when ``dimensions`` is given, by the dimensions and
    ``overall``; NaN where a value is undefined (no valid score, or a dimension with a missing metric).
    """
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (weights @ scores.sums) / (weights @ scores.counts)
    if dimensions is None:
        return means
    where = {c: j for j, c in enumerate(scores.columns)}
    dims = []
    for metrics in dimensions.values():
        cols = [where[m] for m in metrics if m in where]
        if len(cols) != len(metrics) or not cols:
            dims.append(np.full(len(weights), np.nan))
        else:
            dims.append(means[:, cols].mean(axis=1))  # NaN if any metric is NaN: the official rule
    dim_block = np.stack(dims, axis=1) if dims else np.empty((len(weights), 0))
    overall = dim_block.mean(axis=1, keepdims=True) if dims else np.full((len(weights), 1), np.nan)
    return np.concatenate([means, dim_block, overall], axis=1)


def resample_counts(n: int, settings: BootstrapSettings) -> np.ndarray:
    """``(resamples, n)`` counts: how often each of ``n`` scripts is drawn in each resample (seeded).

    The same ``n`` and settings always give the same draw (cached; do not modify the array).
    """
    return _resample_counts(n, settings.resamples, settings.seed)


@lru_cache(maxsize=16)
def _resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    settings = BootstrapSettings(resamples=resamples, seed=seed)
    rng = np.random.default_rng(settings.seed)
    draws = rng.integers(0, n, size=(settings.resamples, n))
    flat = (draws + n * np.arange(settings.resamples)[:, None]).ravel()
    counts = np.bincount(flat, minlength=settings.resamples * n).reshape(settings.resamples, n).astype(float)
    counts.flags.writeable = False
    return counts


def _percentiles(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Per column: the ``(1-level)/2`` and ``(1+level)/2`` percentiles over the defined resamples."""
    low, high = np.full(samples.shape[1], np.nan), np.full(samples.shape[1], np.nan)
    for j in range(samples.shape[1]):
        column = samples[:, j]
        column = column[np.isfinite(column)]
        if len(column):
            low[j], high[j] = np.percentile(column, [50 * (1 - level), 50 * (1 + level)])
    return low, high


@dataclass
class Intervals:
    """Point estimates and intervals per column (``columns``), on the records' [0, 1] scale."""

    columns: list[str]
    value: np.ndarray
    low: np.ndarray
    high: np.ndarray
    scripts: np.ndarray  # scripts with a value, per column

    def as_dict(self) -> dict[str, tuple[float, float, float]]:
        return {c: (self.value[j], self.low[j], self.high[j]) for j, c in enumerate(self.columns)}


def scripts_with_value(scores: ScriptScores, dimensions: Mapping[str, Sequence[str]] | None) -> np.ndarray:
    """Per output column, the scripts that contribute: any valid score for a metric; for a dimension or
    overall, the scripts with a score for at least one of their metrics."""
    has = scores.counts > 0
    per_metric = has.sum(axis=0)
    if dimensions is None:
        return per_metric
    where = {c: j for j, c in enumerate(scores.columns)}
    dims = []
    for metrics in dimensions.values():
        cols = [where[m] for m in metrics if m in where]
        dims.append(int(has[:, cols].any(axis=1).sum()) if cols else 0)
    every = [where[m] for ms in dimensions.values() for m in ms if m in where]
    overall = int(has[:, every].any(axis=1).sum()) if every else 0
    return np.concatenate([per_metric, np.asarray(dims, dtype=float), [overall]])


def intervals(scores: ScriptScores, dimensions: Mapping[str, Sequence[str]] | None,
              settings: BootstrapSettings) -> Intervals:
    """Point estimate and percentile interval of every column (metrics, then dimensions and overall).

    No interval (NaN) where the value is undefined or fewer than two scripts have a value.
    """
    columns = list(scores.columns) + (list(dimensions) + ["overall"] if dimensions is not None else [])
    if scores.n:
        value = aggregate_weighted(scores, np.ones((1, scores.n)), dimensions)[0]
    else:
        value = np.full(len(columns), np.nan)
    contributing = scripts_with_value(scores, dimensions) if scores.n else np.zeros(len(columns))
    low = np.full(len(columns), np.nan)
    high = np.full(len(columns), np.nan)
    if scores.n >= 2:
        samples = aggregate_weighted(scores, resample_counts(scores.n, settings), dimensions)
        low, high = _percentiles(samples, settings.level)
    undefined = ~np.isfinite(value) | (contributing < 2)
    low[undefined] = np.nan
    high[undefined] = np.nan
    return Intervals(columns, value, low, high, contributing)


@dataclass
class PairedDifference:
    """``a - b`` per column over the scripts both rows share, with its paired bootstrap interval.

    ``significant`` when the interval excludes 0; ``half_width`` is half the interval's width (a
    difference smaller than it cannot be told from zero at this number of scripts) and ``mde`` the
    difference a two-sided test at ``1 - level`` would detect with 80 % power, ``(z + z_0.8) x SE``
    with SE the bootstrap standard deviation of the difference.
    """

    columns: list[str]
    scripts: np.ndarray  # shared scripts with a value in both rows, per column
    a: np.ndarray
    b: np.ndarray
    difference: np.ndarray
    low: np.ndarray
    high: np.ndarray
    se: np.ndarray
    settings: BootstrapSettings

    @property
    def significant(self) -> np.ndarray:
        return (self.low > 0) | (self.high < 0)

    @property
    def half_width(self) -> np.ndarray:
        return (self.high - self.low) / 2

    @property
    def mde(self) -> np.ndarray:
        z = NormalDist().inv_cdf(0.5 + self.settings.level / 2) + NormalDist().inv_cdf(0.8)
        return z * self.se


def paired(a: ScriptScores, b: ScriptScores, dimensions: Mapping[str, Sequence[str]] | None,
           settings: BootstrapSettings) -> PairedDifference:
    """Row ``a`` minus row ``b`` on the scripts both cover, resampling the same scripts for both.

    A metric cell counts only where both rows have a valid score for that script (a script one row
    failed on is left out of that metric for both), so the two sides are always means over the same
    scripts.
    """
    if a.columns != b.columns:
        raise ValueError("paired comparison needs the same columns on both sides")
    shared = sorted(set(map(int, a.scripts)) & set(map(int, b.scripts)))
    a, b = a.subset(shared), b.subset(shared)
    both = (a.counts > 0) & (b.counts > 0)
    a = ScriptScores(a.scripts, a.columns, np.where(both, a.sums, 0.0), np.where(both, a.counts, 0.0))
    b = ScriptScores(b.scripts, b.columns, np.where(both, b.sums, 0.0), np.where(both, b.counts, 0.0))
    ones = np.ones((1, len(shared)))
    value_a = aggregate_weighted(a, ones, dimensions)[0]
    value_b = aggregate_weighted(b, ones, dimensions)[0]
    difference = value_a - value_b
    ncols = len(difference)
    contributing = scripts_with_value(a, dimensions) if shared else np.zeros(ncols)
    low, high, se = np.full(ncols, np.nan), np.full(ncols, np.nan), np.full(ncols, np.nan)
    if len(shared) >= 2:
        counts = resample_counts(len(shared), settings)
        samples = aggregate_weighted(a, counts, dimensions) - aggregate_weighted(b, counts, dimensions)
        low, high = _percentiles(samples, settings.level)
        with np.errstate(invalid="ignore"):
            se = np.array([np.std(c[np.isfinite(c)], ddof=1) if np.isfinite(c).sum() > 1 else np.nan
                           for c in samples.T])
    undefined = ~np.isfinite(difference) | (contributing < 2)
    for arr in (low, high, se):
        arr[undefined] = np.nan
    columns = list(a.columns) + (list(dimensions) + ["overall"] if dimensions is not None else [])
    return PairedDifference(columns, contributing, value_a, value_b, difference, low, high, se, settings)
