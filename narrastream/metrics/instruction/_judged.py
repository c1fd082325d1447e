"""Common ground of the judge metrics: key frames as JPEG once per video, the judge from the context,
and the honest failure rule.

A judge metric runs in two phases so that requests for many videos can be in flight at once while
the next video decodes: :meth:`JudgedMetric.prepare` (main thread: picks the key frames and encodes
them, cheap, keeps no decoded video) and :meth:`JudgedMetric.finish` (any thread: asks the judge).

A request that fails (unreachable judge, or no valid answer after the re-asks) makes the metric
``failed`` with the reason, never a made-up score. ``fallback_score`` (off by default) reproduces
the official behaviour, which scores such requests 0.5: the result then says ``fallback``.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from narrastream.judges.base import ImagePart
from narrastream.judges.images import encode_jpeg
from narrastream.metrics.base import Metric, MetricContext, MetricResult
from narrastream.video.samplers import uniform_indices

if TYPE_CHECKING:
    from narrastream.video.segments import SegmentedVideo


def key_frames(video: "SegmentedVideo", ctx: MetricContext, *, per_segment: int) -> list[list[ImagePart]]:
    """``per_segment`` frames of each segment, ``round(i (n-1)/(k-1))`` (the official VLM indices), as JPEGs.

    Encoded once per video and shared by both judge metrics through ``ctx.shared``.
    """
    image = ctx.judge_images or {}
    key = ("key_frames", per_segment, image.get("max_side"), image.get("quality", 95))
    if key not in ctx.shared:
        ctx.shared[key] = [
            [encode_jpeg(frame, quality=int(image.get("quality", 95)), max_side=image.get("max_side"))
             for frame in video.frames_at(k, uniform_indices(video.segment_lengths[k], per_segment))]
            for k in range(video.num_segments)
        ]
    return ctx.shared[key]


class JudgedMetric(Metric):
    """Base of metrics scored by a judge (``ctx.judges``)."""

    uses_judge: ClassVar[bool] = True

    def compute(self, video: "SegmentedVideo", ctx: MetricContext) -> MetricResult:
        prepared = self.prepare(video, ctx)
        return prepared if isinstance(prepared, MetricResult) else self.finish(prepared, ctx)

    def prepare(self, video: "SegmentedVideo", ctx: MetricContext) -> Any:
        """Everything the judge needs, without the decoded video; or a final result (skipped/failed)."""
        if ctx.judges is None:
            return MetricResult(score=None, status="skipped",
                                reason="no judge configured (judge=none); choose one, e.g. judge=siliconflow")
        return self._prepare(video, ctx)

    @abstractmethod
    def _prepare(self, video: "SegmentedVideo", ctx: MetricContext) -> Any: ...

    @abstractmethod
    def finish(self, prepared: Any, ctx: MetricContext) -> MetricResult:
        """Ask the judge (thread-safe: may run in a worker thread)."""

    def fallback_score(self) -> float | None:
        value = self.params.get("fallback_score")
        return None if value is None else float(value)
