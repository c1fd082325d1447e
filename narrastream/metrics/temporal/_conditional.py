"""The shared body of conditional_adjacent and conditional_longrange (protocol §2.2.2, §2.2.3).

Both describe each segment by the mean DINO feature of its quartile frames
(:func:`~narrastream.video.samplers.quartile_indices`); here every segment is encoded **once** per
video, all frames in one batched backbone call, and the descriptors are shared by both metrics
through ``ctx.shared``. The official evaluator re-encodes both segments of every kept transition and
the anchor and targets of every entity; the numbers are the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from narrastream.metrics.base import Metric, MetricContext
from narrastream.metrics.functional.conditional import segment_descriptor
from narrastream.video.samplers import quartile_indices

if TYPE_CHECKING:
    from narrastream.video.segments import SegmentedVideo



class ConditionalMetric(Metric):
    """A temporal metric comparing segment descriptors; subclasses name their required parameters."""

    dimension: ClassVar[str] = "temporal"
    backbones: ClassVar[tuple[str, ...]] = ("dino_vitb16",)
    required_params: ClassVar[tuple[str, ...]] = ("backbone",)

    def mapping(self) -> dict[str, float]:
        """The ``affine_power`` constants, as keyword arguments of the formula functions."""
        return {"floor": float(self.params["similarity_floor"]), "ceiling": float(self.params["similarity_ceiling"]),
                "power": float(self.params["similarity_power"])}

    def descriptors(self, video: "SegmentedVideo", ctx: MetricContext) -> tuple[list[torch.Tensor], list[list[int]]]:
        """One descriptor per segment and the in-segment frames behind it, from a single ``embed`` call
        per video (the second conditional metric finds them in ``ctx.shared``)."""
        key = ("conditional_descriptors", self.params["backbone"], id(video))
        if key not in ctx.shared:
            ctx.shared[key] = self._encode(video, ctx)
        return ctx.shared[key]

    def _encode(self, video: "SegmentedVideo", ctx: MetricContext) -> tuple[list[torch.Tensor], list[list[int]]]:
        indices = [quartile_indices(n) for n in video.segment_lengths]
        sampled = [video.frames_at(k, idx) for k, idx in enumerate(indices) if idx]
        embedder = ctx.backbones.get(self.params["backbone"])
        if sampled:
            features = embedder.embed(np.concatenate(sampled), batch_size=self.batch_size)
        else:
            features = torch.empty(0, embedder.dim)
        per_segment = features.split([len(idx) for idx in indices])
        return [segment_descriptor(f) for f in per_segment], indices
