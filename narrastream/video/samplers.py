"""Frame samplers of the official protocol, as small pure functions of the segment length ``n``.

Each returns in-segment frame indices. The table in docs/protocol.md gives the indices for
``n = 160`` (16 fps x 10 s); tests check every row of it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

CONSISTENCY_POSITIONS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)


def positional_indices(n: int, positions: Sequence[float] = CONSISTENCY_POSITIONS) -> list[int]:
    """``round(p * (n - 1))`` for each position (Python's half-to-even rounding), deduplicated, sorted.

    >>> positional_indices(160)
    [16, 48, 80, 111, 143]
    """
    if n <= 0:
        return []
    return sorted({int(round(p * (n - 1))) for p in positions})


def uniform_indices(n: int, k: int) -> list[int]:
    """``round(i * (n - 1) / (k - 1))`` for i in 0..k-1, deduplicated, sorted (flicker: k=8; VLM: k=5).

    >>> uniform_indices(160, 8)
    [0, 23, 45, 68, 91, 114, 136, 159]
    >>> uniform_indices(160, 5)
    [0, 40, 80, 119, 159]
    """
    if n <= 0:
        return []
    if k <= 1 or n == 1:
        return [0]
    return sorted({int(round(i * (n - 1) / (k - 1))) for i in range(k)})


def quartile_indices(n: int) -> list[int]:
    """``{0, n//4, n//2, 3n//4, n-1}`` sorted (the DINO segment encoder of the temporal metrics).

    >>> quartile_indices(160)
    [0, 40, 80, 120, 159]
    """
    if n <= 0:
        return []
    return sorted({0, n // 4, n // 2, (3 * n) // 4, n - 1})


def linspace_indices(n: int, k: int) -> list[int]:
    """``np.linspace(0, n - 1, k).astype(int)``: truncation, duplicates kept (LanguageBind: k=8).

    >>> linspace_indices(160, 8)
    [0, 22, 45, 68, 90, 113, 136, 159]
    """
    if n <= 0:
        return []
    return [int(i) for i in np.linspace(0, n - 1, k).astype(int)]


def interpolation_triplets(n: int) -> list[tuple[int, int, int]]:
    """(even a, odd target, even b) for frame interpolation: even frames predict the odd between them.

    For n = 160 this gives 79 triplets, (0, 1, 2) ... (156, 157, 158).

    >>> interpolation_triplets(6)
    [(0, 1, 2), (2, 3, 4)]
    """
    evens = list(range(0, n, 2))
    return [(a, a + 1, b) for a, b in zip(evens, evens[1:])]


def boundary_window(n_left: int, n_right: int, window: int = 2) -> tuple[list[int], list[int]]:
    """The last ``window`` frames of the left segment and the first ``window`` of the right one.

    >>> boundary_window(160, 160)
    ([158, 159], [0, 1])
    """
    return list(range(max(0, n_left - window), n_left)), list(range(min(window, n_right)))


def fragment_indices(n: int, clip_len: int = 32, num_clips: int = 4, interval: int = 2) -> list[list[int]]:
    """FAST-VQA temporal fragments: clip k starts at ``(n // num_clips) * k``; indices wrap modulo n.

    >>> [c[:3] for c in fragment_indices(160)]
    [[0, 2, 4], [40, 42, 44], [80, 82, 84], [120, 122, 124]]
    """
    if n <= 0:
        return []
    step = n // num_clips
    return [[(step * k + j * interval) % n for j in range(clip_len)] for k in range(num_clips)]
