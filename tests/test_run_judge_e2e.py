"""The complete protocol end to end: a chat-completions judge on 127.0.0.1 (the stand-in server),
all 11 metrics, a closed port (exit 3, judge metrics failed, not 0.5), a rerun that fills in only
what failed, the stand-in labelled as such (never recorded under the requested model's name), live
annotations, and no secret in any file the run writes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from narrastream.judges.identity import STAND_IN_MODEL
from narrastream.judges.testing import stand_in_server
from narrastream.results.records import RecordStore

pytestmark = pytest.mark.slow
SECRET = "sk-test-NEVER-WRITE-ME-9f3a"
JUDGE_METRICS = ("entity_grounding", "vlm_score")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(run_dir: Path, port: int, *extra: str, env_cache: Path) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "narrastream.run", "model=synthetic", "preset=tiny", "data.limit=2",
            f"run.dir={run_dir}", "judge=vllm", f"judge.base_url=http://127.0.0.1:{port}/v1",
            "judge.api_key_env=NS_E2E_JUDGE_KEY", "judge.max_retries=1", *extra]
    import os

    env = {**os.environ, "NS_E2E_JUDGE_KEY": SECRET, "NARRASTREAM_CACHE": str(env_cache)}
    return subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)


def leaderboard_row(run_dir: Path) -> pd.Series:
    """The synthetic row of the configuration the last run wrote records under."""
    board = pd.read_csv(run_dir / "leaderboard.csv", keep_default_na=False, na_values=[""])
    newest = max(RecordStore(run_dir / "records").iter_all(), key=lambda r: r.created)
    return board[(board["model"] == "synthetic") & (board["config_id"] == newest.config_id)].iloc[0]


def assert_no_secret(*texts: str, folder: Path) -> None:
    for text in texts:
        assert SECRET not in text
    for path in folder.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_closed_port_then_working_judge(tmp_path):
    port = free_port()  # nothing listens: every judge request fails to connect
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    first = run(run_dir, port, env_cache=cache)
    assert first.returncode == 3, first.stderr[-2000:]
    row = leaderboard_row(run_dir)
    for metric in JUDGE_METRICS:
        assert row[f"{metric}_failed"] == 2 and pd.isna(row[metric])  # failed, not 0.5
    assert row["metrics_reported"] == 9
    latest = RecordStore(run_dir / "records").latest()
    assert latest[("synthetic", 0, 0, "vlm_score")].status == "failed"
    assert "Connection" in latest[("synthetic", 0, 0, "vlm_score")].reason
    others = {k: r for k, r in latest.items() if k[3] not in JUDGE_METRICS}
    assert len(others) == 18 and all(r.status != "failed" for r in others.values())

    with stand_in_server(port=port):  # `narrastream serve-judge --stand-in`, where the real judge was expected
        second = run(run_dir, port, env_cache=cache)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "4 done, 18 already done, 0 failed" in second.stderr  # only what failed was computed again
    assert "18 of the already done carried over" in second.stderr  # to the stand-in's configuration
    row = leaderboard_row(run_dir)
    assert row["metrics_reported"] == 11 and row["overall"] > 0
    for metric in JUDGE_METRICS:
        assert 0.0 <= row[metric] <= 100.0 and row[f"{metric}_valid"] == 2 and row[f"{metric}_failed"] == 0
    assert row["label"] == "smoke: random weights, stand-in judge" and pd.isna(row["rank"])
    assert "stand-in judge" in (run_dir / "leaderboard.md").read_text()
    record = RecordStore(run_dir / "records").latest()[("synthetic", 1, 0, "entity_grounding")]
    assert record.status == "ok" and len(record.items) == 6 and record.protocol.startswith("narrastream-")
    # the fake answers are not recorded under the requested model's name
    assert record.judge["vlm"]["model"] == STAND_IN_MODEL and record.judge["vlm"]["stand_in"] is True
    assert record.judge["vlm"]["requested_model"] == "Qwen/Qwen3-VL-30B-A3B-Instruct"
    assert record.judge["vlm"]["host"] == "127.0.0.1" and record.configuration["judge"]["vlm"]["stand_in"] is True
    assert "Qwen" not in json.dumps(record.configuration["judge"])
    failed = [r for r in RecordStore(run_dir / "records").iter_all() if r.status == "failed"]
    assert failed and all(r.judge["vlm"]["model"] == "Qwen/Qwen3-VL-30B-A3B-Instruct" for r in failed)
    assert all(r.config_id != record.config_id for r in failed)  # the real judge's failures: another row
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["judge"]["api_key_env"] == "NS_E2E_JUDGE_KEY" and manifest["annotations"]["mode"] == "frozen"
    assert_no_secret(first.stdout, first.stderr, second.stdout, second.stderr, folder=run_dir)
    assert_no_secret(folder=cache)


def test_live_annotations_run(tmp_path):
    with stand_in_server() as server:
        run_dir = tmp_path / "run"
        proc = run(run_dir, server.port, "protocol.annotations=live", env_cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["annotations"]["mode"] == "live"
    latest = RecordStore(run_dir / "records").latest()
    longrange = latest[("synthetic", 0, 0, "conditional_longrange")]
    assert longrange.status == "ok"  # the stand-in's entity groups and weights were used, no fallback
    assert_no_secret(proc.stdout, proc.stderr, folder=run_dir)


def test_live_annotations_need_a_judge(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "narrastream.run", "preset=tiny", "data.limit=1",
                           f"run.dir={tmp_path / 'run'}", "protocol.annotations=live"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "protocol.annotations=live needs a judge" in proc.stderr


def test_missing_local_judge_model_is_bad_input(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "narrastream.run", "preset=tiny", "data.limit=1",
                           f"run.dir={tmp_path / 'run'}", "judge=local", f"judge.model={tmp_path / 'no-model'}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no-model: no such folder" in proc.stderr
