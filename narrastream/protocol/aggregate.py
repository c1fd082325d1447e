"""Metric -> dimension -> overall, the official rule, computed from per-item records only.

A metric's score is the mean of its valid (non-null) per-item scores; a dimension's score is the
unweighted mean of its metric scores, reported only when every metric of the dimension has one;
``overall`` is the mean of the dimension scores, reported only when all of them are (all 11 metrics
of the protocol). A mean over fewer metrics is another quantity than the published one, so it is
never shown under the same name: such a row is ``partial`` and names its missing metrics. Nothing is
dropped silently: coverage, fallback, failure and skip counts travel with every number, and
``metrics_reported`` says how many of the protocol's metrics have a score.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import pandas as pd

from narrastream.results.records import Record


def dimension_scores(metric_scores: Mapping[str, float | None],
                     dimensions: Mapping[str, Sequence[str]]) -> dict[str, float | None]:
    """Dimension means and ``overall`` from metric scores; a mean only over complete parts.

    A dimension with a missing (or None) metric has no score, and then ``overall`` has none either:

    >>> dims = {"quality": ["a", "b"], "temporal": ["c"], "instruction": ["d"]}
    >>> out = dimension_scores({"a": 0.5, "b": 1.0, "c": 0.25, "d": None}, dims)
    >>> out["quality"], out["temporal"], out["instruction"], out["overall"]
    (0.75, 0.25, None, None)
    >>> dimension_scores({"a": 0.5, "b": 1.0, "c": 0.25, "d": 0.5}, dims)["overall"]
    0.5
    """
    out: dict[str, float | None] = {}
    for dim, metrics in dimensions.items():
        values = [metric_scores.get(m) for m in metrics]
        complete = bool(values) and all(_is_number(v) for v in values)
        out[dim] = sum(values) / len(values) if complete else None  # type: ignore[arg-type]
    dims = [out[d] for d in dimensions]
    out["overall"] = sum(dims) / len(dims) if dims and all(v is not None for v in dims) else None  # type: ignore[misc]
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def records_frame(records: Iterable[Record]) -> pd.DataFrame:
    """One row per record with the columns the aggregation needs (``config_id`` "" when a record has none),
    in key order: the means then add the same numbers in the same order however the records were split
    across shard files."""
    rows = [
        {"model": r.model, "config_id": r.config_id or "", "script_id": r.script_id, "seed": r.seed,
         "metric": r.metric, "score": r.score, "status": r.status, "protocol": r.protocol}
        for r in records
    ]
    columns = ["model", "config_id", "script_id", "seed", "metric", "score", "status", "protocol"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values(["model", "config_id", "script_id", "seed", "metric"], kind="stable").reset_index(drop=True)


def aggregate(records: Iterable[Record], dimensions: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """One row per (model, configuration): metric scores in [0, 1], dimension scores, overall, the counts.

    Give it one record per (model, config_id, script, seed, metric) (the leaderboard keeps the
    latest). ``missing_metrics`` lists the protocol's metrics without a score; ``<metric>_valid``,
    ``_fallback``, ``_failed`` and ``_skipped`` count the records behind each metric.
    """
    frame = records_frame(records)
    metrics = [m for ms in dimensions.values() for m in ms]
    rows = []
    for (model, cid), group in frame.groupby(["model", "config_id"], sort=True):
        items = group[["script_id", "seed"]].drop_duplicates()
        row: dict[str, object] = {
            "model": model,
            "config_id": cid,
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
            row[f"{metric}_skipped"] = int((m["status"] == "skipped").sum())
        row.update(scores)
        row.update(dimension_scores(scores, dimensions))
        row["metrics_reported"] = sum(1 for m in metrics if scores[m] is not None)
        row["metrics_total"] = len(metrics)
        row["missing_metrics"] = " ".join(m for m in metrics if scores[m] is None)
        rows.append(row)
    return pd.DataFrame(rows)
