"""Where a row's score comes from: by taxonomy group (derived dimension, scene, template), by prompt
switch and by segment, and per script.

Group scores use the leaderboard's own aggregation (:func:`narrastream.report.bootstrap.aggregate_weighted`)
restricted to the group's scripts, so a group cell is exactly what the leaderboard would show for
those scripts alone. Per-switch and per-segment series come from the records' ``items``: an item with
a ``transition`` (or ``seam``) index belongs to the switch from segment k to k+1, one with a
``segment`` index to segment k; its value is the item's ``score`` (or ``mapped`` similarity, or the
``local`` consistency of subject/background consistency); the consistency metrics' summary item adds
the similarity of adjacent segments at each switch. Items carry no value comparable across metrics
otherwise (e.g. VTSS's raw quality before its anchors), and those metrics have no series.
Segments and switches are numbered from 1 in the report (item indices are 0-based).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from narrastream.data.taxonomy import load_taxonomy
from narrastream.report.bootstrap import (
    BootstrapSettings,
    Intervals,
    ScriptScores,
    VALID_STATUSES,
    aggregate_weighted,
    from_cells,
    intervals,
)
from narrastream.results.records import Record

SWITCH_INDEX_KEYS = ("transition", "seam")
VALUE_KEYS = ("score", "mapped", "local")
GROUPINGS = ("dimension", "scene", "template")


def taxonomy_groups(scripts: Iterable[int], grouping: str) -> dict[str, list[int]]:
    """Script ids by taxonomy ``grouping`` (``dimension``, ``scene`` or ``template``), in taxonomy order.

    Only meaningful for the official file (the taxonomy is derived from the line index).
    """
    taxonomy = load_taxonomy()
    groups: dict[str, list[int]] = {}
    if grouping == "dimension":
        for name in taxonomy.dimensions:
            groups[name] = []
    elif grouping == "scene":
        for name in taxonomy.scenes:
            groups[name] = []
    for sid in sorted(set(int(s) for s in scripts)):
        key = taxonomy.derive(sid)[grouping]
        name = f"template {key} (cast {taxonomy.cast_size[key]})" if grouping == "template" else str(key)
        groups.setdefault(name, []).append(sid)
    return {name: ids for name, ids in groups.items() if ids}


def group_scores(scores: ScriptScores, groups: Mapping[str, Sequence[int]],
                 dimensions: Mapping[str, Sequence[str]] | None) -> dict[str, np.ndarray]:
    """Per group: the aggregation over its scripts (metric columns, then dimensions and overall)."""
    where = {int(s): i for i, s in enumerate(scores.scripts)}
    out = {}
    for name, ids in groups.items():
        weights = np.zeros((1, scores.n))
        for sid in ids:
            if (i := where.get(int(sid))) is not None:
                weights[0, i] = 1.0
        out[name] = aggregate_weighted(scores, weights, dimensions)[0]
    return out


def script_overall(scores: ScriptScores, dimensions: Mapping[str, Sequence[str]]) -> np.ndarray:
    """One number per script, to pick the gallery's worst and best: the official rule on that script
    alone, over the metrics it has (each dimension the mean of its metrics present, then the mean of
    the dimensions present). With every metric present it is that script's ``overall``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        means = scores.sums / scores.counts
    where = {c: j for j, c in enumerate(scores.columns)}
    dims = []
    for metrics in dimensions.values():
        cols = [where[m] for m in metrics if m in where]
        block = means[:, cols]
        present = np.isfinite(block)
        with np.errstate(invalid="ignore", divide="ignore"):
            dims.append(np.where(present, block, 0).sum(axis=1) / present.sum(axis=1))
    block = np.stack(dims, axis=1)
    present = np.isfinite(block)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(present, block, 0).sum(axis=1) / present.sum(axis=1)


@dataclass
class Series:
    """One metric's per-switch (``kind="switch"``) or per-segment values of one row, by 0-based index."""

    metric: str
    kind: str
    positions: list[int]
    intervals: Intervals  # columns are str(position)


def item_values(record: Record) -> tuple[str, dict[int, float]] | None:
    """``(kind, {index: value})`` from a record's per-segment or per-switch items (summary items aside),
    or None when its items carry no such series."""
    if record.status not in VALID_STATUSES or not record.items:
        return None
    values: dict[int, float] = {}
    kind = None
    for item in record.items:
        if not isinstance(item, Mapping):
            return None
        if item.get("summary"):
            continue
        index_key = next((k for k in SWITCH_INDEX_KEYS if isinstance(item.get(k), int)), None)
        item_kind = "switch" if index_key else ("segment" if isinstance(item.get("segment"), int) else None)
        if item_kind is None or (kind is not None and item_kind != kind):
            return None
        kind = item_kind
        value = next((item[k] for k in VALUE_KEYS if _is_number(item.get(k))), None)
        if value is not None:
            values[int(item[index_key or "segment"])] = float(value)
    return (kind, values) if kind and values else None


def item_series(record: Record) -> dict[str, tuple[str, dict[int, float]]]:
    """Every series a record's items hold, by name: the metric's own (:func:`item_values`) and, for the
    consistency metrics, the similarity between adjacent segments' medoids at each switch
    (``<metric> · adjacent similarity``, from the summary item's ``inter_adjacent_similarities``)."""
    out = {}
    if (found := item_values(record)) is not None:
        out[record.metric] = found
    if record.status in VALID_STATUSES:
        for item in record.items:
            if isinstance(item, Mapping) and item.get("summary"):
                similarities = item.get("inter_adjacent_similarities")
                if isinstance(similarities, list) and similarities and all(_is_number(v) for v in similarities):
                    series = dict(enumerate(map(float, similarities)))
                    out[f"{record.metric} · adjacent similarity"] = ("switch", series)
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def row_series(records: Iterable[Record], settings: BootstrapSettings) -> dict[str, Series]:
    """Per metric with an item series: the mean per switch (or segment) over scripts, with intervals."""
    cells: dict[str, dict[int, dict[int, tuple[float, int]]]] = {}
    kinds: dict[str, str] = {}
    for rec in records:
        for name, (kind, values) in item_series(rec).items():
            if kinds.setdefault(name, kind) != kind:
                continue
            per_script = cells.setdefault(name, {}).setdefault(int(rec.script_id), {})
            for index, value in values.items():
                total, count = per_script.get(index, (0.0, 0))
                per_script[index] = (total + value, count + 1)
    out = {}
    for metric, by_script in cells.items():
        positions = sorted({i for per in by_script.values() for i in per})
        column = {p: j for j, p in enumerate(positions)}
        remapped = {sid: {column[i]: v for i, v in per.items()} for sid, per in by_script.items()}
        scores = from_cells(remapped, [str(p) for p in positions])
        out[metric] = Series(metric, kinds[metric], positions, intervals(scores, None, settings))
    return out


def position_label(kind: str, index: int) -> str:
    """``switch 2→3`` / ``segment 3`` for 0-based item index ``index`` (segments numbered from 1)."""
    return f"switch {index + 1}→{index + 2}" if kind == "switch" else f"segment {index + 1}"
