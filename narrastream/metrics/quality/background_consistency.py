"""background_consistency (protocol §2.1.2): the consistency formula on CLIP ViT-B/32 image features."""

from __future__ import annotations

from narrastream.metrics.quality._consistency import ConsistencyMetric


class BackgroundConsistency(ConsistencyMetric):
    """Whether the scene looks the same within and across segments (whole-image CLIP features)."""

    name = "background_consistency"
    backbones = ("clip_vitb32",)
