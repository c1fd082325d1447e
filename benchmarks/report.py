"""Build time and size of ``narrastream report`` for the full benchmark: 324 scripts x 6 models.

Writes a synthetic run folder once (cached in ``$TMPDIR/narrastream-bench/report-<scripts>x<models>``):
11 records per script and model, shaped like real ones (per-segment and per-transition ``items``,
temporal flickering's per-pair items, entity-grounding answers, some fallbacks and failures), a
sidecar per video with timings, and for the filmstrips one real-size video per model (60 s,
832x480, 16 fps, rendered by the synthetic generator with a different fault per model) hard-linked
under every script's name, so the report decodes full-size videos exactly as it would real ones.
Then times ``narrastream report RUN --out report.html`` with the default filmstrip gallery in fresh
subprocesses and prints a table and one JSON line::

    python benchmarks/report.py [--scripts 324 --models 6 --runs 3] [--largest-gallery]

The records' numbers are made up (seeded); only the shape and the amount of work are real.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from narrastream.adapters.base import GenerationRequest
from narrastream.adapters.synthetic import SyntheticGenerator
from narrastream.data.script import Script
from narrastream.hashing import sha256_file
from narrastream.report.leaderboard import load_protocol
from narrastream.results.configuration import config_id
from narrastream.results.records import Record

FAULTS = [[], [{"kind": "hard_cut", "segment": 3}], [{"kind": "frozen", "segment": 2}],
          [{"kind": "flicker", "segment": 4}], [{"kind": "identity_swap", "segment": 2}],
          [{"kind": "drop_character", "segment": 1}]]
CAST = ("Noah", "Ava", "Kai", "Mina")
SEGMENTS = 6


def video_for(model: int, cache: Path) -> Path:
    path = cache / f"model{model}-60s-832x480-16fps.mp4"
    if path.exists():
        return path
    prompts = tuple(f"At the workshop workbench, {CAST[k % 4]} and {CAST[(k + 1) % 4]} sort parts into tray {k + 1}."
                    for k in range(SEGMENTS))
    request = GenerationRequest(script=Script(id=0, prompts=prompts, scene="workshop workbench"), seed=0,
                                output_path=path, fps=16.0, seconds_per_segment=10.0, width=832, height=480)
    SyntheticGenerator(faults=FAULTS[model % len(FAULTS)]).generate(request)
    return path


def items_for(metric: str, rng: np.random.Generator, base: float, dip: int | None) -> list[dict]:
    """Items shaped like the real metrics' (docs/run-folder.md), values around ``base``."""
    def value(k: int) -> float:
        return float(np.clip(base + rng.normal(0, 0.03) - (0.25 if dip == k else 0.0), 0, 1))
    weights = [1 / SEGMENTS] * SEGMENTS
    if metric in ("subject_consistency", "background_consistency"):
        out = [{"frames": [16, 48, 80, 112, 144], "local": value(k), "medoid": 2, "medoid_frame": 80, "segment": k,
                "weight": weights[k]} for k in range(SEGMENTS)]
        sims = [value(k) for k in range(SEGMENTS - 1)]
        out.append({"inter": float(np.mean(sims)), "inter_adjacent": float(np.mean(sims)),
                    "inter_adjacent_similarities": sims,
                    "inter_anchor": float(np.mean(sims)), "inter_anchor_segment": 0,
                    "inter_anchor_similarities": sims, "local": base, "summary": True})
        return out
    if metric == "temporal_flickering":
        return [{"frames": list(range(0, 160, 20)), "raw_error": 0.1, "score": value(k), "segment": k, "status": "ok",
                 "weight": weights[k], "pairs": [{"consistency_ratio": 0.6, "error": 0.1, "in_bounds_ratio": 0.97,
                                                  "mask": "consistent", "pair": [p, p + 1]} for p in range(7)]}
                for k in range(SEGMENTS)]
    if metric in ("motion_smoothness", "vtss", "vlm_score"):
        return [{"segment": k, "score": value(k), "weight": weights[k], "status": "ok"} for k in range(SEGMENTS)]
    if metric == "entity_grounding":
        return [{"segment": k, "score": value(k), "weight": weights[k], "entities": [
            {"name": name, "presence": value(k), "attribute_match": value(k)} for name in CAST[:2]]}
            for k in range(SEGMENTS)]
    if metric == "boundary_smoothness":
        return [{"seam": k, "score": value(k), "boundary": 1.0, "expected": 1.0, "left": 1.0, "right": 1.0,
                 "left_frames": [158, 159], "right_frames": [0, 1], "status": "ok", "tolerance": 0.5,
                 "weight": 0.2} for k in range(SEGMENTS - 1)]
    if metric in ("conditional_adjacent", "dynamic_trajectory"):
        key = "mapped" if metric == "conditional_adjacent" else "score"
        return [{"transition": k, key: value(k), "segments": [k, k + 1], "weight": 0.2} for k in range(SEGMENTS - 1)]
    return [{"anchor": 0, "entity": "Noah", "indices": [0, 2, 4], "mapped": [value(1), value(2)], "score": base,
             "targets": [2, 4], "weight": 1.0}]


def make_run(root: Path, scripts: int, models: int) -> None:
    """Records, sidecars, manifest and config of a synthetic full-size run (skipped when cached)."""
    if (root / "records" / "shard-000-of-001.jsonl").is_file():
        return
    dims = load_protocol()["dimensions"]
    metrics = [m for ms in dims.values() for m in ms]
    rng = np.random.default_rng(0)
    cache = root.parent / "videos"
    cache.mkdir(parents=True, exist_ok=True)
    (root / "records").mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(json.dumps({"protocol": load_protocol()}))  # JSON is YAML
    data = os.environ.get("NARRASTREAM_DATA")
    sha = sha256_file(data) if data else "0" * 64
    (root / "manifest.json").write_text(json.dumps({
        "run_id": root.name, "data": {"path": data, "sha256": sha, "official": True, "total_scripts": 324,
                                      "selected_scripts": scripts},
        "protocol": {"name": "narrastream", "version": "1.0"},
        "annotations": {"mode": "frozen", "version": "narrastream-324.v2", "sha256": "43" * 32},
        "judge": {"backend": "openai", "model": "Qwen/Qwen3-VL-8B-Instruct"},
        "environment": {"narrastream": "0.1.0", "git_sha": None, "python": platform.python_version()}}))
    script_effect = rng.normal(0, 0.05, size=scripts)
    lines = []
    for m in range(models):
        model = f"model_{m}"
        configuration = {"protocol": {"version": "narrastream-1.0", "segment_seconds": 10, "segmentation": "time",
                                      "constants": "bench"},
                         "annotations": {"mode": "frozen", "version": "narrastream-324.v2", "sha256": "43" * 32},
                         "backbones": {"dino_vitb16": "sha256:" + "1" * 64, "clip_vitb32": "sha256:" + "2" * 64},
                         "precision": {"dino_vitb16": "fp16"},
                         "judge": {"vlm": {"backend": "openai", "model": "Qwen/Qwen3-VL-8B-Instruct",
                                           "host": "api.example.com", "stand_in": False}},
                         "generator": {"adapter": "synthetic", "faults": FAULTS[m % len(FAULTS)]}}
        cid = config_id(configuration)
        video = video_for(m, cache)
        folder = root / "videos" / model
        folder.mkdir(parents=True, exist_ok=True)
        level = 0.55 + 0.04 * m
        dip = 3 if m == 1 else None
        for sid in range(scripts):
            target = folder / f"{sid}-s0.mp4"
            if not target.exists():
                os.link(video, target)
            (folder / f"{sid}-s0.json").write_text(json.dumps({
                "path": target.name, "script_id": sid, "seed": 0, "fps": 16.0, "num_frames": 960, "width": 832,
                "height": 480, "switch_frames": None, "peak_memory_bytes": int(20e9 + m * 1e9), "device": "cuda:0",
                "device_count": 1, "generator": configuration["generator"],
                "timings": {"end_to_end": 60 + 5 * m + float(rng.normal(0, 2)), "loop": 55.0, "core_dit": 40.0 + m,
                            "method_overhead": 2.0 * m, "memory": 1.0, "output_decode": 4.0},
                "request": {"prompts": ["..."] * SEGMENTS}}))
            for metric in metrics:
                base = float(np.clip(level + script_effect[sid] + rng.normal(0, 0.08), 0, 1))
                status, score, reason, fallbacks = "ok", base, None, []
                draw = rng.random()
                if draw < 0.01:
                    status, score, reason = "failed", None, f"judge: timeout after 60 s (segment {sid % 6})"
                elif draw < 0.05:
                    status, fallbacks = "fallback", [f"segment {k}: mask in_bounds" for k in range(3)]
                lines.append(Record(
                    run_id=root.name, model=model, script_id=sid, seed=0, metric=metric, score=score, status=status,
                    protocol="narrastream-1.0", metric_version="bench", cache_key=f"{model}-{sid}-{metric}",
                    reason=reason, fallbacks=fallbacks,
                    items=items_for(metric, rng, base, dip) if status != "failed" else [],
                    config_id=cid, configuration=configuration, created=1.0).to_json())
    (root / "records" / "shard-000-of-001.jsonl").write_text("\n".join(lines) + "\n")


def measure(root: Path, out: Path, runs: int, extra: list[str]) -> list[float]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "narrastream.cli", "report", str(root), "--out", str(out), *extra],
                       check=True, capture_output=True, text=True)
        seconds.append(time.perf_counter() - started)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scripts", type=int, default=324)
    parser.add_argument("--models", type=int, default=6)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "narrastream-bench")
    parser.add_argument("--largest-gallery", action="store_true",
                        help="filmstrips of 4 x models distinct scripts: the most the default gallery can choose "
                             "(the made-up scores share script effects, so by default fewer are chosen)")
    args = parser.parse_args(argv)
    root = args.cache_dir / f"report-{args.scripts}x{args.models}" / "run"
    started = time.perf_counter()
    make_run(root, args.scripts, args.models)
    print(f"run folder ready in {time.perf_counter() - started:.1f} s: {root}", file=sys.stderr)
    out = root.parent / "report.html"
    extra = ["--scripts", *map(str, range(min(args.scripts, 4 * args.models)))] if args.largest_gallery else []
    seconds = measure(root, out, args.runs, extra)
    records = sum(1 for _ in open(root / "records" / "shard-000-of-001.jsonl"))
    summary = {
        "benchmark": "report", "scripts": args.scripts, "models": args.models, "records": records,
        "gallery": "largest (4 x models scripts)" if args.largest_gallery else "default",
        "runs": len(seconds), "seconds_median": round(statistics.median(seconds), 2),
        "seconds_all": [round(s, 2) for s in seconds], "html_mib": round(out.stat().st_size / 2**20, 2),
        "images": out.read_text().count("<img "),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    print(f"report of {args.scripts} scripts x {args.models} models ({records} records): "
          f"median {summary['seconds_median']} s over {len(seconds)} runs {summary['seconds_all']}, "
          f"{summary['html_mib']} MiB, {summary['images']} filmstrip frames")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
