"""Seconds per video for subject_consistency and background_consistency, and where they go.

One 60 s, 832x480, 16 fps video (960 frames, 6 segments; made by the synthetic generator) is decoded
once and scored by both metrics with FULL-size backbones (DINO ViT-B/16, CLIP ViT-B/32) on random
weights: the cost of a forward pass does not depend on the weights' values, so the figures hold for
the official checkpoints. Per video, the time splits into

* decode: ``SegmentedVideo.from_file`` (shared by every metric of the video),
* backbone: ``ImageEmbedder.embed`` -- preprocess (resize + normalise, CPU) and forward,
* rest: frame sampling, the formula, result assembly.

Backbone construction is a one-time cost per process and is reported apart. Each metric runs once
as warm-up, then ``--repeats`` times; the median is reported, with the fastest run beside it (on a
shared machine the fastest run is the better estimate of the cost itself).

    python benchmarks/consistency.py [--repeats 3] [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from narrastream.adapters.base import GenerationRequest
from narrastream.adapters.synthetic import SyntheticGenerator
from narrastream.data.script import Script
from narrastream.metrics import MetricContext, build_metric
from narrastream.metrics.backbones import BackboneProvider, ImageEmbedder
from narrastream.paths import config_dir
from narrastream.video import SegmentedVideo, SegmentRule

log = logging.getLogger("benchmarks.consistency")

METRICS = ("subject_consistency", "background_consistency")
SCRIPT = Script(
    id=0,
    scene="a quiet library reading room",
    prompts=(
        "In a quiet library reading room, Ava arranges books on a long table.",
        "In a quiet library reading room, Noah enters and sits beside Ava.",
        "In a quiet library reading room, Ava hands Noah a red notebook.",
        "In a quiet library reading room, Iris joins them and points at a map.",
        "In a quiet library reading room, Noah leaves; Ava and Iris read the map.",
        "In a quiet library reading room, Ava closes the notebook and smiles.",
    ),
)


class Timed:
    """Wraps an embedder to add up the seconds of its preprocess and of the whole ``embed`` call."""

    def __init__(self, embedder: ImageEmbedder) -> None:
        self.embedder = embedder
        self.preprocess_s = self.embed_s = 0.0
        original_preprocess, original_embed = embedder.preprocess, embedder.embed

        def preprocess(frames: np.ndarray) -> torch.Tensor:
            start = time.perf_counter()
            try:
                return original_preprocess(frames)
            finally:
                self.preprocess_s += time.perf_counter() - start

        def embed(frames: np.ndarray, batch_size: int = 32) -> torch.Tensor:
            start = time.perf_counter()
            try:
                return original_embed(frames, batch_size)
            finally:
                self.embed_s += time.perf_counter() - start

        embedder.preprocess, embedder.embed = preprocess, embed

    def reset(self) -> None:
        self.preprocess_s = self.embed_s = 0.0


def make_video(folder: Path) -> Path:
    request = GenerationRequest(script=SCRIPT, seed=0, output_path=folder / "bench.mp4")
    return SyntheticGenerator().generate(request).path


def protocol_params() -> dict[str, dict[str, Any]]:
    import yaml

    with open(config_dir() / "protocol" / "narrastream_v1.yaml") as f:
        return yaml.safe_load(f)["metrics"]


def run(repeats: int, device: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = make_video(Path(tmp))
        log.info("synthetic video written in %.1f s", time.perf_counter() - start)
        decode_times = []
        for _ in range(repeats):
            start = time.perf_counter()
            video = SegmentedVideo.from_file(path, SCRIPT.num_segments, rule=SegmentRule(segment_seconds=10.0))
            decode_times.append(time.perf_counter() - start)
    assert (video.num_frames, video.width, video.height) == (960, 832, 480), video

    provider = BackboneProvider({"source": "random", "size": "full", "device": device})
    ctx = MetricContext(script=SCRIPT, backbones=provider, segment_weights=[20, 15, 20, 15, 15, 15])
    params = protocol_params()
    results: dict[str, Any] = {
        "video": {"frames": video.num_frames, "size": f"{video.width}x{video.height}", "fps": video.fps},
        "decode_s": statistics.median(decode_times),
        "decode_min_s": min(decode_times),
        "metrics": {},
        "machine": {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "device": str(provider.device)},
    }
    for name in METRICS:
        metric = build_metric(name, params[name])
        backbone = params[name]["backbone"]
        start = time.perf_counter()
        timed = Timed(provider.get(backbone))
        build_s = time.perf_counter() - start
        metric.compute(video, ctx)  # warm-up
        totals, embeds, preprocesses = [], [], []
        for _ in range(repeats):
            timed.reset()
            start = time.perf_counter()
            result = metric.compute(video, ctx)
            totals.append(time.perf_counter() - start)
            embeds.append(timed.embed_s)
            preprocesses.append(timed.preprocess_s)
        total, embed, preprocess = (statistics.median(x) for x in (totals, embeds, preprocesses))
        results["metrics"][name] = {
            "backbone": backbone, "frames_embedded": sum(len(i["frames"]) for i in result.items if "segment" in i),
            "build_s": build_s, "total_s": total, "backbone_s": embed, "preprocess_s": preprocess,
            "forward_s": embed - preprocess, "rest_s": total - embed, "score": result.score,
            "total_min_s": min(totals), "forward_min_s": min(e - p for e, p in zip(embeds, preprocesses)),
        }
    return results


def report(results: dict[str, Any]) -> str:
    decode = results["decode_s"]
    metrics = results["metrics"]
    per_video = decode + sum(m["total_s"] for m in metrics.values())
    rows = [("decode (once per video)", decode, results["decode_min_s"])]
    for name, m in metrics.items():
        rows += [
            (f"{name}: backbone preprocess", m["preprocess_s"], None),
            (f"{name}: backbone forward ({m['frames_embedded']} frames)", m["forward_s"], m["forward_min_s"]),
            (f"{name}: rest", m["rest_s"], None),
        ]
    lines = [
        f"video: {results['video']['frames']} frames {results['video']['size']} at {results['video']['fps']:g} fps; "
        f"torch {results['machine']['torch']}, {results['machine']['cpu_threads']} threads, {results['machine']['device']}",
        "",
        "| part | seconds per video (median) | share | fastest run |",
        "|---|---:|---:|---:|",
        *(f"| {label} | {seconds:.3f} | {100 * seconds / per_video:.1f} % | {'' if best is None else f'{best:.3f}'} |"
          for label, seconds, best in rows),
        f"| **total (decode + both metrics)** | **{per_video:.3f}** | 100 % | |",
        "",
        "| metric | seconds per video, excl. decode (median / fastest) | backbone share | one-time backbone build |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {m['total_s']:.3f} / {m['total_min_s']:.3f} | {100 * m['backbone_s'] / m['total_s']:.1f} % "
          f"| {m['build_s']:.1f} s |" for name, m in metrics.items()),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = run(args.repeats, args.device)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
