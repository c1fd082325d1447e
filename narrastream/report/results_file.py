"""The shareable results file: ``narrastream export RUN... --out results.json``.

One JSON document with every per-script, per-metric record (score, status, reason, fallbacks and the
per-segment ``items``), the leaderboard rows with their intervals, each video's timings from its
sidecar, generation failures, and the provenance of each run and configuration. It holds no video
and no script sentence (sidecars' ``request.prompts`` are left out), so a lab can send it to
another; ``narrastream leaderboard`` and ``narrastream report`` read it as they read a run folder.

The format is defined by the pydantic models below; ``results.schema.json`` beside this module is
their JSON Schema (regenerate with ``python -m narrastream.report.results_file``; a test checks the
two agree). ``schema_version`` changes whenever a reader of the old version could misread a file.
Reading validates the whole file first and names the first bad field (exit 2 from the CLI).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from narrastream import __version__
from narrastream.report.bootstrap import BootstrapSettings
from narrastream.report.sources import ResultSet, Source
from narrastream.results.configuration import config_id as hash_configuration
from narrastream.results.records import Record
from narrastream.results.rundir import git_sha

SCHEMA_NAME = "narrastream-results"
SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("results.schema.json")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResultRecord(_Strict):
    """One record (one model x configuration x script x seed x metric), as in ``records/*.jsonl``
    without local paths (``video``, backbone paths) and per-record copies of the configuration."""

    run_id: str
    model: str = Field(min_length=1)
    config_id: Optional[str] = Field(description="key into `configurations`; null for records of an "
                                                 "older narrastream without a configuration")
    script_id: int = Field(ge=0, description="0-based line index in the scripts file")
    seed: int
    metric: str = Field(min_length=1)
    score: Optional[float] = Field(ge=0.0, le=1.0, description="in [0, 1]; null unless status is ok or fallback")
    status: Literal["ok", "fallback", "failed", "skipped"]
    reason: Optional[str] = None
    fallbacks: list[str] = Field(default_factory=list)
    items: list[dict[str, Any]] = Field(default_factory=list,
                                        description="per-segment / per-transition values (docs/run-folder.md)")
    details: dict[str, Any] = Field(default_factory=dict)
    protocol: str
    metric_version: str
    cache_key: str
    reused_from: Optional[str] = None
    video_sha256: Optional[str] = None
    elapsed_s: float = 0.0
    created: float

    @model_validator(mode="after")
    def _score_matches_status(self) -> "ResultRecord":
        if self.status in ("ok", "fallback") and self.score is None:
            raise ValueError(f"status {self.status} needs a score")
        if self.status in ("failed", "skipped") and self.score is not None:
            raise ValueError(f"status {self.status} has no score")
        return self


class RunProvenance(_Strict):
    """Where a run's records came from (its manifest, without local paths)."""

    run_id: str
    narrastream: Optional[str] = Field(None, description="package version that wrote the run")
    git_sha: Optional[str] = None
    data: dict[str, Any] = Field(default_factory=dict, description="scripts file: sha256, official, total_scripts, "
                                                                   "selected_scripts")
    protocol: dict[str, Any] = Field(default_factory=dict)
    annotations: dict[str, Any] = Field(default_factory=dict, description="mode, version, sha256")
    judge: dict[str, Any] = Field(default_factory=dict)
    model: dict[str, Any] = Field(default_factory=dict, description="name, adapter, params")
    environment: dict[str, Any] = Field(default_factory=dict, description="python, torch, platform, ...")


class VideoTimings(_Strict):
    """What a video's sidecar says about how it was made (speed, memory, device), not its prompts."""

    model: str
    script_id: int = Field(ge=0)
    seed: int
    fps: Optional[float] = None
    num_frames: Optional[int] = None
    width: Optional[int] = None
    height: Optional[int] = None
    switch_frames: Optional[list[int]] = None
    num_segments: Optional[int] = Field(None, description="prompts in the script the video answers")
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per profiling boundary")
    peak_memory_bytes: Optional[int] = None
    device: Optional[str] = None
    device_count: Optional[int] = None
    generator: Optional[dict[str, Any]] = None


class GenerationFailure(_Strict):
    model: str
    script_id: int = Field(ge=0)
    seed: int
    reason: Optional[str] = None
    generator: Optional[dict[str, Any]] = None


class Bootstrap(_Strict):
    resamples: int = Field(ge=1)
    seed: int
    level: float = Field(gt=0.0, lt=1.0)


class ResultsFile(_Strict):
    """A results file: see the module docstring and docs/report.md."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, title="narrastream results file")

    schema_: Literal["narrastream-results"] = Field(alias="schema")
    schema_version: Literal[1]
    created: str = Field(description="when the file was written (ISO 8601)")
    generated_by: dict[str, Optional[str]] = Field(description="narrastream version and git sha of the export")
    dimensions: dict[str, list[str]] = Field(description="the protocol's dimensions: name -> metrics")
    bootstrap: Bootstrap = Field(description="how the leaderboard rows' intervals were computed")
    runs: list[RunProvenance]
    configurations: dict[str, dict[str, Any]] = Field(
        description="config_id -> configuration (docs/run-folder.md#configuration); each id is the hash of its value")
    records: list[ResultRecord]
    videos: list[VideoTimings] = Field(default_factory=list)
    generation_failures: list[GenerationFailure] = Field(default_factory=list)
    leaderboard: list[dict[str, Any]] = Field(
        default_factory=list, description="the leaderboard rows (as leaderboard.csv, scores x100) at export time")

    @field_validator("configurations")
    @classmethod
    def _ids_are_hashes(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for cid, configuration in value.items():
            if hash_configuration(configuration) != cid:
                raise ValueError(f"configuration {cid}: its content hashes to {hash_configuration(configuration)}, "
                                 "not to its id (edited after export?)")
        return value

    @model_validator(mode="after")
    def _records_name_known_configurations(self) -> "ResultsFile":
        for i, rec in enumerate(self.records):
            if rec.config_id is not None and rec.config_id not in self.configurations:
                raise ValueError(f"records.{i}.config_id: {rec.config_id} is not in configurations")
        return self


def json_schema() -> dict[str, Any]:
    schema = ResultsFile.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://narrastream.dev/schemas/results-v{SCHEMA_VERSION}.json"
    return schema


# ---------------------------------------------------------------------------------------------- write
def _run_provenance(manifest: dict[str, Any]) -> dict[str, Any]:
    env = manifest.get("environment") or {}
    data = {k: v for k, v in (manifest.get("data") or {}).items() if k != "path"}
    annotations = {k: v for k, v in (manifest.get("annotations") or {}).items() if k in ("mode", "version", "sha256",
                                                                                         "source", "scripts")}
    return {
        "run_id": str(manifest.get("run_id") or ""),
        "narrastream": env.get("narrastream") or manifest.get("narrastream"),
        "git_sha": env.get("git_sha") or manifest.get("git_sha"),
        "data": data,
        "protocol": manifest.get("protocol") or {},
        "annotations": annotations,
        "judge": manifest.get("judge") or {},
        "model": manifest.get("model") or {},
        "environment": {k: v for k, v in env.items() if k not in ("narrastream", "git_sha")},
    }


def _record_entry(rec: Record) -> dict[str, Any]:
    return {
        "run_id": rec.run_id, "model": rec.model, "config_id": rec.config_id, "script_id": rec.script_id,
        "seed": rec.seed, "metric": rec.metric, "score": rec.score, "status": rec.status, "reason": rec.reason,
        "fallbacks": list(rec.fallbacks), "items": list(rec.items), "details": dict(rec.details),
        "protocol": rec.protocol, "metric_version": rec.metric_version, "cache_key": rec.cache_key,
        "reused_from": rec.reused_from, "video_sha256": rec.video_sha256, "elapsed_s": rec.elapsed_s,
        "created": rec.created,
    }


def build_results(results: ResultSet, *, bootstrap: BootstrapSettings = BootstrapSettings(),
                  with_items: bool = True) -> dict[str, Any]:
    """The results document of ``results`` (validated against the schema before it is returned)."""
    from narrastream.report.leaderboard import leaderboard_from, ordered_columns
    from narrastream.results.records import latest_by_config

    latest = list(latest_by_config(results.records).values())
    configurations = {r.config_id: r.configuration for r in latest if r.config_id and r.configuration is not None}
    records = [_record_entry(r) for r in sorted(latest, key=lambda r: (r.model, r.config_id or "", r.script_id,
                                                                       r.seed, r.metric))]
    if not with_items:
        for entry in records:
            entry["items"] = []
    runs, videos, failures = [], [], []
    for source in results.sources:
        runs.extend(_run_provenance(m) if source.kind == "run" else m for m in source.runs)
        videos.extend({k: v for k, v in s.items() if k != "path"} for _, s in sorted(source.sidecars.items()))
        failures.extend(source.generation_failures)
    table = leaderboard_from(results, bootstrap=bootstrap)
    rows = json.loads(table[ordered_columns(table)].to_json(orient="records")) if not table.empty else []
    document = {
        "schema": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "generated_by": {"narrastream": __version__, "git_sha": git_sha()},
        "dimensions": results.dimensions,
        "bootstrap": {"resamples": bootstrap.resamples, "seed": bootstrap.seed, "level": bootstrap.level},
        "runs": runs,
        "configurations": configurations,
        "records": records,
        "videos": videos,
        "generation_failures": failures,
        "leaderboard": rows,
    }
    ResultsFile.model_validate(document)  # what we write, we can read back
    return document


def write_results(document: dict[str, Any], path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(document, allow_nan=False, separators=(",", ":"), sort_keys=False))
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------------------------- read
def _first_error(path: Path, exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{path}: {where}: {first['msg']}{more}"


def read_results_file(path: Path | str) -> tuple[Source, list[Record]]:
    """A results file as a :class:`Source` and its records; ``ValueError`` naming the field when invalid."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text file ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from exc
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA_NAME:
        raise ValueError(f"{path}: schema: not a narrastream results file (expected \"schema\": \"{SCHEMA_NAME}\"; "
                         "give a run folder or a file written by `narrastream export`)")
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version: {raw.get('schema_version')!r} is not supported by this narrastream "
                         f"(it reads version {SCHEMA_VERSION})")
    try:
        doc = ResultsFile.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(_first_error(path, exc)) from None
    records = []
    for entry in doc.records:
        data = entry.model_dump()
        data["configuration"] = doc.configurations.get(entry.config_id) if entry.config_id else None
        records.append(Record.from_dict(data))
    source = Source(path=path, kind="results", dimensions=doc.dimensions,
                    runs=[r.model_dump() for r in doc.runs],
                    sidecars={(v.model, v.script_id, v.seed): v.model_dump() for v in doc.videos},
                    generation_failures=[f.model_dump() for f in doc.generation_failures])
    return source, records


def main() -> int:
    """Write ``results.schema.json`` from the models (``python -m narrastream.report.results_file``)."""
    SCHEMA_PATH.write_text(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
