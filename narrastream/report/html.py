"""``narrastream report``: one self-contained HTML page from run folders and results files.

The page opens offline (no CDN, no server): its charts are inline SVG, its filmstrip frames JPEG
data URIs and its few lines of script inline. Sections: leaderboard with intervals and coverage,
paired comparisons, breakdowns (taxonomy heatmaps, scene/template tables, per-switch series), charts,
filmstrip gallery, failures and fallbacks, speed, provenance, and how the numbers are computed.
Every number comes from the same code as ``leaderboard.csv`` (:mod:`narrastream.report.leaderboard`,
:mod:`narrastream.report.bootstrap`). docs/report.md explains each section.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape

from narrastream import __version__
from narrastream.report import charts
from narrastream.report.bootstrap import BootstrapSettings, ScriptScores, scripts_with_value, score_columns
from narrastream.report.breakdowns import (
    GROUPINGS,
    group_scores,
    position_label,
    row_series,
    taxonomy_groups,
)
from narrastream.report.comparisons import compare_rows, resolvable
from narrastream.report.failures import failure_tables
from narrastream.report.gallery import Choice, build_gallery, choose_scripts
from narrastream.report.intervals import ci_columns, row_scores
from narrastream.report.leaderboard import leaderboard_from
from narrastream.report.sources import ResultSet, load_results
from narrastream.report.speed import speed_rows
from narrastream.results.configuration import short
from narrastream.results.records import Record, latest_by_config
from narrastream.results.rundir import git_sha

log = logging.getLogger(__name__)
RowKey = tuple[str, str]
TEMPLATES = Path(__file__).with_name("templates")


@dataclass
class ReportOptions:
    """What goes into the page besides the leaderboard (CLI flags of ``narrastream report``)."""

    with_reference: bool = False
    bootstrap: BootstrapSettings = field(default_factory=BootstrapSettings)
    gallery_per_row: int = 2           # worst and best scripts per row (0: no gallery)
    gallery_scripts: Sequence[int] | None = None  # instead: these script ids
    thumb_height: int = 120
    data: Path | None = None           # the scripts file (for the sentences); else the runs' own, $NARRASTREAM_DATA
    prompts: bool = True               # False: never show sentences (a page to publish)
    title: str = "narrastream report"


@dataclass
class ReportSummary:
    path: Path
    bytes: int
    seconds: float
    rows: int
    gallery_scripts: int


def fmt(value: Any, digits: int = 2) -> str:
    """A number for a table cell, ``–`` when missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)) or value is pd.NA:
        return "–"
    try:
        if pd.isna(value):
            return "–"
    except (TypeError, ValueError):
        pass
    return f"{float(value):.{digits}f}"


def _number(row: pd.Series, column: str) -> float:
    """A table cell as a float, NaN when missing or absent."""
    value = row.get(column)
    return math.nan if value is None or pd.isna(value) else float(value)


def _row_name(model: str, cid: str) -> str:
    return f"{model} [{cid or '–'}]"


# ---------------------------------------------------------------------------------------- scripts file
def resolve_sentences(results: ResultSet, options: ReportOptions) -> tuple[dict[int, tuple[str, ...]] | None, str]:
    """The scripts' sentences, read now from the user's file whose sha256 matches the runs' (else None)."""
    from narrastream.data import load_benchmark
    from narrastream.data.loader import DataSourceError, ScriptFileError

    if not options.prompts:
        return None, "sentences left out (--no-prompts): segments are named by script id and number"
    wanted = {str((run.get("data") or {}).get("sha256")) for s in results.sources for run in s.runs
              if (run.get("data") or {}).get("sha256")}
    candidates: list[Path | None] = [options.data] if options.data else []
    candidates += [Path(p) for s in results.sources for run in s.runs if (p := (run.get("data") or {}).get("path"))]
    candidates.append(None)  # $NARRASTREAM_DATA, then the cache; never a download
    tried = []
    for candidate in dict.fromkeys(candidates):
        try:
            bench = load_benchmark(candidate, download=False)
        except (DataSourceError, ScriptFileError, FileNotFoundError, OSError, ValueError) as exc:
            tried.append(f"{candidate or '$NARRASTREAM_DATA/cache'}: {str(exc).splitlines()[0]}")
            continue
        if wanted and bench.sha256 not in wanted:
            theirs = ", ".join(w[:12] for w in wanted)
            tried.append(f"{bench.path}: sha256 {bench.sha256[:12]} is not the runs' ({theirs})")
            continue
        return ({s.id: tuple(s.prompts) for s in bench.scripts},
                f"sentences read at report time from {bench.path} (sha256 {bench.sha256[:12]}); "
                "they are in this page, not in the run or the repository")
    return None, "sentences not shown: no scripts file matches the runs (" + "; ".join(tried) + "); pass --data FILE"


def _official(results: ResultSet) -> bool:
    runs = [run for s in results.sources for run in s.runs]
    return bool(runs) and all((run.get("data") or {}).get("official") is True for run in runs)


# ------------------------------------------------------------------------------------------ the views
def _leaderboard_view(table: pd.DataFrame, columns: Sequence[str], metrics: Sequence[str],
                      contributing: Mapping[RowKey, Mapping[str, int]], colours: Mapping[RowKey, str]) -> dict:
    ranked, apart = [], []
    for _, row in table.iterrows():
        run = row["source"] == "run"
        key = (row["model"], row["config_id"] or "")
        cells = []
        for col in columns:
            low_col, high_col = ci_columns(col)
            value, low, high = row.get(col), row.get(low_col), row.get(high_col)
            cell = {"column": col, "value": fmt(value), "raw": None if pd.isna(value) else float(value),
                    "interval": "" if pd.isna(low) or pd.isna(high) else f"[{fmt(low)}, {fmt(high)}]",
                    "coverage": "", "flags": []}
            if run:
                if col in metrics:
                    cell["coverage"] = f"n={int(row.get(f'{col}_valid', 0))}"
                    for kind in ("fallback", "failed", "skipped"):
                        if count := int(row.get(f"{col}_{kind}", 0) or 0):
                            cell["flags"].append(f"{count} {kind}")
                elif not pd.isna(value):
                    cell["coverage"] = f"n={contributing.get(key, {}).get(col, 0)}"
            cells.append(cell)
        entry = {"model": row["model"], "config_id": row["config_id"] or "", "source": row["source"],
                 "label": row.get("label") or "", "rank": None if pd.isna(row["rank"]) else int(row["rank"]),
                 "cells": cells, "scripts": None if pd.isna(row.get("scripts")) else int(row["scripts"]),
                 "missing": row.get("missing_metrics") or "", "colour": colours.get(key, charts.PUBLISHED_COLOUR),
                 "note": row.get("config_note") if isinstance(row.get("config_note"), str) else ""}
        (ranked if entry["rank"] is not None else apart).append(entry)
    return {"ranked": ranked, "apart": apart}


def _comparisons_view(pairs, names, columns) -> dict:
    views = []
    for pair in pairs:
        view = {"a": names[pair.a], "b": names[pair.b], "not_compared": pair.not_compared, "rows": [],
                "better": 0, "worse": 0, "same": 0, "overall": None}
        if pair.result is not None:
            r = pair.result
            for j, col in enumerate(columns):
                defined = math.isfinite(r.difference[j])
                significant = bool(r.significant[j]) if defined else False
                mark = ("▲" if r.difference[j] > 0 else "▼") if significant else ""
                if defined and math.isfinite(r.low[j]):
                    view["better" if significant and r.difference[j] > 0 else "worse" if significant else "same"] += 1
                view["rows"].append({
                    "column": col, "scripts": int(r.scripts[j]) if defined else "–",
                    "a": fmt(100 * r.a[j]), "b": fmt(100 * r.b[j]),
                    "difference": fmt(100 * r.difference[j]) if defined else "–",
                    "interval": (f"[{fmt(100 * r.low[j])}, {fmt(100 * r.high[j])}]"
                                 if math.isfinite(r.low[j]) else "–"),
                    "mark": mark, "significant": significant, "half_width": fmt(100 * r.half_width[j]),
                    "mde": fmt(100 * r.mde[j])})
            view["overall"] = next((row for row in view["rows"]
                                    if row["column"] == "overall" and row["difference"] != "–"), None)
            view["shared"] = pair.shared
        views.append(view)
    return {"pairs": views, "resolvable": [
        {**r, "half_width": fmt(r["half_width"]), "mde": fmt(r["mde"])} for r in resolvable(pairs, columns)]}


def _breakdown_view(keys: Sequence[RowKey], names, scores: Mapping[RowKey, ScriptScores], dims, metrics,
                    official: bool) -> dict:
    if not official:
        return {"available": False, "tables": [], "heatmaps": []}
    taxonomy_order = list(taxonomy_groups(range(324), "dimension"))
    matrices = {}
    for key in keys:
        groups = taxonomy_groups(scores[key].scripts, "dimension")
        values = group_scores(scores[key], groups, None)
        matrix = np.full((len(metrics), len(taxonomy_order)), np.nan)
        for j, name in enumerate(taxonomy_order):
            if name in values:
                matrix[:, j] = 100 * values[name][: len(metrics)]
        counts = {name: len(ids) for name, ids in groups.items()}
        matrices[key] = (matrix, [f"{n} ({counts.get(n, 0)})" for n in taxonomy_order])
    finite = np.concatenate([m[np.isfinite(m)] for m, _ in matrices.values()] or [np.empty(0)])
    scale = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 100.0)
    heatmaps = [{"row": names[key], "columns": labels, "scale": [fmt(scale[0], 1), fmt(scale[1], 1)],
                 "rows": [{"metric": metric, "cells": [(fmt(v, 1), *charts.heat_colour(v, scale)) for v in matrix[i]]}
                          for i, metric in enumerate(metrics)]}
                for key, (matrix, labels) in matrices.items()]
    tables = []
    score_names = ["overall", *dims]
    position = {name: len(metrics) + i for i, name in enumerate([*dims, "overall"])}
    for grouping in GROUPINGS:
        groups = {key: taxonomy_groups(scores[key].scripts, grouping) for key in keys}
        values = {key: group_scores(scores[key], groups[key], dims) for key in keys}
        group_names = list(dict.fromkeys(n for key in keys for n in groups[key]))
        for score_name in score_names:
            body = []
            any_value = False
            for name in group_names:
                cells = []
                for key in keys:
                    value = values[key][name][position[score_name]] if name in values[key] else math.nan
                    any_value |= math.isfinite(value)
                    cells.append(fmt(100 * value))
                scripts = max((len(groups[k].get(name, [])) for k in keys), default=0)
                body.append({"group": name, "scripts": scripts, "cells": cells})
            opened = any_value and not any(t["open"] for t in tables if t["grouping"] == grouping)
            tables.append({"grouping": grouping, "score": score_name, "rows": body, "has_values": any_value,
                           "open": opened})
    return {"available": True, "tables": tables, "heatmaps": heatmaps}


def _series_view(keys, names, colours, latest_by_row: Mapping[RowKey, list[Record]], settings) -> dict:
    per_row = {key: row_series(latest_by_row.get(key, []), settings) for key in keys}
    metrics = list(dict.fromkeys(m for key in keys for m in per_row[key]))
    tables, panels = [], {"switch": [], "segment": []}
    for metric in metrics:
        kind = next(per_row[k][metric].kind for k in keys if metric in per_row[k])
        positions = sorted({p for k in keys if metric in per_row[k] for p in per_row[k][metric].positions})
        rows, curves = [], []
        for key in keys:
            series = per_row[key].get(metric)
            if series is None:
                continue
            found = series.intervals.as_dict()
            triples = [found.get(str(p), (np.nan, np.nan, np.nan)) for p in positions]
            values = np.array([100 * t[0] for t in triples])
            low = np.array([100 * t[1] for t in triples])
            high = np.array([100 * t[2] for t in triples])
            rows.append({"row": names[key], "cells": [
                {"value": fmt(v), "interval": f"[{fmt(lo)}, {fmt(hi)}]" if math.isfinite(lo) else ""}
                for v, lo, hi in zip(values, low, high)]})
            curves.append((names[key], colours[key], values, low, high))
        labels = [position_label(kind, p) for p in positions]
        tables.append({"metric": metric, "kind": kind, "positions": labels, "rows": rows})
        ticks = [label.replace("switch ", "").replace("segment ", "") for label in labels]
        panels[kind].append((metric, ticks, curves))
    return {"tables": tables, "switch_svg": charts.series_panels(panels["switch"]),
            "segment_svg": charts.series_panels(panels["segment"])}


def _provenance_view(results: ResultSet, keys, names, configurations) -> dict:
    runs = []
    for source in results.sources:
        for run in source.runs:
            env = run.get("environment") or {}
            data = run.get("data") or {}
            annotations = run.get("annotations") or {}
            judge = run.get("judge") or {}
            runs.append({
                "source": source.name, "kind": source.kind, "run_id": run.get("run_id"),
                "narrastream": env.get("narrastream") or run.get("narrastream"),
                "git_sha": env.get("git_sha") or run.get("git_sha"), "created": env.get("created"),
                "data_sha256": data.get("sha256"), "official": data.get("official"),
                "scripts": f"{data.get('selected_scripts', '?')}/{data.get('total_scripts', '?')}",
                "protocol": " ".join(str(v) for v in (run.get("protocol") or {}).values()),
                "annotations": f"{annotations.get('mode', '')} {annotations.get('version', '')} "
                               f"{short(annotations.get('sha256'))}".strip(),
                "judge": judge.get("model") or judge.get("backend") or "",
                "environment": ", ".join(f"{k} {v}" for k, v in env.items() if k in ("python", "torch", "platform")),
            })
    rows = []
    for key in keys:
        conf = configurations.get(key) or {}
        protocol = conf.get("protocol") or {}
        annotations = conf.get("annotations") or {}
        judge = conf.get("judge")
        rows.append({
            "row": names[key], "config_id": key[1] or "–",
            "protocol": ", ".join(f"{k} {v}" for k, v in protocol.items()),
            "annotations": ", ".join(f"{k} {short(v)}" for k, v in annotations.items()),
            "backbones": [(name, str(value), (conf.get("precision") or {}).get(name, ""))
                          for name, value in sorted((conf.get("backbones") or {}).items())],
            "judge": "none" if not judge else "; ".join(
                f"{role}: {j.get('model')} ({j.get('backend')}, {j.get('host')}"
                f"{', stand-in' if j.get('stand_in') else ''})"
                for role, j in judge.items() if isinstance(j, Mapping)),
            "generator": conf.get("generator"),
        })
    return {"runs": runs, "rows": rows, "report": {"narrastream": __version__, "git_sha": git_sha(),
                                                   "created": time.strftime("%Y-%m-%d %H:%M:%S %z")}}


# ------------------------------------------------------------------------------------------- the page
def build_report(paths: Sequence[Path | str], out: Path | str, options: ReportOptions | None = None) -> ReportSummary:
    """Write the report for ``paths`` (run folders, results files) to ``out``; returns what it wrote."""
    started = time.perf_counter()
    options = options or ReportOptions()
    results = load_results(paths)
    dims = results.dimensions
    metrics = [m for ms in dims.values() for m in ms]
    columns = score_columns(dims)
    table = leaderboard_from(results, with_reference=options.with_reference, bootstrap=options.bootstrap)
    if table.empty:
        raise ValueError(f"{', '.join(map(str, paths))}: no records to report")
    latest = list(latest_by_config(results.records).values())
    run_rows = table[table["source"] == "run"]
    keys: list[RowKey] = [(m, c or "") for m, c in zip(run_rows["model"], run_rows["config_id"])]
    labels = dict(zip(keys, run_rows["label"].fillna("")))
    names = {key: _row_name(*key) + (" *" if labels[key] else "") for key in keys}  # *: not ranked
    colours = {key: charts.PALETTE[i % len(charts.PALETTE)] for i, key in enumerate(keys)}
    by_row: dict[RowKey, list[Record]] = {}
    for rec in latest:
        if (key := (rec.model, rec.config_id or "")) in names:
            by_row.setdefault(key, []).append(rec)
    scores = {key: value for key, value in row_scores(latest, dims).items() if key in names}
    configurations = {key: recs[0].configuration for key, recs in by_row.items()}
    contributing = {key: dict(zip(columns, map(int, scripts_with_value(scores[key], dims)))) for key in scores}

    leaderboard = _leaderboard_view(table, columns, metrics, contributing, colours)
    pairs = compare_rows(keys, scores, configurations, dims, options.bootstrap)
    comparisons = _comparisons_view(pairs, names, columns)
    official = _official(results)
    breakdowns = _breakdown_view(keys, names, scores, dims, metrics, official)
    series = _series_view(keys, names, colours, by_row, options.bootstrap)

    chart_rows = []
    for _, row in table.iterrows():
        key = (row["model"], row["config_id"] or "")
        group = "published" if row["source"] == "published" else ("ranked" if not pd.isna(row["rank"]) else "apart")
        label = names.get(key, f"{row['model']} (published)")
        chart_rows.append(charts.ChartRow(label, colours.get(key, charts.PUBLISHED_COLOUR), group, {
            col: tuple(_number(row, c) for c in (col, *ci_columns(col))) for col in columns}))
    chart_svgs = {"dimensions": charts.bar_panels([*dims, "overall"], chart_rows, per_line=4),
                  "metrics": charts.bar_panels(metrics, chart_rows, per_line=4)}

    if not any(source.kind == "run" for source in results.sources):
        choices = []  # results files carry no video
    elif options.gallery_scripts:
        choices = [Choice(int(s), ["chosen on the command line"]) for s in options.gallery_scripts]
    else:
        choices = choose_scripts(scores, names, dims, options.gallery_per_row)
    gallery = build_gallery(results, latest, choices, names, thumb_height=options.thumb_height)
    sentences, sentences_note = resolve_sentences(results, options) if gallery else (None, "")
    taxonomy = {}
    if official:
        from narrastream.data.taxonomy import load_taxonomy

        tax = load_taxonomy()
        taxonomy = {g.script_id: tax.derive(g.script_id) for g in gallery}

    speed, boundaries = speed_rows(results.sources)
    environment = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html", "j2"]),
                              trim_blocks=True, lstrip_blocks=True)
    environment.filters["fmt"] = fmt
    page = environment.get_template("report.html.j2").render(
        title=options.title, options=options, settings=options.bootstrap, sources=results.sources,
        dims=dims, metrics=metrics, columns=columns, leaderboard=leaderboard, comparisons=comparisons,
        breakdowns=breakdowns, series=series, charts=chart_svgs, gallery=gallery, sentences=sentences,
        sentences_note=sentences_note, taxonomy=taxonomy, failures=failure_tables(latest, names, results.sources),
        speed=speed, boundaries=boundaries, provenance=_provenance_view(results, keys, names, configurations),
        names=names, labels=labels, keys=keys, colours=colours, position_label=position_label,
        videos_available=any(source.kind == "run" for source in results.sources),
        official=official, notes=[n for n in table.get("config_note", pd.Series(dtype=object)).fillna("") if n],
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return ReportSummary(out, out.stat().st_size, time.perf_counter() - started, len(table), len(gallery))

