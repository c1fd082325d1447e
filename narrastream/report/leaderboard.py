"""Build ``leaderboard.csv`` / ``leaderboard.md`` from one or more run folders.

A row is one (model, configuration): records made under different settings (backbone weights,
judge, annotations, protocol, generator; :mod:`narrastream.results.configuration`) are never averaged
together, each configuration is its own row with its ``config_id``, and a note names the fields in
which a model's configurations differ. Shards of one run, and runs with the same configuration,
merge by record key, so N shards give the same table as one. A configuration whose every score also
appears, computed identically (same cache key), in a more complete one of the same model (e.g. a run
with ``judge=none`` followed by the same run with a judge) is not repeated as its own row: the
covering row's note names it.

Only rows over the whole protocol (all 11 metrics: ``overall``) made with real weights, a real judge
and a generator that did not read the evaluation annotations are ranked, beside the published rows.
Every other row is listed apart with its ``label`` (``smoke: random weights``, ``smoke: stand-in
judge``, ``oracle: ...``, ``partial (9/11)``) and never ranked. Scores are shown x100 with 2 decimals,
as the paper reports them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from narrastream.paths import reports_dir
from narrastream.protocol.aggregate import aggregate, dimension_scores
from narrastream.report.bootstrap import BootstrapSettings
from narrastream.report.intervals import SETTINGS_COLUMNS, add_intervals, ci_columns, plus_minus, row_scores
from narrastream.report.sources import ResultSet, load_protocol, load_results
from narrastream.results.configuration import describe_differences, oracle_reasons, smoke_reasons
from narrastream.results.records import Record, latest_by_config

log = logging.getLogger(__name__)
REFERENCE_FILE = "reference/narrastream_bench_published.csv"
__all__ = ["build_leaderboard", "leaderboard_from", "load_protocol", "load_reference", "to_markdown",
           "write_leaderboard"]


def metric_columns(dimensions: Mapping[str, Sequence[str]]) -> list[str]:
    return [m for metrics in dimensions.values() for m in metrics]


def load_reference(dimensions: Mapping[str, Sequence[str]], path: Path | None = None) -> pd.DataFrame:
    """The published table as leaderboard rows (already x100), with overall recomputed beside it."""
    table = pd.read_csv(path or reports_dir() / REFERENCE_FILE)
    metrics = metric_columns(dimensions)
    rows = []
    for _, published in table.iterrows():
        scores = {m: float(published[m]) for m in metrics}
        row = {"model": published["method"], "config_id": "", "source": "published", "label": "", **scores}
        row.update(dimension_scores(scores, dimensions))
        row["overall_published"] = float(published["overall"])
        row["metrics_reported"] = len(metrics)
        row["metrics_total"] = len(metrics)
        rows.append(row)
    return pd.DataFrame(rows)


def build_leaderboard(sources: Sequence[Path | str], *, with_reference: bool = False,
                      bootstrap: BootstrapSettings | None = BootstrapSettings()) -> pd.DataFrame:
    """One row per (model, configuration) over all records in ``sources`` (run folders or results files
    written by ``narrastream export``; the latest record per key wins).

    Columns: ``model``, ``config_id``, ``source`` (run / published), ``label`` (why a row is not
    ranked; empty for ranked rows), ``rank`` (ranked rows only), the metric, dimension and overall
    scores (x100) with their bootstrap intervals (``<column>_ci_low`` / ``_ci_high``, and
    ``ci_level``, ``bootstrap_resamples``, ``bootstrap_seed``; none when ``bootstrap`` is None),
    ``missing_metrics``, ``config_note`` and the coverage counts per metric.
    ``table.attrs["invalid_records"]`` counts, per records file, the lines skipped because they are
    not valid records (each also logged as a warning naming the file and line).
    """
    return leaderboard_from(load_results(sources, with_videos=False), with_reference=with_reference,
                            bootstrap=bootstrap)


def leaderboard_from(results: ResultSet, *, with_reference: bool = False,
                     bootstrap: BootstrapSettings | None = BootstrapSettings()) -> pd.DataFrame:
    """:func:`build_leaderboard` of records already loaded (the report and the export share them)."""
    dims = results.dimensions
    latest = list(latest_by_config(results.records).values())
    table = aggregate(latest, dims)
    metrics = metric_columns(dims)
    score_columns = [*metrics, *dims.keys(), "overall"]
    scaled = list(score_columns)
    if not table.empty:
        table = _label_rows(table, latest)
        if bootstrap is not None:
            table = add_intervals(table, row_scores(latest, dims), dims, bootstrap)
            scaled += [c for col in score_columns for c in ci_columns(col)]
        table[scaled] = table[scaled].astype(float) * 100.0
        table.insert(2, "source", "run")
    if with_reference:
        table = pd.concat([table, load_reference(dims)], ignore_index=True)
    table.attrs["invalid_records"] = results.invalid_records  # kept by the reordering below (pandas attrs)
    if table.empty:
        return table
    table[scaled] = table[scaled].astype(float).round(2)
    table["label"] = table["label"].fillna("")
    ranked = table["label"].eq("") & table["overall"].notna()
    table["rank"] = pd.NA
    order = table[ranked].sort_values("overall", ascending=False, kind="stable").index
    table.loc[order, "rank"] = range(1, len(order) + 1)
    rest = table[~ranked].sort_values(["model", "config_id"], kind="stable").index
    table = table.loc[[*order, *rest]].reset_index(drop=True)
    table["rank"] = table["rank"].astype("Int64")
    table.attrs["dimensions"] = {k: list(v) for k, v in dims.items()}
    if bootstrap is not None:
        table.attrs["bootstrap"] = bootstrap
    return table


def _label_rows(table: pd.DataFrame, records: list[Record]) -> pd.DataFrame:
    """Add ``label`` and ``config_note``; drop configurations covered by a more complete one (named in its note)."""
    configurations: dict[tuple[str, str], dict | None] = {}
    scored: dict[tuple[str, str], set] = {}
    newest: dict[tuple[str, str], float] = {}
    for rec in records:
        key = (rec.model, rec.config_id or "")
        configurations.setdefault(key, rec.configuration)
        newest[key] = max(newest.get(key, 0.0), rec.created)
        if rec.status in ("ok", "fallback") and rec.score is not None:
            scored.setdefault(key, set()).add((rec.script_id, rec.seed, rec.metric, rec.cache_key))

    def labels(key: tuple[str, str]) -> list[str]:
        configuration = configurations.get(key)
        out = []
        if not key[1]:
            out.append("unknown configuration (records of an older narrastream)")
        if smoke := smoke_reasons(configuration):
            out.append("smoke: " + ", ".join(smoke))
        out += [f"oracle: {r}" for r in oracle_reasons(configuration)]
        return out

    def weight(key: tuple[str, str]) -> tuple:
        return (len(scored.get(key, ())), newest.get(key, 0.0), key[1])

    covered_by: dict[tuple[str, str], tuple[str, str]] = {}
    keys = [(m, c) for m, c in zip(table["model"], table["config_id"])]
    for x in keys:
        candidates = [y for y in keys if y != x and y[0] == x[0] and weight(y) > weight(x) and x[1] and y[1]
                      and scored.get(x, set()) <= scored.get(y, set()) and set(labels(y)) <= set(labels(x))]
        if candidates:
            covered_by[x] = max(candidates, key=weight)
    for x in list(covered_by):  # point at a shown row (covering is transitive)
        while covered_by[x] in covered_by:
            covered_by[x] = covered_by[covered_by[x]]

    shown = [k for k in keys if k not in covered_by]
    rows = []
    for (model, cid), (_, row) in zip(keys, table.iterrows()):
        if (model, cid) in covered_by:
            continue
        row = row.copy()
        parts = labels((model, cid))
        if int(row["metrics_reported"]) < int(row["metrics_total"]):
            parts.append(f"partial ({int(row['metrics_reported'])}/{int(row['metrics_total'])})")
        row["label"] = "; ".join(parts)
        notes = []
        siblings = [c for m, c in shown if m == model]
        if len(siblings) > 1:
            diff = describe_differences({c: configurations.get((model, c)) for c in siblings})
            notes.append(f"{model} has {len(siblings)} configurations ({', '.join(c or '–' for c in siblings)}), "
                         f"one row each, never averaged together; they differ in {diff}")
        covered = [c for (m, c), by in covered_by.items() if by == (model, cid)]
        if covered:
            notes.append(f"{model} [{cid}] also stands for configuration(s) {', '.join(covered)}: every score "
                         f"of those is in this row, computed identically (same cache keys)")
        row["config_note"] = ". ".join(notes)
        rows.append(row)
    out = pd.DataFrame(rows).reset_index(drop=True)
    out.insert(2, "label", out.pop("label"))
    return out


def ordered_columns(table: pd.DataFrame) -> list[str]:
    """Identity, labels, scores, then counts: the order a reader scans in."""
    first = ["model", "config_id", "source", "label", "rank", "protocol", "scripts", "items"]
    counts = [c for c in table.columns if c.endswith(("_valid", "_fallback", "_failed", "_skipped"))]
    tail = ["metrics_reported", "metrics_total", "missing_metrics", "overall_published", "config_note"]
    settings = list(SETTINGS_COLUMNS)
    intervals = {c for c in table.columns if c.endswith(("_ci_low", "_ci_high"))}
    middle = []
    for c in table.columns:
        if c in first + counts + tail + settings or c in intervals:
            continue
        middle += [c, *(i for i in ci_columns(c) if i in intervals)]  # each score, then its interval
    return [c for c in first + middle + tail + settings + counts if c in table.columns]


def _markdown_table(table: pd.DataFrame, columns: list[str]) -> str:
    view = table[[c for c in columns if c in table.columns]].astype(object)
    view = view.where(view.notna(), None)  # tabulate shows None, not NaN, as the missing value
    view = view.replace("", None)
    return view.to_markdown(index=False, floatfmt=".2f", missingval="–")


def _with_intervals(table: pd.DataFrame, scores: Sequence[str]) -> pd.DataFrame:
    """Score cells as ``73.21 ± 0.80`` where the row has an interval, else the bare value."""
    out = table.copy()
    for col in scores:
        low, high = ci_columns(col)
        if col not in out.columns or low not in out.columns:
            continue
        out[col] = [plus_minus(v, lo, hi) or None for v, lo, hi in zip(table[col], table[low], table[high])]
    return out


def _bootstrap_settings(table: pd.DataFrame) -> BootstrapSettings | None:
    """The settings the table's intervals were computed with (its attrs, else its columns)."""
    if isinstance(table.attrs.get("bootstrap"), BootstrapSettings):
        return table.attrs["bootstrap"]
    if "bootstrap_resamples" not in table.columns or not table["bootstrap_resamples"].notna().any():
        return None
    first = table[table["bootstrap_resamples"].notna()].iloc[0]
    return BootstrapSettings(resamples=int(first["bootstrap_resamples"]), seed=int(first["bootstrap_seed"]),
                             level=float(first["ci_level"]))


def to_markdown(table: pd.DataFrame, dimensions: Mapping[str, Sequence[str]]) -> str:
    """The ranked rows (whole protocol, real weights and judge, beside the published ones), then the rows
    listed apart with their labels, then notes: coverage and how a model's configurations differ."""
    metrics = metric_columns(dimensions)
    scores = [*metrics, *dimensions.keys(), "overall"]
    if table.empty:
        return "(no records)\n"
    shown = _with_intervals(table, scores)
    ranked = shown[shown["rank"].notna()]
    apart = shown[shown["rank"].isna()]
    parts = []
    if (settings := _bootstrap_settings(table)) is not None:
        parts.append(f"Scores x100. `±` is half the width of the {settings.describe()} "
                     "(leaderboard.csv has both ends: `<column>_ci_low`, `_ci_high`); published rows have none.")
    if len(ranked):
        parts.append("Ranked: all %d metrics, real checkpoints and judge.\n\n" % len(metrics)
                     + _markdown_table(ranked, ["rank", "model", "config_id", "source", *scores]))
    if len(apart):
        parts.append("Not ranked (listed apart; not comparable with the ranked rows):\n\n"
                     + _markdown_table(apart, ["model", "config_id", "label", *scores, "metrics_reported"]))
    notes = []
    for _, row in table.iterrows():
        if row.get("source") != "run":
            continue
        name = f"{row['model']} [{row['config_id'] or '–'}]"
        text = (f"- {name}: {int(row['metrics_reported'])}/{int(row['metrics_total'])} metrics "
                f"over {int(row['scripts'])} scripts")
        if row.get("label"):
            text += f"; {row['label']}"
        if row.get("missing_metrics"):
            text += f"; missing: {row['missing_metrics']}"
        flagged = [f"{m}: " + ", ".join(f"{int(row[f'{m}_{k}'])} {k}" for k in ("fallback", "failed", "skipped")
                                         if row.get(f"{m}_{k}", 0))
                   for m in metrics if any(row.get(f"{m}_{k}", 0) for k in ("fallback", "failed", "skipped"))]
        if flagged:
            text += f"; {'; '.join(flagged)}"
        notes.append(text)
    for note in dict.fromkeys(n for n in table.get("config_note", pd.Series(dtype=object)).fillna("") if n):
        notes.append(f"- {note}")
    return "\n\n".join(parts) + ("\n\n" + "\n".join(notes) if notes else "") + "\n"


def write_leaderboard(table: pd.DataFrame, csv_path: Path | str, *, markdown_path: Path | str | None = None,
                      dimensions: Mapping[str, Sequence[str]] | None = None) -> None:
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    table[ordered_columns(table)].to_csv(csv_path, index=False, float_format="%.2f")
    if markdown_path is not None:
        dims = dimensions or table.attrs.get("dimensions") or load_protocol()["dimensions"]
        Path(markdown_path).write_text(to_markdown(table, dims))
