"""Metric -> dimension -> overall, the official rule, computed from per-item records only.

A metric's score is the mean of its valid (non-null) per-item scores; a dimension's score is the
unweighted mean of its available metric scores; ``overall`` is the mean of the available dimension
scores. Unlike the official evaluator, nothing is dropped silently: coverage, fallback and failure
counts travel with every number, and ``metrics_reported`` says how many of the protocol's metrics
stand behind ``overall``.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import pandas as pd

from narrastream.results.records import Record


def dimension_scores(metric_scores: Mapping[str, float | None],
                     dimensions: Mapping[str, Sequence[str]]) -> dict[str, float | None]:
    """Dimension means and ``overall`` from metric scores (missing or None metrics are left out).

    >>> dims = {"quality": ["a", "b"], "temporal": ["c"], "instruction": ["d"]}
    >>> out = dimension_scores({"a": 0.5, "b": 1.0, "c": 0.25, "d": None}, dims)
    >>> out["quality"], out["temporal"], out["instruction"], out["overall"]
    (0.75, 0.25, None, 0.5)
    """
    out: dict[str, float | None] = {}
    for dim, metrics in dimensions.items():
        values = [metric_scores[m] for m in metrics if _is_number(metric_scores.get(m))]
        out[dim] = sum(values) / len(values) if values else None
    dims = [v for k, v in out.items() if v is not None]
    out["overall"] = sum(dims) / len(dims) if dims else None
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def records_frame(records: Iterable[Record]) -> pd.DataFrame:
    """One row per record with the columns the aggregation needs, in key order: the means then add the
    same numbers in the same order however the records were split across shard files."""
    rows = [
        {"model": r.model, "script_id": r.script_id, "seed": r.seed, "metric": r.metric, "score": r.score,
         "status": r.status, "protocol": r.protocol}
        for r in records
    ]
    columns = ["model", "script_id", "seed", "metric", "score", "status", "protocol"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values(["model", "script_id", "seed", "metric"], kind="stable").reset_index(drop=True)


def aggregate(records: Iterable[Record], dimensions: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """One row per model: metric scores in [0, 1], dimension scores, overall and the counts."""
    frame = records_frame(records)
    metrics = [m for ms in dimensions.values() for m in ms]
    rows = []
    for model, group in frame.groupby("model", sort=True):
        items = group[["script_id", "seed"]].drop_duplicates()
        row: dict[str, object] = {
            "model": model,
            "protocol": ",".join(sorted(group["protocol"].unique())),
            "scripts": int(items["script_id"].nunique()),
            "items": int(len(items)),
        }
        scores: dict[str, float | None] = {}
        for metric in metrics:
            m = group[group["metric"] == metric]
            valid = m[m["status"].isin(["ok", "fallback"]) & m["score"].notna()]
            scores[metric] = float(valid["score"].mean()) if len(valid) else None
            row[f"{metric}_valid"] = int(len(valid))
            row[f"{metric}_fallback"] = int((m["status"] == "fallback").sum())
            row[f"{metric}_failed"] = int((m["status"] == "failed").sum())
        row.update(scores)
        row.update(dimension_scores(scores, dimensions))
        row["metrics_reported"] = sum(1 for m in metrics if scores[m] is not None)
        row["metrics_total"] = len(metrics)
        rows.append(row)
    return pd.DataFrame(rows)
