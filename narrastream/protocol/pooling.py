"""Aggregation primitives of the official evaluator (``utils/aggregation.py``), as pure functions.

Every metric pools per-segment or per-transition values with these, so a constant or a tie rule is
written once. All arithmetic is in Python floats (float64); inputs may be any real sequence.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Sequence

#: the official planner weights are integers clamped to this range before normalisation
PLANNER_WEIGHT_RANGE: tuple[int, int] = (1, 100)
#: ``remap_similarity_score`` bounds the exponent below by this value
MIN_POWER: float = 1e-6


def percentile_linear(values: Sequence[float], q: float) -> float:
    r"""The ``q`` quantile by linear interpolation between order statistics (numpy's default).

    With the values sorted as :math:`s_{(0)} \le \dots \le s_{(n-1)}`, position :math:`p = (n-1)q`,
    :math:`i = \lfloor p \rfloor` and :math:`f = p - i`:

    .. math:: P_q = s_{(i)} + f \, (s_{(i+1)} - s_{(i)})

    The official "pXX" reductions use exactly this rule (q = XX / 100).

    Raises:
        ValueError: on an empty sequence or ``q`` outside [0, 1].

    Example:
        >>> percentile_linear([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], 0.25)  # 0.75 s(1) + 0.25 s(2)
        1.25
        >>> percentile_linear([5.0, 1.0, 3.0, 2.0, 4.0], 0.25)  # s(1), the second smallest
        2.0
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    ordered = sorted(float(v) for v in values)
    if not ordered:
        raise ValueError("percentile of an empty sequence")
    position = (len(ordered) - 1) * q
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    fraction = position - lower
    return ordered[lower] + fraction * (ordered[upper] - ordered[lower])


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    r"""Weighted mean :math:`\sum_i s_i w_i / \sum_i w_i`; weights need not be normalised.

    Raises:
        ValueError: when the lengths differ or :math:`\sum_i w_i \le 0` (as the official code does).

    Example:
        >>> weighted_mean([1.0, 0.0], [3, 1])
        0.75
    """
    if len(values) != len(weights):
        raise ValueError(f"weighted_mean: {len(values)} values but {len(weights)} weights")
    total = math.fsum(float(w) for w in weights)
    if not total > 0:
        raise ValueError(f"weighted_mean: the weights sum to {total}, not a positive number")
    return math.fsum(float(v) * float(w) for v, w in zip(values, weights)) / total


def resolve_segment_weights(weights: Sequence[float] | None, n: int) -> tuple[list[float], str | None]:
    r"""Normalised segment weights for ``n`` segments, and the reason when they fell back to uniform.

    The official planner answers integers; each is clamped to [1, 100] and divided by their sum:
    :math:`w_i = \mathrm{clip}(r_i, 1, 100) / \sum_j \mathrm{clip}(r_j, 1, 100)`. Values that are
    not all integers are taken as already-derived weights and only divided by their sum. The weights
    apply only when there is exactly one per segment; otherwise (no annotations, a length mismatch
    such as a 1-frame 7th segment, or unusable values) every segment weighs ``1/n`` and the reason is
    returned, so the caller can record the fallback instead of hiding it.

    Example:
        >>> resolve_segment_weights([49, 150, 0, 50], 4)  # clamped to [49, 100, 1, 50], sum 200
        ([0.245, 0.5, 0.005, 0.25], None)
        >>> resolve_segment_weights(None, 2)
        ([0.5, 0.5], 'segment_weights: uniform (no narrative annotations)')
        >>> resolve_segment_weights([1, 1, 1, 1, 1, 1], 7)[1]
        'segment_weights: uniform (6 weights for 7 segments)'
    """
    if n <= 0:
        return [], None
    uniform = [1.0 / n] * n
    if weights is None:
        return uniform, "segment_weights: uniform (no narrative annotations)"
    if len(weights) != n:
        return uniform, f"segment_weights: uniform ({len(weights)} weights for {n} segments)"
    if any(isinstance(w, bool) or not isinstance(w, Real) or not math.isfinite(w) for w in weights):
        return uniform, f"segment_weights: uniform (non-numeric weights {list(weights)!r})"
    if all(isinstance(w, Integral) for w in weights):
        low, high = PLANNER_WEIGHT_RANGE
        values = [float(min(max(int(w), low), high)) for w in weights]
    else:
        values = [float(w) for w in weights]
    total = math.fsum(values)
    if any(v < 0 for v in values) or not total > 0:
        return uniform, f"segment_weights: uniform (unusable weights {list(weights)!r})"
    return [v / total for v in values], None


def transition_weights(weights: Sequence[float]) -> list[float]:
    r"""Weights of the transitions between consecutive segments: :math:`t_i = w_i + w_{i+1}`.

    A consumer that keeps only some transitions passes the kept :math:`t_i` to :func:`weighted_mean`,
    which renormalises them by their own sum.

    Example:
        >>> transition_weights([0.25, 0.25, 0.5])
        [0.5, 0.75]
    """
    return [float(a) + float(b) for a, b in zip(weights, weights[1:])]


def remap_affine_power(value: float, floor: float, ceiling: float = 1.0, power: float = 1.0) -> float:
    r"""The official ``affine_power`` similarity remap.

    .. math:: x = \mathrm{clip}\!\left(\frac{\mathrm{clip}(v, -1, 1) - \text{floor}}
              {\text{ceiling} - \text{floor}}, 0, 1\right)^{\max(\text{power}, 10^{-6})}

    Raises:
        ValueError: when ``ceiling <= floor``.

    Example:
        >>> remap_affine_power(0.75, floor=0.5)
        0.5
        >>> remap_affine_power(0.75, floor=0.5, power=2.0)
        0.25
        >>> remap_affine_power(0.2, floor=0.5)
        0.0
    """
    if not ceiling > floor:
        raise ValueError(f"remap_affine_power: ceiling ({ceiling}) must exceed floor ({floor})")
    v = min(max(float(value), -1.0), 1.0)
    x = min(max((v - floor) / (ceiling - floor), 0.0), 1.0)
    return x ** max(float(power), MIN_POWER)


def reverse_weighted_mean(values: Sequence[float]) -> float:
    r"""The ``reverse_weighted`` fallback: item :math:`i` (0-based) weighs :math:`(i+1)/n`.

    Later items count more: :math:`\sum_i (i+1) s_i / \sum_i (i+1)`.

    Raises:
        ValueError: on an empty sequence.

    Example:
        >>> reverse_weighted_mean([0.0, 1.0])  # weights 1/2 and 2/2
        0.6666666666666666
    """
    n = len(values)
    if n == 0:
        raise ValueError("reverse_weighted_mean of an empty sequence")
    return weighted_mean(values, [(i + 1) / n for i in range(n)])
