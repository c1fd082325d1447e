"""conditional_longrange (protocol §2.2.3): does each entity look the same wherever the script shows it?

Per entity listed in two or more segments: the **first listed** segment is the anchor (the list is
neither sorted nor deduplicated: a duplicate index is one more target), ``raw = cos(d_anchor, d_j)`` of
the segment descriptors for every other listed segment ``j``, ``mapped = clip((raw - 0.58) / 0.42, 0,
1)^1.5``; the entity score is their weighted mean with the planner target weights shrunk toward
uniform (``0.7 w + 0.3 / k``), or the ``reverse_weighted`` mean without planner weights. The sample
score pools the entities with coverage weights shrunk by ``sample_weight_alpha = 0``: a plain mean
(:func:`narrastream.metrics.functional.conditional.longrange_score`).

Annotations (the official evaluator asks an MLLM for the entity groups; here they come from
``ctx.annotations.entity_groups``):

* **no entity groups**: the official fallback ``{"main_subject": all segments}``, recorded as
  ``entity_groups: main_subject = all segments (...)``; also when the groups are empty or no index
  of any entity lies in the video (the official normalisation ends the same way);
* **indices outside [0, N)** are dropped (the official normalisation keeps only those in range),
  each entity's drop recorded as a fallback; an entity left without indices disappears;
* **no entity with 2 or more indices**: status ``skipped``, score None (the official evaluator
  scores None and leaves the sample out);
* **no planner weights** (or the wrong number): targets are pooled ``reverse_weighted`` (later
  listed targets weigh more), recorded per entity next to the usual ``segment_weights`` reason.

Every segment is encoded once, all frames in one batched call (the official code re-encodes the
anchor and every target for every entity; same numbers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

from narrastream.metrics.base import MetricContext, MetricResult
from narrastream.metrics.functional.conditional import longrange_score
from narrastream.metrics.temporal._conditional import ConditionalMetric
from narrastream.protocol.pooling import resolve_segment_weights

if TYPE_CHECKING:
    from narrastream.video.segments import SegmentedVideo

MAIN_SUBJECT = "main_subject"


def normalise_entity_groups(
    groups: Mapping[str, Sequence[int]] | None, n: int
) -> tuple[dict[str, list[int]], list[str]]:
    """The entity groups the formula uses for ``n`` segments, and the fallbacks that took part.

    Order and duplicates are kept; indices outside ``[0, n)`` are dropped; entities left empty
    disappear; when nothing is left, or there are no groups, one ``main_subject`` covers every segment.

    >>> normalise_entity_groups({"cup": [3, 0, 9, 0]}, 4)
    ({'cup': [3, 0, 0]}, ['entity cup: segment indices [9] outside 0..3 dropped'])
    >>> normalise_entity_groups(None, 3)
    ({'main_subject': [0, 1, 2]}, ['entity_groups: main_subject = all segments (no annotations)'])
    """
    everything = {MAIN_SUBJECT: list(range(n))}
    if groups is None:
        return everything, ["entity_groups: main_subject = all segments (no annotations)"]
    kept: dict[str, list[int]] = {}
    fallbacks: list[str] = []
    for entity, indices in groups.items():
        inside = [int(i) for i in indices if 0 <= int(i) < n]
        outside = [int(i) for i in indices if not 0 <= int(i) < n]
        if outside:
            fallbacks.append(f"entity {entity}: segment indices {outside} outside 0..{n - 1} dropped")
        if inside:
            kept[str(entity)] = inside
    if not kept:
        why = "no entity groups" if not groups else "no entity index inside the video"
        return everything, fallbacks + [f"entity_groups: main_subject = all segments ({why})"]
    return kept, fallbacks


class ConditionalLongrange(ConditionalMetric):
    """Similarity of each entity's later segments to the first segment that shows it."""

    name = "conditional_longrange"
    version = "v4_affine_power_weightshrink_raw"
    required_params = ("backbone", "similarity_floor", "similarity_ceiling", "similarity_power", "target_weight_alpha",
                       "sample_weight_alpha")

    def compute(self, video: "SegmentedVideo", ctx: MetricContext) -> MetricResult:
        n = video.num_segments
        raw_groups = ctx.annotations.entity_groups if ctx.annotations is not None else None
        groups, fallbacks = normalise_entity_groups(raw_groups, n)
        if not any(len(indices) >= 2 for indices in groups.values()):
            return MetricResult(
                score=None, status="skipped", fallbacks=fallbacks, details={"entity_groups": groups},
                reason="no entity appears in 2 or more segments (the official evaluator scores None and leaves "
                       "the sample out)")
        weights, weight_fallback = resolve_segment_weights(ctx.segment_weights, n)
        if weight_fallback:
            fallbacks.append(weight_fallback)
        descriptors, frames = self.descriptors(video, ctx)
        score, items, formula_fallbacks = longrange_score(
            descriptors, groups, None if weight_fallback else weights, **self.mapping(),
            target_weight_alpha=float(self.params["target_weight_alpha"]),
            sample_weight_alpha=float(self.params["sample_weight_alpha"]),
        )
        assert score is not None  # at least one entity qualifies
        return MetricResult(score=score, items=items, fallbacks=fallbacks + formula_fallbacks,
                            details={"entity_groups": groups,
                                     "segment_weights": None if weight_fallback else weights, "frames": frames})
