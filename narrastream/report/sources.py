"""What leaderboards and reports are built from: run folders and shared results files, merged.

A source is either a run folder (``records/``, ``videos/<model>/*.json`` sidecars, ``manifest.json``,
``config.yaml``) or a results file written by ``narrastream export`` (records, sidecar timings,
provenance; no videos). Records of every source are pooled, so shards, run folders and files that
other labs sent merge exactly as shards do: by record key and configuration
(:func:`narrastream.results.records.latest_by_config`). All sources must share the protocol's
dimensions.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from narrastream.paths import config_dir
from narrastream.results.records import Record, RecordStore
from narrastream.results.rundir import RunDir

_SIDECAR = re.compile(r"^(\d+)-s(\d+)\.json$")
_FAILURE = re.compile(r"^(\d+)-s(\d+)\.failed\.json$")

VideoKey = tuple[str, int, int]  # (model, script_id, seed)


def load_protocol(run_dir: Path | None = None) -> dict:
    """The protocol section a run used (its config.yaml), else the default protocol file."""
    if run_dir is not None and (run_dir / "config.yaml").is_file():
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        if "protocol" in cfg:
            return cfg["protocol"]
    return yaml.safe_load((config_dir() / "protocol" / "narrastream_v1.yaml").read_text())


@dataclass
class Source:
    """One run folder or results file, and what it holds besides records."""

    path: Path
    kind: str  # "run" | "results"
    dimensions: dict[str, list[str]]
    runs: list[dict[str, Any]] = field(default_factory=list)  # provenance per run (a run folder: its manifest)
    sidecars: dict[VideoKey, dict[str, Any]] = field(default_factory=dict)
    generation_failures: list[dict[str, Any]] = field(default_factory=list)
    protocol: dict[str, Any] = field(default_factory=dict)  # the run's protocol section (run folders)
    invalid_records: dict[str, int] = field(default_factory=dict)  # records file -> lines skipped as invalid

    @property
    def name(self) -> str:
        return str(self.path)

    def video_path(self, key: VideoKey) -> Path | None:
        """The video file of ``key`` when this source is a run folder that has it (else None)."""
        sidecar = self.sidecars.get(key)
        if self.kind != "run" or sidecar is None:
            return None
        path = Path(sidecar.get("path") or "")
        if not path.is_absolute():
            path = RunDir(self.path).videos_dir(key[0]) / path
        return path if path.is_file() else None


@dataclass
class ResultSet:
    """Every record of every source, with the source each came from."""

    sources: list[Source]
    records: list[Record]
    origin: dict[int, int]  # id(record) -> index into sources
    dimensions: dict[str, list[str]]

    @property
    def invalid_records(self) -> dict[str, int]:
        """Per records file of every source, the lines skipped because they are not valid records."""
        return {path: n for source in self.sources for path, n in source.invalid_records.items()}

    def source_of(self, record: Record) -> Source:
        return self.sources[self.origin[id(record)]]

    def sidecar(self, record: Record) -> dict[str, Any] | None:
        return self.source_of(record).sidecars.get((record.model, record.script_id, record.seed))


def load_run_folder(path: Path, *, with_videos: bool = True) -> tuple[Source, list[Record]]:
    """A run folder's records and, with ``with_videos``, its sidecars and generation failures."""
    if not (path / "records").is_dir():
        raise FileNotFoundError(f"{path}: no records/ folder (not a narrastream run, or nothing evaluated yet)")
    protocol = load_protocol(path)
    run = RunDir(path)
    manifest = run.read_manifest() or {"run_id": run.run_id}
    source = Source(path=path, kind="run", dimensions=protocol["dimensions"], runs=[manifest], protocol=protocol)
    store = RecordStore(run.records_dir)
    records = list(store.iter_all())
    source.invalid_records = store.invalid_counts()
    if with_videos and (path / "videos").is_dir():
        for model_dir in sorted(p for p in (path / "videos").iterdir() if p.is_dir()):
            for file in sorted(model_dir.glob("*.json")):
                if m := _SIDECAR.match(file.name):
                    key = (model_dir.name, int(m[1]), int(m[2]))
                    sidecar = _read_json(file)
                    source.sidecars[key] = {**video_entry(key, sidecar), "path": sidecar.get("path")}
                elif m := _FAILURE.match(file.name):
                    failure = _read_json(file)
                    source.generation_failures.append({"model": model_dir.name, "script_id": int(m[1]),
                                                       "seed": int(m[2]), "reason": failure.get("error"),
                                                       "generator": failure.get("generator")})
    return source, records


def video_entry(key: VideoKey, sidecar: Mapping[str, Any]) -> dict[str, Any]:
    """What the report and the results file keep of a sidecar: size, switches, timings, memory, device and
    the generator's identity; of the request only the number of prompts, never their sentences."""
    request = sidecar.get("request") or {}
    timings = {k: float(v) for k, v in (sidecar.get("timings") or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    return {
        "model": key[0], "script_id": key[1], "seed": key[2],
        **{k: sidecar.get(k) for k in ("fps", "num_frames", "width", "height", "switch_frames", "peak_memory_bytes",
                                        "device", "device_count", "generator")},
        "num_segments": len(request.get("prompts") or []) or None,
        "timings": timings,
    }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def load_results(paths: Sequence[Path | str], *, with_videos: bool = True) -> ResultSet:
    """Load run folders and results files (``*.json``) into one :class:`ResultSet`.

    Raises ``FileNotFoundError`` for a missing path or a folder without records, ``ValueError`` for
    an invalid results file (naming the field) or sources whose protocol dimensions differ.
    """
    from narrastream.report.results_file import read_results_file

    sources: list[Source] = []
    records: list[Record] = []
    origin: dict[int, int] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            source, recs = read_results_file(path)
        elif path.is_dir():
            source, recs = load_run_folder(path, with_videos=with_videos)
        else:
            raise FileNotFoundError(f"{path}: no such run folder or results file")
        for rec in recs:
            origin[id(rec)] = len(sources)
        sources.append(source)
        records.extend(recs)
    if not sources:
        raise ValueError("no run folder or results file given")
    dims = sources[0].dimensions
    for source in sources[1:]:
        if _plain(source.dimensions) != _plain(dims):
            raise ValueError(f"{source.path}: its protocol's dimensions differ from {sources[0].path}'s; "
                             "cannot share a leaderboard")
    return ResultSet(sources, records, origin, {k: list(v) for k, v in dims.items()})


def _plain(dims: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    return {k: list(v) for k, v in dims.items()}
