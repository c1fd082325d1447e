r"""boundary_smoothness (protocol §2.2.1), as pure functions of optical flow.

At the seam between segments :math:`k` and :math:`k+1` the motion across the cut should look like the
motion on either side of it. With :math:`m(\cdot)` the mean flow magnitude in pixels,

.. math::
    \text{left} = m(\text{last}-1 \to \text{last of } k), \quad
    \text{boundary} = m(\text{last of } k \to \text{first of } k+1), \quad
    \text{right} = m(\text{first} \to \text{second of } k+1)

    e = (\text{left} + \text{right}) / 2, \quad
    \text{tol} = \max(10^{-6}, a + r\,e), \quad
    s_k = \exp(-|\text{boundary} - e| / \text{tol})

with :math:`a = 0.02` (``flow_tolerance_abs``) and :math:`r = 0.5` (``flow_tolerance_rel``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

#: the tolerance never goes below this (a static video would otherwise divide by ~0)
MIN_TOLERANCE: float = 1e-6


def mean_flow_magnitude(flow: torch.Tensor) -> torch.Tensor:
    r"""Mean over pixels of :math:`\lVert F(x, y) \rVert_2`, per flow: ``(N, 2, H, W)`` -> ``(N,)`` float64.

    Example:
        >>> flow = torch.zeros(1, 2, 2, 2); flow[0, 0] = 3.0; flow[0, 1, 0] = 4.0  # top row (3, 4), bottom (3, 0)
        >>> mean_flow_magnitude(flow).tolist()
        [4.0]
    """
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must be (N, 2, H, W), got shape {tuple(flow.shape)}")
    return flow.detach().to(torch.float64).norm(dim=1).flatten(1).mean(dim=1)


def flow_tolerance(expected: float, abs_tol: float, rel_tol: float) -> float:
    r"""The seam tolerance :math:`\max(10^{-6}, a + r\,e)` in pixels.

    Example:
        >>> flow_tolerance(1.0, 0.02, 0.5)
        0.52
        >>> flow_tolerance(0.0, 0.0, 0.5)
        1e-06
    """
    return max(MIN_TOLERANCE, float(abs_tol) + float(rel_tol) * float(expected))


def seam_score(left: float, boundary: float, right: float, *, abs_tol: float, rel_tol: float) -> tuple[float, dict[str, Any]]:
    r"""One seam's score :math:`\exp(-|\text{boundary} - e| / \text{tol})`, and its parts.

    Example:
        >>> score, parts = seam_score(1.0, 2.04, 1.0, abs_tol=0.02, rel_tol=0.5)  # |2.04 - 1| / 0.52 = 2
        >>> round(score, 12) == round(math.exp(-2.0), 12), parts["expected"], parts["tolerance"]
        (True, 1.0, 0.52)
        >>> seam_score(0.5, 0.5, 0.5, abs_tol=0.02, rel_tol=0.5)[0]  # motion continues across the cut
        1.0
    """
    expected = (float(left) + float(right)) / 2.0
    tolerance = flow_tolerance(expected, abs_tol, rel_tol)
    score = math.exp(-abs(float(boundary) - expected) / tolerance)
    return score, {
        "left": float(left), "boundary": float(boundary), "right": float(right),
        "expected": expected, "tolerance": tolerance, "score": score,
    }
