"""A damaged records file never wedges a run folder: through ``python -m narrastream.run``.

Lines that are valid JSON but not records used to crash the leaderboard stage after the whole
evaluation ran (exit 1, traceback), and a score of 7.5 was shown. Now they are skipped with a
warning naming file and line, counted in the evaluate summary, and recomputed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from narrastream.config import compose_config
from narrastream.results.records import RecordStore

pytestmark = pytest.mark.slow
M = len(compose_config(["preset=tiny"])["protocol"]["run_metrics"])


def run(run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "narrastream.run", "preset=tiny", "data.ids=[7]", f"run.dir={run_dir}"],
                          capture_output=True, text=True, timeout=900)


def test_invalid_lines_are_skipped_counted_and_recomputed(tmp_path):
    run_dir = tmp_path / "run"
    first = run(run_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    path = run_dir / "records" / "shard-000-of-001.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == M
    by_metric = {json.loads(line)["metric"]: i for i, line in enumerate(lines)}
    vtss, subject = by_metric["vtss"], by_metric["subject_consistency"]
    damaged = dict(enumerate(lines))
    damaged[vtss] = lines[vtss].replace(f'"score": {json.loads(lines[vtss])["score"]}', '"score": 7.5')
    record = json.loads(lines[subject])
    damaged[subject] = lines[subject].replace(f'"created": {record["created"]}', '"created": "yesterday"')
    assert damaged[vtss] != lines[vtss] and damaged[subject] != lines[subject]
    path.write_text("\n".join([*damaged.values(), "null", "[1, 2, 3]"]) + "\n")

    again = run(run_dir)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-3000:]
    assert "Traceback" not in out
    assert f"{path}:{vtss + 1}: invalid record skipped (score: Input should be less than or equal to 1" in out
    assert f"{path}:{subject + 1}: invalid record skipped (created: Input should be a valid number" in out
    assert f"{path}:{M + 1}: invalid record skipped (not a JSON object but null)" in out
    assert f"evaluate: 2 done, {M - 2} already done, 0 failed; 4 invalid record line(s) skipped" in out
    store = RecordStore(run_dir / "records")
    latest = store.latest()
    assert len(latest) == M and store.invalid_counts() == {str(path): 4}
    assert 0.0 <= latest[("synthetic", 7, 0, "vtss")].score <= 1.0
    board = pd.read_csv(run_dir / "leaderboard.csv").iloc[0]
    assert board["vtss_valid"] == 1 and 0.0 <= board["vtss"] <= 100.0
    assert board["subject_consistency_valid"] == 1

    third = run(run_dir)  # the bad lines stay and are skipped again; nothing more is computed
    assert third.returncode == 0 and f"evaluate: 0 done, {M} already done, 0 failed; 4 invalid" in third.stdout + third.stderr
