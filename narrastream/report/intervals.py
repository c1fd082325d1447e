"""Interval columns of the leaderboard: one code path for ``leaderboard.csv``, ``.md``, the report and
the results file.

For each run row (one model and configuration) and each score column (metric, dimension, overall),
``<column>_ci_low`` / ``<column>_ci_high`` hold the bootstrap interval of that row's value
(:mod:`narrastream.report.bootstrap`), and ``ci_level``, ``bootstrap_resamples``, ``bootstrap_seed``
say how it was computed. Published rows have no interval (their per-script scores are not public).
A partial row has intervals exactly where it has values.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from narrastream.report.bootstrap import BootstrapSettings, ScriptScores, intervals, script_scores, score_columns
from narrastream.results.records import Record

RowKey = tuple[str, str]  # (model, config_id)
SETTINGS_COLUMNS = ("ci_level", "bootstrap_resamples", "bootstrap_seed")


def ci_columns(column: str) -> tuple[str, str]:
    return f"{column}_ci_low", f"{column}_ci_high"


def row_scores(records: Iterable[Record], dimensions: Mapping[str, Sequence[str]]) -> dict[RowKey, ScriptScores]:
    """Per (model, config_id): the valid scores summed per script and metric (give the latest records)."""
    metrics = [m for ms in dimensions.values() for m in ms]
    grouped: dict[RowKey, list[Record]] = {}
    for rec in records:
        grouped.setdefault((rec.model, rec.config_id or ""), []).append(rec)
    return {key: script_scores(recs, metrics) for key, recs in grouped.items()}


def add_intervals(table: pd.DataFrame, scores: Mapping[RowKey, ScriptScores],
                  dimensions: Mapping[str, Sequence[str]], settings: BootstrapSettings) -> pd.DataFrame:
    """``table`` (run rows, scores on the [0, 1] scale) with the interval and settings columns added."""
    columns = score_columns(dimensions)
    table = table.copy()
    values: dict[str, list[float]] = {c: [] for col in columns for c in ci_columns(col)}
    for model, cid in zip(table["model"], table["config_id"]):
        row = scores.get((model, cid))
        found = intervals(row, dimensions, settings).as_dict() if row is not None else {}
        for col in columns:
            _, low, high = found.get(col, (np.nan, np.nan, np.nan))
            values[ci_columns(col)[0]].append(low)
            values[ci_columns(col)[1]].append(high)
    for name, column in values.items():
        table[name] = column
    table["ci_level"] = settings.level
    table["bootstrap_resamples"] = settings.resamples
    table["bootstrap_seed"] = settings.seed
    return table


def plus_minus(value: float | None, low: float | None, high: float | None, digits: int = 2) -> str:
    """``73.21 ± 0.80`` (half the interval's width), or the bare value when there is no interval.

    >>> plus_minus(73.2134, 72.4, 74.0)
    '73.21 ± 0.80'
    >>> plus_minus(75.73, float("nan"), float("nan"))
    '75.73'
    >>> plus_minus(None, None, None)
    ''
    """
    if value is None or pd.isna(value):
        return ""
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ± {(high - low) / 2:.{digits}f}"
