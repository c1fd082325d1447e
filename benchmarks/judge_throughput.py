"""Judge plumbing throughput: requests per second and requests per video, against a local
chat-completions server (the stand-in responder, with an emulated model latency).

For ``--videos`` official scripts, a video of 6 segments at ``--width x --height`` (random frames;
only the 5 key frames per segment are sent) is scored by ``entity_grounding`` and ``vlm_score``
exactly as a run does: key frames JPEG-encoded once per video and shared, requests in flight
concurrently across videos (``--concurrency``), answers validated. With ``--live`` the narrative
annotations are asked too (9 text-only questions per script). A second pass over the same videos
shows the answer cache: no request leaves the process.

    python benchmarks/judge_throughput.py [--videos 32] [--latency-ms 500] [--concurrency 8] [--live]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from narrastream.config import compose_config
from narrastream.data import load_benchmark
from narrastream.protocol.annotations import load_annotations
from narrastream.judges import build_judges
from narrastream.judges.server import ChatCompletionsServer
from narrastream.judges.testing import protocol_responder
from narrastream.metrics import MetricContext, build_metric
from narrastream.protocol.live_annotations import annotate_scripts
from narrastream.video import SegmentedVideo


class CountingResponder:
    """The stand-in answers after ``latency`` seconds, counting requests and uploaded bytes."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.requests = 0
        self.images = 0
        self.bytes = 0
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> str:
        images = sum(1 for m in body["messages"] if isinstance(m.get("content"), list)
                     for p in m["content"] if p.get("type") == "image_url")
        with self._lock:
            self.requests += 1
            self.images += images
            self.bytes += len(json.dumps(body))
        time.sleep(self.latency)
        return protocol_responder(body)


def one_pass(videos: list[tuple[Any, SegmentedVideo]], metrics: dict, judges, annotations, concurrency: int,
             images_cfg: dict) -> dict[str, float]:
    encode = 0.0
    started = time.perf_counter()
    statuses: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = []
        for script, video in videos:
            ann, _ = annotations.for_script(script.id, script.prompts)
            ctx = MetricContext(script=script, backbones=None, annotations=ann, judges=judges, judge_images=images_cfg)
            for metric in metrics.values():
                t0 = time.perf_counter()
                prepared = metric.prepare(video, ctx)
                encode += time.perf_counter() - t0
                futures.append(pool.submit(metric.finish, prepared, ctx))
        for future in futures:
            status = future.result().status
            statuses[status] = statuses.get(status, 0) + 1
    return {"seconds": time.perf_counter() - started, "encode_seconds": encode, "statuses": statuses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--latency-ms", type=float, default=500.0, help="emulated model time per request")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--live", action="store_true", help="also ask the narrative annotations (text-only)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    responder = CountingResponder(args.latency_ms / 1000)
    cfg = compose_config(["judge=vllm"])
    bench = load_benchmark(None, limit=args.videos)
    rng = np.random.default_rng(0)
    videos = []
    for script in bench.scripts:  # 6 segments of 16 frames: only the 5 key frames per segment are sent
        # smooth content (16x16 blocks of random colour), which JPEG compresses about as well as real frames
        coarse = rng.integers(0, 256, size=(6 * 16, -(-args.height // 16), -(-args.width // 16), 3), dtype=np.uint8)
        frames = coarse.repeat(16, axis=1).repeat(16, axis=2)[:, :args.height, :args.width]
        videos.append((script, SegmentedVideo.from_frames(frames, 16.0, 6, switch_frames=[16, 32, 48, 64, 80])))
    metrics = {n: build_metric(n, cfg["protocol"]["metrics"][n]) for n in ("entity_grounding", "vlm_score")}
    images_cfg = {"max_side": cfg["judge"]["image_max_side"], "quality": cfg["judge"]["jpeg_quality"]}
    report: dict[str, Any] = {"videos": len(videos), "latency_ms": args.latency_ms, "concurrency": args.concurrency,
                              "size": f"{args.width}x{args.height}"}
    with tempfile.TemporaryDirectory() as cache, \
            ChatCompletionsServer(responder, model="narrastream-stand-in", stand_in=True) as server:
        judge_cfg = {**cfg["judge"], "base_url": server.base_url, "concurrency": args.concurrency,
                     "cache_dir": cache, "max_retries": 0}
        judges = build_judges(judge_cfg)
        annotations = load_annotations({})
        if args.live:
            t0 = time.perf_counter()
            annotations, failures = annotate_scripts(judges, bench.scripts, workers=args.concurrency, progress=False)
            report["live_annotations"] = {"seconds": time.perf_counter() - t0, "requests": responder.requests,
                                          "requests_per_script": responder.requests / len(videos),
                                          "failed_scripts": len(failures)}
        before = responder.requests
        first = one_pass(videos, metrics, judges, annotations, args.concurrency, images_cfg)
        requests = responder.requests - before
        first.update(requests=requests, requests_per_video=requests / len(videos),
                     requests_per_second=requests / first["seconds"],
                     images_per_video=responder.images / len(videos),
                     upload_mib_per_video=responder.bytes / len(videos) / 2**20)
        report["cold"] = first
        before = responder.requests
        second = one_pass(videos, metrics, judges, annotations, args.concurrency, images_cfg)
        second["requests"] = responder.requests - before
        report["cached"] = second
        report["judge_stats"] = judges.stats()
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
