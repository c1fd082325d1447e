"""motion_smoothness (protocol §2.1.4): how well AMT-S predicts the odd frames from the even ones, per segment.

Per segment (all frames, native resolution): the even frames 0, 2, 4, ... are interpolated pairwise
at ``embt = 0.5`` (AMT-S, :class:`~narrastream.metrics.backbones.amt.Interpolator`: /255, replicate
padding to a multiple of 16, fixed ``scale = 1``, truncating cast back to uint8); each prediction is
compared with the real odd frame between the pair, giving 79 frames for a 160-frame segment (the
last odd frame has no right neighbour). The segment's raw error is the mean over those frames of
the mean absolute pixel difference (0-255), its score ``exp(-raw / tau)`` with ``tau = 3.0`` from
the protocol YAML (the official code's default, 3.5, is not what it runs with)
(:mod:`narrastream.metrics.functional.motion`). The interpolations of all segments go through AMT in one
call (batched by ``backbones.batch_size``); on a GPU the frames are gathered there and each frame's error
is summed there (exact integers), so one number per frame comes back to the host.

A segment with at most one even frame (fewer than 3 frames, e.g. the 1-frame tail of a 961-frame
video) has nothing to interpolate: as in the official code it is **kept** with raw 0 and score 1.0,
and -- since that is a convention, not a measurement -- recorded as a fallback. No segment is ever
omitted, so the scores are pooled as the official ``llm_prompt_weighted_mean``: planner weights when
there is one per segment, else the plain mean (recorded by
:func:`~narrastream.protocol.pooling.resolve_segment_weights`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from narrastream.metrics.base import Metric, MetricContext, MetricResult
from narrastream.metrics.functional.motion import even_frame_count, motion_score, segment_raw_error
from narrastream.protocol.pooling import resolve_segment_weights, weighted_mean
from narrastream.video.samplers import interpolation_triplets

if TYPE_CHECKING:
    from narrastream.video.segments import SegmentedVideo

REQUIRED_PARAMS: tuple[str, ...] = ("backbone", "tau")
#: the time of the predicted frame between two even frames
EMBT = 0.5


class MotionSmoothness(Metric):
    """Whether the odd frames of each segment are what a frame interpolator (AMT-S) predicts from the even ones."""

    name = "motion_smoothness"
    dimension: ClassVar[str] = "quality"
    version: ClassVar[str] = "v1_amts_even_odd_mae_exp"
    backbones = ("amt_s",)
    required_params: ClassVar[tuple[str, ...]] = REQUIRED_PARAMS

    def compute(self, video: "SegmentedVideo", ctx: MetricContext) -> MetricResult:
        p = self.params
        tau = float(p["tau"])
        counts = [len(interpolation_triplets(n)) for n in video.segment_lengths]
        # every interpolation of every segment in one call: even frames 0..2K of a segment, odd targets 1..2K-1
        firsts, seconds, targets = ([np.empty(0, np.int64)] for _ in range(3))
        for k, count in enumerate(counts):
            if count:
                firsts.append(video.positions(k, range(0, 2 * count, 2)))
                seconds.append(video.positions(k, range(2, 2 * count + 1, 2)))
                targets.append(video.positions(k, range(1, 2 * count, 2)))
        all_errors: list[float] = []
        if sum(counts):
            interpolator = ctx.backbones.get(p["backbone"])
            device = getattr(interpolator, "device", None)
            all_errors = interpolator.frame_errors(
                *(video.take(np.concatenate(x), device) for x in (firsts, seconds, targets)),
                embt=EMBT, batch_size=self.batch_size,
            )
        items: list[dict[str, Any]] = []
        fallbacks: list[str] = []
        scores: list[float] = []
        offset = 0
        for k, (n, count) in enumerate(zip(video.segment_lengths, counts)):
            item: dict[str, Any] = {"segment": k, "num_frames": n, "interpolations": count}
            items.append(item)
            if not count:
                raw = segment_raw_error([])
                fallbacks.append(
                    f"segment {k}: {n} frame(s), {even_frame_count(n)} even frame(s): nothing to interpolate, "
                    f"raw 0 / score 1.0 (the official convention)"
                )
                item.update(status="fallback", raw_error=raw, score=motion_score(raw, tau), frame_errors=[])
                scores.append(item["score"])
                continue
            errors = all_errors[offset:offset + count]
            offset += count
            raw = segment_raw_error(errors)
            item.update(status="ok", raw_error=raw, score=motion_score(raw, tau), frame_errors=errors)
            scores.append(item["score"])
        if not scores:
            return MetricResult.failed("the video has no segment")
        weights, weight_fallback = resolve_segment_weights(ctx.segment_weights, len(scores))
        if weight_fallback:
            fallbacks.insert(0, weight_fallback)
        for item, w in zip(items, weights):
            item["weight"] = w
        return MetricResult(
            score=weighted_mean(scores, weights), items=items, fallbacks=fallbacks,
            details={"segment_weights": weights, "tau": tau, "embt": EMBT},
        )
