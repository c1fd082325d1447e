"""temporal_flickering (protocol §2.1.3): photometric error of RAFT-warped frames, per segment.

Per segment: 8 uniformly sampled frames (``round(i (n-1)/7)``, deduplicated), 7 consecutive pairs,
forward and backward RAFT flow for each (all pairs of all segments in one call, batched by
``backbones.batch_size``; on a GPU the frames are gathered on the device and the warps, masks and
percentiles of all pairs computed there). Each pair's
error is the p90 of the luma residual over its valid mask (forward-backward consistent pixels, or --
when fewer than 5 % are -- the in-bounds pixels, recorded as a fallback); the segment's raw error is
the p84 of its pair errors and its score ``exp(-raw / 0.5)``
(:mod:`narrastream.metrics.functional.flicker`).

A segment with fewer than 2 frames, or whose pairs were all skipped (no in-bounds pixel), is
**omitted**. The kept scores are pooled as the official ``llm_prompt_weighted_mean``: with the planner
weights when there is exactly one weight per kept score, else the plain mean
(:func:`~narrastream.protocol.pooling.resolve_segment_weights` on the kept count). So, as in the
official code (protocol, Corrections), a 1-frame tail segment dropped from a 7-segment video with 6
prompts leaves 6 scores that *are* weighted; when a middle segment is omitted and the count still
matches, the weights are applied in order to the kept segments (misaligned) -- recorded as a fallback
(a dropped tail keeps them aligned: not a fallback; the omission is in the items either way).
No kept segment: ``failed``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from narrastream.metrics.base import Metric, MetricContext, MetricResult
from narrastream.metrics.functional.flicker import flicker_score, luma, pair_flicker_errors, segment_raw_error
from narrastream.protocol.pooling import resolve_segment_weights, weighted_mean
from narrastream.video.samplers import uniform_indices

if TYPE_CHECKING:
    from narrastream.video.segments import SegmentedVideo

REQUIRED_PARAMS: tuple[str, ...] = (
    "backbone", "num_frames", "raft_iters", "fb_consistency_alpha", "fb_consistency_beta",
    "min_mask_ratio", "pair_quantile", "segment_quantile", "tau",
)


class TemporalFlickering(Metric):
    """Whether sampled frames of a segment agree once motion is compensated (RAFT raft-things)."""

    name = "temporal_flickering"
    dimension: ClassVar[str] = "quality"
    version: ClassVar[str] = "v1_raft_fb_p90_p84_exp"
    backbones = ("raft_things",)
    required_params: ClassVar[tuple[str, ...]] = REQUIRED_PARAMS

    def compute(self, video: "SegmentedVideo", ctx: MetricContext) -> MetricResult:
        p = self.params
        indices = [uniform_indices(n, int(p["num_frames"])) for n in video.segment_lengths]
        paired = [k for k, idx in enumerate(indices) if len(idx) >= 2]
        # video-wide positions of every pair's first and second frame, all segments in order
        firsts = np.concatenate([video.positions(k, indices[k][:-1]) for k in paired] or [np.empty(0, np.int64)])
        seconds = np.concatenate([video.positions(k, indices[k][1:]) for k in paired] or [np.empty(0, np.int64)])
        errors_of_pairs: list[tuple[float | None, dict[str, Any]]] = []
        if len(firsts):
            raft = ctx.backbones.get(p["backbone"])
            device = getattr(raft, "device", None)  # the frames go to the device once; pairs are gathered there
            flows = raft.flow(
                video.take(np.concatenate((firsts, seconds)), device), video.take(np.concatenate((seconds, firsts)), device),
                iters=int(p["raft_iters"]), batch_size=self.batch_size, keep_on_device=True,
            )
            forward, backward = flows.split(len(firsts))
            frames_a, frames_b = video.take(firsts, device), video.take(seconds, device)
            errors_of_pairs = pair_flicker_errors(
                luma(frames_a[0:len(firsts)]).to(forward.device), luma(frames_b[0:len(seconds)]).to(forward.device),
                forward, backward,
                alpha=float(p["fb_consistency_alpha"]), beta=float(p["fb_consistency_beta"]),
                min_mask_ratio=float(p["min_mask_ratio"]), quantile=float(p["pair_quantile"]),
            )
        items: list[dict[str, Any]] = []
        fallbacks: list[str] = []
        kept_scores: list[float] = []
        kept_segments: list[int] = []
        offset = 0
        for k, idx in enumerate(indices):
            item: dict[str, Any] = {"segment": k, "frames": list(idx)}
            items.append(item)
            if len(idx) < 2:
                item.update(status="omitted", reason=f"{len(idx)} sampled frame(s): no pair")
                continue
            pairs: list[dict[str, Any]] = []
            errors: list[float] = []
            for i in range(len(idx) - 1):
                error, info = errors_of_pairs[offset + i]
                pairs.append({"pair": [idx[i], idx[i + 1]], "error": error, **info})
                if info["mask"] == "in_bounds":
                    fallbacks.append(
                        f"segment {k} pair {idx[i]}->{idx[i + 1]}: mask in_bounds "
                        f"(consistent pixels {info['consistency_ratio']:.4f} < {p['min_mask_ratio']})"
                    )
                if error is not None:
                    errors.append(error)
            offset += len(idx) - 1
            item["pairs"] = pairs
            raw = segment_raw_error(errors, float(p["segment_quantile"]))
            if raw is None:
                item.update(status="omitted", reason="every pair skipped (no in-bounds pixel)")
                continue
            score = flicker_score(raw, float(p["tau"]))
            item.update(status="ok", raw_error=raw, score=score)
            kept_scores.append(score)
            kept_segments.append(k)
        if not kept_scores:
            return MetricResult.failed(
                "no segment could be scored (every segment has fewer than 2 frames or only skipped pairs)",
                segments=items,
            )
        weights, weight_fallback = resolve_segment_weights(ctx.segment_weights, len(kept_scores))
        omitted = [k for k in range(video.num_segments) if k not in kept_segments]
        if weight_fallback:
            fallbacks.insert(0, weight_fallback)
        elif kept_segments != list(range(len(kept_segments))):  # a dropped tail keeps the weights aligned
            fallbacks.insert(0, f"segment_weights: applied in order to the kept segments {kept_segments} "
                                f"(segments {omitted} omitted; the official evaluator does the same)")
        for k, w in zip(kept_segments, weights):
            items[k]["weight"] = w
        score = weighted_mean(kept_scores, weights)
        return MetricResult(
            score=score, items=items, fallbacks=fallbacks,
            details={"kept_segments": kept_segments, "omitted_segments": omitted, "segment_weights": weights},
        )
