r"""motion_smoothness (protocol §2.1.4), as pure functions of frames and interpolated frames.

A segment's even frames :math:`I_0, I_2, I_4, \dots` are interpolated pairwise at :math:`t = 0.5`
(AMT-S); each prediction :math:`\hat I_{2k+1}` is compared with the real odd frame between them.
With :math:`K` predictions of :math:`H \times W \times 3` uint8 pixels,

.. math::

    \text{raw} = \frac{1}{K} \sum_{k} \frac{1}{3HW} \sum_{x, c} \big| I_{2k+1}(x, c) - \hat I_{2k+1}(x, c) \big|,
    \qquad \text{score} = \exp(-\text{raw} / \tau), \quad \tau = 3.0 .

``raw`` is in gray levels on the 0-255 scale (``cv2.absdiff`` then ``np.mean`` per frame, then the
mean over frames); the predictions are the network's [0, 1] output converted by
:func:`prediction_to_uint8` (x255, clip, **truncating** cast). A segment with at most one even frame
(fewer than 3 frames) has nothing to interpolate: the official code gives it raw 0, score 1.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch


def even_frame_count(num_frames: int) -> int:
    """How many even-index frames (0, 2, 4, ...) a segment of ``num_frames`` frames has.

    >>> [even_frame_count(n) for n in (0, 1, 2, 3, 160)]
    [0, 1, 1, 2, 80]
    """
    return (max(num_frames, 0) + 1) // 2


def prediction_to_uint8(prediction: torch.Tensor) -> torch.Tensor:
    r"""The official conversion of a [0, 1] prediction to pixels: :math:`\lfloor \mathrm{clip}(255 x, 0, 255) \rfloor`.

    The multiplication is in float32 and the cast truncates; it does not round, so a prediction of
    0.999 (254.745) gives 254, not 255.

    Example:
        >>> prediction_to_uint8(torch.tensor([0.0, 0.5, 0.999, 1.0, 1.2, -0.1])).tolist()
        [0, 127, 254, 255, 255, 0]
    """
    return (prediction.float() * 255.0).clamp(0.0, 255.0).to(torch.uint8)


def frame_abs_errors(originals: np.ndarray, predictions: np.ndarray) -> list[float]:
    r"""Per frame, the mean absolute difference over all pixels and channels, on the 0-255 scale.

    Equal to ``np.mean(cv2.absdiff(original, predicted))`` for uint8 frames; the sum is exact
    (int64) before the division.

    Args:
        originals, predictions: ``(K, H, W, 3)`` uint8 (or ``(H, W, 3)`` for one frame).

    Example:
        >>> a = np.array([[[[10, 20, 30], [0, 0, 0]]]], dtype=np.uint8)   # one 1x2 frame
        >>> b = np.array([[[[13, 20, 27], [0, 0, 255]]]], dtype=np.uint8)
        >>> frame_abs_errors(a, b)                                       # (3 + 0 + 3 + 0 + 0 + 255) / 6
        [43.5]
    """
    a, b = np.asarray(originals), np.asarray(predictions)
    if a.shape != b.shape:
        raise ValueError(f"originals {a.shape} and predictions {b.shape} differ in shape")
    if a.ndim == 3:
        a, b = a[None], b[None]
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"frames must be (K, H, W, 3), got shape {a.shape}")
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    count = diff[0].size
    return [int(d.sum(dtype=np.int64)) / count for d in diff]


def segment_raw_error(frame_errors: Sequence[float]) -> float:
    r"""A segment's raw error: the mean of its per-frame errors; 0.0 when nothing was interpolated.

    The empty case is the official convention for a segment with at most one even frame.

    Example:
        >>> segment_raw_error([2.0, 3.0, 4.0])
        3.0
        >>> segment_raw_error([])
        0.0
    """
    if len(frame_errors) == 0:
        return 0.0
    return float(np.mean(np.asarray(frame_errors, dtype=np.float64)))


def motion_score(raw: float, tau: float) -> float:
    r"""The segment score :math:`\exp(-\text{raw} / \tau)`; the protocol's :math:`\tau` is 3.0.

    Example:
        >>> round(motion_score(3.0, 3.0), 12) == round(math.exp(-1.0), 12)
        True
        >>> motion_score(0.0, 3.0)
        1.0
    """
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    return math.exp(-float(raw) / float(tau))
