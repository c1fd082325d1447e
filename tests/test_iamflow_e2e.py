"""``model=iamflow`` end to end with its LLM and VLM agents served by a chat-completions server the test
starts (the stand-in responder): entities extracted by the LLM before generation, every block verified,
the registry, memory trace, verifier record and timings in the sidecar, scores and a leaderboard row.
Then an unreachable LLM: the script's generation fails with the prompt named, and a rerun with the
server up generates it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from narrastream.judges.server import ChatCompletionsServer
from narrastream.judges.testing import protocol_responder

pytestmark = pytest.mark.slow
pytest.importorskip("diffusers")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(run_dir: Path, url: str, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "narrastream.run", "model=iamflow", "preset=tiny", "data.limit=1",
            f"run.dir={run_dir}", "protocol.run_metrics=[subject_consistency,boundary_smoothness]",
            "model.params.iam.entities=llm", "model.params.iam.llm.backend=openai", f"model.params.iam.llm.base_url={url}",
            "model.params.iam.llm.max_retries=0", "model.params.iam.verifier.enabled=true",
            f"model.params.iam.verifier.judge.base_url={url}", *extra]
    env = {**os.environ, "NARRASTREAM_CACHE": str(cache)}
    return subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)


def test_iamflow_with_llm_and_verifier(tmp_path):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    with ChatCompletionsServer(protocol_responder, model="stand-in") as server:
        proc = run(run_dir, server.base_url, cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sidecar = json.loads((run_dir / "videos" / "iamflow" / "0-s0.json").read_text())
    iam = sidecar["extra"]["iam"]
    names = [e["name"] for e in iam["registry"]["entities"]]
    assert "Noah" in names  # extracted by the LLM (script 0 follows Noah), not read from the annotations
    assert iam["entities"] == "llm:Qwen/Qwen3-4B-Instruct-2507"
    assert iam["registry"]["prompt_ids"]["0"] and set(iam["registry"]["prompt_ids"]) == {str(p) for p in range(6)}
    verifier = iam["verifier"]
    assert verifier["mode"] == "async" and verifier["ok"] == verifier["blocks"] == len(iam["decisions"]) > 0
    assert all(d["verifier"] == "ok" and d["visual"] for d in iam["decisions"])
    first_blocks = [d for d in iam["decisions"] if d["block"].endswith("_c1")]
    assert first_blocks and all("corrections" in d for d in first_blocks)  # asked only on a prompt's first block
    assert not any("corrections" in d for d in iam["decisions"] if not d["block"].endswith("_c1"))
    assert iam["memory_trace"]["events"]
    timings = sidecar["timings"]
    assert timings["iam_setup"] > 0 and timings["core_dit"] > 0 and timings["memory"] > 0
    board = pd.read_csv(run_dir / "leaderboard.csv")
    assert "iamflow" in set(board["model"])
    records = [json.loads(line) for line in (run_dir / "records" / "shard-000-of-001.jsonl").read_text().splitlines()]
    assert {r["metric"] for r in records if r.get("status") == "ok"} >= {"subject_consistency", "boundary_smoothness"}


def test_unreachable_llm_fails_the_script_then_rerun_generates(tmp_path):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    port = free_port()  # nothing listens
    first = run(run_dir, f"http://127.0.0.1:{port}/v1", cache)
    assert first.returncode != 0
    assert "prompt 1: entity extraction failed" in first.stderr + first.stdout
    assert not (run_dir / "videos" / "iamflow" / "0-s0.mp4").exists()
    with ChatCompletionsServer(protocol_responder, model="stand-in", port=port):
        second = run(run_dir, f"http://127.0.0.1:{port}/v1", cache)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (run_dir / "videos" / "iamflow" / "0-s0.mp4").exists()
