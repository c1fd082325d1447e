"""benchmarks/gpu_suite.py at tiny sizes on the CPU (``--smoke``), so the GPU benchmark cannot rot between the
rare runs on a GPU: every section runs through the same code, and the JSON and Markdown have their shape.
The figures of a smoke run mean nothing; only the structure and the invariants are asserted."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "gpu_suite.py"
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_suite  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    # one intra-op thread: the tiny networks' operations are far too small to gain from threads, and on a
    # shared CI machine the thread hand-offs cost more than the work
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, str(SUITE), "--smoke", "--out", str(out), "--work", str(out / "work"),
                           "--budget-s", "600"], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads((out / "gpu-suite-smoke.json").read_text()), (out / "gpu-suite-smoke.md").read_text()


def test_every_section_runs(smoke):
    report, _ = smoke
    assert list(report["sections"]) == list(gpu_suite.SECTIONS)
    assert {name: entry["status"] for name, entry in report["sections"].items()} == dict.fromkeys(gpu_suite.SECTIONS, "ok")
    assert report["suite"]["smoke"] is True and report["suite"]["device"] == "cpu"


def test_evaluation_measures_the_nine_metrics_at_both_precisions(smoke):
    report, markdown = smoke
    default = report["sections"]["evaluation_default"]["result"]
    bf16 = report["sections"]["evaluation_bf16"]["result"]
    for result in (default, bf16):
        assert set(result["metrics"]) == set(gpu_suite.MODEL_METRICS)
        assert all(m["seconds_per_video"] is not None for m in result["metrics"].values())
        assert result["seconds_per_video"] >= result["backbone_seconds_per_video"] > 0
        assert 0 <= result["overhead_share"] < 1 and result["videos_measured"] == 1
        assert set(result["backbones"]) == {"dino_vitb16", "clip_vitb32", "raft_things", "amt_s", "vtss_koala",
                                            "languagebind_video"}
        assert result["peak_gpu_memory_gib"] is None  # CPU
    assert set(default["resolved_precision"].values()) == {"fp32"} and set(bf16["resolved_precision"].values()) == {"bf16"}
    deviation = bf16["deviation_from_default"]
    assert set(deviation) == set(gpu_suite.MODEL_METRICS)
    assert all(0 <= d["max_abs"] < 0.2 for d in deviation.values())  # tiny random networks: bf16 moves scores a little
    assert "## Evaluation, precision auto" in markdown and "## Evaluation, precision bf16" in markdown


def test_generation_rows_for_every_method_and_precision(smoke):
    report, markdown = smoke
    for precision in ("bf16", "fp8"):
        result = report["sections"][f"generation_{precision}"]["result"]
        assert [r["method"] for r in result["rows"]] == list(gpu_suite.GEN_METHODS)
        assert all("error" not in r and r["pixel_fps"] > 0 and r["blocks"] > 0 for r in result["rows"])
        assert result["speed_ratio_iamflow_over_longlive"] > 0
        assert f"## Generation, {precision}" in markdown
    goals = report["goals"]
    assert goals["iamflow_over_longlive_bf16"]["goal"] == ">= 1.39" and "iamflow_fp8_over_longlive_bf16" in goals
    assert goals["eval_seconds_per_video"]["goal"] == "<= 11.0"


def test_fp8_and_local_judge(smoke):
    report, _ = smoke
    fp8 = report["sections"]["fp8"]["result"]
    assert fp8["path"] == "dequantized fallback"  # no FP8 tensor cores on a CPU: both sides run the same path
    assert fp8["layer"]["max_rel_diff_vs_dequantized"] == 0.0 and fp8["block"]["max_rel_diff_vs_dequantized"] == 0.0
    assert 0 < fp8["layer"]["max_rel_diff_vs_bf16_unquantized"] < 0.1 and fp8["block"]["finite"]
    assert fp8["block"]["fp8_linears"] == 8
    judge = report["sections"]["judge_local"]["result"]
    assert judge["answer_is_text"] and judge["weights_dtype"] == "bfloat16" and judge["weights_device"] == "cpu"


def _suite(tmp_path, **overrides):
    args = argparse.Namespace(smoke=True, device="cpu", budget_s=480.0, eval_videos=3, gen_methods=None,
                              out=str(tmp_path), name=None, work=str(tmp_path / "work"), sections="")
    for key, value in overrides.items():
        setattr(args, key, value)
    return gpu_suite.Suite(args)


def test_a_failing_section_is_recorded_and_the_next_runs(tmp_path, monkeypatch):
    def boom(self):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(gpu_suite.Suite, "section_fp8", boom)
    report = _suite(tmp_path).run(["fp8", "environment"])
    assert report["sections"]["fp8"]["status"] == "error"
    assert "illegal memory access" in report["sections"]["fp8"]["error"] and report["sections"]["fp8"]["traceback"]
    assert report["sections"]["environment"]["status"] == "ok"
    written = json.loads((tmp_path / "gpu-suite-smoke.json").read_text())  # written as it goes
    assert written["sections"]["fp8"]["status"] == "error"
    assert "| fp8 | error |" in (tmp_path / "gpu-suite-smoke.md").read_text()


def test_the_budget_skips_what_would_start_too_late(tmp_path):
    suite = _suite(tmp_path)
    suite.deadline = time.monotonic() - 1.0  # the budget is spent
    report = suite.run(["fp8", "evaluation_default"])
    for name in ("fp8", "evaluation_default"):
        assert report["sections"][name]["status"] == "skipped" and report["sections"][name]["note"].startswith("budget")
