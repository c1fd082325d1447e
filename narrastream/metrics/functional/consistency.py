"""Subject / background consistency (protocol §2.1.1), as pure functions of frame features.

The two metrics differ only in their backbone (DINO ViT-B/16 or CLIP ViT-B/32); both reduce each
segment's sampled frame features to a local score and a representative ("medoid") frame, then compare
representatives across segments. Features may be float32 (as the backbones emit them); everything
after the features is computed in float64.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from narrastream.protocol.pooling import percentile_linear, weighted_mean


def similarity_matrix(features: torch.Tensor) -> torch.Tensor:
    r"""Clipped cosine similarities :math:`S_{ab} = \max(0, \langle \hat f_a, \hat f_b \rangle)`.

    Features are L2-normalised (:math:`\hat f = f / \lVert f \rVert`) in float64. Values are also
    capped at 1, which only removes rounding excess (a frame with itself can give 1 + 2e-16). The
    matrix is made exactly symmetric (the lower triangle mirrors the upper one), so centrality ties
    are real ties.

    Args:
        features: ``(K, D)`` frame features.

    Returns:
        ``(K, K)`` float64 tensor with values in [0, 1].

    Example:
        >>> similarity_matrix(torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]]))
        tensor([[1.0000, 0.7071, 0.0000],
                [0.7071, 1.0000, 0.0000],
                [0.0000, 0.0000, 1.0000]], dtype=torch.float64)
    """
    if features.ndim != 2:
        raise ValueError(f"features must be (K, D), got shape {tuple(features.shape)}")
    unit = F.normalize(features.detach().to(torch.float64), dim=-1)
    sim = (unit @ unit.T).clamp_(0.0, 1.0)
    return torch.triu(sim) + torch.triu(sim, diagonal=1).T


def local_pairs(k: int) -> list[tuple[int, int]]:
    r"""Frame pairs compared within a segment: adjacent pairs, then centre-anchor pairs, deduplicated.

    Adjacent pairs :math:`(a, a+1)`; centre-anchor pairs :math:`(c, a)` with :math:`c = \lfloor K/2 \rfloor`,
    :math:`a \ne c`. Each pair is written (smaller, larger) and kept once, in first-seen order.

    Example:
        >>> local_pairs(5)
        [(0, 1), (1, 2), (2, 3), (3, 4), (0, 2), (2, 4)]
        >>> local_pairs(2)
        [(0, 1)]
    """
    centre = k // 2
    candidates = [(a, a + 1) for a in range(k - 1)] + [(min(a, centre), max(a, centre)) for a in range(k) if a != centre]
    return list(dict.fromkeys(candidates))


def segment_local_score(sim: torch.Tensor, q: float) -> float:
    r"""A segment's local score: the ``q`` quantile (:func:`percentile_linear`) of :math:`S` over :func:`local_pairs`.

    By convention a segment with one frame scores 1.0 and a segment without frames 0.0.

    Example:
        >>> sim = torch.tensor([[1.0, 0.9, 0.5], [0.9, 1.0, 0.7], [0.5, 0.7, 1.0]], dtype=torch.float64)
        >>> round(segment_local_score(sim, 0.25), 6)  # pairs (0,1), (1,2): 0.7 + 0.25 * (0.9 - 0.7)
        0.75
    """
    k = sim.shape[0]
    if k == 0:
        return 0.0
    if k == 1:
        return 1.0
    return percentile_linear([float(sim[a, b]) for a, b in local_pairs(k)], q)


def medoid_index(sim: torch.Tensor) -> int:
    r"""The representative frame: :math:`\arg\max_a \frac{1}{K-1} \sum_{b \ne a} S_{ab}`.

    Ties go to the frame closer to the centre :math:`c = \lfloor K/2 \rfloor`, then to the lower
    index; so with two frames the medoid is always frame 1. Each frame's sum runs over the other
    frames only (the diagonal is left out, never subtracted: a diagonal of 0.9999999999999999 minus
    itself out of a rounded row sum breaks exact ties) and is exactly rounded (``math.fsum``), so two
    frames with the same similarities to the others tie exactly, whatever the order of the terms.

    Raises:
        ValueError: for an empty segment (it has no representative).

    Example:
        >>> medoid_index(torch.tensor([[1.0, 0.2], [0.2, 1.0]], dtype=torch.float64))
        1
        >>> medoid_index(torch.tensor([[1.0, 0.7], [0.7, 0.9999999999999999]], dtype=torch.float64))
        1
        >>> medoid_index(torch.ones(4, 4, dtype=torch.float64))  # all tied: 2 is the centre
        2
    """
    k = sim.shape[0]
    if k == 0:
        raise ValueError("an empty segment has no medoid")
    if k == 1:
        return 0
    rows = sim.tolist()
    centrality = [math.fsum(rows[a][b] for b in range(k) if b != a) / (k - 1) for a in range(k)]
    centre = k // 2
    return min(range(k), key=lambda a: (-centrality[a], abs(a - centre), a))


def _combine(components: Sequence[tuple[float | None, float]]) -> float | None:
    """Weighted mean of the components that are not None; a lone survivor is returned as is."""
    valid = [(value, weight) for value, weight in components if value is not None]
    if not valid:
        return None
    if len(valid) == 1:
        return valid[0][0]
    return weighted_mean([v for v, _ in valid], [w for _, w in valid])


def consistency_score(
    segment_features: Sequence[torch.Tensor],
    segment_weights: Sequence[float],
    *,
    local_weight: float,
    inter_weight: float,
    inter_adjacent_weight: float,
    inter_anchor_weight: float,
    intra_quantile: float,
    inter_quantile: float,
    frame_indices: Sequence[Sequence[int]] | None = None,
) -> tuple[float | None, list[dict[str, Any]], list[str]]:
    r"""The per-video consistency score from each segment's sampled frame features.

    With :math:`L_k` the local score and :math:`r_k` the medoid feature of segment :math:`k`,
    :math:`w_k` the segment weights and :math:`P_q` the linear-interpolation quantile:

    .. math::

        \text{local} &= \textstyle\sum_k w_k L_k / \sum_k w_k \\
        \text{adjacent} &= P_{q}\{S(r_k, r_{k+1})\}_k, \qquad
        \text{anchor} = P_{q}\{S(r_{k_0}, r_k)\}_{k > k_0} \\
        \text{inter} &= \alpha_{adj}\,\text{adjacent} + \alpha_{anc}\,\text{anchor} \\
        \text{score} &= \lambda_{local}\,\text{local} + \lambda_{inter}\,\text{inter}

    A component with no values (one segment: no inter) is dropped and the remaining weights
    renormalise; a lone component is returned as is. Segments without frames count 0.0 in the local
    mean and are skipped, not bridged, in the comparisons (no pair skips over them). The anchor
    :math:`k_0` is the first segment that has frames (segment 0 unless it is empty), as in the
    official code.

    Args:
        segment_features: one ``(K_k, D)`` tensor per segment (``K_k`` may be 0).
        segment_weights: one weight per segment (see :func:`~narrastream.protocol.pooling.resolve_segment_weights`).
        frame_indices: the in-segment frame index of each feature row, recorded in the items.

    Returns:
        ``(score, items, fallbacks)``: the score (None without any segment), one item per segment plus
        a summary item, and the conventions that stood in for a measurement.

    Example:
        >>> a, b = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.6, 0.8]])
        >>> score, items, fallbacks = consistency_score(
        ...     [a, b], [0.5, 0.5], local_weight=0.34, inter_weight=0.66, inter_adjacent_weight=0.5,
        ...     inter_anchor_weight=0.5, intra_quantile=0.25, inter_quantile=0.25)
        >>> round(score, 6)  # 0.34 * (1 + 1) / 2 + 0.66 * 0.6
        0.736
        >>> fallbacks
        ['segment 1: 1 sampled frame, local score 1.0 by convention']
    """
    n = len(segment_features)
    if len(segment_weights) != n:
        raise ValueError(f"{len(segment_weights)} segment weights for {n} segments")
    if frame_indices is not None and len(frame_indices) != n:
        raise ValueError(f"frame indices for {len(frame_indices)} segments, features for {n}")
    if n == 0:
        return None, [], []

    items: list[dict[str, Any]] = []
    fallbacks: list[str] = []
    local_scores: list[float] = []
    representatives: dict[int, torch.Tensor] = {}  # segment -> its medoid feature (segments with frames)
    for k, features in enumerate(segment_features):
        sim = similarity_matrix(features)
        count = sim.shape[0]
        local = segment_local_score(sim, intra_quantile)
        medoid = medoid_index(sim) if count else None
        frames = list(frame_indices[k]) if frame_indices is not None else list(range(count))
        if medoid is None:
            fallbacks.append(f"segment {k}: no sampled frame, local score 0.0 and no representative")
        else:
            representatives[k] = features[medoid]
            if count == 1:
                fallbacks.append(f"segment {k}: 1 sampled frame, local score 1.0 by convention")
        local_scores.append(local)
        items.append({
            "segment": k,
            "frames": frames,
            "weight": float(segment_weights[k]),
            "local": local,
            "medoid": medoid,
            "medoid_frame": frames[medoid] if medoid is not None else None,
        })

    row = {k: i for i, k in enumerate(representatives)}
    rep_sim = similarity_matrix(torch.stack(list(representatives.values()))) if representatives else None
    adjacent = [float(rep_sim[row[k], row[k + 1]]) for k in range(n - 1) if k in row and k + 1 in row]
    first = next(iter(representatives), None)  # the anchor: the first segment that has frames
    anchor = [float(rep_sim[row[first], row[k]]) for k in range(first + 1, n) if k in row] if first is not None else []
    inter_adjacent = percentile_linear(adjacent, inter_quantile) if adjacent else None
    inter_anchor = percentile_linear(anchor, inter_quantile) if anchor else None
    inter = _combine([(inter_adjacent, inter_adjacent_weight), (inter_anchor, inter_anchor_weight)])
    local = weighted_mean(local_scores, segment_weights)
    if inter is None:
        fallbacks.append("inter: no pair of segment representatives to compare, score = local only")
    score = _combine([(local, local_weight), (inter, inter_weight)])
    items.append({
        "summary": True,
        "local": local,
        "inter_adjacent": inter_adjacent,
        "inter_anchor": inter_anchor,
        "inter_anchor_segment": first,
        "inter": inter,
        "inter_adjacent_similarities": adjacent,
        "inter_anchor_similarities": anchor,
    })
    return score, items, fallbacks
