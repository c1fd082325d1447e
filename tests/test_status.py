"""``narrastream status``: done / failed / pending per stage and shard, and the time left, from the run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from narrastream.cli import main as cli
from narrastream.harness.status import RunStatus, StageProgress, current_rate, format_seconds, render, run_status
from narrastream.results.records import Record, RecordStore
from narrastream.results.shard_state import ShardState, read_states, write_state

METRICS = ["subject_consistency", "conditional_adjacent"]
RUN = ["model=synthetic", "preset=tiny", "data.limit=4", f"protocol.run_metrics=[{','.join(METRICS)}]"]


@pytest.fixture(scope="module")
def half_run(tmp_path_factory) -> Path:
    """Shard 0 of 2 generated and evaluated (scripts 0 and 2); shard 1 (scripts 1 and 3) not started."""
    run_dir = tmp_path_factory.mktemp("status") / "run"
    proc = subprocess.run([sys.executable, "-m", "narrastream.run", *RUN, f"run.dir={run_dir}",
                           "stage=[generate,evaluate]", "shard.count=2", "shard.index=0"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def rows(status: RunStatus) -> dict[tuple[str, str], tuple[int, int, int]]:
    return {(r.stage, r.shard): (r.done, r.failed, r.pending) for r in status.stages}


def test_a_half_done_run_counts_each_shard(half_run):
    status = run_status(half_run)
    assert status.shard_count == 2 and status.items == 4 and status.metrics == METRICS
    assert rows(status) == {
        ("generate", "shard-000-of-002"): (2, 0, 0), ("evaluate", "shard-000-of-002"): (2, 0, 0),
        ("generate", "shard-001-of-002"): (0, 0, 2), ("evaluate", "shard-001-of-002"): (0, 0, 2),
    }
    assert status.shard_phases == {"shard-000-of-002": "exited 0"}
    assert status.leaderboard == "not written" and not status.complete
    # shard 1 has no rate of its own: it borrows shard 0's, so the time left is known
    s0 = {r.stage: r for r in status.stages if r.shard == "shard-000-of-002"}
    s1 = {r.stage: r for r in status.stages if r.shard == "shard-001-of-002"}
    for stage in ("generate", "evaluate"):
        assert s0[stage].seconds_per_item is not None and s0[stage].seconds_left == 0.0
        assert s1[stage].seconds_per_item == s0[stage].seconds_per_item
    assert status.seconds_left == pytest.approx(2 * s0["generate"].seconds_per_item
                                                + 2 * s0["evaluate"].seconds_per_item)
    text = render(status)
    assert "shard-001-of-002  not started" in text and "time left at the current rate" in text


def test_failures_are_counted_where_they_happened(half_run, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(half_run, run_dir)
    (run_dir / "videos" / "synthetic" / "1-s0.failed.json").write_text(json.dumps({"error": "boom"}))
    latest = RecordStore(run_dir / "records").latest()
    old = latest[("synthetic", 2, 0, "conditional_adjacent")]
    failed = Record(**{**old.__dict__, "status": "failed", "score": None, "reason": "test", "created": time.time()})
    RecordStore(run_dir / "records", "shard-000-of-002").append(failed)
    status = run_status(run_dir)
    assert rows(status)[("generate", "shard-001-of-002")] == (0, 1, 1)
    assert rows(status)[("evaluate", "shard-000-of-002")] == (1, 1, 0)
    assert status.failed_metrics == {"conditional_adjacent": 1}
    assert "failed metrics: conditional_adjacent 1" in render(status)
    assert "time left at the current rate" in render(status)  # shard 1 is still pending
    # counted by the run's 2 shards, or regrouped by another count
    regrouped = run_status(run_dir, shard_count=1)
    assert rows(regrouped)[("evaluate", "shard-000-of-001")] == (1, 1, 2)


def test_the_cli_prints_the_table_and_json(half_run, capsys):
    assert cli(["status", str(half_run)]) == 0
    out = capsys.readouterr().out
    assert "evaluate  shard-000-of-002  exited 0" in out
    assert cli(["status", str(half_run), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["items"] == 4 and {r["shard"] for r in data["stages"]} == {"shard-000-of-002", "shard-001-of-002"}


def test_a_folder_that_is_not_a_run_is_bad_input(tmp_path, capsys):
    assert cli(["status", str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err


def test_process_states(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_state(tmp_path, ShardState(shard="shard-000-of-003", stages=["generate"], pid=dead.pid))
    write_state(tmp_path, ShardState(shard="shard-001-of-003", stages=["generate"], pid=os.getpid()))
    write_state(tmp_path, ShardState(shard="shard-002-of-003", stages=["evaluate"], finished=time.time(), exit_code=3))
    phases = {name: state.phase for name, state in read_states(tmp_path).items()}
    assert phases == {"shard-000-of-003": "killed", "shard-001-of-003": "running", "shard-002-of-003": "exited 3"}


def test_current_rate_and_time_left():
    assert current_rate([]) == (None, None)
    assert current_rate([(100.0, 7.0)]) == (7.0, 100.0)  # one item: its own duration
    assert current_rate([(10.0, 1.0), (40.0, 1.0), (20.0, 1.0)]) == (15.0, 40.0)  # span / intervals
    window = [(float(t), 0.0) for t in range(0, 1000, 10)] + [(2000.0, 0.0)]  # the last 20 completions count
    assert current_rate(window)[0] == pytest.approx((2000 - 810) / 19)
    a = StageProgress("evaluate", "shard-000-of-002", done=1, pending=4, seconds_per_item=10.0)
    b = StageProgress("evaluate", "shard-001-of-002", done=3, pending=1, seconds_per_item=5.0)
    status = RunStatus("r", "m", 2, 8, [0], ["x"], [a, b], {}, {}, "not written", now=0.0)
    assert status.seconds_left == 40.0  # shards in parallel: the slowest one
    assert format_seconds(40) == "40s" and format_seconds(125) == "2m05s" and format_seconds(3720) == "1h02m"
    assert format_seconds(None) == "unknown"
