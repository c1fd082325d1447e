"""Streaming generation speed and memory, for every method configuration and bf16 vs FP8, in one run.

The DiT is the causal Wan2.1-T2V-1.3B architecture (``--layers`` may reduce its depth for a CPU run)
and the VAE is the Wan2.1 VAE, both with seeded random weights: a forward pass costs the same whatever
the weights' values. Text features are random ``[prompts, 512, 4096]`` tensors (the umT5-XXL encoder
runs once per video, before the loop, and is not what is measured here). Each configuration generates
one video after one warm-up video; reported: seconds per block (the loop without output decode / blocks),
seconds per video (end to end), pixel frames per second, the profiler's split (core DiT, method
overhead, output decode) and peak memory (CUDA peak allocated on a GPU, process peak RSS on a CPU).

The ``iamflow+verify-sync`` / ``iamflow+verify-async`` rows add the visual verifier, answered by a local
chat-completions server (the stand-in responder) that takes ``--verifier-latency-ms`` per request, the
time a VLM would: they show what waiting for the verifier costs when it sits on the critical path (the
release's shipped ``sync`` mode) and when it runs on a worker while the DiT goes on (``async``, lag 1).

    python benchmarks/generation.py --device cuda                       # full size: 6 x 10 s, 832x480, 16 fps
    python benchmarks/generation.py --layers 4 --height 128 --width 128 --seconds-per-segment 0.75  # CPU
    python benchmarks/generation.py --methods iamflow,iamflow+verify-sync,iamflow+verify-async --verifier-latency-ms 300
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from narrastream.config import compose_config
from narrastream.iamflow.agent import IdentityAgent
from narrastream.iamflow.registry import ExtractedEntity
from narrastream.streaming.fp8 import quantize_model
from narrastream.streaming.pipeline import StreamingSpec, StreamingWanPipeline
from narrastream.streaming.vae import StreamingWanDecoder
from narrastream.streaming.wan_model import CausalWanTransformer, WanConfig

METHODS = ("self_forcing", "longlive", "memflow", "iamflow_backbone", "iamflow")
VERIFIED = {"iamflow+verify-sync": "sync", "iamflow+verify-async": "async"}  # iamflow with its visual verifier
CHARACTERS = ("Noah", "Mina", "Kai")  # the iamflow row: two of them per prompt, named in the prompt text


class RandomTextFeatures:
    """Stands in for umT5-XXL: seeded random features of the right shape, padding zeroed after 64 tokens."""

    def __init__(self, dim: int, length: int, device: torch.device, dtype: torch.dtype) -> None:
        self.dim, self.length, self.device, self.dtype = dim, length, device, dtype

    def encode(self, prompts: list[str]) -> torch.Tensor:
        g = torch.Generator().manual_seed(len(prompts))
        x = torch.randn(len(prompts), self.length, self.dim, generator=g)
        x[:, 64:] = 0
        return x.to(self.device, self.dtype)


def build(args: argparse.Namespace, device: torch.device) -> tuple[CausalWanTransformer, Any]:
    return build_models(args.layers, device)


def build_models(layers: int, device: torch.device, *, init_on_device: bool = False) -> tuple[CausalWanTransformer, Any]:
    """The causal Wan DiT (bf16, ``layers`` of its blocks) and the Wan2.1 VAE decoder, seeded random weights.

    ``init_on_device`` draws the DiT's random weights on ``device`` (seconds on a GPU, where the CPU takes about a
    minute for the 1.3B parameters; other values, the same cost)."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(WanConfig(), num_layers=layers)
    with torch.device(device) if init_on_device else contextlib.nullcontext():
        dit = CausalWanTransformer(cfg)
    return dit.to(device=device, dtype=torch.bfloat16).eval(), build_decoder(device)


def build_decoder(device: torch.device) -> Any:
    """The Wan2.1 VAE (base_dim 96, z_dim 16) as the streaming decoder, seeded random weights."""
    from narrastream._compat import ensure_torchvision

    ensure_torchvision()
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    return StreamingWanDecoder(AutoencoderKLWan().to(device).eval())


def method_spec(method: str) -> StreamingSpec:
    """The streaming spec of a method's model config (``iamflow+verify-*`` rows use ``iamflow``'s)."""
    config = "iamflow" if method in VERIFIED else method
    return StreamingSpec.from_config(compose_config([f"model={config}"])["model"]["params"])


def measure_method(dit: CausalWanTransformer, text: Any, decoder: Any, method: str, precision: str,
                   prompts: list[str], pairs: list[tuple[str, str]], geometry: dict[str, Any], device: torch.device,
                   *, warm_up: bool = True, verifier_url: str | None = None,
                   verifier_latency_ms: float = 0.0) -> dict[str, Any]:
    """One row: generate a warm-up video (unless ``warm_up`` is false: the caller warmed up), then the measured one.

    ``precision`` only labels the row: FP8 is applied to ``dit`` beforehand (:func:`quantize_model`)."""
    spec = method_spec(method)
    pipeline = StreamingWanPipeline(dit, text, decoder, spec)
    verifiers: list[Any] = []

    def agent() -> IdentityAgent | None:  # IAMFlow's agent: a fresh one per video
        if spec.memory != "identity":
            return None
        verifier = None
        if method in VERIFIED:
            from narrastream.iamflow.verifier import VisualVerifier
            from narrastream.judges.openai_backend import OpenAIJudge

            verifier = VisualVerifier(OpenAIJudge("stand-in-vlm", base_url=verifier_url, max_retries=0),
                                      mode=VERIFIED[method])
            verifiers.append(verifier)
        return IdentityAgent(prompts, [[ExtractedEntity(a, ()), ExtractedEntity(b, ())] for a, b in pairs],
                             verifier=verifier)

    if warm_up:
        pipeline.generate(prompts, seed=0, memory_agent=agent(), **geometry)  # allocator, kernels
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    result = pipeline.generate(prompts, seed=1, memory_agent=agent(), **geometry)
    t = result.timings
    row = {"method": method, "precision": precision, "blocks": result.details["num_blocks"],
           "pixel_frames": len(result.frames), "seconds_per_block": t["loop"] / result.details["num_blocks"],
           "seconds_per_video": t["end_to_end"], "pixel_fps": t["pixel_fps"], "core_dit": t["core_dit"],
           "method_overhead": t["method_overhead"], "output_decode": t["output_decode"],
           "peak_memory_gib": result.peak_memory_bytes / 2**30}
    if verifiers:
        stats = verifiers[-1].stats()
        row.update(verifier_ok=stats["ok"], verifier_blocks=stats["blocks"],
                   verifier_blocked_s=stats["blocked_s"], verifier_latency_ms=verifier_latency_ms)
        for verifier in verifiers:
            verifier.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--seconds-per-segment", type=float, default=10.0)
    parser.add_argument("--fps", type=float, default=16.0)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--precisions", default="bf16,fp8")
    parser.add_argument("--verifier-latency-ms", type=float, default=300.0,
                        help="emulated VLM time per verifier request (the iamflow+verify-* rows)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    stack = ExitStack()
    verifier_url = None
    if any(m in VERIFIED for m in args.methods.split(",")):
        from narrastream.judges.server import ChatCompletionsServer
        from narrastream.judges.testing import protocol_responder

        def slow(body: dict[str, Any]) -> str:
            time.sleep(args.verifier_latency_ms / 1000)
            return protocol_responder(body)

        server = ChatCompletionsServer(slow, model="narrastream-stand-in", stand_in=True)
        verifier_url = stack.enter_context(server).base_url
    device = torch.device(args.device)
    dit, decoder = build(args, device)
    text = RandomTextFeatures(dit.cfg.text_dim, dit.cfg.text_len, device, torch.bfloat16)
    pairs = [(CHARACTERS[k % 3], CHARACTERS[(k + 1) % 3]) for k in range(args.prompts)]
    prompts = [f"{a} and {b} work at the table, step {k}." for k, (a, b) in enumerate(pairs)]
    geometry = dict(seconds_per_segment=args.seconds_per_segment, fps=args.fps, height=args.height, width=args.width)
    rows = []
    for precision in args.precisions.split(","):
        if precision == "fp8":
            quantize_model(dit)  # the 240 attention linears (fewer with --layers), as IAMFlow's checkpoint
        for method in args.methods.split(","):
            row = measure_method(dit, text, decoder, method, precision, prompts, pairs, geometry, device,
                                 verifier_url=verifier_url, verifier_latency_ms=args.verifier_latency_ms)
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    speed = {(r["method"], r["precision"]): r["seconds_per_video"] for r in rows}
    for precision in args.precisions.split(","):
        if ("iamflow", precision) in speed and ("longlive", precision) in speed:
            print(f"{precision}: iamflow is {speed[('longlive', precision)] / speed[('iamflow', precision)]:.2f}x "
                  "the speed of longlive (seconds per video, same run)")
    stack.close()
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "layers": args.layers, "geometry": geometry, "prompts": args.prompts,
              "time": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
