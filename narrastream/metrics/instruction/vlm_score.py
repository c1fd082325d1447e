"""vlm_score (protocol §2.3.3): one VLM verdict per video on how each segment carried out its prompt.

One request per video: every prompt (numbered from 1) and, per segment, 5 key frames
``round(i (n-1)/4)`` in temporal order. The answer ``{"segment_scores": [N], "overall_score": x}``
on 1..100 is divided by 100 and clipped; ``score = (0.8 x planner-weighted mean(segment scores)
+ 0.2 x overall) / (0.8 + 0.2)`` (uniform weights, recorded, without planner weights; the division by
the weight sum is the official rule and matters only when the weights do not add up to 1).

Departures from the official evaluator, by decision (docs/protocol.md): a failed request (judge
unreachable, or no valid answer after the re-asks; there is no "legacy" bare-number parse) makes
the metric ``failed`` instead of scoring 0.5; ``fallback_score: 0.5`` restores the official
behaviour, marked ``fallback`` with ``details.fallback_cause = "judge_failed"``: the next run asks again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from narrastream.judges.base import JudgeError
from narrastream.metrics.base import FALLBACK_CAUSE, JUDGE_FAILED, MetricContext, MetricResult
from narrastream.metrics.functional.judged import unit_interval, vlm_score
from narrastream.metrics.instruction._judged import JudgedMetric, key_frames
from narrastream.protocol.pooling import resolve_segment_weights
from narrastream.protocol.questions import TEMPLATES, ask_vlm_score

if TYPE_CHECKING:
    from narrastream.video.segments import SegmentedVideo


class VlmScore(JudgedMetric):
    """Per-segment prompt execution plus an overall narrative verdict, from one VLM request."""

    name = "vlm_score"
    dimension: ClassVar[str] = "instruction"
    #: ``v2``: the two components are divided by their weight sum, as the official
    version: ClassVar[str] = f"v2_{TEMPLATES['vlm_score'].replace('/', '_')}"
    required_params: ClassVar[tuple[str, ...]] = ("frames_per_segment", "segment_weight", "overall_weight")

    def _prepare(self, video: "SegmentedVideo", ctx: MetricContext) -> Any:
        prompts = list(ctx.script.prompts)
        if video.num_segments != len(prompts):
            return MetricResult.failed(f"{video.num_segments} segments for {len(prompts)} prompts")
        return {"prompts": prompts, "frames": key_frames(video, ctx, per_segment=int(self.params["frames_per_segment"]))}

    def finish(self, prepared: Any, ctx: MetricContext) -> MetricResult:
        prompts = prepared["prompts"]
        try:
            answer = ask_vlm_score(ctx.judges.vlm, prompts, prepared["frames"])
        except JudgeError as exc:
            fallback = self.fallback_score()
            if fallback is None:
                return MetricResult.failed(exc.reason)
            return MetricResult(score=fallback, fallbacks=[f"judge failed ({exc.reason}): fallback_score {fallback}"],
                                details={FALLBACK_CAUSE: JUDGE_FAILED})
        segments = [unit_interval(v, "percent") for v in answer.segment_scores]
        overall = unit_interval(answer.overall_score, "percent")
        weights, weight_fallback = resolve_segment_weights(ctx.segment_weights, len(prompts))
        score = vlm_score(segments, overall, weights, float(self.params["segment_weight"]),
                          float(self.params["overall_weight"]))
        items = [{"segment": k, "score": s, "weight": w} for k, (s, w) in enumerate(zip(segments, weights))]
        return MetricResult(score=score, items=items, fallbacks=[weight_fallback] if weight_fallback else [],
                            details={"overall": overall})
