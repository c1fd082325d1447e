"""Records: atomic appends, torn-tail repair, latest-wins merge across shards."""

from __future__ import annotations

from narrastream.results.records import Record, RecordStore, latest_by_key


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
    import pytest

    with pytest.raises(ValueError):
        RecordStore(tmp_path, "s").append(_rec(score=float("nan")))
