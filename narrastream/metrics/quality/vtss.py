"""vtss (protocol §2.1.5): the Koala-36M Training Suitability Assessment score, pooled over segments.

Per segment (``N_f`` frames): the FAST-VQA temporal fragments
(:func:`~narrastream.video.samplers.fragment_indices`: ``num_clips`` clips of ``clip_len`` frames at
stride ``interval``, clip k starting at ``N_f // num_clips * k``, indices modulo ``N_f``) are cut
into a ``grid x grid`` mosaic of ``patch x patch`` patches per clip
(:func:`~narrastream.metrics.functional.vtss.assemble_fragments`, offsets from a generator seeded
with ``fragment_seed + segment``), normalised, and scored by the VTSS network
(:class:`~narrastream.metrics.backbones.vtss.QualityScorer`); the segment's raw score is the mean of
the quality map over its clips.

Deviations from the reference, both for determinism: the spatial offsets are seeded (the reference
uses the unseeded global ``torch.randint``), and the temporal fragments never get the reference's
random start offset (drawn only when ``N_f / num_clips > clip_len * interval``, i.e. ``N_f >= 260``
with the defaults; 160-frame segments are unaffected).

Per sample: any segment that fails (an exception while sampling or scoring, an empty segment) makes
the sample fail, with the reason recorded. Otherwise the **raw** scores are pooled as the official
``llm_prompt_weighted_mean`` (planner weights when there is one per segment, else the plain mean,
recorded by :func:`~narrastream.protocol.pooling.resolve_segment_weights`) and only then mapped with
``anchored_linear`` (``anchor_low`` 0.02, ``anchor_high`` 0.075). Mapping after pooling differs from
pooling mapped scores because of the clip.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from narrastream.metrics.base import Metric, MetricContext, MetricResult
from narrastream.metrics.functional.vtss import anchored_linear, assemble_fragments, segment_generator
from narrastream.protocol.pooling import resolve_segment_weights, weighted_mean
from narrastream.video.samplers import fragment_indices

if TYPE_CHECKING:
    from narrastream.video.segments import SegmentedVideo

REQUIRED_PARAMS: tuple[str, ...] = (
    "backbone", "anchor_low", "anchor_high", "clip_len", "num_clips", "frame_interval",
    "fragments_grid", "fragment_size", "fragment_seed",
)


class Vtss(Metric):
    """How suitable each segment is as training data, by the Koala-36M VTSS model; raw scores pooled, then mapped."""

    name = "vtss"
    dimension: ClassVar[str] = "quality"
    version: ClassVar[str] = "v1_koala_tsa_frag7x32_seeded_pool_raw_then_linear"
    backbones = ("vtss_koala",)
    required_params: ClassVar[tuple[str, ...]] = REQUIRED_PARAMS

    def compute(self, video: "SegmentedVideo", ctx: MetricContext) -> MetricResult:
        p = self.params
        low, high = float(p["anchor_low"]), float(p["anchor_high"])
        clip_len, num_clips, interval = int(p["clip_len"]), int(p["num_clips"]), int(p["frame_interval"])
        grid, patch, seed = int(p["fragments_grid"]), int(p["fragment_size"]), int(p["fragment_seed"])
        batch_size = self.batch_size
        if video.num_segments == 0:
            return MetricResult.failed("the video has no segment")
        scorer = None
        items: list[dict[str, Any]] = []
        raws: list[float] = []
        failures: list[str] = []
        for k, n in enumerate(video.segment_lengths):
            item: dict[str, Any] = {"segment": k, "num_frames": n}
            items.append(item)
            if scorer is None and n > 0:  # a missing checkpoint is a setup error: it raises, it does not fail the sample
                scorer = ctx.backbones.get(p["backbone"])
            try:
                if n <= 0:
                    raise ValueError("empty segment")
                indices = fragment_indices(n, clip_len=clip_len, num_clips=num_clips, interval=interval)
                frames = video.segment(k)[np.asarray(indices).reshape(-1)]
                fragments = assemble_fragments(frames, segment_generator(seed, k), grid=grid, patch=patch, aligned=clip_len)
                size = grid * patch
                raw = scorer.score(fragments.reshape(num_clips, clip_len, size, size, 3), batch_size=batch_size)
                if not np.isfinite(raw):
                    raise ValueError(f"non-finite raw score {raw}")
            except Exception as e:  # the official evaluator turns any inference error into None
                reason = f"segment {k}: {type(e).__name__}: {e}"
                item.update(status="failed", reason=reason)
                failures.append(reason)
                continue
            item.update(status="ok", raw=raw, first_frames=[c[0] for c in indices])
            raws.append(raw)
        if failures:
            return MetricResult(score=None, status="failed", reason="; ".join(failures), items=items,
                                details={"anchors": [low, high], "fragment_seed": seed})
        weights, weight_fallback = resolve_segment_weights(ctx.segment_weights, len(raws))
        for item, w in zip(items, weights):
            item["weight"] = w
        pooled = weighted_mean(raws, weights)
        return MetricResult(
            score=anchored_linear(pooled, low, high), items=items,
            fallbacks=[weight_fallback] if weight_fallback else [],
            details={"raw_pooled": pooled, "anchors": [low, high], "segment_weights": weights, "fragment_seed": seed},
        )
