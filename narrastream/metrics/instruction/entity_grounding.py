"""entity_grounding (protocol §2.3.1): are the segment's entities visible, with their attributes?

For each segment ``k < min(#prompts, #segments)``: the entities of that segment (from the narrative
annotations: the shipped frozen file, or the live planner), its 5 key frames
``round(i (n-1)/4)``, and one VLM request that sees the frames and the entity JSON only (not the
prompt, as the official). Each answer value goes to [0, 1] by the official rule
(:func:`~narrastream.metrics.functional.judged.unit_interval`); the segment score is the mean over
entities of ``presence x attribute_match`` (an entity without attributes: 1 when present); the
sample score is the planner-weighted mean over segments (uniform, recorded, without weights).

Departures from the official evaluator, by decision (docs/protocol.md): a request that fails makes
the metric ``failed`` instead of scoring 0.5 (``fallback_score: 0.5`` restores that, marked
``fallback`` with ``details.fallback_cause = "judge_failed"``: the next run asks again); a segment
without entities in the annotations scores ``empty_entity_score`` (0.5, the official value) and is
recorded as a fallback (by rule: it stays done); entities missing altogether are a failure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from narrastream.judges.base import JudgeError
from narrastream.metrics.base import FALLBACK_CAUSE, JUDGE_FAILED, MetricContext, MetricResult
from narrastream.metrics.functional.judged import grounding_segment_score, unit_interval
from narrastream.metrics.instruction._judged import JudgedMetric, key_frames
from narrastream.protocol.pooling import resolve_segment_weights, weighted_mean
from narrastream.protocol.questions import TEMPLATES, ask_entity_grounding

if TYPE_CHECKING:
    from narrastream.video.segments import SegmentedVideo


class EntityGrounding(JudgedMetric):
    """Presence x attribute match of each segment's entities, judged by the VLM on 5 key frames."""

    name = "entity_grounding"
    dimension: ClassVar[str] = "instruction"
    version: ClassVar[str] = f"v1_{TEMPLATES['entity_grounding'].replace('/', '_')}"
    required_params: ClassVar[tuple[str, ...]] = ("frames_per_segment", "empty_entity_score", "normalize")

    def _prepare(self, video: "SegmentedVideo", ctx: MetricContext) -> Any:
        n = min(video.num_segments, len(ctx.script.prompts))
        entities = ctx.annotations.segment_entities if ctx.annotations else None
        if entities is None or len(entities) < n:
            reason = ("no segment entities in the narrative annotations of this script" if entities is None
                      else f"segment entities for {len(entities)} segments, {n} needed")
            fallback = self.fallback_score()
            if fallback is None:
                return MetricResult.failed(reason)
            return MetricResult(score=fallback, fallbacks=[f"{reason}: fallback_score {fallback}"])
        frames = key_frames(video, ctx, per_segment=int(self.params["frames_per_segment"]))
        return {"n": n, "entities": [entities[k] for k in range(n)], "frames": frames[:n],
                "segments": video.num_segments}

    def finish(self, prepared: Any, ctx: MetricContext) -> MetricResult:
        n, fallbacks, items, scores = prepared["n"], [], [], []
        details: dict[str, Any] = {}
        empty_score = float(self.params["empty_entity_score"])
        fallback = self.fallback_score()
        for k in range(n):
            entities = prepared["entities"][k]
            if not entities:
                scores.append(empty_score)
                items.append({"segment": k, "score": empty_score, "entities": []})
                fallbacks.append(f"segment {k}: no entities annotated, empty_entity_score {empty_score}")
                continue
            try:
                answer = ask_entity_grounding(ctx.judges.vlm, entities, prepared["frames"][k])
            except JudgeError as exc:
                if fallback is None:
                    return MetricResult.failed(f"segment {k}: {exc.reason}", completed_segments=k)
                scores.append(fallback)
                items.append({"segment": k, "score": fallback, "error": exc.reason})
                fallbacks.append(f"segment {k}: judge failed, fallback_score {fallback}")
                details[FALLBACK_CAUSE] = JUDGE_FAILED  # the next run asks again
                continue
            presence = [unit_interval(r.presence, self.params["normalize"]) for r in answer.entity_results]
            match = [unit_interval(r.attribute_match, self.params["normalize"]) for r in answer.entity_results]
            score = grounding_segment_score(presence, match, [bool(e.attributes) for e in entities])
            scores.append(score)
            items.append({"segment": k, "score": score, "entities": [
                {"name": e.name, "presence": p, "attribute_match": a} for e, p, a in zip(entities, presence, match)]})
        if n != len(ctx.script.prompts):
            fallbacks.append(f"segments: {prepared['segments']} segments for {len(ctx.script.prompts)} prompts; "
                             "planner weights need one score per prompt, plain mean used")
            weights = [1.0] * n
        else:
            weights, weight_fallback = resolve_segment_weights(ctx.segment_weights, n)
            if weight_fallback:
                fallbacks.append(weight_fallback)
        for item, w in zip(items, weights):
            item["weight"] = w
        return MetricResult(score=weighted_mean(scores, weights), items=items, fallbacks=fallbacks, details=details)
