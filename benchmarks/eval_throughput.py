"""Seconds per video for every model-based metric of ``protocol.run_metrics``, peak memory, and pipeline overhead.

One video (default: 60 s, 832x480, 16 fps, 6 prompts; made once by the synthetic generator) is
decoded once and scored by each metric of the protocol, as the harness does, with FULL-size
backbones on seeded random weights (a forward pass costs the same whatever the weights' values).
Backbone forward time is measured with forward hooks on each backbone's top module, so

    overhead = (decode + all metrics) / (sum of backbone forward passes) - 1

is the share of time the pipeline spends outside the networks (the floor is 0).

    python benchmarks/eval_throughput.py [--seconds 60 --width 832 --height 480 --fps 16]
                                         [--device cuda] [--metrics a,b] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from narrastream.adapters.base import GenerationRequest
from narrastream.adapters.synthetic import SyntheticGenerator
from narrastream.config import compose_config
from narrastream.data.script import Script
from narrastream.metrics import MetricContext, build_metric
from narrastream.metrics.backbones import BackboneProvider
from narrastream.video import SegmentedVideo, SegmentRule


class ForwardTimer:
    """Wall time spent inside a network, from forward hooks (synchronising CUDA when present).

    Hooks sit on the top module and its direct children, with a depth counter so nested calls count
    once: models called through ``forward`` are timed whole, and models whose wrapper calls
    sub-networks directly (LanguageBind's ``video_features`` / ``text_features``) are still timed.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0
        self._depth = 0

    def attach(self, module: torch.nn.Module) -> None:
        for m in (module, *module.children()):
            m.register_forward_pre_hook(self._pre)
            m.register_forward_hook(self._post)

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def _pre(self, *_: Any) -> None:
        if self._depth == 0:
            self._sync()
            self._start = time.perf_counter()
        self._depth += 1

    def _post(self, *_: Any) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._sync()
            self.seconds += time.perf_counter() - self._start


def torch_module(backbone: Any) -> torch.nn.Module:
    """The network inside a provider backbone (embedders keep it as ``module``, LanguageBind as ``model``)."""
    module = getattr(backbone, "module", None) or getattr(backbone, "model", None)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"{type(backbone).__name__}: no torch module to time")
    return module


def make_video(folder: Path, seconds: float, width: int, height: int, fps: float, segments: int) -> Path:
    path = folder / f"throughput-{seconds:g}s-{width}x{height}-{fps:g}fps.mp4"
    if not path.is_file():
        prompts = tuple(f"In the cafe corner table, Noah and Mina work on step {k}." for k in range(segments))
        script = Script(id=0, prompts=prompts, scene="cafe corner table")
        request = GenerationRequest(script=script, seed=0, output_path=path, fps=fps,
                                    seconds_per_segment=seconds / segments, width=width, height=height)
        SyntheticGenerator().generate(request)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=float, default=16.0)
    parser.add_argument("--segments", type=int, default=6)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--metrics", help="comma-separated subset of protocol.run_metrics")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "narrastream-bench")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    protocol = compose_config([])["protocol"]
    # the model-based metrics; the two judge metrics are measured by benchmarks/judge_throughput.py
    names = args.metrics.split(",") if args.metrics else [
        n for n in protocol["run_metrics"] if "backbone" in protocol["metrics"][n]]
    args.cache.mkdir(parents=True, exist_ok=True)
    video_path = make_video(args.cache, args.seconds, args.width, args.height, args.fps, args.segments)
    provider = BackboneProvider({"source": "random", "size": "full", "device": args.device})
    metrics = {name: build_metric(name, protocol["metrics"][name]) for name in names}

    timers: dict[str, ForwardTimer] = {}
    build_seconds: dict[str, float] = {}
    for metric in metrics.values():
        backbone = metric.params["backbone"]
        if backbone not in timers:
            started = time.perf_counter()
            timers[backbone] = ForwardTimer()
            timers[backbone].attach(torch_module(provider.get(backbone)))
            build_seconds[backbone] = time.perf_counter() - started

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    rule = SegmentRule(segment_seconds=args.seconds / args.segments)
    video = SegmentedVideo.from_file(video_path, args.segments, rule=rule)
    decode = time.perf_counter() - started
    script = Script(id=0, prompts=tuple(f"prompt {k}" for k in range(args.segments)))
    ctx = MetricContext(script=script, backbones=provider)
    per_metric: dict[str, dict[str, Any]] = {}
    for name, metric in metrics.items():
        timer = timers[metric.params["backbone"]]
        forward_before = timer.seconds
        t0 = time.perf_counter()
        result = metric.compute(video, ctx)
        per_metric[name] = {"seconds": time.perf_counter() - t0, "forward_seconds": timer.seconds - forward_before,
                            "status": result.status}
    total = time.perf_counter() - started
    forward = sum(m["forward_seconds"] for m in per_metric.values())
    report = {
        "video": {"seconds": args.seconds, "width": args.width, "height": args.height, "fps": args.fps,
                  "frames": video.num_frames},
        "device": str(provider.device),
        "machine": platform.platform(),
        "torch": torch.__version__,
        "decode_seconds": decode,
        "metrics": per_metric,
        "total_seconds": total,
        "backbone_forward_seconds": forward,
        "overhead_vs_forward": total / forward - 1 if forward else None,
        "peak_rss_mib_added": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024,
        "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "backbone_build_seconds": build_seconds,
    }
    print(f"{'part':<26}{'seconds':>10}{'forward':>10}")
    print(f"{'decode':<26}{decode:>10.2f}")
    for name, m in per_metric.items():
        print(f"{name:<26}{m['seconds']:>10.2f}{m['forward_seconds']:>10.2f}  ({m['status']})")
    print(f"{'total':<26}{total:>10.2f}{forward:>10.2f}")
    if forward:
        print(f"pipeline overhead vs backbone forward: {100 * report['overhead_vs_forward']:.1f} %")
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
