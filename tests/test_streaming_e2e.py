"""``python -m narrastream.run model=<streaming method> preset=tiny``: each of the four configurations
generates a 6-segment video with tiny seeded weights, and the evaluator scores it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from narrastream.results.records import RecordStore

pytestmark = pytest.mark.slow
pytest.importorskip("diffusers")


@pytest.mark.parametrize("model, metrics", [
    ("longlive", None),  # the default protocol: every model-based metric
    ("self_forcing", "[subject_consistency,boundary_smoothness]"),
    ("memflow", "[subject_consistency,boundary_smoothness]"),
    ("iamflow_backbone", "[subject_consistency,boundary_smoothness]"),
    ("iamflow", "[subject_consistency,boundary_smoothness]"),
])
def test_streaming_model_runs_end_to_end(tmp_path, model, metrics):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "narrastream.run", f"model={model}", "preset=tiny", "data.limit=1",
            f"run.dir={run_dir}", "video.segmentation=native"]
    if metrics:
        args.append(f"protocol.run_metrics={metrics}")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sidecar = json.loads((run_dir / "videos" / model / "0-s0.json").read_text())
    assert sidecar["num_frames"] == 1 + 4 * (12 - 1)  # 6 prompts x 2 latent frames at the tiny geometry
    assert sidecar["switch_frames"] == [5, 13, 21, 29, 37]
    assert sidecar["extra"]["method"] == model and sidecar["timings"]["core_dit"] > 0
    if model == "iamflow":  # the registry and the memory trace travel in the sidecar
        assert sidecar["extra"]["iam"]["entities"] == "prompt_names"  # the tiny path's offline extractor
        assert sidecar["extra"]["iam"]["registry"]["entities"][0]["name"] == "Noah"
        assert sidecar["extra"]["iam"]["memory_trace"]["events"]
    latest = RecordStore(run_dir / "records").latest()
    scored = [r for r in latest.values() if r.status in ("ok", "fallback")]
    expected = 9 if metrics is None else 2
    assert len(scored) == expected, [(r.metric, r.status, r.reason) for r in latest.values()]
