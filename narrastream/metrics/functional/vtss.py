r"""VTSS sampling and score mapping as pure functions (protocol §2.1.5).

Temporal sampling is :func:`narrastream.video.samplers.fragment_indices` (4 clips x 32 frames at
stride 2, clip k starting at :math:`\lfloor N_f / 4 \rfloor k`, indices modulo :math:`N_f`).

Spatial fragments (FAST-VQA ``get_spatial_fragments``, ``fragments 7x7, fsize 32, aligned 32``): for
a chunk of frames of size :math:`H \times W`, with grid :math:`g` and patch :math:`p` (target side
:math:`S = g p`):

1. if :math:`r = \min(H/S, W/S) < 1`, the frames are scaled by :math:`1/r` (bilinear on
   :math:`x/255`, then :math:`\times 255` and a truncating cast to uint8);
2. the grid origins are :math:`o^h_i = \min(\lfloor H/g \rfloor i,\ H - p)` and
   :math:`o^w_j = \min(\lfloor W/g \rfloor j,\ W - p)` -- computed, as in the reference, from the
   size **before** any upsampling, so an upsampled video is read from its top-left
   :math:`H \times W` corner;
3. cell :math:`(i, j)` of chunk :math:`c` adds an offset :math:`\delta^h_{ijc} \in [0, \lfloor H/g \rfloor - p)`
   (0 when :math:`\lfloor H/g \rfloor \le p`), likewise :math:`\delta^w_{ijc}`, drawn ``h`` first then
   ``w``, one per cell per chunk of ``aligned`` frames;
4. output pixel block :math:`(i, j)` of chunk :math:`c` is the :math:`p \times p` patch at
   :math:`(o^h_i + \delta^h_{ijc},\ o^w_j + \delta^w_{ijc})`.

The reference draws the offsets with the unseeded global ``torch.randint``; we draw them from a
``torch.Generator`` seeded by the caller (:func:`segment_generator`), so a score is reproducible.

The raw score (the mean of the quality map) is pooled over segments first and only then mapped
with :func:`anchored_linear`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def anchored_linear(raw: float, low: float, high: float) -> float:
    r"""Map a raw VTSS score to [0, 1]: :math:`\mathrm{clip}((raw - low) / (high - low), 0, 1)`.

    Raises:
        ValueError: unless ``high > low`` and ``raw`` is finite.

    Example:
        >>> round(anchored_linear(0.0475, 0.02, 0.075), 12)
        0.5
        >>> anchored_linear(0.01, 0.02, 0.075), anchored_linear(0.2, 0.02, 0.075)
        (0.0, 1.0)
    """
    if not high > low:
        raise ValueError(f"anchored_linear: high ({high}) must be greater than low ({low})")
    if not math.isfinite(raw):
        raise ValueError(f"anchored_linear: raw score {raw} is not finite")
    return min(max((float(raw) - low) / (high - low), 0.0), 1.0)


def segment_generator(seed: int, segment: int) -> torch.Generator:
    """The CPU generator for the offsets of one segment: seeded with ``seed + segment``.

    >>> int(torch.randint(1000, (1,), generator=segment_generator(0, 1))) == int(torch.randint(1000, (1,), generator=segment_generator(1, 0)))
    True
    """
    return torch.Generator(device="cpu").manual_seed(int(seed) + int(segment))


def grid_origins(size: int, grid: int = 7, patch: int = 32) -> list[int]:
    r"""Cell origins :math:`\min(\lfloor size/g \rfloor i, size - p)` along one axis.

    >>> grid_origins(480)
    [0, 68, 136, 204, 272, 340, 408]
    >>> grid_origins(224)
    [0, 32, 64, 96, 128, 160, 192]
    """
    return [min(size // grid * i, size - patch) for i in range(grid)]


def fragment_offsets(
    height: int, width: int, num_chunks: int, generator: torch.Generator, grid: int = 7, patch: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    r"""Offsets :math:`\delta^h, \delta^w`, each ``(grid, grid, num_chunks)`` int64, inside each cell.

    :math:`\delta \in [0, \lfloor size/g \rfloor - p)`, or all 0 when the cell is not larger than a patch.

    Example:
        >>> dh, dw = fragment_offsets(224, 224, 4, segment_generator(0, 0))
        >>> dh.shape, int(dh.max()), int(dw.max())
        ((7, 7, 4), 0, 0)
        >>> dh, dw = fragment_offsets(480, 832, 4, segment_generator(0, 0))
        >>> bool(dh.max() < 480 // 7 - 32 and dw.max() < 832 // 7 - 32)
        True
    """
    shape = (grid, grid, num_chunks)
    out = []
    for size in (height, width):
        cell = size // grid
        if cell > patch:
            out.append(torch.randint(cell - patch, shape, generator=generator).numpy())
        else:
            out.append(np.zeros(shape, dtype=np.int64))
    return out[0], out[1]


def upsample_if_small(frames: np.ndarray, target: int) -> np.ndarray:
    r"""Scale ``(T, H, W, 3)`` uint8 frames by :math:`1/r`, :math:`r = \min(H, W)/S`, when :math:`r < 1`.

    Bilinear (``align_corners=False``, the given scale factor) on :math:`x/255` in float32, then
    :math:`\times 255` and a truncating cast, as the reference does. Frames are returned unchanged otherwise.

    Example:
        >>> upsample_if_small(np.zeros((1, 112, 150, 3), np.uint8), 224).shape
        (1, 224, 300, 3)
        >>> upsample_if_small(np.zeros((1, 240, 320, 3), np.uint8), 224).shape
        (1, 240, 320, 3)
    """
    _, h, w, _ = frames.shape
    ratio = min(h / target, w / target)
    if ratio >= 1:
        return frames
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 255.0  # (C, T, H, W)
    x = F.interpolate(x, scale_factor=1 / ratio, mode="bilinear", align_corners=False)
    return (x * 255.0).to(torch.uint8).permute(1, 2, 3, 0).numpy()


def assemble_fragments(
    frames: np.ndarray, generator: torch.Generator, *, grid: int = 7, patch: int = 32, aligned: int = 32
) -> np.ndarray:
    r"""The FAST-VQA fragment video: ``(T, H, W, 3)`` uint8 -> ``(T, g p, g p, 3)`` uint8.

    ``T`` must be a multiple of ``aligned``; each chunk of ``aligned`` frames gets its own offsets
    (:func:`fragment_offsets`). See the module docstring for the formula.

    Raises:
        ValueError: when ``T`` is not a multiple of ``aligned``, or a side is smaller than a patch.

    Example:
        >>> video = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
        >>> out = assemble_fragments(video, segment_generator(0, 0), grid=2, patch=2, aligned=2)
        >>> out.shape, bool((out == video).all())  # 2x2 cells of 2x2 patches tile a 4x4 frame exactly
        ((2, 4, 4, 3), True)
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be a (T, H, W, 3) uint8 array, got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if t == 0 or t % aligned:
        raise ValueError(f"{t} frames is not a positive multiple of aligned={aligned}")
    if h < patch or w < patch:
        raise ValueError(f"a {h}x{w} frame is smaller than a {patch}x{patch} fragment patch")
    size = grid * patch
    video = upsample_if_small(frames, size)
    hs, ws = grid_origins(h, grid, patch), grid_origins(w, grid, patch)  # from the size before upsampling
    dh, dw = fragment_offsets(h, w, t // aligned, generator, grid, patch)
    out = np.zeros((t, size, size, 3), dtype=np.uint8)
    for i, oh in enumerate(hs):
        for j, ow in enumerate(ws):
            for c in range(t // aligned):
                y, x = oh + int(dh[i, j, c]), ow + int(dw[i, j, c])
                out[c * aligned:(c + 1) * aligned, i * patch:(i + 1) * patch, j * patch:(j + 1) * patch] = (
                    video[c * aligned:(c + 1) * aligned, y:y + patch, x:x + patch]
                )
    return out
