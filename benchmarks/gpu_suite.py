"""Everything that needs a GPU, in one run: evaluation, generation, the FP8 GEMM and the local judge.

Meant for one H100/H200 and well under 8 minutes, with seeded random full-size weights (a forward pass costs the
same whatever the weights' values). It writes one JSON and one Markdown table (``--out``, default ``benchmarks/``),
after every section, so a run stopped by a timeout keeps what it measured:

* ``evaluation_default`` / ``evaluation_bf16``: the nine model metrics through the real evaluation loop
  (``Session.evaluate``: prefetch, batching, records) on full-size videos (60 s, 832x480, 16 fps, 6 prompts,
  made by the synthetic generator): seconds per video for each metric and in total over ``--eval-videos``
  videos after one warm-up video, the share of the time spent outside the networks, peak GPU memory per
  backbone; at the official precision (``backbones.precision=auto``) and at ``bf16``, and how far the bf16
  scores are from the default ones;
* ``generation_bf16`` / ``generation_fp8``: pixel fps, seconds per block and peak memory of ``self_forcing``,
  ``longlive``, ``memflow``, ``iamflow``, ``deep_forcing`` and ``rolling_forcing`` on a two-prompt 20 s clip
  (``benchmarks/generation.py``'s code paths), and the ``iamflow`` / ``longlive`` speed ratio of the same run;
* ``fp8``: the ``torch._scaled_mm`` path of :class:`narrastream.streaming.fp8.FP8Linear` against the dequantized
  reference on one layer and one Wan block (max relative difference, and which path ran);
* ``judge_local``: ``judge=local`` on a tiny random Qwen2-VL: a bfloat16 load and one answer.

Every section runs in ``try/except``: an error is recorded in the JSON with its traceback and the next section
runs. ``--budget-s`` (default 480) bounds the whole run: a section (or a video, or a generation row) that would
start after the budget is skipped, with a note.

    python benchmarks/gpu_suite.py                              # one H100/H200: timeout 540 python ...
    python benchmarks/gpu_suite.py --sections evaluation_bf16,generation_fp8   # what a first run skipped
    python benchmarks/gpu_suite.py --smoke --out /tmp/suite     # tiny sizes on the CPU (tests/test_gpu_suite_smoke.py)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import math
import platform
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # benchmarks/generation.py, imported as a sibling module
    sys.path.insert(0, str(HERE))

log = logging.getLogger("gpu_suite")

SECTIONS = ("environment", "fp8", "judge_local", "evaluation_default", "generation_bf16", "generation_fp8",
            "evaluation_bf16")
#: the nine metrics that run networks (the two judge metrics are measured by judge_throughput.py)
MODEL_METRICS = ("subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness", "vtss",
                 "boundary_smoothness", "conditional_adjacent", "conditional_longrange", "dynamic_trajectory")
GEN_METHODS = ("self_forcing", "longlive", "memflow", "iamflow", "deep_forcing", "rolling_forcing")
#: issue 15's goals on one H100-class GPU
GOALS = {"eval_seconds_per_video": 11.0, "eval_overhead_share": 0.25, "gen_pixel_fps_bf16": 35.0,
         "iamflow_over_longlive": 1.39}
#: seconds a section needs at least to be worth starting (full size; smoke runs scale them down)
MIN_SECONDS = {"environment": 0, "fp8": 10, "judge_local": 20, "evaluation_default": 90, "generation_bf16": 60,
               "generation_fp8": 60, "evaluation_bf16": 90}


@dataclass
class Sizes:
    """What the suite measures at: the official sizes, or tiny ones for the CPU smoke test."""

    smoke: bool
    eval_width: int = 832
    eval_height: int = 480
    eval_fps: float = 16.0
    eval_segment_seconds: float = 10.0
    eval_videos: int = 3
    eval_warmup: int = 1
    gen_width: int = 832
    gen_height: int = 480
    gen_fps: float = 16.0
    gen_seconds_per_segment: float = 10.0
    gen_warmup_seconds_per_segment: float = 2.0
    gen_prompts: int = 2
    fp8_dim: int = 1536
    fp8_heads: int = 12
    fp8_ffn: int = 8960
    fp8_tokens_per_frame: int = 1560  # 480x832 -> 60x104 latents -> 30x52 patches
    fp8_frames: int = 3
    fp8_text_tokens: int = 512
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_args(cls, args: argparse.Namespace) -> "Sizes":
        if not args.smoke:
            sizes = cls(smoke=False, eval_videos=args.eval_videos)
            for key in ("eval_width", "eval_height", "eval_fps", "eval_segment_seconds", "eval_warmup"):
                if getattr(args, key, None) is not None:  # a reduced evaluation video (e.g. a CPU measurement)
                    setattr(sizes, key, getattr(args, key))
            return sizes
        return cls(smoke=True, eval_width=64, eval_height=48, eval_fps=4.0, eval_segment_seconds=2.0,
                   eval_videos=min(args.eval_videos, 1), eval_warmup=0, gen_width=32, gen_height=32, gen_fps=16.0,
                   gen_seconds_per_segment=1.5, gen_warmup_seconds_per_segment=1.5, fp8_dim=64, fp8_heads=4,
                   fp8_ffn=128, fp8_tokens_per_frame=16, fp8_frames=3, fp8_text_tokens=8)


class Suite:
    """Runs the sections in order under one time budget and writes the JSON and Markdown after each."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = Sizes.for_args(args)
        self.device = torch.device(args.device)
        self.started = time.monotonic()
        self.deadline = self.started + float(args.budget_s)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="narrastream-gpu-suite-"))
        self.work.mkdir(parents=True, exist_ok=True)
        name = args.name or ("gpu-suite-smoke" if args.smoke else "gpu-suite")
        self.json_path, self.md_path = self.out / f"{name}.json", self.out / f"{name}.md"
        self.report: dict[str, Any] = {
            "suite": {"command": " ".join(sys.argv), "smoke": args.smoke, "device": str(self.device),
                      "budget_s": args.budget_s, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                      "goals": GOALS},
            "sections": {},
        }

    # ------------------------------------------------------------------ plumbing
    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def enough_time(self, seconds: float) -> bool:
        return self.time_left() >= (seconds * (0.05 if self.sizes.smoke else 1.0))

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, sections: list[str]) -> dict[str, Any]:
        for name in sections:
            entry: dict[str, Any] = {"status": "running"}
            self.report["sections"][name] = entry
            if not self.enough_time(MIN_SECONDS.get(name, 0)):
                entry.update(status="skipped", note=f"budget: {max(self.time_left(), 0):.0f} s left of "
                                                    f"{self.args.budget_s} s, the section needs about "
                                                    f"{MIN_SECONDS.get(name, 0)} s")
                self.write()
                continue
            started = time.monotonic()
            try:
                entry["result"] = getattr(self, f"section_{name}")()
                entry["status"] = "ok"
            except Exception as exc:  # noqa: BLE001 - recorded; the next section runs
                entry.update(status="error", error=f"{type(exc).__name__}: {exc}",
                             traceback=traceback.format_exc()[-4000:])
                log.error("section %s failed: %s", name, exc)
            finally:
                entry["seconds"] = round(time.monotonic() - started, 2)
                self.free_memory()
                self.write()
        self.report["suite"]["elapsed_s"] = round(self.elapsed(), 1)
        self.report["goals"] = self.goals()
        self.write()
        return self.report

    def free_memory(self) -> None:
        import gc

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def write(self) -> None:
        self.report["suite"]["elapsed_s"] = round(self.elapsed(), 1)
        tmp = self.json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.report, indent=2, default=str))
        tmp.replace(self.json_path)
        self.md_path.write_text(markdown(self.report))

    # ------------------------------------------------------------------ environment
    def section_environment(self) -> dict[str, Any]:
        info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                                "platform": platform.platform(), "cpu_threads": torch.get_num_threads()}
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            info.update(gpu=props.name, capability=".".join(map(str, torch.cuda.get_device_capability(self.device))),
                        gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                        cudnn=torch.backends.cudnn.version())
        for module in ("torchvision", "transformers", "diffusers", "open_clip", "timm", "av"):
            with contextlib.suppress(Exception):
                info[module] = __import__(module).__version__
        self.report["suite"]["gpu"] = info.get("gpu", "none")
        return info

    # ------------------------------------------------------------------ FP8
    def section_fp8(self) -> dict[str, Any]:
        """``_scaled_mm`` (FP8 tensor cores) against the dequantized reference, one linear and one Wan block."""
        import torch.nn.functional as F
        from torch import nn

        from narrastream.streaming import fp8
        from narrastream.streaming.fp8 import FP8Linear, quantize_model
        from narrastream.streaming.wan_model import WanAttentionBlock, WanConfig, _sdpa

        s, device, bf16 = self.sizes, self.device, torch.bfloat16
        torch.manual_seed(0)
        tokens = s.fp8_tokens_per_frame * s.fp8_frames
        linear = nn.Linear(s.fp8_dim, s.fp8_dim).to(device, bf16)
        layer = FP8Linear.from_linear(linear)
        x = torch.randn(1, tokens, s.fp8_dim, device=device, dtype=bf16)
        path = "scaled_mm" if fp8._scaled_mm_supported(x, layer.weight) else "dequantized fallback"
        with torch.inference_mode():
            y = layer(x)
            with _dequantized_only(fp8):
                reference = layer(x)  # what FP8Linear computes without FP8 tensor cores: bf16 F.linear
            emulated = _emulated_fp8_linear(x, layer)  # the same quantized activations, fp32 GEMM
            unquantized = F.linear(x, linear.weight, linear.bias)
        result: dict[str, Any] = {
            "path": path, "capability": (".".join(map(str, torch.cuda.get_device_capability(device)))
                                         if device.type == "cuda" else None),
            "layer": {"shape": [tokens, s.fp8_dim, s.fp8_dim],
                      "max_rel_diff_vs_dequantized": _max_rel(y, reference),
                      "max_rel_diff_vs_emulated_fp8": _max_rel(y, emulated),
                      "max_rel_diff_vs_bf16_unquantized": _max_rel(y, unquantized),
                      "ms_fp8": _time_ms(lambda: layer(x), self.sync),
                      "ms_bf16": _time_ms(lambda: F.linear(x, linear.weight, linear.bias), self.sync)},
        }
        cfg = WanConfig(dim=s.fp8_dim, num_heads=s.fp8_heads, ffn_dim=s.fp8_ffn, num_layers=1)
        torch.manual_seed(1)
        holder = nn.Module()
        holder.blocks = nn.ModuleList([WanAttentionBlock(cfg)])
        holder = holder.to(device, bf16).eval()
        quantized = copy.deepcopy(holder)
        names = quantize_model(quantized)
        heads, head_dim = cfg.num_heads, cfg.head_dim
        xb = torch.randn(1, tokens, cfg.dim, device=device, dtype=bf16)
        e0 = 0.1 * torch.randn(1, s.fp8_frames, 6, cfg.dim, device=device, dtype=bf16)
        kv = tuple(torch.randn(1, s.fp8_text_tokens, heads, head_dim, device=device, dtype=bf16) for _ in range(2))

        def block(model: nn.Module) -> torch.Tensor:
            return model.blocks[0](xb, e0, lambda t: t, lambda q, k, v: _sdpa(q, k.transpose(1, 2), v.transpose(1, 2)),
                                   kv)

        with torch.inference_mode():
            out = block(quantized)
            with _dequantized_only(fp8):
                reference_block = block(quantized)
            bf16_block = block(holder)
        result["block"] = {"fp8_linears": len(names), "tokens": tokens, "dim": cfg.dim,
                           "max_rel_diff_vs_dequantized": _max_rel(out, reference_block),
                           "max_rel_diff_vs_bf16_unquantized": _max_rel(out, bf16_block),
                           "finite": bool(torch.isfinite(out).all()),
                           "ms_fp8": _time_ms(lambda: block(quantized), self.sync),
                           "ms_bf16": _time_ms(lambda: block(holder), self.sync)}
        return result

    # ------------------------------------------------------------------ local judge
    def section_judge_local(self) -> dict[str, Any]:
        from PIL import Image

        from narrastream.judges.base import ImagePart, Message
        from narrastream.judges.local import LocalVLMJudge
        from narrastream.judges.tiny_vlm import build_tiny_qwen2_vl

        folder = build_tiny_qwen2_vl(self.work / "tiny-qwen2-vl")
        image = Image.new("RGB", (64, 48), (200, 30, 30))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG")
        started = time.perf_counter()
        judge = LocalVLMJudge(str(folder), device=str(self.device), dtype="bfloat16", model="tiny-qwen2-vl",
                              max_tokens=8)
        loaded = time.perf_counter() - started
        try:
            started = time.perf_counter()
            answer = judge.complete([Message.user("describe the picture", ImagePart(buffer.getvalue()))])
            answered = time.perf_counter() - started
            identity = judge.identity()
            parameter = next(judge.vlm.parameters()) if getattr(judge, "vlm", None) is not None else None
        finally:
            judge.close()
        return {"identity": identity, "answer": answer, "answer_is_text": isinstance(answer, str),
                "load_seconds": round(loaded, 3), "answer_seconds": round(answered, 3),
                "weights_dtype": str(parameter.dtype).removeprefix("torch.") if parameter is not None else None,
                "weights_device": str(parameter.device) if parameter is not None else None}

    # ------------------------------------------------------------------ evaluation
    def section_evaluation_default(self) -> dict[str, Any]:
        return self.evaluation("auto")

    def section_evaluation_bf16(self) -> dict[str, Any]:
        result = self.evaluation("bf16")
        default = (self.report["sections"].get("evaluation_default") or {}).get("result")
        if default:
            result["deviation_from_default"] = score_deviation(default["scores"], result["scores"])
        return result

    def evaluation(self, precision: str) -> dict[str, Any]:
        from narrastream.harness.session import Session
        from narrastream.results.records import RecordStore

        s = self.sizes
        count = s.eval_warmup + s.eval_videos
        scripts = self.work / "eval-scripts.jsonl"
        if not scripts.is_file():
            lines = [json.dumps({"prompts": [f"In the cafe, Noah and Mina talk about plan {i}, part {k}; the camera "
                                             f"pans slowly across the table." for k in range(6)]}) for i in range(count)]
            scripts.write_text("\n".join(lines) + "\n")
        run_dir = self.work / f"eval-{precision}"
        videos = self.work / "eval-auto" / "videos"
        if precision != "auto" and videos.is_dir() and not (run_dir / "videos").exists():
            shutil.copytree(videos, run_dir / "videos")  # the same videos: scores comparable, nothing regenerated
        overrides = [
            "model=synthetic", f"run.dir={run_dir}", f"data.path={scripts}", "data.official=false", "judge=none",
            f"protocol.run_metrics=[{','.join(MODEL_METRICS)}]", "backbones.source=random",
            f"backbones.size={'tiny' if s.smoke else 'full'}", f"backbones.device={self.device}",
            f"backbones.precision={precision}", f"generation.width={s.eval_width}",
            f"generation.height={s.eval_height}", f"generation.fps={s.eval_fps}",
            f"protocol.segment_seconds={s.eval_segment_seconds}",
        ]
        if s.smoke:
            overrides.insert(0, "preset=tiny")
        session = Session.from_overrides(overrides)
        session.write_run_files()
        started = time.perf_counter()
        generated = session.generate()
        generate_seconds = time.perf_counter() - started
        if generated.failed:
            raise RuntimeError(f"synthetic generation failed: {generated.failures[:3]}")

        per_video: list[dict[str, Any]] = []
        original = session._evaluate_item

        def timed(script, *args, **kwargs):  # per video: wall time and what the backbones spent meanwhile
            before = session._backbones.runtime() if session._backbones is not None else {}
            t0 = time.perf_counter()
            original(script, *args, **kwargs)
            self.sync()
            wall = time.perf_counter() - t0
            after = session._backbones.runtime() if session._backbones is not None else {}
            spent = {n: after[n]["seconds"] - before.get(n, {}).get("seconds", 0.0) for n in after}
            per_video.append({"script": script.id, "seconds": wall, "backbone_seconds": spent})
            if len(per_video) >= s.eval_warmup and self.time_left() < 0:
                raise _OutOfBudget(f"budget: stopped after {len(per_video)} of {count} videos")

        session._evaluate_item = timed  # type: ignore[method-assign]
        note = None
        started = time.perf_counter()
        try:
            session.evaluate()
        except _OutOfBudget as stop:
            note = str(stop)
        evaluate_seconds = time.perf_counter() - started
        records = [r for r in RecordStore(run_dir / "records").iter_all()]
        measured = per_video[s.eval_warmup:] or per_video  # no warm-up (smoke), or the budget stopped after it
        ids = {v["script"] for v in measured}
        metrics: dict[str, dict[str, Any]] = {}
        for name in MODEL_METRICS:
            rows = [r for r in records if r.metric == name and r.script_id in ids]
            metrics[name] = {"seconds_per_video": _mean([r.elapsed_s for r in rows]),
                             "statuses": sorted({r.status for r in rows})}
        total = _mean([v["seconds"] for v in measured])
        backbone_total = _mean([sum(v["backbone_seconds"].values()) for v in measured])
        runtime = session._backbones.runtime() if session._backbones is not None else {}
        manifest = json.loads((run_dir / "manifest.json").read_text())
        loop = manifest.get("evaluation_runtime", {}).get(session.shard, {}).get("loop", {})
        peaks = [b["peak_memory_bytes"] for b in runtime.values() if b.get("peak_memory_bytes")]
        return {
            "precision": precision,
            "resolved_precision": {n: session.backbones.precision_of(n) for n in sorted(runtime)},
            "video": {"width": s.eval_width, "height": s.eval_height, "fps": s.eval_fps,
                      "seconds": 6 * s.eval_segment_seconds, "segments": 6},
            "videos_measured": len(measured), "warmup_videos": min(s.eval_warmup, len(per_video)),
            "measured_includes_warmup": len(per_video) <= s.eval_warmup and bool(per_video) and s.eval_warmup > 0,
            "seconds_per_video": total,
            "backbone_seconds_per_video": backbone_total,
            "overhead_share": (1 - backbone_total / total) if total else None,
            "metrics": metrics,
            "per_backbone_seconds_per_video": {n: _mean([v["backbone_seconds"].get(n, 0.0) for v in measured])
                                               for n in sorted(runtime)},
            "backbones": runtime,
            "peak_gpu_memory_gib": round(max(peaks) / 2**30, 2) if peaks else None,
            "decode_seconds_per_video": (loop.get("decode_seconds", 0.0) / max(len(per_video), 1)) if loop else None,
            "waited_for_decode_seconds": loop.get("waited_for_decode_seconds"),
            "generate_seconds": round(generate_seconds, 2), "evaluate_seconds": round(evaluate_seconds, 2),
            "scores": {f"{r.script_id}:{r.metric}": r.score for r in records},
            "note": note,
        }

    # ------------------------------------------------------------------ generation
    def section_generation_bf16(self) -> dict[str, Any]:
        return self.generation("bf16")

    def section_generation_fp8(self) -> dict[str, Any]:
        return self.generation("fp8")

    def generation(self, precision: str) -> dict[str, Any]:
        import generation as bench  # benchmarks/generation.py

        from narrastream.streaming.fp8 import quantize_model

        s, device = self.sizes, self.device
        dit, text, decoder = self.generation_models()
        if precision == "fp8":
            quantize_model(dit)
        pairs = [(bench.CHARACTERS[k % 3], bench.CHARACTERS[(k + 1) % 3]) for k in range(s.gen_prompts)]
        prompts = [f"{a} and {b} work at the table, step {k}." for k, (a, b) in enumerate(pairs)]
        geometry = dict(seconds_per_segment=s.gen_seconds_per_segment, fps=s.gen_fps, height=s.gen_height,
                        width=s.gen_width)
        warm = {**geometry, "seconds_per_segment": s.gen_warmup_seconds_per_segment}
        rows: list[dict[str, Any]] = []
        notes: list[str] = []
        methods = self.args.gen_methods.split(",") if self.args.gen_methods else list(GEN_METHODS)
        for method in methods:
            if not self.enough_time(20):
                notes.append(f"budget: {method} and later methods skipped")
                break
            try:
                if not s.smoke or method == methods[0]:  # a short warm-up clip per method (kernels, allocator)
                    bench.method_spec(method)  # a bad config fails here, before any GPU work
                    _generate(bench, dit, text, decoder, method, prompts, pairs, warm)
                row = bench.measure_method(dit, text, decoder, method, precision, prompts, pairs, geometry, device,
                                           warm_up=False)
                rows.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
            except Exception as exc:  # noqa: BLE001 - one method failing keeps the others
                rows.append({"method": method, "precision": precision, "error": f"{type(exc).__name__}: {exc}",
                             "traceback": traceback.format_exc()[-2000:]})
            self.report["sections"][f"generation_{precision}"]["partial_rows"] = rows
            self.write()
        del dit, text, decoder
        return {"precision": precision, "geometry": geometry, "prompts": len(prompts), "rows": rows,
                "speed_ratio_iamflow_over_longlive": _ratio(rows, "iamflow", "longlive"), "notes": notes}

    def generation_models(self) -> tuple[Any, Any, Any]:
        import generation as bench

        if self.sizes.smoke:
            from narrastream.streaming.tiny import build_tiny

            dit, _, decoder = build_tiny(0, self.device)
            dit = dit.to(torch.bfloat16)
        else:
            from narrastream.streaming.wan_model import WanConfig

            dit, decoder = bench.build_models(WanConfig().num_layers, self.device,
                                              init_on_device=self.device.type == "cuda")
        text = bench.RandomTextFeatures(dit.cfg.text_dim, dit.cfg.text_len, self.device, torch.bfloat16)
        return dit, text, decoder

    # ------------------------------------------------------------------ goals
    def goals(self) -> dict[str, Any]:
        sections = self.report["sections"]
        out: dict[str, Any] = {}
        default = (sections.get("evaluation_default") or {}).get("result")
        if default:
            out["eval_seconds_per_video"] = _goal(default["seconds_per_video"], GOALS["eval_seconds_per_video"], "<=")
            out["eval_overhead_share"] = _goal(default["overhead_share"], GOALS["eval_overhead_share"], "<=")
        rows = ((sections.get("generation_bf16") or {}).get("result") or {}).get("rows", [])
        for row in rows:
            if row.get("method") in ("self_forcing", "longlive", "memflow", "iamflow") and "pixel_fps" in row:
                out[f"gen_pixel_fps_bf16_{row['method']}"] = _goal(row["pixel_fps"], GOALS["gen_pixel_fps_bf16"], ">=")
        for precision in ("bf16", "fp8"):
            result = (sections.get(f"generation_{precision}") or {}).get("result") or {}
            if result.get("speed_ratio_iamflow_over_longlive") is not None:
                out[f"iamflow_over_longlive_{precision}"] = _goal(result["speed_ratio_iamflow_over_longlive"],
                                                                  GOALS["iamflow_over_longlive"], ">=")
        fp8_rows = ((sections.get("generation_fp8") or {}).get("result") or {}).get("rows", [])
        cross = _ratio(rows + fp8_rows, ("iamflow", "fp8"), ("longlive", "bf16"))
        if cross is not None:
            out["iamflow_fp8_over_longlive_bf16"] = _goal(cross, GOALS["iamflow_over_longlive"], ">=")
        return out


class _OutOfBudget(Exception):
    pass


@contextlib.contextmanager
def _dequantized_only(fp8_module: Any):
    """FP8Linear's dequantized path (what runs without FP8 tensor cores), for the reference forward."""
    original = fp8_module._scaled_mm_supported
    fp8_module._scaled_mm_supported = lambda x, w: False
    try:
        yield
    finally:
        fp8_module._scaled_mm_supported = original


def _emulated_fp8_linear(x: torch.Tensor, layer: Any) -> torch.Tensor:
    """``scaled_mm_linear``'s arithmetic without FP8 tensor cores: the same per-token activation quantization,
    dequantized, and a float32 GEMM; isolates the GEMM's own rounding."""
    from narrastream.streaming.fp8 import E4M3_MAX, FP8_DTYPE, _MIN_ACT_SCALE

    x2d = x.reshape(-1, layer.in_features).float()
    scale = (x2d.abs().amax(dim=1, keepdim=True) / E4M3_MAX).clamp(min=_MIN_ACT_SCALE)
    xq = (x2d / scale).clamp(-E4M3_MAX, E4M3_MAX).to(FP8_DTYPE).float() * scale
    w = layer.weight.float() * layer.weight_scale.float()
    out = xq @ w.t() + (layer.bias.float() if layer.bias is not None else 0.0)
    return out.to(x.dtype).reshape(*x.shape[:-1], layer.out_features)


def _max_rel(y: torch.Tensor, reference: torch.Tensor) -> float:
    """``max |y - ref| / max |ref|`` (a norm-wise relative difference: element-wise ratios explode near zero)."""
    y, reference = y.float(), reference.float()
    return float((y - reference).abs().max() / reference.abs().max().clamp(min=1e-12))


def _time_ms(fn: Callable[[], Any], sync: Callable[[], None], repeats: int = 10) -> float:
    with torch.inference_mode():
        fn()
        sync()
        started = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync()
    return round(1000 * (time.perf_counter() - started) / repeats, 4)


def _generate(bench: Any, dit: Any, text: Any, decoder: Any, method: str, prompts: list[str], pairs: list,
              geometry: dict[str, Any]) -> None:
    """One unmeasured clip through the same pipeline (the warm-up)."""
    from narrastream.iamflow.agent import IdentityAgent
    from narrastream.iamflow.registry import ExtractedEntity
    from narrastream.streaming.pipeline import StreamingWanPipeline

    spec = bench.method_spec(method)
    agent = (IdentityAgent(prompts, [[ExtractedEntity(a, ()), ExtractedEntity(b, ())] for a, b in pairs])
             if spec.memory == "identity" else None)
    StreamingWanPipeline(dit, text, decoder, spec).generate(prompts, seed=0, memory_agent=agent, **geometry)


def _mean(values: list[float]) -> float | None:
    values = [float(v) for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def _ratio(rows: list[dict[str, Any]], fast: Any, slow: Any) -> float | None:
    """Speed of ``fast`` over ``slow`` (seconds per video of slow / of fast); a name, or (name, precision)."""
    def seconds(key: Any) -> float | None:
        name, precision = key if isinstance(key, tuple) else (key, None)
        for row in rows:
            if row.get("method") == name and (precision is None or row.get("precision") == precision):
                return row.get("seconds_per_video")
        return None

    a, b = seconds(fast), seconds(slow)
    return round(b / a, 3) if a and b else None


def _goal(value: float | None, target: float, sense: str) -> dict[str, Any]:
    met = None if value is None else (value <= target if sense == "<=" else value >= target)
    return {"value": value, "goal": f"{sense} {target}", "met": met}


def score_deviation(default: dict[str, float | None], other: dict[str, float | None]) -> dict[str, Any]:
    """Per metric, the largest and the mean absolute score difference over the videos both runs scored."""
    out: dict[str, Any] = {}
    for name in MODEL_METRICS:
        diffs = [abs(other[k] - v) for k, v in default.items()
                 if k.endswith(f":{name}") and v is not None and other.get(k) is not None]
        if diffs:
            out[name] = {"max_abs": max(diffs), "mean_abs": sum(diffs) / len(diffs), "videos": len(diffs)}
    return out


# ---------------------------------------------------------------------- the Markdown table
def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}f}" if abs(value) >= 10 ** -digits or value == 0 else f"{value:.2e}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    suite = report["suite"]
    lines = [f"# GPU suite: {suite.get('gpu', suite['device'])}", "",
             f"`{suite['command']}`, started {suite['started']}, {suite.get('elapsed_s', '?')} s of a "
             f"{suite['budget_s']} s budget{' (smoke: tiny sizes, not a measurement)' if suite['smoke'] else ''}.", "",
             "| section | status | seconds | note |", "|---|---|---:|---|"]
    for name, entry in report["sections"].items():
        note = entry.get("error") or entry.get("note") or ((entry.get("result") or {}).get("note") or "")
        lines.append(f"| {name} | {entry['status']} | {_fmt(entry.get('seconds'), 1)} | {str(note)[:200]} |")
    goals = report.get("goals") or {}
    if goals:
        lines += ["", "## Goals (issue 15)", "", "| goal | measured | target | met |", "|---|---:|---|---|"]
        for name, g in goals.items():
            lines.append(f"| {name} | {_fmt(g['value'], 3)} | {g['goal']} | {_fmt(g['met'])} |")
    sections = report["sections"]
    for key in ("evaluation_default", "evaluation_bf16"):
        result = (sections.get(key) or {}).get("result")
        if not result:
            continue
        lines += ["", f"## Evaluation, precision {result['precision']}", "",
                  f"{result['videos_measured']} video(s) of {result['video']['seconds']:g} s, "
                  f"{result['video']['width']}x{result['video']['height']}, {result['video']['fps']:g} fps, after "
                  f"{result['warmup_videos']} warm-up; peak GPU memory {_fmt(result['peak_gpu_memory_gib'])} GiB; "
                  f"time outside the networks {_fmt(100 * result['overhead_share'] if result['overhead_share'] is not None else None, 1)} %.",
                  "", "| metric | seconds per video | status |", "|---|---:|---|"]
        for name, m in result["metrics"].items():
            lines.append(f"| {name} | {_fmt(m['seconds_per_video'])} | {', '.join(m['statuses'])} |")
        lines.append(f"| **total (one video, all nine)** | **{_fmt(result['seconds_per_video'])}** | |")
        lines += ["", "| backbone | seconds per video | batch size | precision | peak GPU memory (GiB) | OOM halvings |",
                  "|---|---:|---:|---|---:|---:|"]
        for name, b in result["backbones"].items():
            peak = b.get("peak_memory_bytes")
            lines.append(f"| {name} | {_fmt(result['per_backbone_seconds_per_video'].get(name))} | {b['batch_size']} "
                         f"(per {b['batch_size_per']}) | {b['precision']} | "
                         f"{_fmt(peak / 2**30 if peak else None)} | {b['oom_halvings']} |")
        deviation = result.get("deviation_from_default")
        if deviation:
            lines += ["", "| metric | max abs score difference bf16 vs default | mean | videos |", "|---|---:|---:|---:|"]
            for name, d in deviation.items():
                lines.append(f"| {name} | {_fmt(d['max_abs'], 5)} | {_fmt(d['mean_abs'], 5)} | {d['videos']} |")
    for key in ("generation_bf16", "generation_fp8"):
        result = (sections.get(key) or {}).get("result")
        rows = (result or {}).get("rows") or (sections.get(key) or {}).get("partial_rows")
        if not rows:
            continue
        lines += ["", f"## Generation, {key.split('_')[1]}", "",
                  "| method | pixel fps | s/block | s/video | core DiT (s) | method overhead (s) | decode (s) | peak GiB |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['method']} | error: {r['error'][:120]} | | | | | | |")
                continue
            lines.append(f"| {r['method']} | {_fmt(r['pixel_fps'])} | {_fmt(r['seconds_per_block'], 3)} | "
                         f"{_fmt(r['seconds_per_video'])} | {_fmt(r['core_dit'])} | {_fmt(r['method_overhead'])} | "
                         f"{_fmt(r['output_decode'])} | {_fmt(r['peak_memory_gib'])} |")
        if result and result.get("speed_ratio_iamflow_over_longlive") is not None:
            lines.append(f"\niamflow / longlive speed (seconds per video, same run): "
                         f"{result['speed_ratio_iamflow_over_longlive']:.2f}x")
    fp8 = (sections.get("fp8") or {}).get("result")
    if fp8:
        lines += ["", f"## FP8 (`{fp8['path']}`)", "",
                  "| | max rel. diff vs dequantized | vs bf16 unquantized | ms FP8 | ms bf16 |", "|---|---:|---:|---:|---:|"]
        for part in ("layer", "block"):
            p = fp8[part]
            lines.append(f"| {part} | {_fmt(p['max_rel_diff_vs_dequantized'], 4)} | "
                         f"{_fmt(p['max_rel_diff_vs_bf16_unquantized'], 4)} | {_fmt(p['ms_fp8'], 3)} | "
                         f"{_fmt(p['ms_bf16'], 3)} |")
    judge = (sections.get("judge_local") or {}).get("result")
    if judge:
        lines += ["", "## Local judge", "", f"tiny Qwen2-VL, {judge['weights_dtype']} on {judge['weights_device']}: "
                  f"loaded in {_fmt(judge['load_seconds'])} s, one answer in {_fmt(judge['answer_seconds'])} s "
                  f"({len(judge['answer'])} characters)."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CPU test); figures mean nothing")
    parser.add_argument("--device", default=None, help="default: cuda when available (smoke: cpu)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="the whole run's time budget")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--eval-videos", type=int, default=3, help="measured videos per precision (after a warm-up)")
    parser.add_argument("--eval-warmup", type=int, default=None, help="warm-up videos before the measured ones (1)")
    parser.add_argument("--eval-width", type=int, default=None, help="evaluation video size (default 832x480)")
    parser.add_argument("--eval-height", type=int, default=None)
    parser.add_argument("--eval-fps", type=float, default=None, help="default 16")
    parser.add_argument("--eval-segment-seconds", type=float, default=None, help="6 segments of this (default 10)")
    parser.add_argument("--gen-methods", default=None, help=f"default: {','.join(GEN_METHODS)}")
    parser.add_argument("--out", default=str(HERE), help="folder of the JSON and Markdown results")
    parser.add_argument("--name", default=None, help="file name stem (default gpu-suite, or gpu-suite-smoke)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a new temporary one, removed after)")
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    sections = [s for s in args.sections.split(",") if s]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; known: {', '.join(SECTIONS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    suite = Suite(args)
    try:
        report = suite.run(sections)
    finally:
        if not args.work:
            shutil.rmtree(suite.work, ignore_errors=True)
    print(suite.md_path.read_text())
    print(f"results: {suite.json_path} and {suite.md_path}")
    return 0 if all(e["status"] != "error" for e in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
