"""The filmstrip gallery: for chosen scripts, the frames just before and just after every prompt
switch, every model's video side by side, with what the metrics and the judge said at each switch.

Scripts are chosen per leaderboard row: its ``per_row`` worst and best scripts by
:func:`narrastream.report.breakdowns.script_overall` (the official rule on one script, over the
metrics present), or the ids the user names. Frames come from the videos of run folders
(results files carry none) and are decoded with :func:`narrastream.video.frames.frames_at`, which
seeks: a 60 s video is never decoded whole for ten frames. A switch is where the generator switched
prompts when its sidecar says so (``switch_frames``), else the protocol's time grid (``int(fps x
segment_seconds)`` frames per segment). The segments' sentences are not part of the gallery's data:
the page shows them only when the report is given the scripts file (read at report time).
"""

from __future__ import annotations

import base64
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from narrastream.report.bootstrap import ScriptScores
from narrastream.report.breakdowns import item_series, script_overall
from narrastream.report.sources import ResultSet
from narrastream.results.records import Record
from narrastream.video.decode import VideoDecodeError
from narrastream.video.frames import frames_at

log = logging.getLogger(__name__)
RowKey = tuple[str, str]
JUDGE_METRICS = ("entity_grounding", "vlm_score")


@dataclass
class Choice:
    script_id: int
    reasons: list[str] = field(default_factory=list)


def choose_scripts(scores: Mapping[RowKey, ScriptScores], names: Mapping[RowKey, str],
                   dimensions: Mapping[str, Sequence[str]], per_row: int) -> list[Choice]:
    """Each row's ``per_row`` worst then best scripts (ties by script id), merged in that order."""
    chosen: dict[int, Choice] = {}
    for key, table in scores.items():
        if per_row <= 0 or table.n == 0:
            continue
        values = script_overall(table, dimensions)
        ranked = [int(table.scripts[i]) for i in sorted(np.flatnonzero(np.isfinite(values)),
                                                        key=lambda i: (values[i], table.scripts[i]))]
        if not ranked:
            continue
        worst = ranked[:per_row]
        best = [s for s in ranked[::-1][:per_row] if s not in worst]
        for place, sid in enumerate(worst, 1):
            chosen.setdefault(sid, Choice(sid)).reasons.append(
                f"{names[key]}: worst #{place} ({100 * values[list(table.scripts).index(sid)]:.1f})")
        for place, sid in enumerate(best, 1):
            chosen.setdefault(sid, Choice(sid)).reasons.append(
                f"{names[key]}: best #{place} ({100 * values[list(table.scripts).index(sid)]:.1f})")
    return list(chosen.values())


@dataclass
class Strip:
    """One video of one script: its frames around each switch and what was measured there."""

    label: str
    rows: list[RowKey]
    path: Path | None = None
    missing: str | None = None
    boundaries: list[int] = field(default_factory=list)
    frames: dict[int, str] = field(default_factory=dict)  # frame index -> data URI (JPEG)
    switch_values: dict[str, dict[int, float]] = field(default_factory=dict)  # metric -> switch -> value
    judge: list[dict[str, Any]] = field(default_factory=list)  # per segment: vlm score, entities

    def at_switch(self, k: int) -> list[tuple[str, float, bool]]:
        """``(short name, value x100, lowest of this video)`` of every series with a value at switch ``k``."""
        out = []
        for name, values in self.switch_values.items():
            if k in values:
                lowest = len(values) > 1 and values[k] == min(values.values())
                out.append((short_series_name(name), values[k], lowest))
        return out


@dataclass
class GalleryScript:
    script_id: int
    reasons: list[str]
    num_segments: int | None
    strips: list[Strip]


def segment_boundaries(sidecar: Mapping[str, Any], num_segments: int | None,
                       segment_seconds: float | None) -> list[int]:
    """First frame of segments 2..n: the sidecar's switch frames, else the protocol's time grid.

    >>> segment_boundaries({"switch_frames": [8, 16]}, 3, 2)
    [8, 16]
    >>> segment_boundaries({"fps": 16.0, "num_frames": 960}, 6, 10)
    [160, 320, 480, 640, 800]
    """
    switches = sidecar.get("switch_frames")
    if switches:
        return [int(s) for s in switches]
    fps, frames = sidecar.get("fps"), sidecar.get("num_frames")
    n = num_segments or sidecar.get("num_segments")
    if not (fps and frames and n and segment_seconds):
        return []
    per_segment = int(float(fps) * float(segment_seconds))
    return [k * per_segment for k in range(1, int(n)) if 0 < k * per_segment < int(frames)]


def short_series_name(name: str) -> str:
    """A per-switch series' name short enough for a filmstrip cell.

    >>> short_series_name("subject_consistency · adjacent similarity"), short_series_name("conditional_adjacent")
    ('subject sim.', 'cond. adjacent')
    """
    name = name.replace(" · adjacent similarity", " sim.").replace("conditional_", "cond. ")
    for suffix in ("_consistency", "_smoothness", "_flickering"):
        name = name.replace(suffix, "")
    return name.replace("dynamic_trajectory", "trajectory").replace("_", " ")


def _data_uri(image: np.ndarray, quality: int) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _judge_answers(records: Sequence[Record]) -> list[dict[str, Any]]:
    """Per segment (0-based list): the VLM's segment score and the entity-grounding answers, x100."""
    segments: dict[int, dict[str, Any]] = {}
    for rec in records:
        if rec.metric not in JUDGE_METRICS or rec.status not in ("ok", "fallback"):
            continue
        for item in rec.items:
            if not isinstance(item, Mapping) or not isinstance(item.get("segment"), int):
                continue
            entry = segments.setdefault(item["segment"], {"segment": item["segment"] + 1})
            if rec.metric == "vlm_score" and item.get("score") is not None:
                entry["vlm_score"] = 100 * float(item["score"])
            if rec.metric == "entity_grounding":
                entry["grounding"] = None if item.get("score") is None else 100 * float(item["score"])
                entry["entities"] = [
                    {"name": e.get("name"), "presence": _pct(e.get("presence")),
                     "attributes": _pct(e.get("attribute_match"))}
                    for e in item.get("entities") or [] if isinstance(e, Mapping)]
                if item.get("error"):
                    entry["error"] = str(item["error"])
    return [segments[k] for k in sorted(segments)]


def _pct(value: Any) -> float | None:
    return None if value is None else 100 * float(value)


def build_gallery(results: ResultSet, latest: Sequence[Record], choices: Sequence[Choice],
                  names: Mapping[RowKey, str], *, thumb_height: int = 120, quality: int = 82,
                  workers: int | None = None) -> list[GalleryScript]:
    """Frames and per-switch values for each chosen script, every row's video side by side."""
    by_script: dict[int, dict[RowKey, list[Record]]] = {}
    wanted = {c.script_id for c in choices}
    for rec in latest:
        if rec.script_id in wanted:
            by_script.setdefault(rec.script_id, {}).setdefault((rec.model, rec.config_id or ""), []).append(rec)
    scripts: list[GalleryScript] = []
    jobs: dict[Path, set[int]] = {}
    for choice in choices:
        strips: dict[str, Strip] = {}
        num_segments = None
        for key, recs in sorted(by_script.get(choice.script_id, {}).items(), key=lambda kv: list(names).index(kv[0])
                                if kv[0] in names else 1 << 30):
            if key not in names:
                continue
            seed = min(r.seed for r in recs)
            recs = [r for r in recs if r.seed == seed]
            source = results.source_of(recs[0])
            sidecar = source.sidecars.get((key[0], choice.script_id, seed))
            path = source.video_path((key[0], choice.script_id, seed)) if sidecar else None
            ident = str(path.resolve()) if path else f"{key}"
            strip = strips.get(ident)
            if strip is None:
                strip = strips[ident] = Strip(label=names[key], rows=[key], path=path)
                if path is None:
                    failure = next((f for f in source.generation_failures if f["model"] == key[0]
                                    and f["script_id"] == choice.script_id and f["seed"] == seed), None)
                    strip.missing = (f"generation failed: {(failure.get('reason') or '').splitlines()[0]}" if failure
                                     else "no video here (a results file carries none)" if source.kind == "results"
                                     else "video file not found")
                else:
                    seconds = ((recs[0].configuration or {}).get("protocol") or {}).get("segment_seconds")
                    strip.boundaries = segment_boundaries(sidecar, sidecar.get("num_segments"), seconds)
                    num_segments = num_segments or sidecar.get("num_segments")
                    if not strip.boundaries:
                        strip.missing = "switch frames unknown (no switch_frames, fps or segment count)"
                    else:
                        last = int(sidecar.get("num_frames") or 1 << 30)
                        jobs.setdefault(path, set()).update(i for b in strip.boundaries for i in (b - 1, b)
                                                            if 0 <= i < last)
            else:
                strip.rows.append(key)
                strip.label += f" = {names[key]}"
            for rec in recs:
                for name, (kind, values) in item_series(rec).items():
                    if kind == "switch":
                        strip.switch_values.setdefault(name, {}).update({k: 100 * v for k, v in values.items()})
            strip.judge = strip.judge or _judge_answers(recs)
        scripts.append(GalleryScript(choice.script_id, choice.reasons, num_segments, list(strips.values())))

    def extract(item: tuple[Path, set[int]]) -> tuple[Path, dict[int, str] | str]:
        path, indices = item
        try:
            frames = frames_at(path, indices, max_height=thumb_height)
        except VideoDecodeError as exc:
            return path, str(exc)
        return path, {i: _data_uri(image, quality) for i, image in frames.items()}

    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        decoded = dict(pool.map(extract, jobs.items()))
    for script in scripts:
        for strip in script.strips:
            if strip.path is None or strip.missing:
                continue
            got = decoded.get(strip.path)
            if isinstance(got, str):
                strip.missing = got
            elif got:
                strip.frames = got
    return scripts
