"""The metric interface: ``Metric.compute(SegmentedVideo, MetricContext) -> MetricResult``.

A metric holds only its protocol constants (from ``eval_configs/protocol/``); models arrive through
``ctx.backbones`` (loaded once per process), and narrative annotations through ``ctx``. Formulas live
as pure functions in ``narrastream/metrics/functional/`` so they can be tested on hand-made numbers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Mapping, Sequence

from narrastream.registry import Registry

if TYPE_CHECKING:  # keep this module importable without torch
    from narrastream.data.script import Script
    from narrastream.judges import JudgeSet
    from narrastream.metrics.backbones.provider import BackboneProvider
    from narrastream.protocol.annotations import ScriptAnnotations
    from narrastream.video.segments import SegmentedVideo

Status = Literal["ok", "fallback", "failed", "skipped"]
STATUSES: tuple[str, ...] = ("ok", "fallback", "failed", "skipped")

#: ``details["fallback_cause"]`` of a result that fell back because something FAILED (a judge request,
#: a live annotation question), not by a rule of the protocol. Such a record heals: the next run computes
#: it again, as it does a ``failed`` one. Rule fallbacks (uniform weights without annotations, one frame
#: per segment, ...) carry no cause and stay done: computing them again gives the same result.
FALLBACK_CAUSE = "fallback_cause"
JUDGE_FAILED = "judge_failed"
ANNOTATIONS_FAILED = "annotations_failed"
RETRIED_CAUSES: frozenset[str] = frozenset({JUDGE_FAILED, ANNOTATIONS_FAILED})


def needs_retry(status: str, details: Mapping[str, Any] | None) -> bool:
    """Whether a stored result must be computed again by the next run: it failed, or it fell back
    because something failed (``details["fallback_cause"]`` in :data:`RETRIED_CAUSES`).

    >>> needs_retry("fallback", {"fallback_cause": "judge_failed"}), needs_retry("fallback", {})
    (True, False)
    """
    if status == "failed":
        return True
    return status == "fallback" and isinstance(details, Mapping) and details.get(FALLBACK_CAUSE) in RETRIED_CAUSES


@dataclass
class MetricResult:
    """One metric on one video.

    ``score`` is in the metric's range (0..1) or None; ``status`` is ``fallback`` when any part of
    the computation used a fallback (listed in ``fallbacks``), ``failed`` when no score could be
    computed (``reason`` says why). ``items`` are the per-segment or per-transition values. A fallback
    caused by a failure says so in ``details["fallback_cause"]`` (see :func:`needs_retry`).
    """

    score: float | None
    status: Status = "ok"
    reason: str | None = None
    items: list[dict[str, Any]] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")
        if self.status == "ok" and self.fallbacks:
            self.status = "fallback"
        if self.status in ("ok", "fallback") and self.score is None:
            raise ValueError("an ok/fallback result needs a score")

    @classmethod
    def failed(cls, reason: str, **details: Any) -> "MetricResult":
        return cls(score=None, status="failed", reason=reason, details=details)

    @property
    def needs_retry(self) -> bool:
        return needs_retry(self.status, self.details)


@dataclass
class MetricContext:
    """Everything a metric may use besides the video: models, the script, annotations.

    ``annotations`` is None when the script has none; a metric that needs a missing field falls
    back (uniform weights, ...) and lists the fallback in its result.
    """

    script: "Script"
    backbones: "BackboneProvider"
    annotations: "ScriptAnnotations | None" = None
    #: planner segment-importance weights for this script; defaults to the annotations' weights
    segment_weights: Sequence[float] | None = None
    #: the judges (:class:`narrastream.judges.JudgeSet`), None for ``judge=none``
    judges: "JudgeSet | None" = None
    #: how key frames are sent to the judge: ``{"max_side": int | None, "quality": int}``
    judge_images: Mapping[str, Any] | None = None
    #: per-video artefacts shared between metrics (e.g. JPEG key frames), dropped with the context
    shared: dict[Any, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.segment_weights is None and self.annotations is not None:
            self.segment_weights = self.annotations.segment_weights


#: metric parameters that change how fast a score is computed, never the score (beyond float rounding)
SPEED_ONLY_PARAMS: frozenset[str] = frozenset({"batch_size"})


class Metric(ABC):
    """Base class of the protocol metrics.

    Class attributes declare behaviour (torchmetrics style): ``dimension``, ``higher_is_better``,
    ``score_range``, the ``backbones`` it needs, and ``version``, which changes whenever the way
    the score is computed changes (it is stored in every record).
    """

    name: ClassVar[str] = ""
    dimension: ClassVar[str] = ""
    version: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    score_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    backbones: ClassVar[tuple[str, ...]] = ()
    #: protocol constants the metric cannot run without (checked at construction)
    required_params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **params: Any) -> None:
        missing = [key for key in self.required_params if key not in params]
        if missing:
            raise ValueError(f"{self.name}: missing protocol parameters {missing} (see eval_configs/protocol/)")
        self.params = dict(params)

    @abstractmethod
    def compute(self, video: "SegmentedVideo", ctx: MetricContext) -> MetricResult:
        """Score one segmented video."""

    def identity(self) -> dict[str, Any]:
        """What the score depends on (part of every cache key): settings that only change the speed
        (:data:`SPEED_ONLY_PARAMS`) are left out."""
        params = {k: v for k, v in self.params.items() if k not in SPEED_ONLY_PARAMS}
        return {"name": self.name, "version": self.version, "params": params}

    @property
    def batch_size(self) -> int | None:
        """A ``batch_size`` parameter of this metric (overrides ``backbones.batch_size``), else None: the
        backbone's configured batch size."""
        value = self.params.get("batch_size")
        return None if value is None else int(value)


METRICS: Registry[Metric] = Registry("metric", Metric, entry_point_group="narrastream.metrics")
METRICS.add("narrastream.metrics.quality.subject_consistency:SubjectConsistency", "subject_consistency")
METRICS.add("narrastream.metrics.quality.background_consistency:BackgroundConsistency", "background_consistency")
METRICS.add("narrastream.metrics.quality.temporal_flickering:TemporalFlickering", "temporal_flickering")
METRICS.add("narrastream.metrics.quality.motion_smoothness:MotionSmoothness", "motion_smoothness")
METRICS.add("narrastream.metrics.quality.vtss:Vtss", "vtss")
METRICS.add("narrastream.metrics.temporal.boundary_smoothness:BoundarySmoothness", "boundary_smoothness")
METRICS.add("narrastream.metrics.temporal.conditional_adjacent:ConditionalAdjacent", "conditional_adjacent")
METRICS.add("narrastream.metrics.temporal.conditional_longrange:ConditionalLongrange", "conditional_longrange")
METRICS.add("narrastream.metrics.instruction.dynamic_trajectory:DynamicTrajectory", "dynamic_trajectory")
METRICS.add("narrastream.metrics.instruction.entity_grounding:EntityGrounding", "entity_grounding")
METRICS.add("narrastream.metrics.instruction.vlm_score:VlmScore", "vlm_score")


def build_metric(name: str, params: Mapping[str, Any] | None = None) -> Metric:
    return METRICS.get(name)(**dict(params or {}))
