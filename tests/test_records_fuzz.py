"""Property-based tests of the records parser: whatever a records line holds, reading it gives a valid
:class:`Record` or a skip with a warning naming ``file:line``; never another exception, never a
silently wrong value (a score outside [0, 1], a string taken for a number, a status its fields
contradict)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from narrastream.results.configuration import config_id
from narrastream.results.records import InvalidRecordError, Record, RecordStore, read_records

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIELDS = list(Record.__dataclass_fields__)



def _json(floats: st.SearchStrategy) -> st.SearchStrategy:
    scalars = st.none() | st.booleans() | st.integers() | floats | st.text(max_size=20)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


#: what a JSON writer can write (finite numbers) / what Python's json.dumps writes (NaN, Infinity too)
json_values = _json(st.floats(allow_nan=False, allow_infinity=False))
any_json_values = _json(st.floats())
finite_scores = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
hex8 = st.text(alphabet="0123456789abcdef", min_size=8, max_size=8)


@st.composite
def valid_records(draw) -> dict:
    """A record as a writer would write it: every field of the right type, status and score consistent."""
    status = draw(st.sampled_from(["ok", "fallback", "failed", "skipped"]))
    configuration = draw(st.none() | st.dictionaries(st.text(max_size=8), json_values, max_size=3))
    fallbacks = draw(st.lists(st.text(max_size=10), min_size=1, max_size=2)) if status == "fallback" else []
    return {
        "run_id": draw(st.text(max_size=10)), "model": draw(st.text(min_size=1, max_size=10)),
        "script_id": draw(st.integers(min_value=0, max_value=10**6)), "seed": draw(st.integers(-10, 10**6)),
        "metric": draw(st.text(min_size=1, max_size=12)),
        "score": draw(finite_scores) if status in ("ok", "fallback") else None, "status": status,
        "protocol": "narrastream-1.0", "metric_version": draw(st.text(max_size=8)),
        "cache_key": draw(st.text(min_size=1, max_size=32)),
        "reason": draw(st.text(min_size=1, max_size=20).filter(str.strip)) if status == "failed" else None,
        "fallbacks": fallbacks,
        "items": draw(st.lists(st.dictionaries(st.text(max_size=5), json_values, max_size=3), max_size=3)),
        "details": draw(st.dictionaries(st.text(max_size=5), json_values, max_size=3)),
        "configuration": configuration, "config_id": config_id(configuration),
        "reused_from": draw(st.none() | hex8),
        "video_sha256": draw(st.none() | st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)),
        "elapsed_s": draw(st.floats(min_value=0, max_value=1e6, allow_nan=False)),
        "created": draw(st.floats(min_value=0, max_value=4e9, allow_nan=False)),
    }


def assert_is_sound(rec: Record) -> None:
    """What every record handed to the leaderboard must satisfy."""
    assert rec.status in ("ok", "fallback", "failed", "skipped")
    if rec.score is not None:
        assert type(rec.score) is float and math.isfinite(rec.score) and 0.0 <= rec.score <= 1.0
    assert (rec.score is not None) == (rec.status in ("ok", "fallback"))
    assert rec.status != "failed" or (rec.reason or "").strip()
    assert type(rec.script_id) is int and rec.script_id >= 0 and type(rec.seed) is int
    assert type(rec.created) is float and math.isfinite(rec.created)
    assert rec.configuration is None or rec.config_id == config_id(rec.configuration)
    assert Record.from_json(rec.to_json()) == rec  # what is read can be written back unchanged


def read_one(tmp_path: Path, line: bytes) -> tuple[list[Record], list]:
    path = tmp_path / "shard-000-of-001.jsonl"
    path.write_bytes(line + b"\n")
    invalid: list = []
    records = list(read_records(path, invalid))
    assert len(records) + len(invalid) <= 1
    for bad in invalid:
        assert str(bad).startswith(f"{path}:1: ") and bad.problem
    return records, invalid


@SETTINGS
@given(value=any_json_values)
def test_any_json_value_is_a_record_or_a_named_skip(tmp_path_factory, value):
    tmp = tmp_path_factory.mktemp("any")
    records, invalid = read_one(tmp, json.dumps(value).encode())
    assert records == [] and len(invalid) == 1  # no arbitrary value happens to be a whole record


@SETTINGS
@given(raw=st.binary(max_size=200))
def test_any_bytes_are_a_record_or_a_named_skip(tmp_path_factory, raw):
    raw = raw.replace(b"\n", b" ")
    assume(raw.strip())
    tmp = tmp_path_factory.mktemp("bytes")
    records, invalid = read_one(tmp, raw)
    assert records == [] and len(invalid) == 1


@SETTINGS
@given(data=valid_records())
def test_a_valid_record_round_trips(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("valid")
    records, invalid = read_one(tmp, json.dumps(data).encode())
    assert invalid == [] and len(records) == 1
    rec = records[0]
    assert_is_sound(rec)
    stored = json.loads(rec.to_json())
    assert all(stored[k] == v for k, v in data.items())
    store = RecordStore(tmp / "records")
    store.append(rec)
    assert list(store.iter_all()) == [rec]


@SETTINGS
@given(data=valid_records(), name=st.sampled_from(FIELDS), value=any_json_values)
def test_a_mutated_record_is_exact_or_skipped(tmp_path_factory, data, name, value):
    """Replace one field by any JSON value: either the record is read with exactly that value (a
    number may gain a ``.0``), or the line is skipped and named. Nothing is coerced."""
    data = {**data, name: value}
    tmp = tmp_path_factory.mktemp("mutated")
    records, invalid = read_one(tmp, json.dumps(data).encode())
    if records:
        assert_is_sound(records[0])
        stored = json.loads(records[0].to_json())[name]
        assert stored == value and type(stored) in (type(value), float)  # 1 -> 1.0 is the only change allowed
        if name == "score":
            assert isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        assert len(invalid) == 1


@SETTINGS
@given(data=valid_records(), name=st.sampled_from(FIELDS))
def test_a_record_missing_a_field_is_complete_or_skipped(tmp_path_factory, data, name):
    data.pop(name, None)
    tmp = tmp_path_factory.mktemp("missing")
    records, invalid = read_one(tmp, json.dumps(data).encode())
    required = {"run_id", "model", "script_id", "seed", "metric", "score", "status", "protocol", "metric_version",
                "cache_key"}
    if name in required:
        assert records == [] and "missing" in invalid[0].problem and name in invalid[0].problem
    elif records:
        assert_is_sound(records[0])


@SETTINGS
@given(data=valid_records(), extra=st.dictionaries(st.text(max_size=8), json_values, max_size=3))
def test_unknown_keys_of_a_newer_writer_are_ignored(tmp_path_factory, data, extra):
    extra = {k: v for k, v in extra.items() if k not in FIELDS}
    tmp = tmp_path_factory.mktemp("extra")
    records, invalid = read_one(tmp, json.dumps({**data, **extra}).encode())
    assert invalid == [] and len(records) == 1
    stored = json.loads(records[0].to_json())
    assert all(stored[k] == v for k, v in data.items()) and not set(extra) & set(stored)


@SETTINGS
@given(score=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 5))
def test_only_scores_in_the_unit_interval_are_read(tmp_path_factory, score):
    data = {"run_id": "r", "model": "m", "script_id": 0, "seed": 0, "metric": "x", "score": score, "status": "ok",
            "protocol": "p", "metric_version": "v", "cache_key": "k"}
    tmp = tmp_path_factory.mktemp("score")
    records, _ = read_one(tmp, json.dumps(data).encode())  # json.dumps writes NaN / Infinity literals
    assert bool(records) == (math.isfinite(score) and 0 <= score <= 1)


@SETTINGS
@given(lines=st.lists(st.one_of(valid_records().map(json.dumps), any_json_values.map(json.dumps), st.just("")),
                      max_size=8))
def test_a_file_gives_every_valid_line_and_names_every_other(tmp_path_factory, lines):
    tmp = tmp_path_factory.mktemp("file")
    path = tmp / "shard-000-of-001.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    invalid: list = []
    records = list(read_records(path, invalid))
    valid_lines = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            Record.from_json(line)
            valid_lines.append(number)
        except InvalidRecordError:
            assert any(bad.line == number for bad in invalid)
    assert len(records) == len(valid_lines) and len(invalid) == sum(1 for x in lines if x.strip()) - len(valid_lines)
