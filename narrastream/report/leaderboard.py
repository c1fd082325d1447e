"""Build ``leaderboard.csv`` / ``leaderboard.md`` from one or more run folders.

Shards of one run, and several runs, merge by record key, so N shards give the same table as one.
Scores are shown x100 with 2 decimals, as the paper reports them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
import yaml

from narrastream.paths import config_dir, reports_dir
from narrastream.protocol.aggregate import aggregate, dimension_scores
from narrastream.results.records import RecordStore, latest_by_key
from narrastream.results.rundir import RunDir

log = logging.getLogger(__name__)
REFERENCE_FILE = "reference/narrastream_bench_published.csv"


def load_protocol(run_dir: Path | None = None) -> dict:
    """The protocol section a run used (its config.yaml), else the default protocol file."""
    if run_dir is not None and (run_dir / "config.yaml").is_file():
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        if "protocol" in cfg:
            return cfg["protocol"]
    return yaml.safe_load((config_dir() / "protocol" / "narrastream_v1.yaml").read_text())


def metric_columns(dimensions: Mapping[str, Sequence[str]]) -> list[str]:
    return [m for metrics in dimensions.values() for m in metrics]


def load_reference(dimensions: Mapping[str, Sequence[str]], path: Path | None = None) -> pd.DataFrame:
    """The published table as leaderboard rows (already x100), with overall recomputed beside it."""
    table = pd.read_csv(path or reports_dir() / REFERENCE_FILE)
    metrics = metric_columns(dimensions)
    rows = []
    for _, published in table.iterrows():
        scores = {m: float(published[m]) for m in metrics}
        row = {"model": published["method"], "source": "published", **scores}
        row.update(dimension_scores(scores, dimensions))
        row["overall_published"] = float(published["overall"])
        row["metrics_reported"] = len(metrics)
        row["metrics_total"] = len(metrics)
        rows.append(row)
    return pd.DataFrame(rows)


def build_leaderboard(run_dirs: Sequence[Path | str], *, with_reference: bool = False) -> pd.DataFrame:
    """One row per model over all records in ``run_dirs`` (latest record per key wins)."""
    dirs = [Path(d) for d in run_dirs]
    for d in dirs:
        if not (d / "records").is_dir():
            raise FileNotFoundError(f"{d}: no records/ folder (not a narrastream run, or nothing evaluated yet)")
    protocols = [load_protocol(d) for d in dirs]
    dims = protocols[0]["dimensions"]
    for d, p in zip(dirs[1:], protocols[1:]):
        if p["dimensions"] != dims:
            raise ValueError(f"{d}: its protocol's dimensions differ from {dirs[0]}'s; cannot share a leaderboard")
    records = []
    for d in dirs:
        records.extend(RecordStore(RunDir(d).records_dir).iter_all())
    table = aggregate(latest_by_key(records).values(), dims)
    metrics = metric_columns(dims)
    score_columns = [*metrics, *dims.keys(), "overall"]
    if not table.empty:
        table[score_columns] = table[score_columns].astype(float) * 100.0
        table.insert(1, "source", "run")
    if with_reference:
        table = pd.concat([table, load_reference(dims)], ignore_index=True)
    if not table.empty:
        table[score_columns] = table[score_columns].astype(float).round(2)
        table = table.sort_values("overall", ascending=False, na_position="last", kind="stable")
    return table.reset_index(drop=True)


def ordered_columns(table: pd.DataFrame) -> list[str]:
    """Identity, scores, then counts: the order a reader scans in."""
    first = ["model", "source", "protocol", "scripts", "items"]
    counts = [c for c in table.columns if c.endswith(("_valid", "_fallback", "_failed"))]
    tail = ["metrics_reported", "metrics_total", "overall_published"]
    middle = [c for c in table.columns if c not in first + counts + tail]
    return [c for c in first + middle + tail + counts if c in table.columns]


def to_markdown(table: pd.DataFrame, dimensions: Mapping[str, Sequence[str]]) -> str:
    """A compact Markdown table: scores only, with coverage notes under it."""
    metrics = metric_columns(dimensions)
    shown = ["model", "source", *metrics, *dimensions.keys(), "overall", "metrics_reported"]
    view = table[[c for c in shown if c in table.columns]].astype(object)
    view = view.where(view.notna(), None)  # tabulate shows None, not NaN, as the missing value
    body = view.to_markdown(index=False, floatfmt=".2f", missingval="–")
    notes = []
    for _, row in table.iterrows():
        if row.get("source") != "run":
            continue
        partial = f"{int(row['metrics_reported'])}/{int(row['metrics_total'])} metrics"
        flagged = [f"{m}: {int(row[f'{m}_fallback'])} fallback, {int(row[f'{m}_failed'])} failed"
                   for m in metrics if row.get(f"{m}_fallback", 0) or row.get(f"{m}_failed", 0)]
        notes.append(f"- {row['model']}: {partial} over {int(row['scripts'])} scripts"
                     + (f"; {'; '.join(flagged)}" if flagged else ""))
    return body + ("\n\n" + "\n".join(notes) if notes else "") + "\n"


def write_leaderboard(table: pd.DataFrame, csv_path: Path | str, *, markdown_path: Path | str | None = None,
                      dimensions: Mapping[str, Sequence[str]] | None = None) -> None:
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    table[ordered_columns(table)].to_csv(csv_path, index=False, float_format="%.2f")
    if markdown_path is not None:
        dims = dimensions or load_protocol()["dimensions"]
        Path(markdown_path).write_text(to_markdown(table, dims))
