"""Measure three choices of the streaming generator against the released code, on the tiny seeded DiT.

1. LongLive's KV re-cache at a prompt switch: the release's ``one_forward`` (the window's frames in one
   forward, seeing each other) against ``per_block`` (block by block, block-causal). A 2-prompt stream of
   10 s segments at 16 fps (the benchmark's time axis: switch at latent frame 39, a 9-frame window of 3
   blocks re-cached) under the real cache policy (sink 3 + window, 12 frames). Reported: the difference
   of the re-cached K/V (every layer, the 9 window frames), of the next block's output latents (x0), and
   of the latents over the rest of the segment; for scale, the next block's difference between the
   release and no re-cache at all (the hard switch).
2. Precision with bf16 weights: activations in bf16 (the released causal models, ``residual_dtype:
   null``) against float32 residuals (``residual_dtype: float32``), and each against the same weights in
   float32, over the output latents of a few blocks.
3. MemFlow's bank compression schedule: the release's ``every_forward`` (the bank re-compressed before
   every block's first forward and every re-cache once more frames were recorded than it holds, zero text
   keys right after a switch) against ``per_frame`` (once per recorded frame), with ``model=memflow``'s
   cache, re-cache and bank (3 frames, a candidate every 3 blocks) over 3 prompts of 10 s (switches at 39
   and 78, 120 latent frames). Reported: the latents of the blocks before the first over-budget block
   (equal), the first block that differs, and the difference over the rest of the video.

"max abs" is the largest absolute difference; "rel" divides it by the largest absolute value of the
reference (the release's choice). The DiT is random (seeded), the text features random too: the figures
show the size of each difference for this architecture, not for the trained 1.3B model.

    PYTHONPATH=. python tools/streaming_departures.py [--dim 32 --layers 2 --heads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

import torch

from narrastream.streaming.kv_cache import CachePolicy
from narrastream.streaming.pipeline import StreamingSpec, StreamingWanPipeline
from narrastream.streaming.tiny import tiny_dit_config
from narrastream.streaming.wan_model import CausalWanTransformer, WanConfig

FPS, SECONDS, HEIGHT, WIDTH = 16.0, 10.0, 64, 64  # latent 8x8: 16 tokens per frame


class _Texts:
    """Seeded random text features, one row per prompt (the umT5 encoder is not what is measured)."""

    def __init__(self, cfg: WanConfig, seed: int) -> None:
        self.cfg, self.seed = cfg, seed

    def encode(self, prompts: list[str]) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        return torch.randn(len(prompts), 32, self.cfg.text_dim, generator=g)


class _Latents:
    """A stand-in decoder that keeps each block's clean latents and returns blank pixels."""

    def __init__(self) -> None:
        self.blocks: list[torch.Tensor] = []

    def reset(self) -> None:
        self.blocks = []

    def decode_chunk(self, x0: torch.Tensor) -> torch.Tensor:
        self.blocks.append(x0.detach().float().cpu().clone())
        return torch.zeros(1, 3, 1 if len(self.blocks) == 1 else 4 * x0.shape[2], 8, 8)


class _Recorder(StreamingWanPipeline):
    """The pipeline, keeping a copy of the re-cached K/V of the window after each switch."""

    recached: list[tuple[list[int], torch.Tensor, torch.Tensor]]

    def _recache(self, cache: Any, bank: Any, latents: torch.Tensor, context: torch.Tensor, start: int) -> None:
        super()._recache(cache, bank, latents, context, start)
        frames = cache.self_attn.local_frames()
        k, v = cache.self_attn.export_frames(frames)
        self.recached.append((frames, k.float().clone(), v.float().clone()))


def _diff(a: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    err = (a.float() - reference.float()).abs().max().item()
    scale = reference.float().abs().max().item()
    return {"max_abs": err, "rel": err / scale if scale else float("nan")}


def _run(dit: CausalWanTransformer, spec: StreamingSpec, prompts: int, seconds: float, seed: int = 0):
    decoder = _Latents()
    pipeline = _Recorder(dit, _Texts(dit.cfg, seed=1), decoder, spec)
    pipeline.recached = []
    result = pipeline.generate([f"prompt {k}" for k in range(prompts)], seed=seed, seconds_per_segment=seconds,
                               fps=FPS, height=HEIGHT, width=WIDTH)
    return result.plan, decoder.blocks, pipeline.recached


def measure_recache(dit: CausalWanTransformer) -> dict[str, Any]:
    policy = CachePolicy.sink(12, 3, sma=False)
    runs = {mode: _run(dit, StreamingSpec(cache=policy, transition="kv_recache", recache=mode, memory="none"),
                       prompts=2, seconds=SECONDS) for mode in ("one_forward", "per_block")}
    plan, ref_blocks, ref_kv = runs["one_forward"]
    _, blocks, kv = runs["per_block"]
    _, hard, _ = _run(dit, StreamingSpec(cache=policy, transition="hard", memory="none"), prompts=2, seconds=SECONDS)
    switch = plan.switches[0]
    next_block = switch // plan.block
    frames, k_ref, v_ref = ref_kv[0]
    assert frames == kv[0][0], (frames, kv[0][0])
    before = torch.cat(ref_blocks[:next_block], dim=2), torch.cat(blocks[:next_block], dim=2)
    return {
        "switch_latent_frame": switch, "recached_frames": frames, "cache": "sink 3 + window, 12 frames",
        "frames_before_switch_equal": bool(torch.equal(*before)),
        "recached_k": _diff(kv[0][1], k_ref), "recached_v": _diff(kv[0][2], v_ref),
        "next_block_x0": _diff(blocks[next_block], ref_blocks[next_block]),
        "rest_of_segment_x0": _diff(torch.cat(blocks[next_block:], dim=2), torch.cat(ref_blocks[next_block:], dim=2)),
        # for scale: what the re-cache itself changes (no re-cache, the hard switch, against the release)
        "next_block_x0_hard_switch": _diff(hard[next_block], ref_blocks[next_block]),
    }


def measure_memory(dit: CausalWanTransformer) -> dict[str, Any]:
    policy = CachePolicy.sink(12, 3, sma=False)
    runs, details = {}, {}
    for mode in ("every_forward", "per_frame"):
        spec = StreamingSpec(cache=policy, transition="kv_recache", memory="narrative", bank_size=3,
                             record_interval=3, memory_compress=mode)
        decoder = _Latents()
        pipeline = _Recorder(dit, _Texts(dit.cfg, seed=1), decoder, spec)
        pipeline.recached = []
        result = pipeline.generate([f"prompt {k}" for k in range(3)], seed=0, seconds_per_segment=SECONDS, fps=FPS,
                                   height=HEIGHT, width=WIDTH)
        runs[mode], details[mode] = decoder.blocks, result.details["memory"]
    release, ours = runs["every_forward"], runs["per_frame"]
    over = 3 * 3 + 1  # the block after the 4th recorded frame (blocks 0, 3, 6, 9 record)
    differing = [b for b, (a, r) in enumerate(zip(ours, release)) if not torch.equal(a, r)]
    return {
        "switch_latent_frames": list(result.plan.switches), "blocks": len(release),
        "compressions": {mode: details[mode]["compressions"] for mode in details},
        "blocks_before_first_over_budget_equal": bool(all(torch.equal(a, r) for a, r in zip(ours[:over], release[:over]))),
        "first_differing_block": differing[0] if differing else None,
        "from_first_over_budget_block_x0": _diff(torch.cat(ours[over:], dim=2), torch.cat(release[over:], dim=2)),
    }


def measure_precision(cfg: WanConfig, state: dict[str, torch.Tensor], seconds: float = 4.0) -> dict[str, Any]:
    spec = StreamingSpec(cache=CachePolicy.sink(12, 3, sma=False), transition="hard", memory="none")
    outputs = {}
    for name, residual, dtype in (("bf16 (release)", None, torch.bfloat16),
                                  ("bf16 weights, fp32 residual", "float32", torch.bfloat16),
                                  ("fp32 weights", None, torch.float32)):
        dit = CausalWanTransformer(dataclasses.replace(cfg, residual_dtype=residual))
        dit.load_state_dict(state)
        plan, blocks, _ = _run(dit.to(dtype).eval(), spec, prompts=1, seconds=seconds)
        outputs[name] = torch.cat(blocks, dim=2)
    release, fp32res, fp32 = outputs.values()
    return {
        "blocks": plan.num_blocks, "latent_frames": plan.num_latent_frames,
        "bf16_release_vs_fp32_residual": _diff(fp32res, release),
        "bf16_release_vs_fp32_weights": _diff(release, fp32),
        "fp32_residual_vs_fp32_weights": _diff(fp32res, fp32),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=None, help="DiT width (default: the tiny preset's 32)")
    parser.add_argument("--layers", type=int, default=None, help="DiT depth (default: the tiny preset's 2)")
    parser.add_argument("--heads", type=int, default=None, help="attention heads (default: 2)")
    parser.add_argument("--seed", type=int, default=0, help="weights' seed (the tiny preset's is 0)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("dim", args.dim), ("num_layers", args.layers), ("num_heads", args.heads))
                 if v is not None}
    if "dim" in overrides:
        overrides["ffn_dim"] = 2 * overrides["dim"]
    cfg = dataclasses.replace(tiny_dit_config(), **overrides)
    torch.manual_seed(args.seed)
    dit = CausalWanTransformer(cfg).eval()  # seeded like preset=tiny's DiT
    figures = {"dit": {k: getattr(cfg, k) for k in ("dim", "num_layers", "num_heads", "ffn_dim")},
               "torch": torch.__version__,
               "recache_per_block_vs_one_forward": measure_recache(dit),
               "memflow_bank_per_frame_vs_every_forward": measure_memory(dit),
               "precision": measure_precision(cfg, dit.state_dict())}
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return figures


if __name__ == "__main__":
    main()
