"""Configurations end to end through ``python -m narrastream.run``: one leaderboard row per configuration,
cache keys by content (a moved run folder recomputes nothing; a replaced checkpoint recomputes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from narrastream.config import compose_config
from narrastream.hashing import sha256_file
from narrastream.results.records import RecordStore

pytestmark = pytest.mark.slow
M = len(compose_config(["preset=tiny"])["protocol"]["run_metrics"])


def run(*overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "narrastream.run", *overrides], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise AssertionError(f"run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def records(run_dir: Path) -> list:
    return list(RecordStore(run_dir / "records").iter_all())


def line_count(run_dir: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in (run_dir / "records").glob("*.jsonl"))


def board(run_dir: Path) -> pd.DataFrame:
    table = pd.read_csv(run_dir / "leaderboard.csv", keep_default_na=False, na_values=[""])
    return table[table["source"] == "run"]


SEED0 = ("model=synthetic", "preset=tiny", "data.limit=2")
SEED1 = ("model=synthetic", "preset=tiny", "data.limit=1", "backbones.seed=1")


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory) -> Path:
    """The issue's repro: backbones.seed=0 on two scripts, then backbones.seed=1 on one, in one folder."""
    run_dir = tmp_path_factory.mktemp("seeds") / "run"
    first = run(*SEED0, f"run.dir={run_dir}")
    assert "smoke: random weights" in first.stdout  # the run prints its leaderboard, labels included
    run(*SEED1, f"run.dir={run_dir}")
    return run_dir


def test_two_backbone_seeds_in_one_folder_are_two_rows(two_seeds):
    rows = board(two_seeds)
    assert len(rows) == 2, rows[["model", "config_id", "scripts"]]  # was one row, "scripts 2", two DINOs mixed
    assert sorted(rows["scripts"]) == [1, 2] and rows["config_id"].nunique() == 2
    assert rows["label"].str.contains("smoke: random weights").all()
    assert rows["label"].str.contains(r"partial \(9/11\)").all()
    assert rows["rank"].isna().all() and rows["overall"].isna().all()
    assert "backbones.{" in rows.iloc[0]["config_note"] and "random(seed=1,size=tiny)" in rows.iloc[0]["config_note"]
    md = (two_seeds / "leaderboard.md").read_text()
    assert all(cid in md for cid in rows["config_id"]) and "synthetic has 2 configurations" in md
    manifest = json.loads((two_seeds / "manifest.json").read_text())
    annotations = manifest["annotations"]
    assert annotations["version"] == "narrastream-324.v2" and len(annotations["sha256"]) == 64
    for rec in records(two_seeds):  # every record names what produced it
        assert rec.config_id and rec.configuration["annotations"] == {"mode": "frozen", **{
            k: annotations[k] for k in ("version", "sha256")}}
        assert rec.configuration["protocol"]["version"] == "narrastream-1.0"
        assert rec.configuration["generator"]["adapter"] == "synthetic" and len(rec.video_sha256) == 64
    by_config = {}
    for rec in records(two_seeds):
        by_config.setdefault(rec.config_id, set()).add(rec.configuration["backbones"]["dino_vitb16"])
    assert sorted(v.pop() for v in by_config.values()) == ["random(seed=0,size=tiny)", "random(seed=1,size=tiny)"]


def test_moved_run_folder_recomputes_nothing_and_loads_no_model(two_seeds, tmp_path):
    copied = tmp_path / "copy"
    shutil.copytree(two_seeds, copied)  # new paths, new inodes, new mtimes: the content is the same
    moved = tmp_path / "renamed"
    copied.rename(moved)
    before = line_count(moved)
    for overrides in (SEED1, SEED0):
        proc = run(*overrides, f"run.dir={moved}")
        done = int(overrides[2].split("=")[1]) * M
        assert f"evaluate: 0 done, {done} already done, 0 failed" in proc.stderr, proc.stderr[-2000:]
        assert "random tiny weights" not in proc.stderr  # no backbone was built to compute the keys
    assert line_count(moved) == before
    pd.testing.assert_frame_equal(board(moved), board(two_seeds))


def test_two_run_folders_with_one_model_name(two_seeds, tmp_path):
    """Folders merge per configuration: the same settings make one row, other settings their own."""
    other = tmp_path / "other"
    run("model=synthetic", "preset=tiny", "data.ids=[1]", "backbones.seed=1", f"run.dir={other}")
    out = tmp_path / "board.csv"
    proc = subprocess.run([sys.executable, "-m", "narrastream.cli", "leaderboard", str(two_seeds), str(other),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out)
    assert len(table) == 2 and sorted(table["scripts"]) == [2, 2]  # seed 1: script 0 here, script 1 there
    seed1 = {r.config_id for r in records(other)}
    assert len(seed1) == 1 and seed1 <= set(table["config_id"])
    assert "smoke: random weights" in proc.stdout and all(cid in proc.stdout for cid in table["config_id"])


def _amt_checkpoint(path: Path, seed: int) -> None:
    from narrastream.metrics.backbones.amt import build_amt

    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.save({"state_dict": build_amt("s").state_dict()}, path)


def test_checkpoint_content_decides_what_is_recomputed(tmp_path):
    """random -> files gives two rows; the same file again computes nothing; a file replaced in place, or
    $NARRASTREAM_WEIGHTS pointed at other weights, recomputes."""
    run_dir = tmp_path / "run"
    common = ("model=synthetic", "preset=tiny", "data.limit=1", "protocol.run_metrics=[motion_smoothness]",
              "generation.width=128", "generation.height=96", f"run.dir={run_dir}")  # AMT-S needs >= 96 px
    files = ("backbones.source=files", "backbones.size=full")
    first, second = tmp_path / "w1" / "amt-s.pth", tmp_path / "w2" / "amt-s.pth"
    _amt_checkpoint(first, seed=1)
    _amt_checkpoint(second, seed=2)

    run(*common)
    proc = run(*common, *files, env={"NARRASTREAM_WEIGHTS": str(first.parent)})
    assert "evaluate: 1 done, 0 already done" in proc.stderr
    rows = board(run_dir)
    assert len(rows) == 2  # was one row mixing random and real AMT weights
    real = rows[~rows["label"].str.contains("smoke")].iloc[0]
    assert real["label"] == "partial (1/11)"
    assert rows[rows["label"].str.contains("smoke: random weights")].shape[0] == 1
    latest = max(records(run_dir), key=lambda r: r.created)
    assert latest.configuration["backbones"] == {"amt_s": f"sha256:{sha256_file(first)}"}
    assert latest.backbones["amt_s"]["weights"] == f"sha256:{sha256_file(first)}"

    proc = run(*common, *files, env={"NARRASTREAM_WEIGHTS": str(first.parent)})
    assert "evaluate: 0 done, 1 already done" in proc.stderr and "amt_s: loaded" not in proc.stderr

    shutil.copyfile(second, first)  # the checkpoint replaced in place
    proc = run(*common, *files, env={"NARRASTREAM_WEIGHTS": str(first.parent)})
    assert "evaluate: 1 done, 0 already done" in proc.stderr, proc.stderr[-2000:]

    _amt_checkpoint(first, seed=3)
    proc = run(*common, *files, env={"NARRASTREAM_WEIGHTS": str(second.parent)})  # same content as before
    assert "evaluate: 0 done, 1 already done" in proc.stderr
    proc = run(*common, *files, env={"NARRASTREAM_WEIGHTS": str(first.parent)})  # other weights
    assert "evaluate: 1 done, 0 already done" in proc.stderr
    assert len({r.config_id for r in records(run_dir)}) == 4 and len(board(run_dir)) == 4
