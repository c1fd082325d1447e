r"""dynamic_trajectory (protocol §2.3.2), as pure functions of embeddings.

A script asks a video to *change* where its prompts change, and to *hold still* where they do not.
For the transition :math:`i \to i+1`, with :math:`t_i` the text and :math:`v_i` the video embedding
of segment :math:`i` (LanguageBind_Video_FT, L2-normalised),

.. math::
    \Delta_T = \max(0, 1 - \cos(t_i, t_{i+1})), \qquad \Delta_V = \max(0, 1 - \cos(v_i, v_{i+1}))

    g = \sigma\!\left(\mathrm{clip}\!\left(\frac{\Delta_T - c}{\max(10^{-6}, \theta)}, -60, 60\right)\right)

    r = 1 - e^{-\Delta_V / \max(10^{-6}, \tau_{on})}, \qquad s = e^{-\Delta_V / \max(10^{-6}, \tau_{off})}

    \text{score}_i = g\,r + (1 - g)\,s

with the gate centre :math:`c = 0.25` (``center``), width :math:`\theta = 0.05` (``temp``), and the
response / stability scales :math:`\tau_{on} = 0.02`, :math:`\tau_{off} = 0.06`. A sample pools its
transitions with the transition weights :math:`w_i + w_{i+1}` (uniform when the planner weights are
missing or not one per prompt); no transition means no score.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from narrastream.protocol.pooling import weighted_mean

#: the gate's argument is clamped to this range before the logistic (as the official code does)
GATE_CLAMP: float = 60.0
#: temperatures and time constants never go below this
MIN_SCALE: float = 1e-6


def change_magnitude(a: torch.Tensor, b: torch.Tensor) -> float:
    r""":math:`\max(0, 1 - \cos(a, b))` of two embeddings (renormalised first, as the official code does).

    Example:
        >>> change_magnitude(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]))
        1.0
        >>> change_magnitude(torch.tensor([1.0, 0.0]), torch.tensor([3.0, 0.0]))
        0.0
    """
    a = F.normalize(torch.as_tensor(a, dtype=torch.float32).reshape(-1), dim=-1)
    b = F.normalize(torch.as_tensor(b, dtype=torch.float32).reshape(-1), dim=-1)
    return max(0.0, 1.0 - float(F.cosine_similarity(a, b, dim=-1).item()))


def soft_gate(text_change: float, *, center: float, temp: float) -> float:
    r"""The text-change gate :math:`\sigma(\mathrm{clip}((\Delta_T - c) / \max(10^{-6}, \theta), -60, 60))`.

    Example:
        >>> soft_gate(0.25, center=0.25, temp=0.05)  # at the centre: one half
        0.5
        >>> round(soft_gate(0.30, center=0.25, temp=0.05), 12) == round(1 / (1 + math.exp(-1.0)), 12)  # one width above
        True
    """
    scaled = (float(text_change) - float(center)) / max(MIN_SCALE, float(temp))
    scaled = max(-GATE_CLAMP, min(GATE_CLAMP, scaled))
    return 1.0 / (1.0 + math.exp(-scaled))


def transition_score(video_change: float, *, gate: float, tau_on: float, tau_off: float) -> tuple[float, float, float]:
    r"""``(score, response, stability)`` of one transition: :math:`g\,r + (1-g)\,s`.

    Example:
        >>> score, response, stability = transition_score(0.0, gate=0.2, tau_on=0.02, tau_off=0.06)
        >>> score, response, stability  # nothing moved: no response, full stability
        (0.8, 0.0, 1.0)
        >>> round(transition_score(0.06, gate=0.0, tau_on=0.02, tau_off=0.06)[0], 12) == round(math.exp(-1), 12)
        True
    """
    change = max(0.0, float(video_change))
    response = 1.0 - math.exp(-change / max(MIN_SCALE, float(tau_on)))
    stability = math.exp(-change / max(MIN_SCALE, float(tau_off)))
    g = float(gate)
    return g * response + (1.0 - g) * stability, response, stability


def trajectory_transitions(
    text_embeddings: torch.Tensor,
    video_embeddings: torch.Tensor,
    *,
    center: float,
    temp: float,
    tau_on: float,
    tau_off: float,
) -> list[dict[str, Any]]:
    r"""One record per transition ``i -> i+1`` of ``(N, D)`` text and video embeddings.

    Each record has ``transition, text_change, video_change, gate, response, stability, score``.

    Example:
        >>> t = torch.tensor([[1.0, 0.0], [1.0, 0.0]]); v = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
        >>> [round(r["score"], 12) for r in trajectory_transitions(t, v, center=0.25, temp=0.05, tau_on=0.02, tau_off=0.06)]
        [0.993307149076]
    """
    if len(text_embeddings) != len(video_embeddings):
        raise ValueError(f"{len(text_embeddings)} text embeddings but {len(video_embeddings)} video embeddings")
    records: list[dict[str, Any]] = []
    for i in range(len(video_embeddings) - 1):
        text_change = change_magnitude(text_embeddings[i], text_embeddings[i + 1])
        video_change = change_magnitude(video_embeddings[i], video_embeddings[i + 1])
        gate = soft_gate(text_change, center=center, temp=temp)
        score, response, stability = transition_score(video_change, gate=gate, tau_on=tau_on, tau_off=tau_off)
        records.append({
            "transition": i, "text_change": text_change, "video_change": video_change, "gate": gate,
            "response": response, "stability": stability, "score": score,
        })
    return records


def trajectory_score(scores: Sequence[float], weights: Sequence[float] | None) -> float | None:
    r"""Pool transition scores with transition weights :math:`w_i + w_{i+1}`; uniform when ``weights`` is
    None, of another length, or sums to zero (negative weights count 0); None without transitions.

    Example:
        >>> trajectory_score([1.0, 0.0], [0.75, 0.25])
        0.75
        >>> trajectory_score([1.0, 0.0], None)
        0.5
        >>> trajectory_score([], None) is None
        True
    """
    if not scores:
        return None
    if weights is None or len(weights) != len(scores):
        return weighted_mean(scores, [1.0] * len(scores))
    cleaned = [max(0.0, float(w)) for w in weights]
    if not sum(cleaned) > 0:
        cleaned = [1.0] * len(scores)
    return weighted_mean(scores, cleaned)
