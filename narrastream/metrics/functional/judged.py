"""Score arithmetic of the two judge metrics (protocol §2.3.1 and §2.3.3), as pure functions."""

from __future__ import annotations

from typing import Sequence

from narrastream.protocol.pooling import weighted_mean


def unit_interval(value: float, rule: str = "official") -> float:
    """A judge's 0..100 answer on the unit interval.

    ``official`` (entity_grounding's rule): a value already in [0, 1] is kept as is (so an answer
    of 1 on the 0..100 scale counts as 100 %: the official quirk), anything else is divided by 100;
    ``percent`` (vlm_score's rule): always divided by 100. Both clip to [0, 1].

    >>> unit_interval(75), unit_interval(1), unit_interval(0.4), unit_interval(250)
    (0.75, 1.0, 0.4, 1.0)
    >>> unit_interval(1, "percent")
    0.01
    """
    value = float(value)
    if rule == "official" and 0.0 <= value <= 1.0:
        return value
    if rule not in ("official", "percent"):
        raise ValueError(f"unknown normalisation rule {rule!r}")
    return min(1.0, max(0.0, value / 100.0))


def grounding_segment_score(presence: Sequence[float], attribute_match: Sequence[float],
                            has_attributes: Sequence[bool]) -> float:
    """Mean over entities of ``presence x attribute_match`` (both already on [0, 1]); an entity with
    no attributes counts ``attribute_match = 1`` when present (``presence > 0``), else 0.

    >>> grounding_segment_score([1.0, 0.5], [0.5, 0.0], [True, False])  # (0.5 + 0.5 * 1) / 2
    0.5
    """
    if not presence or not (len(presence) == len(attribute_match) == len(has_attributes)):
        raise ValueError("one presence, attribute_match and has_attributes value per entity is required")
    products = [p * (a if has else (1.0 if p > 0 else 0.0))
                for p, a, has in zip(presence, attribute_match, has_attributes)]
    return sum(products) / len(products)


def vlm_score(segment_scores: Sequence[float], overall: float, weights: Sequence[float],
              segment_weight: float = 0.8, overall_weight: float = 0.2) -> float:
    """The weighted mean of the two components: ``(a x weighted mean(segment scores) + b x overall) / (a + b)``.

    ``a = segment_weight``, ``b = overall_weight``; as in the official code a component whose weight
    is not positive is left out, and the remaining weights are divided by their sum, so the score stays
    on [0, 1] whatever the weights add up to (0.8 / 0.4 with both components at 0.5 gives 0.5).

    >>> round(vlm_score([1.0, 0.5], 0.25, [3, 1]), 6)  # (0.8 * 0.875 + 0.2 * 0.25) / 1.0
    0.75
    >>> round(vlm_score([0.5], 0.5, [1], segment_weight=0.8, overall_weight=0.4), 6)
    0.5
    """
    candidates = [(weighted_mean(segment_scores, weights), float(segment_weight)),
                  (float(overall), float(overall_weight))]
    components = [(value, weight) for value, weight in candidates if weight > 0]
    if not components:
        raise ValueError(f"vlm_score needs a positive segment_weight or overall_weight, got {segment_weight} "
                         f"and {overall_weight}")
    return sum(v * w for v, w in components) / sum(w for _, w in components)
