"""Evaluation records: one JSON line per (model, script, seed, metric), appended per shard.

Each shard process appends to its own ``records/shard-III-of-NNN.jsonl``, so files never have two
writers. A line is written with one ``write`` and fsynced; a process killed mid-line leaves a torn
last line, which the next writer cuts off (with a warning) before appending. Readers take the
latest record per key, so a retried failure supersedes the failed one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

log = logging.getLogger(__name__)

RecordKey = tuple[str, int, int, str]


@dataclass
class Record:
    """The outcome of one metric on one video.

    ``score`` is in [0, 1] or None; ``status`` is ``ok``, ``fallback`` (a score, but some part used
    a fallback, listed in ``fallbacks``), ``failed`` (no score; ``reason`` says why) or ``skipped``.
    ``cache_key`` fingerprints everything the score depends on: a record whose key no longer
    matches the current configuration is recomputed on the next run. ``configuration`` says what
    produced it (protocol, annotations version and sha256, backbone weights, judge, generator; see
    :mod:`narrastream.results.configuration`) and ``config_id`` is its short hash: leaderboard rows
    are (model, config_id). ``reused_from`` names the configuration whose identical computation
    (same ``cache_key``) this record carries over, when only settings the score does not depend on changed.
    """

    run_id: str
    model: str
    script_id: int
    seed: int
    metric: str
    score: float | None
    status: str
    protocol: str
    metric_version: str
    cache_key: str
    reason: str | None = None
    fallbacks: list[str] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    backbones: dict[str, Any] = field(default_factory=dict)
    judge: dict[str, Any] | None = None
    config_id: str | None = None
    configuration: dict[str, Any] | None = None
    reused_from: str | None = None
    video: str | None = None
    video_sha256: str | None = None
    shard: str = ""
    elapsed_s: float = 0.0
    created: float = field(default_factory=time.time)

    @property
    def key(self) -> RecordKey:
        return record_key(self.model, self.script_id, self.seed, self.metric)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, allow_nan=False, default=_json_default)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Record":
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


def record_key(model: str, script_id: int, seed: int, metric: str) -> RecordKey:
    return (str(model), int(script_id), int(seed), str(metric))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


class RecordStore:
    """The ``records/`` folder of a run: append for one shard, read across all shards."""

    def __init__(self, records_dir: Path | str, shard_name: str = "shard-000-of-001") -> None:
        self.dir = Path(records_dir)
        self.shard_name = shard_name
        self.path = self.dir / f"{shard_name}.jsonl"
        self._repaired = False

    def append(self, record: Record) -> None:
        """Append one record durably (single write + fsync)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self._repaired:
            repair_torn_tail(self.path)
            self._repaired = True
        line = (record.to_json() + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def files(self) -> list[Path]:
        return sorted(self.dir.glob("*.jsonl")) if self.dir.is_dir() else []

    def iter_all(self) -> Iterator[Record]:
        """Every record of every shard file, in file order (torn or unreadable lines are skipped)."""
        for path in self.files():
            yield from read_records(path)

    def latest(self) -> dict[RecordKey, Record]:
        """The latest record per key across all shards (later ``created`` wins)."""
        return latest_by_key(self.iter_all())


def latest_by_key(records: Iterable[Record]) -> dict[RecordKey, Record]:
    """The latest record per (model, script, seed, metric), whatever its configuration."""
    latest: dict[RecordKey, Record] = {}
    for rec in records:
        old = latest.get(rec.key)
        if old is None or rec.created >= old.created:
            latest[rec.key] = rec
    return latest


def latest_by_config(records: Iterable[Record]) -> dict[tuple[RecordKey, str | None], Record]:
    """The latest record per (key, config_id): what a leaderboard row of each configuration shows."""
    latest: dict[tuple[RecordKey, str | None], Record] = {}
    for rec in records:
        key = (rec.key, rec.config_id)
        old = latest.get(key)
        if old is None or rec.created >= old.created:
            latest[key] = rec
    return latest


def read_records(path: Path) -> Iterator[Record]:
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            yield Record.from_dict(json.loads(raw))
        except (json.JSONDecodeError, TypeError) as exc:
            torn_tail = number == len(lines) and not data.endswith(b"\n")
            if not torn_tail:
                log.warning("%s:%d: unreadable record skipped (%s)", path, number, exc)


def repair_torn_tail(path: Path) -> None:
    """Cut a partial last line left by a killed writer, so the next append starts on a fresh line."""
    if not path.is_file():
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        log.warning("%s: removing a torn last record (%d bytes) left by an interrupted run", path, len(data) - cut)
        f.truncate(cut)
