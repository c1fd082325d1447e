"""conditional_adjacent (protocol §2.2.2): do segments the script says should look continuous look alike?

For every adjacent pair marked continuous, ``raw = cos(d_i, d_i+1)`` of the segment descriptors (mean
DINO ViT-B/16 feature of the quartile frames, not renormalised), ``mapped = clip((raw - 0.79) / 0.21,
0, 1)^2``, pooled with the transition weights ``w_i + w_i+1`` over the kept transitions
(:func:`narrastream.metrics.functional.conditional.adjacent_score`).

Annotations (the official evaluator asks an MLLM for the continuity flags; here they come from
``ctx.annotations.continuity``):

* **no continuity flags** (no annotations, or the field is missing): every transition is kept and
  the result records the fallback ``continuity: all transitions kept (no annotations)``. The
  official evaluator cannot run without its MLLM (the run aborts); keeping every transition is the
  script-agnostic reading of the metric (plain adjacent-segment similarity), and it is never silent;
* **every flag false**: status ``skipped``, score None, with the reason: the official evaluator
  returns None for such a sample and leaves it out of the dataset mean; so do the aggregates here;
* **a flag count other than N-1**: status ``failed`` (the official evaluator raises and aborts the
  run);
* a single segment has no transition: ``skipped``.

Planner weights missing or of the wrong length: uniform weights (every kept transition weighs the
same, the official ``mean`` fallback), recorded as for the consistency metrics.

Every segment is encoded once, all frames in one batched call (the official code re-encodes both
segments of every kept transition; same numbers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from narrastream.metrics.base import MetricContext, MetricResult
from narrastream.metrics.functional.conditional import adjacent_score
from narrastream.metrics.temporal._conditional import ConditionalMetric
from narrastream.protocol.pooling import resolve_segment_weights

if TYPE_CHECKING:
    from narrastream.video.segments import SegmentedVideo

NO_FLAGS_FALLBACK = "continuity: all transitions kept (no annotations)"


class ConditionalAdjacent(ConditionalMetric):
    """Similarity of adjacent segments whose prompts call for visual continuity."""

    name = "conditional_adjacent"
    version = "v3_affine_power_raw"
    required_params = ("backbone", "similarity_floor", "similarity_ceiling", "similarity_power")

    def compute(self, video: "SegmentedVideo", ctx: MetricContext) -> MetricResult:
        n = video.num_segments
        if n < 2:
            return MetricResult(score=None, status="skipped", reason="a single segment has no transition to compare")
        fallbacks: list[str] = []
        flags = ctx.annotations.continuity if ctx.annotations is not None else None
        if flags is None:
            flags = (True,) * (n - 1)
            fallbacks.append(NO_FLAGS_FALLBACK)
        elif len(flags) != n - 1:
            return MetricResult.failed(f"{len(flags)} continuity flags for {n - 1} transitions", continuity=list(flags))
        elif not any(flags):
            return MetricResult(
                score=None, status="skipped", details={"continuity": list(flags)},
                reason="continuity: no transition is marked continuous (the official evaluator scores None "
                       "and leaves the sample out)")
        weights, weight_fallback = resolve_segment_weights(ctx.segment_weights, n)
        if weight_fallback:
            fallbacks.append(weight_fallback)
        descriptors, frames = self.descriptors(video, ctx)
        score, items, formula_fallbacks = adjacent_score(descriptors, list(flags), weights, **self.mapping())
        assert score is not None  # at least one flag is true
        return MetricResult(score=score, items=items, fallbacks=fallbacks + formula_fallbacks,
                            details={"continuity": list(flags), "segment_weights": weights, "frames": frames})
