"""subject_consistency (protocol §2.1.1): the consistency formula on DINO ViT-B/16 CLS features."""

from __future__ import annotations

from narrastream.metrics.quality._consistency import ConsistencyMetric


class SubjectConsistency(ConsistencyMetric):
    """Whether the subject looks the same within and across segments (self-supervised DINO features)."""

    name = "subject_consistency"
    backbones = ("dino_vitb16",)
