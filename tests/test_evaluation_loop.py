"""The evaluation loop's prefetch (narrastream/harness/prefetch.py and Session.evaluate): the next video is
decoded while the current one is scored, in order, once, with the same records and resume semantics as a loop
without prefetch; what the backbones cost lands in the run manifest."""

from __future__ import annotations

import json
import threading
import time

import pytest

from narrastream.harness.prefetch import Prefetcher
from narrastream.harness.session import Session
from narrastream.results.records import RecordStore
from narrastream.video import SegmentedVideo

METRICS = "protocol.run_metrics=[subject_consistency,conditional_adjacent]"


# ---------------------------------------------------------------------------------------- Prefetcher
def test_prefetch_keeps_order_and_loads_each_item_once():
    loads: list[int] = []
    result = [(item, value) for item, value in Prefetcher(range(6), lambda i: loads.append(i) or i * 10, depth=2)]
    assert result == [(i, i * 10) for i in range(6)]
    assert loads == list(range(6))


def test_prefetch_loads_ahead_but_no_further_than_its_depth():
    loaded: list[int] = []
    ahead: list[int] = []
    prefetcher = Prefetcher(range(8), lambda i: loaded.append(i) or i, depth=2)
    for item, _ in prefetcher:
        time.sleep(0.05)  # "scoring": the thread loads meanwhile
        ahead.append(len(loaded) - (item + 1))  # loaded beyond the item being processed
    assert max(ahead) == 2 and ahead[0] == 2  # the next two were decoded while item 0 was scored
    assert sorted(loaded) == list(range(8))


def test_a_load_error_is_raised_at_its_items_turn():
    def load(i):
        if i == 2:
            raise OSError("broken video 2")
        return i

    seen = []
    with pytest.raises(OSError, match="broken video 2"):
        for item, _ in Prefetcher(range(5), load, depth=1):
            seen.append(item)
    assert seen == [0, 1]


def test_closing_early_stops_loading():
    loaded: list[int] = []
    prefetcher = Prefetcher(range(50), lambda i: loaded.append(i) or i, depth=1)
    for item, _ in prefetcher:
        if item == 3:
            break
    prefetcher.close()
    count = len(loaded)
    time.sleep(0.3)
    assert len(loaded) == count <= 5  # items 0..3 taken, at most one more loaded ahead
    assert not any(t.name == "prefetch" and t.is_alive() for t in threading.enumerate())


def test_depth_zero_loads_in_the_loop():
    threads = []
    out = list(Prefetcher(range(3), lambda i: threads.append(threading.current_thread()) or i, depth=0))
    assert out == [(0, 0), (1, 1), (2, 2)] and set(threads) == {threading.current_thread()}


# ---------------------------------------------------------------------------------------- Session
def session(run_dir, *overrides):
    return Session.from_overrides(["preset=tiny", "data.limit=3", f"run.dir={run_dir}", METRICS, *overrides])


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Three tiny videos, generated once; each test evaluates copies of the run folder."""
    run_dir = tmp_path_factory.mktemp("loop") / "run"
    s = session(run_dir)
    s.write_run_files()
    assert s.generate().done == 3
    return run_dir


def copy_run(generated, tmp_path, name):
    import shutil

    target = tmp_path / name
    shutil.copytree(generated, target)
    return target


def count_decodes(monkeypatch) -> list:
    decoded = []
    original = SegmentedVideo.from_file.__func__

    def counting(cls, path, *args, **kwargs):
        decoded.append((path, threading.current_thread().name))
        return original(cls, path, *args, **kwargs)

    monkeypatch.setattr(SegmentedVideo, "from_file", classmethod(counting))
    return decoded


def scores(run_dir):
    return [(r.script_id, r.metric, r.status, r.score) for r in RecordStore(run_dir / "records").iter_all()]


def test_prefetch_gives_the_same_records_in_the_same_order_decoding_each_video_once(generated, tmp_path, monkeypatch):
    decoded = count_decodes(monkeypatch)
    with_prefetch = copy_run(generated, tmp_path, "prefetch")
    summary = session(with_prefetch).evaluate()
    assert summary.done == 6 and summary.failed == 0
    assert len(decoded) == 3 and len({p for p, _ in decoded}) == 3  # every video decoded once
    assert {thread for _, thread in decoded} == {"decode"}  # in the prefetch thread
    decoded.clear()
    inline = copy_run(generated, tmp_path, "inline")
    session(inline, "backbones.prefetch_videos=0").evaluate()
    assert len(decoded) == 3 and {thread for _, thread in decoded} == {threading.current_thread().name}
    assert scores(with_prefetch) == scores(inline)  # same order, same scores (same ops: bit-equal)
    assert [r[0] for r in scores(with_prefetch)] == [0, 0, 1, 1, 2, 2]
    # resume: nothing pending, nothing decoded
    decoded.clear()
    again = session(with_prefetch).evaluate()
    assert again.done == 0 and again.skipped == 6 and decoded == []


def test_a_broken_video_fails_in_its_place_and_the_others_are_scored(generated, tmp_path, monkeypatch):
    run_dir = copy_run(generated, tmp_path, "broken")
    original = SegmentedVideo.from_file.__func__

    def failing(cls, path, *args, **kwargs):  # a decode error in the prefetch thread
        if str(path).endswith("1-s0.mp4"):
            raise OSError(f"{path}: corrupt frame data")
        return original(cls, path, *args, **kwargs)

    monkeypatch.setattr(SegmentedVideo, "from_file", classmethod(failing))
    summary = session(run_dir).evaluate()
    assert summary.done == 4 and summary.failed == 2
    records = scores(run_dir)
    assert [(sid, status) for sid, _, status, _ in records] == [
        (0, "ok"), (0, "ok"), (1, "failed"), (1, "failed"), (2, "ok"), (2, "ok")]
    failed = [r for r in RecordStore(run_dir / "records").iter_all() if r.status == "failed"]
    assert all(r.reason.startswith("OSError: ") and "1-s0.mp4: corrupt frame data" in r.reason for r in failed)


def test_the_manifest_records_what_each_backbone_cost(generated, tmp_path):
    run_dir = copy_run(generated, tmp_path, "runtime")
    s = session(run_dir)
    s.write_run_files()
    s.evaluate()
    runtime = json.loads((run_dir / "manifest.json").read_text())["evaluation_runtime"]["shard-000-of-001"]
    dino = runtime["backbones"]["dino_vitb16"]
    # per video one call for subject_consistency, one for conditional_adjacent (5 frames x 6 segments each)
    assert dino["calls"] == 6 and dino["items"] == 6 * 30 and dino["forwards"] == 6 and dino["seconds"] > 0
    assert dino["batch_size"] == 32 and dino["precision"] == "fp32" and dino["peak_memory_bytes"] is None
    loop = runtime["loop"]
    assert loop["videos"] == 3 and loop["prefetch_videos"] == 1 and loop["decode_seconds"] > 0
    assert loop["seconds"] >= loop["backbone_seconds"] > 0


def test_batch_sizes_change_no_cache_key_and_no_configuration(tmp_path):
    """Batch sizes are speed settings: the same cache keys and configuration whatever they are."""
    plain = Session.from_overrides(["preset=tiny", "data.limit=1", f"run.dir={tmp_path}"])
    batched = Session.from_overrides(["preset=tiny", "data.limit=1", f"run.dir={tmp_path}",
                                      "+protocol.metrics.vtss.batch_size=2", "backbones.batch_size.raft_things=3"])
    assert plain.protocol_identity() == batched.protocol_identity()
    script = plain.items[0][0]
    for name in ("vtss", "temporal_flickering"):
        assert plain.cache_key(plain.metrics()[name], None, script) == batched.cache_key(batched.metrics()[name], None, script)
    assert plain.run_configuration() == batched.run_configuration()
