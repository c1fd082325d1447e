"""Decode throughput and peak memory of ``narrastream.video.decode_video`` on a benchmark-sized video.

Renders a synthetic video once (default 60 s, 832x480, 16 fps: the official size), caches it, then
decodes it in fresh subprocesses so each run's peak resident memory (``ru_maxrss``) belongs to that
decode alone. Prints a table and one JSON line::

    python benchmarks/decode.py [--seconds 60 --width 832 --height 480 --fps 16 --runs 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

from narrastream.adapters.base import GenerationRequest
from narrastream.adapters.synthetic import SyntheticGenerator
from narrastream.data.script import Script
from narrastream.video import decode_video, probe_video

SEGMENT_SECONDS = 10.0
CAST = ("Noah", "Ava", "Kai", "Mina")


def benchmark_script(num_segments: int) -> Script:
    """A made-up script whose characters come and go, so the video has motion and switches."""
    prompts = tuple(
        f"At the workshop workbench, {CAST[k % 4]} and {CAST[(k + 1) % 4]} sort parts into tray {k + 1}."
        for k in range(num_segments)
    )
    return Script(id=0, prompts=prompts, scene="workshop workbench")


def ensure_video(cache_dir: Path, seconds: float, width: int, height: int, fps: float) -> Path:
    """The cached synthetic video for these settings, rendered on first use."""
    path = cache_dir / f"synthetic-{seconds:g}s-{width}x{height}-{fps:g}fps.mp4"
    if path.exists():
        return path
    num_segments = max(1, math.ceil(seconds / SEGMENT_SECONDS))
    request = GenerationRequest(
        script=benchmark_script(num_segments), seed=0, output_path=path, fps=fps,
        seconds_per_segment=seconds / num_segments, width=width, height=height,
    )
    video = SyntheticGenerator().generate(request)
    print(f"rendered {path} ({video.num_frames} frames) in {video.timings['end_to_end']:.1f} s", file=sys.stderr)
    return path


def child(path: Path) -> None:
    """One measured decode, in its own process: wall time and peak RSS before/after, as JSON."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    frames, _ = decode_video(path)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "frames": len(frames), "array_bytes": frames.nbytes,
                      "maxrss_before_kib": before, "maxrss_after_kib": after}))


def measure(path: Path, runs: int) -> list[dict[str, float]]:
    results = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(path)], check=True, capture_output=True, text=True
        ).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def summarise(path: Path, runs: list[dict[str, float]]) -> dict[str, object]:
    info = probe_video(path)
    seconds = statistics.median(r["seconds"] for r in runs)
    peak_mib = [(r["maxrss_after_kib"] - r["maxrss_before_kib"]) / 1024 for r in runs]
    return {
        "benchmark": "decode",
        "video": {"seconds": info.duration, "frames": info.num_frames, "width": info.width,
                  "height": info.height, "fps": info.fps, "mp4_bytes": path.stat().st_size},
        "runs": len(runs),
        "decode_seconds_median": round(seconds, 3),
        "decode_seconds_all": [round(r["seconds"], 3) for r in runs],
        "decode_fps_median": round(info.num_frames / seconds, 1),
        "array_mib": round(runs[0]["array_bytes"] / 2**20, 1),
        "peak_rss_delta_mib_max": round(max(peak_mib), 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "av": av.__version__,
                    "ffmpeg": av.ffmpeg_version_info, "platform": platform.platform()},
    }


def print_table(summary: dict[str, object]) -> None:
    video = summary["video"]
    rows = [
        ("video", f"{video['seconds']:g} s, {video['frames']} frames, {video['width']}x{video['height']} @ {video['fps']:g} fps"),
        ("decode time (median)", f"{summary['decode_seconds_median']} s  (runs: {summary['decode_seconds_all']})"),
        ("decode throughput", f"{summary['decode_fps_median']} frames/s"),
        ("frame array", f"{summary['array_mib']} MiB"),
        ("peak RSS of decoding", f"{summary['peak_rss_delta_mib_max']} MiB (max over runs)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=float, default=16.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "narrastream-bench")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    path = ensure_video(args.cache_dir, args.seconds, args.width, args.height, args.fps)
    summary = summarise(path, measure(path, args.runs))
    print_table(summary)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
