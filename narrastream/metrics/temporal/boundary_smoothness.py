"""boundary_smoothness (protocol §2.2.1): is the motion across each segment cut like the motion beside it?

For every seam k -> k+1, three RAFT flows at full resolution (all seams in one batched call): the
last pair of segment k (left), last frame of k -> first frame of k+1 (boundary), the first pair of
k+1 (right); ``score_k = exp(-|boundary - expected| / tol)`` with ``expected = (left + right) / 2``
and ``tol = max(1e-6, 0.02 + 0.5 expected)`` (:mod:`narrastream.metrics.functional.boundary`).

A seam whose window (``window: 2`` frames each side) has fewer than 2 frames is skipped and listed
in the items. The computed seams are pooled with the transition weights ``w_k + w_k+1`` of the
planner segment weights (:func:`~narrastream.protocol.pooling.transition_weights`, renormalised over
the computed seams); weights missing or not one per segment: uniform (the official ``mean``
fallback), recorded. No computable seam (one segment, or every window too short): ``failed``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from narrastream.metrics.base import Metric, MetricContext, MetricResult
from narrastream.metrics.functional.boundary import mean_flow_magnitude, seam_score
from narrastream.protocol.pooling import resolve_segment_weights, transition_weights, weighted_mean
from narrastream.video.samplers import boundary_window

if TYPE_CHECKING:
    from narrastream.video.segments import SegmentedVideo

REQUIRED_PARAMS: tuple[str, ...] = ("backbone", "raft_iters", "window", "flow_tolerance_abs", "flow_tolerance_rel")


class BoundarySmoothness(Metric):
    """Continuity of the flow magnitude across every segment boundary (RAFT raft-things)."""

    name = "boundary_smoothness"
    dimension: ClassVar[str] = "temporal"
    version: ClassVar[str] = "v1_raft_flow_magnitude_exp"
    backbones = ("raft_things",)
    required_params: ClassVar[tuple[str, ...]] = REQUIRED_PARAMS

    def compute(self, video: "SegmentedVideo", ctx: MetricContext) -> MetricResult:
        p = self.params
        lengths = video.segment_lengths
        items: list[dict[str, Any]] = []
        seams: list[int] = []
        firsts: list[np.ndarray] = []
        seconds: list[np.ndarray] = []
        for k in range(video.num_segments - 1):
            left_idx, right_idx = boundary_window(lengths[k], lengths[k + 1], int(p["window"]))
            item: dict[str, Any] = {"seam": k, "left_frames": left_idx, "right_frames": right_idx}
            items.append(item)
            if len(left_idx) < 2 or len(right_idx) < 2:
                item.update(status="skipped", reason="a window has fewer than 2 frames")
                continue
            (l0, l1), (r0, r1) = video.positions(k, left_idx[-2:]), video.positions(k + 1, right_idx[:2])
            # pairs: left (last-1 -> last of k), boundary (last of k -> first of k+1), right (first -> second of k+1)
            firsts.append(np.array((l0, l1, r0)))
            seconds.append(np.array((l1, r0, r1)))
            seams.append(k)
        if not seams:
            reason = ("a single segment has no seam" if video.num_segments < 2
                      else "no seam could be computed (every window has fewer than 2 frames)")
            return MetricResult.failed(reason, seams=items)
        raft = ctx.backbones.get(p["backbone"])
        device = getattr(raft, "device", None)  # on a GPU the frames are gathered where RAFT runs
        flows = raft.flow(
            video.take(np.concatenate(firsts), device), video.take(np.concatenate(seconds), device),
            iters=int(p["raft_iters"]), batch_size=self.batch_size, keep_on_device=True,
        )
        magnitudes = mean_flow_magnitude(flows).view(-1, 3).tolist()
        scores: list[float] = []
        for k, (left, boundary, right) in zip(seams, magnitudes):
            score, parts = seam_score(
                left, boundary, right, abs_tol=float(p["flow_tolerance_abs"]), rel_tol=float(p["flow_tolerance_rel"])
            )
            items[k].update(status="ok", **parts)
            scores.append(score)
        weights, weight_fallback = resolve_segment_weights(ctx.segment_weights, video.num_segments)
        transitions = transition_weights(weights)
        kept = [transitions[k] for k in seams]
        for k, t in zip(seams, kept):
            items[k]["weight"] = t
        return MetricResult(
            score=weighted_mean(scores, kept), items=items, fallbacks=[weight_fallback] if weight_fallback else [],
            details={"computed_seams": seams, "segment_weights": weights},
        )
