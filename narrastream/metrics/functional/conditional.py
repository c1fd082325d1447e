"""conditional_adjacent and conditional_longrange (protocol §2.2.2, §2.2.3), as pure functions.

Both compare whole segments through a *segment descriptor*: the mean of the L2-normalised DINO
features of the segment's quartile frames ``{0, n//4, n//2, 3n//4, n-1}``, **not** renormalised. Raw
cosines of descriptors are mapped by the official ``affine_power`` remap
(:func:`~narrastream.protocol.pooling.remap_affine_power`) and pooled:

* adjacent: over the transitions the narrative annotations mark as continuous, weighted by the
  transition weights :math:`t_i = w_i + w_{i+1}`;
* long-range: per entity, the first listed segment (anchor) against each other listed segment,
  with shrunk planner target weights; then over entities.

Features may be float32 (as the backbones emit them); everything after them is float64 (the official
code stays in float32, so expect agreement to about 1e-6).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from narrastream.protocol.pooling import remap_affine_power, reverse_weighted_mean, transition_weights, weighted_mean

#: ``torch.nn.functional.cosine_similarity``'s default ``eps``: a zero descriptor has cosine 0
COSINE_EPS: float = 1e-8


def segment_descriptor(features: torch.Tensor) -> torch.Tensor:
    r"""A segment's descriptor: the mean of its (already L2-normalised) frame features.

    .. math:: d = \frac{1}{K} \sum_{a=1}^{K} \hat f_a

    The mean is **not** renormalised (official ``encode_segment``), so its norm is below 1 when the
    frames differ; :func:`descriptor_cosine` is scale-free, so only the direction matters. A segment
    without frames gets the zero vector, as the official encoder returns (its cosine with anything is 0).

    Args:
        features: ``(K, D)`` frame features, ``K`` may be 0.

    Returns:
        ``(D,)`` float64 tensor.

    Example:
        >>> segment_descriptor(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # norm 0.707, not 1
        tensor([0.5000, 0.5000], dtype=torch.float64)
        >>> segment_descriptor(torch.empty(0, 3))
        tensor([0., 0., 0.], dtype=torch.float64)
    """
    if features.ndim != 2:
        raise ValueError(f"features must be (K, D), got shape {tuple(features.shape)}")
    features = features.detach().to(torch.float64)
    if features.shape[0] == 0:
        return torch.zeros(features.shape[1], dtype=torch.float64)
    return features.mean(dim=0)


def descriptor_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    r"""Cosine of two descriptors, :math:`\langle a, b \rangle / \max(\lVert a \rVert \lVert b \rVert, 10^{-8})`.

    No clipping here (the remap clamps to [-1, 1]); a zero descriptor gives 0, as torch's
    ``cosine_similarity`` does.

    Example:
        >>> descriptor_cosine(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0]))  # cos 45 degrees
        0.7071067811865475
        >>> descriptor_cosine(torch.tensor([1.0, 0.0]), torch.tensor([-2.0, 0.0]))
        -1.0
        >>> descriptor_cosine(torch.zeros(2), torch.tensor([1.0, 0.0]))
        0.0
    """
    a = a.detach().to(torch.float64).reshape(-1)
    b = b.detach().to(torch.float64).reshape(-1)
    norms = float(torch.linalg.vector_norm(a)) * float(torch.linalg.vector_norm(b))
    return float(torch.dot(a, b)) / max(norms, COSINE_EPS)


def map_similarity(raw: float, floor: float, ceiling: float, power: float) -> float:
    r"""The official ``affine_power`` remap of a raw cosine (:func:`~narrastream.protocol.pooling.remap_affine_power`).

    .. math:: m = \mathrm{clip}\!\left(\frac{\mathrm{clip}(v, -1, 1) - \text{floor}}
              {\text{ceiling} - \text{floor}}, 0, 1\right)^{\text{power}}

    conditional_adjacent uses floor 0.79, ceiling 1, power 2; conditional_longrange floor 0.58,
    ceiling 1, power 1.5.

    Example:
        >>> round(map_similarity(0.895, 0.79, 1.0, 2.0), 12)  # (0.105 / 0.21)^2 = 0.5^2
        0.25
        >>> round(map_similarity(0.79, 0.58, 1.0, 1.5), 12)  # (0.21 / 0.42)^1.5 = 0.5^1.5
        0.353553390593
        >>> map_similarity(0.5, 0.79, 1.0, 2.0)
        0.0
    """
    return remap_affine_power(raw, floor=floor, ceiling=ceiling, power=power)


def shrink_toward_uniform(weights: Sequence[float], alpha: float) -> list[float] | None:
    r"""Normalise non-negative weights, then shrink them toward uniform (official ``shrink_weights_toward_uniform``).

    .. math:: w'_j = \alpha \frac{w_j}{\sum_l w_l} + \frac{1 - \alpha}{k}

    Negative weights count as 0. Returns None when the weights sum to 0 (or there are none): the
    caller falls back.

    Raises:
        ValueError: when ``alpha`` is outside [0, 1].

    Example:
        >>> [round(w, 12) for w in shrink_toward_uniform([1, 3], 0.7)]  # 0.7 * [0.25, 0.75] + 0.15
        [0.325, 0.675]
        >>> shrink_toward_uniform([5, 1, 2], 0.0)
        [0.3333333333333333, 0.3333333333333333, 0.3333333333333333]
        >>> shrink_toward_uniform([0, 0], 0.7) is None
        True
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"shrink alpha must be in [0, 1], got {alpha}")
    cleaned = [max(0.0, float(w)) for w in weights]
    total = math.fsum(cleaned)
    if not cleaned or not total > 0:
        return None
    uniform = 1.0 / len(cleaned)
    return [alpha * w / total + (1.0 - alpha) * uniform for w in cleaned]


def _zero_descriptors(descriptors: Sequence[torch.Tensor], used: set[int]) -> list[str]:
    """Fallback notes for the compared segments whose descriptor is zero (a segment without frames)."""
    return [f"segment {k}: no frame, zero descriptor (its cosines are 0)"
            for k in sorted(used) if not bool(torch.any(descriptors[k] != 0))]


def adjacent_score(
    descriptors: Sequence[torch.Tensor],
    keep_flags: Sequence[bool],
    segment_weights: Sequence[float],
    *,
    floor: float,
    ceiling: float,
    power: float,
) -> tuple[float | None, list[dict[str, Any]], list[str]]:
    r"""conditional_adjacent of one video from its segment descriptors and continuity flags.

    For each transition :math:`i \to i+1` with :math:`\text{keep}_i` true:
    :math:`r_i = \cos(d_i, d_{i+1})`, :math:`m_i = \text{remap}(r_i)`, and

    .. math:: \text{score} = \frac{\sum_{i \in K} t_i m_i}{\sum_{i \in K} t_i}, \qquad t_i = w_i + w_{i+1}

    where :math:`K` is the set of kept transitions (the kept :math:`t_i` renormalise by their own
    sum). With uniform segment weights every :math:`t_i` is equal: a plain mean (the official
    fallback).

    Args:
        descriptors: one :func:`segment_descriptor` per segment.
        keep_flags: one flag per adjacent pair (``len(descriptors) - 1``).
        segment_weights: one weight per segment (see :func:`~narrastream.protocol.pooling.resolve_segment_weights`).

    Returns:
        ``(score, items, fallbacks)``: None when no transition is kept (the official evaluator
        excludes such a sample); one item per transition (``raw``/``mapped`` None when not kept,
        ``weight`` = :math:`t_i`).

    Example:
        >>> unit = lambda c: torch.tensor([c, math.sqrt(1 - c * c)], dtype=torch.float64)  # cosine c with [1, 0]
        >>> d = [unit(1.0), unit(0.895), unit(0.0)]
        >>> score, items, fallbacks = adjacent_score(d, [True, False], [0.25, 0.25, 0.5],
        ...                                          floor=0.79, ceiling=1.0, power=2.0)
        >>> round(score, 12), [item["weight"] for item in items], items[1]["mapped"]
        (0.25, [0.5, 0.75], None)
        >>> adjacent_score(d, [False, False], [0.25, 0.25, 0.5], floor=0.79, ceiling=1.0, power=2.0)[0] is None
        True
    """
    n = len(descriptors)
    if len(keep_flags) != max(n - 1, 0):
        raise ValueError(f"{len(keep_flags)} continuity flags for {max(n - 1, 0)} transitions")
    if len(segment_weights) != n:
        raise ValueError(f"{len(segment_weights)} segment weights for {n} segments")
    t = transition_weights(segment_weights)
    items: list[dict[str, Any]] = []
    kept_scores: list[float] = []
    kept_weights: list[float] = []
    used: set[int] = set()
    for i, keep in enumerate(keep_flags):
        raw = mapped = None
        if keep:
            raw = descriptor_cosine(descriptors[i], descriptors[i + 1])
            mapped = map_similarity(raw, floor, ceiling, power)
            kept_scores.append(mapped)
            kept_weights.append(t[i])
            used.update((i, i + 1))
        items.append({"transition": i, "segments": [i, i + 1], "keep": bool(keep), "raw": raw, "mapped": mapped,
                      "weight": t[i]})
    fallbacks = _zero_descriptors(descriptors, used)
    if not kept_scores:
        return None, items, fallbacks
    return weighted_mean(kept_scores, kept_weights), items, fallbacks


def longrange_score(
    descriptors: Sequence[torch.Tensor],
    entity_groups: Mapping[str, Sequence[int]],
    segment_weights: Sequence[float] | None,
    *,
    floor: float,
    ceiling: float,
    power: float,
    target_weight_alpha: float,
    sample_weight_alpha: float,
) -> tuple[float | None, list[dict[str, Any]], list[str]]:
    r"""conditional_longrange of one video from its segment descriptors and entity groups.

    For each entity :math:`e` whose index list :math:`(a, j_1, \dots, j_k)` has :math:`k \ge 1`
    targets (the list is taken as given: not sorted, duplicates kept), the anchor is the **first
    listed** index :math:`a` and

    .. math::

        m_{e,j} &= \text{remap}(\cos(d_a, d_j)) \\
        \omega_j &= \alpha_t \frac{w_j}{\sum_{l} w_{j_l}} + \frac{1 - \alpha_t}{k}, \qquad
        S_e = \frac{\sum_j \omega_j m_{e,j}}{\sum_j \omega_j}

    with :math:`w` the planner segment weights. Without planner weights (``segment_weights`` None) or
    when the targets' weights sum to 0, :math:`S_e` is the ``reverse_weighted`` mean (target
    :math:`l` weighs :math:`l / k`: later-listed targets count more), recorded as a fallback.

    Over entities :math:`E`, the coverage weight :math:`c_e = \sum_{i \in \text{indices}(e)} w_i`
    (all listed indices, duplicates counted) is shrunk the same way with :math:`\alpha_s`:

    .. math:: \text{score} = \frac{\sum_e c'_e S_e}{\sum_e c'_e}, \qquad
              c'_e = \alpha_s \frac{c_e}{\sum_f c_f} + \frac{1 - \alpha_s}{|E|}

    The protocol's :math:`\alpha_s = 0` makes this the plain mean over entities (without planner
    weights the official code takes the plain mean too; recorded as a fallback only when
    :math:`\alpha_s > 0`, where it makes a difference).

    Args:
        descriptors: one :func:`segment_descriptor` per segment.
        entity_groups: entity -> segment indices, in listed order, all in ``[0, N)``.
        segment_weights: planner weights per segment (any positive scale), or None.

    Returns:
        ``(score, items, fallbacks)``: None when no entity has 2 or more indices; one item per
        entity (``score`` None for an entity with fewer than 2 indices).

    Raises:
        ValueError: on an index outside ``[0, N)`` (the caller drops those first), a weight list of the
            wrong length, or an alpha outside [0, 1].

    Example:
        >>> unit = lambda c: torch.tensor([c, math.sqrt(1 - c * c)], dtype=torch.float64)  # cosine c with [1, 0]
        >>> d = [unit(1.0), unit(0.79), unit(1.0)]
        >>> score, items, fallbacks = longrange_score(
        ...     d, {"cup": [1, 0, 2]}, None, floor=0.58, ceiling=1.0, power=1.5,
        ...     target_weight_alpha=0.7, sample_weight_alpha=0.0)
        >>> [round(m, 6) for m in items[0]["mapped"]]  # anchor 1: cos 0.79 with 0 and with 2
        [0.353553, 0.353553]
        >>> fallbacks
        ['entity cup: targets pooled reverse_weighted (no planner weights)']
    """
    n = len(descriptors)
    if segment_weights is not None and len(segment_weights) != n:
        raise ValueError(f"{len(segment_weights)} segment weights for {n} segments")
    for alpha in (target_weight_alpha, sample_weight_alpha):
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"weight alpha must be in [0, 1], got {alpha}")
    items: list[dict[str, Any]] = []
    fallbacks: list[str] = []
    scores: list[float] = []
    coverage: list[float] = []
    used: set[int] = set()
    for entity, listed in entity_groups.items():
        indices = [int(i) for i in listed]
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise ValueError(f"entity {entity!r}: segment indices {bad} outside 0..{n - 1}")
        item: dict[str, Any] = {"entity": entity, "indices": indices, "anchor": indices[0] if indices else None,
                                "targets": indices[1:], "raw": [], "mapped": [], "target_weights": None,
                                "pooling": None, "score": None, "weight": None}
        items.append(item)
        if len(indices) < 2:
            continue
        anchor, targets = indices[0], indices[1:]
        used.update(indices)
        raw = [descriptor_cosine(descriptors[anchor], descriptors[j]) for j in targets]
        mapped = [map_similarity(r, floor, ceiling, power) for r in raw]
        shrunk = (shrink_toward_uniform([segment_weights[j] for j in targets], target_weight_alpha)
                  if segment_weights is not None else None)
        if shrunk is None:
            why = "no planner weights" if segment_weights is None else "target weights sum to 0"
            fallbacks.append(f"entity {entity}: targets pooled reverse_weighted ({why})")
            entity_score, pooling = reverse_weighted_mean(mapped), "reverse_weighted"
        else:
            entity_score, pooling = weighted_mean(mapped, shrunk), "target_weighted"
        item.update(raw=raw, mapped=mapped, target_weights=shrunk, pooling=pooling, score=entity_score)
        scores.append(entity_score)
        if segment_weights is not None:
            coverage.append(math.fsum(float(segment_weights[i]) for i in indices))
    if not scores:
        return None, items, fallbacks

    entity_weights = shrink_toward_uniform(coverage, sample_weight_alpha) if coverage else None
    if entity_weights is None:
        if sample_weight_alpha > 0:
            why = "no planner weights" if segment_weights is None else "coverage weights sum to 0"
            fallbacks.append(f"entities: plain mean ({why})")
        entity_weights = [1.0 / len(scores)] * len(scores)
    qualifying = [item for item in items if item["score"] is not None]
    for item, weight in zip(qualifying, entity_weights):
        item["weight"] = weight
    fallbacks.extend(_zero_descriptors(descriptors, used))
    return weighted_mean(scores, entity_weights), items, fallbacks
