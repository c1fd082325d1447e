"""Records: the schema (invalid lines skipped, named, counted), atomic and complete appends, torn-tail repair,
latest-wins merge across shards."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace

import pytest

from narrastream.results.configuration import config_id
from narrastream.results.records import (
    InvalidRecordError,
    Record,
    RecordStore,
    latest_by_key,
    read_records,
    repair_torn_tail,
)


def _rec(metric: str = "subject_consistency", score: float | None = 0.5, status: str = "ok",
         created: float = 1.0, script_id: int = 0) -> Record:
    return Record(run_id="r", model="m", script_id=script_id, seed=0, metric=metric, score=score, status=status,
                  protocol="narrastream-1.0", metric_version="v", cache_key="k", created=created,
                  reason="it failed" if status == "failed" else None)


def test_append_and_read_back(tmp_path):
    store = RecordStore(tmp_path / "records", "shard-000-of-002")
    store.append(_rec(score=0.25))
    store.append(_rec(metric="background_consistency", score=0.75))
    got = list(store.iter_all())
    assert [(r.metric, r.score) for r in got] == [("subject_consistency", 0.25), ("background_consistency", 0.75)]


def test_torn_tail_is_cut_before_next_append(tmp_path):
    store = RecordStore(tmp_path / "records", "shard-000-of-001")
    store.append(_rec(script_id=0))
    with open(store.path, "ab") as f:
        f.write(b'{"run_id": "r", "model": "m", "scr')  # a writer killed mid-line
    assert len(list(store.iter_all())) == 1  # readers skip the torn line
    fresh = RecordStore(tmp_path / "records", "shard-000-of-001")
    fresh.append(_rec(script_id=1))
    lines = store.path.read_text().splitlines()
    assert len(lines) == 2 and all(line.endswith("}") for line in lines)


def test_latest_record_wins_across_shards(tmp_path):
    a = RecordStore(tmp_path / "records", "shard-000-of-002")
    b = RecordStore(tmp_path / "records", "shard-001-of-002")
    a.append(_rec(status="failed", score=None, created=1.0))
    b.append(_rec(status="ok", score=0.9, created=2.0))
    latest = a.latest()
    assert len(latest) == 1 and next(iter(latest.values())).score == 0.9
    assert latest_by_key([_rec(created=5.0, score=0.1), _rec(created=3.0, score=0.2)])[("m", 0, 0, "subject_consistency")].score == 0.1


def test_nan_score_is_refused(tmp_path):
    with pytest.raises(ValueError):
        RecordStore(tmp_path, "s").append(_rec(score=float("nan")))


# ---------------------------------------------------------------- the schema: invalid lines are skipped, named, counted

def _line(**changes) -> str:
    data = json.loads(_rec().to_json())
    data.update(changes)
    return json.dumps(data)


BAD_LINES = {
    "null": "null",
    "array": "[1, 2, 3]",
    "created yesterday": _line(created="yesterday"),
    "script_id abc": _line(script_id="abc"),
    "score 7.5": _line(score=7.5),
    "score -0.1": _line(score=-0.1),
    "score NaN": _line().replace('"score": 0.5', '"score": NaN'),
    "score Infinity": _line().replace('"score": 0.5', '"score": Infinity'),
    "score as string": _line(score="0.5"),
    "score true": _line(score=True),
    "status unknown": _line(status="done"),
    "ok without score": _line(score=None),
    "failed with a score": _line(status="failed", reason="x"),
    "failed without reason": _line(status="failed", score=None),
    "ok with fallbacks": _line(fallbacks=["uniform weights"]),
    "missing key field": json.dumps({k: v for k, v in json.loads(_line()).items() if k != "metric"}),
    "config_id not the configuration's": _line(configuration={"a": 1}, config_id="00000000"),
    "negative elapsed": _line(elapsed_s=-1.0),
    "reused_from not a config_id": _line(reused_from="abcd1234\n"),
    "video_sha256 not a sha256": _line(video_sha256="abc"),
    "not JSON": "{oops",
}


@pytest.mark.parametrize("name", sorted(BAD_LINES))
def test_an_invalid_line_is_skipped_named_and_counted(tmp_path, caplog, name):
    store = RecordStore(tmp_path / "records", "shard-000-of-001")
    store.append(_rec(script_id=0))
    with open(store.path, "a") as f:
        f.write(BAD_LINES[name] + "\n")
    store.append(_rec(script_id=1))
    with caplog.at_level(logging.WARNING):
        got = list(store.iter_all())
    assert [r.script_id for r in got] == [0, 1]  # the valid records around it still count
    assert store.invalid_counts() == {str(store.path): 1}
    [bad] = store.invalid_lines
    assert bad.line == 2 and str(bad).startswith(f"{store.path}:2: ")
    assert f"{store.path}:2: invalid record skipped" in caplog.text


def test_invalid_line_messages_name_the_field(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join([BAD_LINES["score 7.5"], BAD_LINES["created yesterday"], BAD_LINES["script_id abc"],
                               BAD_LINES["null"], BAD_LINES["array"]]) + "\n")
    invalid: list = []
    assert list(read_records(path, invalid)) == []
    problems = [i.problem for i in invalid]
    assert "score" in problems[0] and "less than or equal to 1" in problems[0] and "7.5" in problems[0]
    assert problems[1].startswith("created:") and "yesterday" in problems[1]
    assert problems[2].startswith("script_id:") and "abc" in problems[2]
    assert problems[3] == "not a JSON object but null"
    assert problems[4].startswith("not a JSON object but an array")


def test_many_invalid_lines_are_named_up_to_a_limit_then_counted(tmp_path, caplog):
    path = tmp_path / "r.jsonl"
    path.write_text("null\n" * 25)
    invalid: list = []
    with caplog.at_level(logging.WARNING):
        assert list(read_records(path, invalid)) == []
    assert len(invalid) == 25
    assert caplog.text.count("invalid record skipped") == 10 and "25 invalid record line(s) skipped in all" in caplog.text


def test_a_torn_last_line_is_not_counted_as_invalid(tmp_path):
    store = RecordStore(tmp_path / "records")
    store.append(_rec())
    with open(store.path, "ab") as f:
        f.write(_rec(script_id=3).to_json().encode()[:40])
    assert len(list(store.iter_all())) == 1 and store.invalid_lines == []


def test_a_whole_last_record_without_its_newline_is_kept(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(_rec(script_id=0).to_json() + "\n" + _rec(script_id=1).to_json())  # e.g. edited by hand
    repair_torn_tail(path)
    assert path.read_text().endswith("}\n")
    assert [r.script_id for r in read_records(path)] == [0, 1]


def test_strict_types_on_construction():
    with pytest.raises(ValueError, match="score"):
        _rec(score=7.5)
    with pytest.raises(ValueError, match="script_id"):
        Record(run_id="r", model="m", script_id="3", seed=0, metric="x", score=0.5, status="ok",  # type: ignore[arg-type]
               protocol="p", metric_version="v", cache_key="k")
    with pytest.raises(ValueError, match="status"):
        _rec(status="done")
    with pytest.raises(ValueError, match="colour"):  # unknown fields are refused, not dropped
        Record(run_id="r", model="m", script_id=0, seed=0, metric="x", score=0.5, status="ok", protocol="p",
               metric_version="v", cache_key="k", colour="red")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="score"):
        replace(_rec(), score=1.5)
    rec = _rec()
    with pytest.raises(ValueError, match="score"):
        rec.score = float("inf")


def test_numpy_scalars_and_integer_keys_are_stored_as_json_would_store_them():
    import numpy as np

    rec = Record(run_id="r", model="m", script_id=0, seed=0, metric="x", score=np.float32(0.25), status="ok",
                 protocol="p", metric_version="v", cache_key="k", details={0: "a"}, elapsed_s=np.float64(1.5))
    assert type(rec.score) is float and rec.score == 0.25 and rec.details == {"0": "a"}
    assert Record.from_json(rec.to_json()) == rec


def test_writers_never_write_an_invalid_record(tmp_path):
    store = RecordStore(tmp_path / "records")
    rec = _rec()
    rec.fallbacks.append(3)  # a mutation the constructor could not see
    with pytest.raises(InvalidRecordError, match="refusing to write record .*fallbacks"):
        store.append(rec)
    rec = _rec()
    rec.details["x"] = float("nan")
    with pytest.raises(InvalidRecordError, match="not JSON"):
        store.append(rec)
    with pytest.raises(TypeError):
        store.append({"score": 0.5})  # type: ignore[arg-type]
    assert not store.path.exists() or store.path.read_text() == ""


def test_status_rules_accept_what_the_writers_write():
    _rec(status="fallback", score=0.3)
    Record(run_id="r", model="m", script_id=0, seed=0, metric="x", score=0.3, status="fallback", protocol="p",
           metric_version="v", cache_key="k", fallbacks=["uniform weights"])
    _rec(status="skipped", score=None)
    _rec(status="failed", score=None)  # _rec gives failures a reason
    configuration = {"protocol": {"version": "narrastream-1.0"}}
    rec = replace(_rec(), configuration=configuration, config_id=config_id(configuration))
    assert Record.from_json(rec.to_json()).config_id == config_id(configuration)


# ---------------------------------------------------------------- short writes
def test_a_short_write_is_continued(tmp_path, monkeypatch):
    real_write = os.write
    calls = []

    def dribble(fd, data):  # a write that takes at most 7 bytes at a time
        calls.append(len(data))
        return real_write(fd, bytes(data[:7]))

    monkeypatch.setattr(os, "write", dribble)
    store = RecordStore(tmp_path / "records")
    store.append(_rec(script_id=0))
    store.append(_rec(script_id=1))
    monkeypatch.setattr(os, "write", real_write)
    assert len(calls) > 20
    assert [r.script_id for r in store.iter_all()] == [0, 1] and store.invalid_lines == []


def test_a_write_that_stops_raises_and_leaves_whole_lines(tmp_path, monkeypatch):
    store = RecordStore(tmp_path / "records")
    store.append(_rec(script_id=0))
    real_write = os.write
    state = {"n": 0}

    def stuck(fd, data):  # 10 bytes, then nothing more (as a full quota can behave)
        state["n"] += 1
        return real_write(fd, bytes(data[:10])) if state["n"] == 1 else 0

    monkeypatch.setattr(os, "write", stuck)
    with pytest.raises(OSError, match="wrote nothing"):
        store.append(_rec(script_id=1))
    monkeypatch.setattr(os, "write", real_write)
    assert store.path.read_text().count("\n") == 1 and store.path.read_text().endswith("}\n")
    store.append(_rec(script_id=2))
    assert [r.script_id for r in store.iter_all()] == [0, 2] and store.invalid_lines == []
