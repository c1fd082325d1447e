"""dynamic_trajectory (protocol §2.3.2): does the video change where the script changes, and hold still where it does not?

Every segment is embedded by LanguageBind_Video_FT (:mod:`narrastream.metrics.backbones.languagebind`):
its video from 8 frames ``linspace_indices(n, 8)`` (the official decord indices, truncation), its
prompt as text (77 tokens, truncated). For each transition ``i -> i+1`` (over ``min(#segments,
#prompts)`` items, as the official), with ``text_change`` / ``video_change`` the cosine distances,
``gate = sigmoid((text_change - 0.25) / 0.05)``, ``response = 1 - exp(-video_change / 0.02)``,
``stability = exp(-video_change / 0.06)`` and ``score = gate response + (1 - gate) stability``
(:mod:`narrastream.metrics.functional.trajectory`). The sample score pools the transitions with the
transition weights ``w_i + w_i+1`` of the planner segment weights.

Fallbacks, always recorded:

* planner weights missing or not one per segment: uniform transition weights (the official rule);
* segments and prompts differ in number: only the first ``min`` are used (the official rule); the
  planner weights still apply when every prompt has its segment (more segments than prompts), and
  are uniform otherwise (the official rule: they apply only with one transition per prompt pair).

A video with a single segment (or a single prompt) has no transition: status ``skipped``, score
None (the official evaluator scores None and leaves the sample out).

Differences from the official evaluator, by decision: no random horizontal flip before the video
tower (the official transform flips with p = 0.5 at inference, a nondeterminism bug); frames come
from the decoded video, not from an ``mp4v`` re-encode of each segment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from narrastream.metrics.base import Metric, MetricContext, MetricResult
from narrastream.metrics.functional.trajectory import trajectory_score, trajectory_transitions
from narrastream.protocol.pooling import resolve_segment_weights, transition_weights
from narrastream.video.samplers import linspace_indices

if TYPE_CHECKING:
    from narrastream.video.segments import SegmentedVideo

REQUIRED_PARAMS: tuple[str, ...] = ("backbone", "num_frames", "center", "temp", "tau_on", "tau_off")


class DynamicTrajectory(Metric):
    """Selectivity of visual change: respond to prompt changes, stay stable otherwise (LanguageBind)."""

    name = "dynamic_trajectory"
    dimension: ClassVar[str] = "instruction"
    #: the official cache_version; ``_r2``: text cleaned as the official tokenizer (ftfy) before BPE
    version: ClassVar[str] = "v1_transition_selectivity_noflip_r2"
    backbones = ("languagebind_video",)
    required_params: ClassVar[tuple[str, ...]] = REQUIRED_PARAMS

    def compute(self, video: "SegmentedVideo", ctx: MetricContext) -> MetricResult:
        p = self.params
        prompts = list(ctx.script.prompts)
        n = min(video.num_segments, len(prompts))
        if n < 2:
            return MetricResult(score=None, status="skipped",
                                reason=f"no transition ({video.num_segments} segments, {len(prompts)} prompts)")
        fallbacks: list[str] = []
        num_frames = int(p["num_frames"])
        frames = [linspace_indices(video.segment_lengths[k], num_frames) for k in range(n)]
        clips = np.stack([video.frames_at(k, frames[k]) for k in range(n)])
        encoder = ctx.backbones.get(p["backbone"])
        batch_size = self.batch_size
        video_embeddings = encoder.encode_videos(clips, batch_size=batch_size)
        text_embeddings = encoder.encode_texts(prompts[:n])

        records = trajectory_transitions(
            text_embeddings, video_embeddings,
            center=float(p["center"]), temp=float(p["temp"]), tau_on=float(p["tau_on"]), tau_off=float(p["tau_off"]),
        )
        if n != video.num_segments or n != len(prompts):
            fallbacks.append(f"segments: {video.num_segments} segments for {len(prompts)} prompts; the first {n} used")
        if n == len(prompts):  # the official rule: planner weights apply when there is one transition per prompt pair
            weights, weight_fallback = resolve_segment_weights(ctx.segment_weights, n)
            if weight_fallback:
                fallbacks.append(weight_fallback)
        else:
            weights = [1.0 / n] * n
            fallbacks.append(f"segment_weights: uniform ({len(prompts)} prompts but only {n} segments)")
        transitions = transition_weights(weights)
        items: list[dict[str, Any]] = []
        for record, weight in zip(records, transitions):
            items.append({**record, "weight": weight, "frames_left": frames[record["transition"]],
                          "frames_right": frames[record["transition"] + 1]})
        score = trajectory_score([r["score"] for r in records], transitions)
        assert score is not None  # n >= 2
        return MetricResult(
            score=score, items=items, fallbacks=fallbacks,
            details={
                "segment_weights": weights,
                "frames": frames,
                "mean_gate": trajectory_score([r["gate"] for r in records], transitions),
                "mean_response": trajectory_score([r["response"] for r in records], transitions),
                "mean_stability": trajectory_score([r["stability"] for r in records], transitions),
            },
        )
