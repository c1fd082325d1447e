"""Evaluation records: one JSON line per (model, script, seed, metric), appended per shard.

Each shard process appends to its own ``records/shard-III-of-NNN.jsonl`` (and holds the shard's
lock, :mod:`narrastream.results.lock`), so files never have two writers. A line is written whole
(a short ``write`` is continued) and fsynced; a process killed mid-line leaves a torn last line,
which the next writer cuts off (with a warning) before appending. Readers take the latest record
per key, so a retried failure supersedes the failed one.

Every line is checked against one schema, :class:`Record`, when it is read and before it is
written. A line that is not a valid record (not JSON, not an object, a wrong type, a score outside
[0, 1], a status its other fields contradict) is skipped with a warning naming the file and line,
and counted (:attr:`RecordStore.invalid_lines`): it does not count as done, so the next evaluation
recomputes it. A writer never writes an invalid record: :class:`InvalidRecordError`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass as plain_dataclass, field
from numbers import Real
from pathlib import Path
from typing import Annotated, Any, Iterable, Iterator, Literal, Mapping

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass

from narrastream.results.configuration import config_id as compute_config_id

log = logging.getLogger(__name__)

RecordKey = tuple[str, int, int, str]
Status = Literal["ok", "fallback", "failed", "skipped"]
NonEmpty = Annotated[str, Field(min_length=1)]
#: a score: a finite number in [0, 1]
Score = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Seconds = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
#: at most this many invalid lines of one file are named one by one in the log (then a count)
WARN_LINES_PER_FILE = 10
_CONFIG_ID = re.compile(r"[0-9a-f]{8}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class InvalidRecordError(ValueError):
    """A record (or a records line) that does not fit the schema; the message says which field and why."""


@dataclass(config=ConfigDict(strict=True, extra="forbid", validate_assignment=True))
class Record:
    """The outcome of one metric on one video.

    ``score`` is in [0, 1] or None; ``status`` is ``ok`` (a score, no fallback), ``fallback`` (a
    score, but some part used a fallback, listed in ``fallbacks``), ``failed`` (no score; ``reason``
    says why) or ``skipped`` (no score: the metric does not apply, e.g. no judge).
    ``cache_key`` fingerprints everything the score depends on: a record whose key no longer
    matches the current configuration is recomputed on the next run. ``configuration`` says what
    produced it (protocol, annotations version and sha256, backbone weights, judge, generator; see
    :mod:`narrastream.results.configuration`) and ``config_id`` is its short hash: leaderboard rows
    are (model, config_id). ``reused_from`` names the configuration whose identical computation
    (same ``cache_key``) this record carries over, when only settings the score does not depend on changed.

    A pydantic dataclass: construction, :func:`dataclasses.replace` and attribute assignment are
    validated (strict types: ``"3"`` is not an int, ``True`` is not an int, NaN is not a score), and
    a mismatch raises :class:`pydantic.ValidationError` (a ``ValueError``).
    """

    run_id: str
    model: NonEmpty
    script_id: Annotated[int, Field(ge=0)]
    seed: int
    metric: NonEmpty
    score: Score | None
    status: Status
    protocol: str
    metric_version: str
    cache_key: NonEmpty
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
    elapsed_s: Seconds = 0.0
    created: Seconds = field(default_factory=time.time)

    @field_validator("score", "elapsed_s", "created", mode="before")
    @classmethod
    def _plain_number(cls, value: Any) -> Any:
        """numpy / torch scalars -> float (as the JSON writer would); bools stay refused."""
        if isinstance(value, Real) and not isinstance(value, (bool, int, float)):
            return float(value)
        if hasattr(value, "item") and not isinstance(value, (str, bytes, bool)) and getattr(value, "ndim", 1) == 0:
            return value.item()
        return value

    @field_validator("details", "backbones", "judge", "configuration", mode="before")
    @classmethod
    def _json_object_keys(cls, value: Any) -> Any:
        """Top-level keys as JSON writes them (``{0: x}`` is stored as ``{"0": x}``)."""
        if isinstance(value, Mapping) and not all(isinstance(k, str) for k in value):
            if not all(isinstance(k, (str, int, float, bool)) or k is None for k in value):
                return value  # the schema refuses it with a clear message
            return {k if isinstance(k, str) else json.dumps(k): v for k, v in value.items()}
        return value

    @field_validator("config_id", "reused_from")
    @classmethod
    def _config_id_form(cls, value: str | None) -> str | None:
        if value is not None and not _CONFIG_ID.fullmatch(value):
            raise ValueError(f"must be 8 lowercase hex digits, got {value!r}")
        return value

    @field_validator("video_sha256")
    @classmethod
    def _sha256_form(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256.fullmatch(value):
            raise ValueError(f"must be 64 lowercase hex digits, got {_short(value)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Record":
        """The status and the other fields agree (every writer in narrastream satisfies these)."""
        if self.status in ("ok", "fallback") and self.score is None:
            raise ValueError(f"status {self.status!r} needs a score (got null)")
        if self.status in ("failed", "skipped") and self.score is not None:
            raise ValueError(f"status {self.status!r} has no score (got {self.score!r})")
        if self.status == "failed" and not (self.reason or "").strip():
            raise ValueError("status 'failed' needs a reason")
        if self.status == "ok" and self.fallbacks:
            raise ValueError(f"status 'ok' lists fallbacks {self.fallbacks!r}: it is 'fallback'")
        if self.configuration is not None and self.config_id != compute_config_id(self.configuration):
            raise ValueError(f"config_id {self.config_id!r} is not the hash of the configuration "
                             f"({compute_config_id(self.configuration)!r})")
        return self

    @property
    def key(self) -> RecordKey:
        return record_key(self.model, self.script_id, self.seed, self.metric)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, allow_nan=False, default=_json_default)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Record":
        """A record from a parsed JSON object; unknown keys (from a newer narrastream) are ignored.

        Raises :class:`InvalidRecordError` naming the field(s) and the problem."""
        if not isinstance(data, Mapping):
            raise InvalidRecordError(f"not a JSON object but {_json_type(data)}")
        known = cls.__dataclass_fields__
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except ValidationError as exc:
            raise InvalidRecordError(describe_validation_error(exc)) from None

    @classmethod
    def from_json(cls, line: str | bytes) -> "Record":
        """A record from one records line (strict JSON: NaN and Infinity are refused)."""
        try:
            data = json.loads(line, parse_constant=_refuse_constant)
        except RecursionError:
            raise InvalidRecordError("not JSON (nested too deeply)") from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN, too many digits
            raise InvalidRecordError(f"not JSON ({exc})") from None
        return cls.from_dict(data)


def record_key(model: str, script_id: int, seed: int, metric: str) -> RecordKey:
    return (str(model), int(script_id), int(seed), str(metric))


def describe_validation_error(exc: ValidationError, limit: int = 3) -> str:
    """One line: the missing fields, then ``field: problem (got value)`` for the first ``limit`` others."""
    errors = exc.errors()
    missing = [".".join(str(p) for p in e["loc"]) for e in errors if e.get("type") in ("missing", "missing_argument")]
    others = [e for e in errors if e.get("type") not in ("missing", "missing_argument")]
    parts = [f"missing field(s): {', '.join(missing)}"] if missing else []
    for err in others[:limit]:
        where = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "value_error":
            parts.append(f"{where}: {msg}" if where else msg)
        else:
            parts.append(f"{where or 'record'}: {msg} (got {_short(err.get('input'))})")
    more = len(others) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array"}
    return f"{names.get(type(value), type(value).__name__)} ({_short(value, 40)})"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@plain_dataclass(frozen=True)
class InvalidLine:
    """A records line that was skipped: where, and why."""

    path: Path
    line: int
    problem: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.problem}"


class RecordStore:
    """The ``records/`` folder of a run: append for one shard, read across all shards.

    After a read (:meth:`iter_all`, :meth:`latest`), :attr:`invalid_lines` lists the lines that
    were skipped because they are not valid records, and :meth:`invalid_counts` counts them per file.
    """

    def __init__(self, records_dir: Path | str, shard_name: str = "shard-000-of-001") -> None:
        self.dir = Path(records_dir)
        self.shard_name = shard_name
        self.path = self.dir / f"{shard_name}.jsonl"
        self._repaired = False
        self.invalid_lines: list[InvalidLine] = []

    def append(self, record: Record) -> None:
        """Append one record durably: the whole line (a short write is continued), then fsync.

        The line is checked against the schema first, exactly as a reader will parse it; an invalid
        record raises :class:`InvalidRecordError` and nothing is written."""
        if not isinstance(record, Record):
            raise TypeError(f"RecordStore.append takes a Record, not {type(record).__name__}")
        try:
            text = record.to_json()
        except (TypeError, ValueError) as exc:  # NaN or an object JSON cannot hold
            raise InvalidRecordError(f"refusing to write record {record.key}: not JSON ({exc})") from None
        try:
            Record.from_json(text)
        except InvalidRecordError as exc:
            raise InvalidRecordError(f"refusing to write record {record.key}: {exc}") from None
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self._repaired:
            repair_torn_tail(self.path)
            self._repaired = True
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            _write_line(fd, (text + "\n").encode(), self.path)
            os.fsync(fd)
        finally:
            os.close(fd)

    def files(self) -> list[Path]:
        return sorted(self.dir.glob("*.jsonl")) if self.dir.is_dir() else []

    def iter_all(self) -> Iterator[Record]:
        """Every valid record of every shard file, in file order (torn, unreadable or invalid lines are
        skipped; invalid ones are logged and listed in :attr:`invalid_lines`)."""
        self.invalid_lines = []
        for path in self.files():
            yield from read_records(path, self.invalid_lines)

    def latest(self) -> dict[RecordKey, Record]:
        """The latest record per key across all shards (later ``created`` wins)."""
        return latest_by_key(self.iter_all())

    def invalid_counts(self) -> dict[str, int]:
        """Invalid lines skipped by the last read, per file (``{path: count}``)."""
        return dict(Counter(str(line.path) for line in self.invalid_lines))


def _write_line(fd: int, data: bytes, path: Path) -> None:
    """Write all of ``data``: ``os.write`` may write less than asked (a signal, a quota, a pipe-like
    filesystem). On an error the partial line is cut off again, so the file stays whole lines."""
    start = os.fstat(fd).st_size
    view = memoryview(data)
    try:
        while view:
            written = os.write(fd, view)
            if written <= 0:
                raise OSError(errno.EIO, f"{path}: os.write wrote nothing ({len(view)} bytes left)")
            view = view[written:]
    except BaseException:
        try:
            os.ftruncate(fd, start)
        except OSError as exc:  # the next writer cuts the torn tail instead
            log.warning("%s: could not remove a partly written record (%s)", path, exc)
        raise


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


def read_records(path: Path, invalid: list[InvalidLine] | None = None) -> Iterator[Record]:
    """The valid records of one file. An invalid line is skipped with a warning naming ``path:line``
    (the first :data:`WARN_LINES_PER_FILE` per file, then a count) and appended to ``invalid``.
    A torn last line (no newline: a writer was killed, or is writing right now) is skipped silently."""
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    bad = 0
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = Record.from_json(raw)
        except InvalidRecordError as exc:
            if number == len(lines) and not data.endswith(b"\n"):
                continue  # torn tail
            bad += 1
            if invalid is not None:
                invalid.append(InvalidLine(Path(path), number, str(exc)))
            if bad <= WARN_LINES_PER_FILE:
                log.warning("%s:%d: invalid record skipped (%s); it does not count as done", path, number, exc)
            continue
        yield record
    if bad > WARN_LINES_PER_FILE:
        log.warning("%s: %d invalid record line(s) skipped in all (%d more than named above)", path, bad,
                    bad - WARN_LINES_PER_FILE)


def repair_torn_tail(path: Path) -> None:
    """Make the file end with a newline before appending: a partial last line left by a killed writer is
    cut off; a last line that is a whole valid record (only its newline missing) is kept."""
    if not path.is_file():
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        try:
            Record.from_json(data[cut:])
        except InvalidRecordError:
            log.warning("%s: removing a torn last record (%d bytes) left by an interrupted run", path, len(data) - cut)
            f.truncate(cut)
        else:
            f.write(b"\n")
