"""End to end through ``python -m narrastream.run``: tiny preset, resume, kill, shards, precomputed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from narrastream.config import compose_config
from narrastream.results.records import RecordStore

pytestmark = pytest.mark.slow
RUN_METRICS = compose_config(["preset=tiny"])["protocol"]["run_metrics"]
M = len(RUN_METRICS)


def run(*overrides: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "narrastream.run", *overrides], capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def records(run_dir: Path) -> list:
    return list(RecordStore(run_dir / "records").iter_all())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("e2e") / "run"
    run("model=synthetic", "preset=tiny", "data.limit=3", f"run.dir={run_dir}")
    return run_dir


def test_tiny_run_writes_a_leaderboard(tiny_run):
    board = pd.read_csv(tiny_run / "leaderboard.csv")
    row = board[board["model"] == "synthetic"].iloc[0]
    assert row["scripts"] == 3
    for metric in ("subject_consistency", "background_consistency"):
        assert 0.0 <= row[metric] <= 100.0
        assert row[f"{metric}_valid"] == 3
        assert row[f"{metric}_fallback"] == 0  # the shipped frozen annotations give the planner weights
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert len(manifest["data"]["sha256"]) == 64 and manifest["protocol"]["version"]
    assert len(records(tiny_run)) == 3 * M
    sidecar = json.loads((tiny_run / "videos" / "synthetic" / "0-s0.json").read_text())
    assert sidecar["num_frames"] == 6 * 8 and sidecar["switch_frames"] == [8, 16, 24, 32, 40]


def test_rerun_adds_no_record(tiny_run):
    lines_before = sum(len(p.read_text().splitlines()) for p in (tiny_run / "records").glob("*.jsonl"))
    mtimes = {p: p.stat().st_mtime_ns for p in (tiny_run / "videos").rglob("*.mp4")}
    run("model=synthetic", "preset=tiny", "data.limit=3", f"run.dir={tiny_run}")
    lines_after = sum(len(p.read_text().splitlines()) for p in (tiny_run / "records").glob("*.jsonl"))
    assert lines_after == lines_before == 3 * M
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # no video regenerated


def test_stages_run_alone(tmp_path):
    run_dir = tmp_path / "run"
    run("preset=tiny", "data.ids=[4]", f"run.dir={run_dir}", "stage=generate")
    assert (run_dir / "videos" / "synthetic" / "4-s0.mp4").is_file() and not (run_dir / "records").exists()
    run("preset=tiny", "data.ids=[4]", f"run.dir={run_dir}", "stage=evaluate")
    assert len(records(run_dir)) == M and not (run_dir / "leaderboard.csv").exists()
    run("preset=tiny", "data.ids=[4]", f"run.dir={run_dir}", "stage=leaderboard")
    assert (run_dir / "leaderboard.csv").is_file() and (run_dir / "leaderboard.md").is_file()


def test_killed_run_resumes_without_loss_or_duplicates(tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "narrastream.run", "preset=tiny", "data.limit=8", f"run.dir={run_dir}"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(records(run_dir)) < 3 and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(records(run_dir))
    assert 3 <= partial < 8 * M
    run("preset=tiny", "data.limit=8", f"run.dir={run_dir}")
    recs = records(run_dir)
    keys = [(r.script_id, r.metric) for r in recs]
    assert len(keys) == len(set(keys)) == 8 * M  # every item once, nothing lost, nothing duplicated
    judge_metrics = {"entity_grounding", "vlm_score"}  # judge=none: recorded as skipped
    assert all(r.status == "skipped" if r.metric in judge_metrics else r.status in ("ok", "fallback") for r in recs)


def test_shards_merge_into_the_same_leaderboard(tmp_path):
    one = tmp_path / "one"
    run("preset=tiny", "data.limit=5", f"run.dir={one}")
    sharded = tmp_path / "sharded"
    for index in range(3):  # 5 % 3 != 0: the remainder must not be dropped
        run("preset=tiny", "data.limit=5", f"run.dir={sharded}", "shard.count=3", f"shard.index={index}",
            "stage=all")
    assert len(list((sharded / "records").glob("shard-*-of-003.jsonl"))) == 3
    a = pd.read_csv(one / "leaderboard.csv")
    b = pd.read_csv(sharded / "leaderboard.csv")
    assert b.loc[0, "scripts"] == 5
    pd.testing.assert_frame_equal(a, b)


def test_precomputed_folder_end_to_end(tmp_path, tiny_run):
    folder = tmp_path / "videos"
    folder.mkdir()
    for sid in range(3):
        (folder / f"sample_{sid}.mp4").write_bytes((tiny_run / "videos" / "synthetic" / f"{sid}-s0.mp4").read_bytes())
    run_dir = tmp_path / "pre"
    run("model=precomputed", "model.name=theirs", f"model.params.folder={folder}", "preset=tiny", "data.limit=3",
        f"run.dir={run_dir}")
    board = pd.read_csv(run_dir / "leaderboard.csv")
    theirs = board[board["model"] == "theirs"].iloc[0]
    mine = pd.read_csv(tiny_run / "leaderboard.csv").iloc[0]
    assert theirs["subject_consistency"] == mine["subject_consistency"]  # same videos, same numbers
    assert not list((run_dir / "videos").rglob("*.mp4"))  # nothing copied
    (folder / "sample_1.mp4").unlink()
    proc = run("model=precomputed", f"model.params.folder={folder}", "preset=tiny", "data.limit=3",
               f"run.dir={tmp_path / 'pre2'}", check=False)
    assert proc.returncode != 0 and "ids 1" in proc.stderr


def test_bad_video_is_recorded_as_failed_and_retried(tmp_path, tiny_run):
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "sample_0.mp4").write_bytes((tiny_run / "videos" / "synthetic" / "0-s0.mp4").read_bytes())
    (folder / "sample_1.mp4").write_bytes((tiny_run / "videos" / "synthetic" / "1-s0.mp4").read_bytes()[:400])
    run_dir = tmp_path / "bad"
    args = ["model=precomputed", f"model.params.folder={folder}", "preset=tiny", "data.limit=2",
            f"run.dir={run_dir}"]
    proc = run(*args, check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    board = pd.read_csv(run_dir / "leaderboard.csv").iloc[0]
    assert board["subject_consistency_failed"] == 1 and board["subject_consistency_valid"] == 1
    failed = [r for r in records(run_dir) if r.status == "failed"]
    assert failed and all("sample_1.mp4" in (r.reason or "") for r in failed)
    (folder / "sample_1.mp4").write_bytes((tiny_run / "videos" / "synthetic" / "1-s0.mp4").read_bytes())
    run(*args)
    board = pd.read_csv(run_dir / "leaderboard.csv").iloc[0]
    assert board["subject_consistency_failed"] == 0 and board["subject_consistency_valid"] == 2


def test_missing_weights_stop_the_run_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("NARRASTREAM_WEIGHTS", str(tmp_path / "weights"))
    run_dir = tmp_path / "run"
    proc = run("preset=tiny", "data.limit=1", f"run.dir={run_dir}", "backbones.source=files",
               "backbones.size=full", check=False)
    assert proc.returncode == 2
    assert "dino_vitbase16_pretrain.pth" in proc.stderr and "backbones.paths.dino_vitb16=FILE" in proc.stderr
    assert not (run_dir / "videos").exists()  # found before the generate stage, not after it
    assert not list(run_dir.glob("records/*.jsonl"))  # no record claims a failure of the video
    run("preset=tiny", "data.limit=1", f"run.dir={run_dir}", "backbones.source=files", "backbones.size=full",
        "stage=generate")  # generating alone needs no checkpoint of the metrics
    assert (run_dir / "videos" / "synthetic" / "0-s0.mp4").is_file()


def test_two_processes_give_bit_identical_scores(tmp_path, tiny_run):
    again = tmp_path / "again"
    run("model=synthetic", "preset=tiny", "data.limit=3", f"run.dir={again}")
    first = {(r.script_id, r.metric): r.score for r in records(tiny_run)}
    second = {(r.script_id, r.metric): r.score for r in records(again)}
    assert first == second and len(first) == 3 * M
