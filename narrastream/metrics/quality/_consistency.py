"""The shared body of subject and background consistency (protocol §2.1.1 and §2.1.2).

The two metrics run the same formula (``narrastream.metrics.functional.consistency``) on features
from different backbones; subclasses only name themselves. All sampled frames of all segments go
through the backbone in one batched call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from narrastream.metrics.base import Metric, MetricContext, MetricResult
from narrastream.metrics.functional.consistency import consistency_score
from narrastream.protocol.pooling import resolve_segment_weights
from narrastream.video.samplers import positional_indices

if TYPE_CHECKING:
    from narrastream.video.segments import SegmentedVideo

#: keyword arguments of ``consistency_score``, all taken from the protocol config
FORMULA_PARAMS: tuple[str, ...] = (
    "local_weight", "inter_weight", "inter_adjacent_weight", "inter_anchor_weight", "intra_quantile", "inter_quantile",
)
REQUIRED_PARAMS: tuple[str, ...] = ("backbone", "positions", *FORMULA_PARAMS)


class ConsistencyMetric(Metric):
    """Local (within-segment) plus inter-segment feature consistency of positionally sampled frames."""

    dimension: ClassVar[str] = "quality"
    #: the official cache_version; ``_r2``: exact medoid ties, anchor on the first segment with frames
    version: ClassVar[str] = "v2_local_p25_inter_medoid_r2"
    required_params: ClassVar[tuple[str, ...]] = REQUIRED_PARAMS

    def compute(self, video: "SegmentedVideo", ctx: MetricContext) -> MetricResult:
        backbone = self.params["backbone"]
        indices = [positional_indices(n, self.params["positions"]) for n in video.segment_lengths]
        sampled = [video.frames_at(k, idx) for k, idx in enumerate(indices) if idx]
        if not sampled:
            return MetricResult.failed("no frame to sample in any segment")
        features = ctx.backbones.get(backbone).embed(
            np.concatenate(sampled), batch_size=self.batch_size
        )
        per_segment = list(features.split([len(idx) for idx in indices]))
        weights, weight_fallback = resolve_segment_weights(ctx.segment_weights, video.num_segments)
        score, items, fallbacks = consistency_score(
            per_segment, weights, frame_indices=indices, **{key: float(self.params[key]) for key in FORMULA_PARAMS}
        )
        assert score is not None  # at least one segment had frames
        if weight_fallback:
            fallbacks.insert(0, weight_fallback)
        return MetricResult(score=score, items=items, fallbacks=fallbacks)
