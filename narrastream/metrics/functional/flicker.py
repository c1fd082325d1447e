r"""temporal_flickering (protocol §2.1.3), as pure functions of frames and optical flow.

For a pair of frames :math:`(a, b)` with forward flow :math:`F = \mathrm{RAFT}(a \to b)` and backward
flow :math:`B = \mathrm{RAFT}(b \to a)`, the luma of :math:`b` is warped back onto :math:`a` along
:math:`F`; the pair's error is the 90th percentile of the photometric residual over the pixels where
the flow is trustworthy (forward-backward consistent and in bounds). A segment's raw error is the
84th percentile of its pair errors, and its score :math:`\exp(-\text{raw}/\tau)`.

As in the official code, residuals and the pair percentile are float32 (``np.percentile``, linear);
the segment reduction and the score are Python floats.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from narrastream.protocol.pooling import percentile_linear

#: ITU-R BT.601 luma weights of R, G, B
LUMA_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)


def luma(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    r"""Luma :math:`Y = 0.299R + 0.587G + 0.114B` on the 0-255 scale, ``(N, 1, H, W)`` float32.

    Args:
        frames: ``(N, H, W, 3)`` RGB, uint8 or float on the 0-255 scale.

    Example:
        >>> luma(np.array([[[[255, 0, 0], [0, 255, 0], [0, 0, 255], [100, 100, 100]]]], dtype=np.uint8)).flatten()
        tensor([ 76.2450, 149.6850,  29.0700, 100.0000])
    """
    x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames).float()
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"frames must be (N, H, W, 3), got shape {tuple(x.shape)}")
    r, g, b = x.unbind(-1)
    return (LUMA_WEIGHTS[0] * r + LUMA_WEIGHTS[1] * g + LUMA_WEIGHTS[2] * b).unsqueeze(1)


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Sample ``image`` at :math:`(x + F_x, y + F_y)`; also say which sample points are in bounds.

    ``grid_sample`` with bilinear interpolation, ``padding_mode="border"`` and ``align_corners=True``
    (pixel :math:`x` maps to :math:`2x/(W-1) - 1`). A point is in bounds when
    :math:`0 \le x + F_x \le W-1` and :math:`0 \le y + F_y \le H-1`.

    Args:
        image: ``(N, C, H, W)`` float.
        flow: ``(N, 2, H, W)`` displacement in pixels, channel 0 along x (width), 1 along y.

    Returns:
        ``(warped (N, C, H, W), in_bounds (N, H, W) bool)``.

    Example:
        >>> image = torch.arange(4.0).view(1, 1, 1, 4)           # 0 1 2 3 along x
        >>> flow = torch.zeros(1, 2, 1, 4); flow[:, 0] = 1.0     # look one pixel to the right
        >>> warped, inside = backward_warp(image, flow)
        >>> warped.flatten().tolist(), inside.flatten().tolist()  # the border pixel is repeated
        ([1.0, 2.0, 3.0, 3.0], [True, True, True, False])
    """
    if image.ndim != 4 or flow.ndim != 4 or flow.shape[1] != 2 or image.shape[-2:] != flow.shape[-2:]:
        raise ValueError(f"need image (N, C, H, W) and flow (N, 2, H, W), got {tuple(image.shape)} and {tuple(flow.shape)}")
    n, _, h, w = flow.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=flow.dtype, device=flow.device),
                            torch.arange(w, dtype=flow.dtype, device=flow.device), indexing="ij")
    x = xs + flow[:, 0]
    y = ys + flow[:, 1]
    in_bounds = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    grid = torch.stack((2.0 * x / max(w - 1, 1) - 1.0, 2.0 * y / max(h - 1, 1) - 1.0), dim=-1)
    warped = F.grid_sample(image.to(flow.dtype), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return warped, in_bounds


def fb_consistency_mask(
    forward: torch.Tensor, backward_warped: torch.Tensor, in_bounds: torch.Tensor, alpha: float, beta: float
) -> torch.Tensor:
    r"""Forward-backward consistency: :math:`|F + \tilde B|^2 < \alpha(|F|^2 + |\tilde B|^2) + \beta`, and in bounds.

    :math:`\tilde B` is the backward flow warped onto the first frame along :math:`F`; for a
    consistent flow it cancels :math:`F`. Protocol constants: :math:`\alpha = 0.01`, :math:`\beta = 0.5`.

    Returns:
        ``(N, H, W)`` bool.

    Example:
        >>> fw = torch.tensor([3.0, 0.0, 3.0, 3.0]).view(1, 2, 1, 2)     # (3, 3) and (0, 3) pixels
        >>> bw = torch.tensor([-3.0, 1.0, -2.4, -3.0]).view(1, 2, 1, 2)  # |F + B~|^2 = 0.36 and 1.0
        >>> fb_consistency_mask(fw, bw, torch.ones(1, 1, 2, dtype=torch.bool), 0.01, 0.5).tolist()
        [[[True, False]]]
    """
    total = ((forward + backward_warped) ** 2).sum(dim=1)
    magnitudes = (forward**2).sum(dim=1) + (backward_warped**2).sum(dim=1)
    return (total < alpha * magnitudes + beta) & in_bounds


def select_valid_mask(
    consistency: torch.Tensor, in_bounds: torch.Tensor, min_mask_ratio: float
) -> tuple[torch.Tensor | None, str]:
    r"""The pixels a pair is scored on, and which rule chose them.

    The consistency mask when its share of all pixels is :math:`\ge` ``min_mask_ratio`` (0.05);
    else the in-bounds mask when any pixel is in bounds (``"in_bounds"``, the official
    ``mask_fallback``); else None (``"skipped"``: the pair is not scored).

    Example:
        >>> inside = torch.tensor([True, True, True, False])
        >>> select_valid_mask(torch.tensor([True, False, False, False]), inside, 0.25)[1]
        'consistency'
        >>> select_valid_mask(torch.tensor([True, False, False, False]), inside, 0.26)[1]
        'in_bounds'
        >>> select_valid_mask(torch.zeros(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool), 0.05)
        (None, 'skipped')
    """
    if consistency.numel() and consistency.double().mean().item() >= min_mask_ratio:
        return consistency, "consistency"
    if in_bounds.numel() and bool(in_bounds.any()):
        return in_bounds, "in_bounds"
    return None, "skipped"


def masked_percentile(values: torch.Tensor, mask: torch.Tensor, q: float) -> float:
    r"""The ``q`` quantile (linear interpolation, ``np.percentile``'s default) of ``values[mask]`` in float32.

    Example:
        >>> masked_percentile(torch.arange(11.0), torch.ones(11, dtype=torch.bool), 0.9)
        9.0
        >>> round(masked_percentile(torch.tensor([0.0, 1.0, 5.0]), torch.tensor([True, True, False]), 0.9), 6)
        0.9
    """
    if values.device.type != "cpu":
        return _device_percentile(values[mask].detach().float(), q)
    selected = values[mask].detach().cpu().numpy().astype(np.float32, copy=False)
    if selected.size == 0:
        raise ValueError("percentile over an empty mask")
    return float(np.percentile(selected, 100.0 * q))


def _device_percentile(selected: torch.Tensor, q: float) -> float:
    """``np.percentile(selected, 100 q)`` (float32, linear) with the sort on the device: only the two order
    statistics come to the host, where numpy interpolates them exactly as it would the whole array."""
    n = selected.numel()
    if n == 0:
        raise ValueError("percentile over an empty mask")
    position = (n - 1) * ((100.0 * q) / 100.0)  # numpy's virtual index (percent -> fraction, times n - 1)
    lower = min(int(math.floor(position)), n - 1)
    upper = min(lower + 1, n - 1)
    ordered = torch.sort(selected.reshape(-1)).values
    pair = ordered[[lower, upper]].cpu().numpy().astype(np.float32, copy=False)
    return float(np.quantile(pair, position - lower))


def pair_flicker_error(
    luma_a: torch.Tensor,
    luma_b: torch.Tensor,
    forward: torch.Tensor,
    backward: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    min_mask_ratio: float,
    quantile: float,
) -> tuple[float | None, dict[str, Any]]:
    r"""One pair's raw error: the ``quantile`` (p90) of :math:`r = |Y_a - \mathrm{warp}(Y_b)| / 255` over the valid mask.

    :math:`Y_b` and :math:`B` are warped along :math:`F` in one ``grid_sample``; the valid mask is
    chosen by :func:`select_valid_mask` from :func:`fb_consistency_mask`.

    Args:
        luma_a, luma_b: ``(1, H, W)`` or ``(H, W)`` luma on the 0-255 scale.
        forward, backward: ``(2, H, W)`` flows a->b and b->a.

    Returns:
        ``(error or None when the pair is skipped, {mask, consistency_ratio, in_bounds_ratio})``.

    Example (a pure translation by one pixel, where the warp is exact):
        >>> ya = torch.arange(5.0).repeat(3, 1) * 10                 # a horizontal ramp
        >>> yb = torch.roll(ya, shifts=1, dims=1)                     # b(x+1) = a(x) for x < 4
        >>> fw = torch.zeros(2, 3, 5); fw[0] = 1.0
        >>> error, info = pair_flicker_error(ya, yb, fw, -fw, alpha=0.01, beta=0.5, min_mask_ratio=0.05, quantile=0.9)
        >>> error, info["mask"], info["in_bounds_ratio"]
        (0.0, 'consistency', 0.8)
    """
    ya = luma_a.reshape(1, 1, *luma_a.shape[-2:])
    yb = luma_b.reshape(1, 1, *luma_b.shape[-2:])
    fw = forward.reshape(1, 2, *forward.shape[-2:])
    bw = backward.reshape(1, 2, *backward.shape[-2:])
    return pair_flicker_errors(ya, yb, fw, bw, alpha=alpha, beta=beta, min_mask_ratio=min_mask_ratio,
                               quantile=quantile)[0]


def pair_flicker_errors(
    luma_a: torch.Tensor,
    luma_b: torch.Tensor,
    forward: torch.Tensor,
    backward: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    min_mask_ratio: float,
    quantile: float,
) -> list[tuple[float | None, dict[str, Any]]]:
    r""":func:`pair_flicker_error` of ``N`` pairs at once, on the tensors' device (one warp for all pairs; the
    same per-pixel operations, so the same numbers up to float rounding; only per-pair statistics reach the host).

    Args:
        luma_a, luma_b: ``(N, 1, H, W)`` luma on the 0-255 scale.
        forward, backward: ``(N, 2, H, W)`` flows a->b and b->a.

    Example:
        >>> ya = torch.arange(5.0).repeat(3, 1).view(1, 1, 3, 5) * 10
        >>> fw = torch.zeros(1, 2, 3, 5); fw[:, 0] = 1.0
        >>> [(e, i["mask"]) for e, i in pair_flicker_errors(ya, ya.roll(1, -1), fw, -fw, alpha=0.01, beta=0.5,
        ...                                                  min_mask_ratio=0.05, quantile=0.9)]
        [(0.0, 'consistency')]
    """
    ya, yb, fw, bw = (x.float() for x in (luma_a, luma_b, forward, backward))
    if len(fw) == 0:
        return []
    warped, in_bounds = backward_warp(torch.cat((yb, bw), dim=1), fw)
    residual = (ya - warped[:, :1]).abs() / 255.0
    consistency = fb_consistency_mask(fw, warped[:, 1:], in_bounds, alpha, beta)
    consistency_ratios = consistency.flatten(1).double().mean(dim=1).tolist()
    in_bounds_ratios = in_bounds.flatten(1).double().mean(dim=1).tolist()
    out: list[tuple[float | None, dict[str, Any]]] = []
    for i, (c_ratio, b_ratio) in enumerate(zip(consistency_ratios, in_bounds_ratios)):
        info: dict[str, Any] = {"consistency_ratio": float(c_ratio), "in_bounds_ratio": float(b_ratio)}
        if c_ratio >= min_mask_ratio:  # select_valid_mask, from the ratios already computed
            mask, info["mask"] = consistency[i], "consistency"
        elif b_ratio > 0:
            mask, info["mask"] = in_bounds[i], "in_bounds"
        else:
            out.append((None, {"mask": "skipped", **info}))
            continue
        out.append((masked_percentile(residual[i, 0], mask, quantile), {"mask": info.pop("mask"), **info}))
    return out


def segment_raw_error(pair_errors: Sequence[float], quantile: float) -> float | None:
    r"""A segment's raw error: the ``quantile`` (p84) of its scored pairs' errors; None when none was scored.

    Example:
        >>> segment_raw_error([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6], 0.84)  # 0.96 s(5) + 0.04 s(6)
        0.504
        >>> segment_raw_error([], 0.84) is None
        True
    """
    if not pair_errors:
        return None
    return percentile_linear(pair_errors, quantile)


def flicker_score(raw: float, tau: float) -> float:
    r"""The segment score :math:`\exp(-\text{raw} / \tau)` (``score_mapping: exp``, :math:`\tau = 0.5`).

    Example:
        >>> round(flicker_score(0.5, 0.5), 12) == round(math.exp(-1.0), 12)
        True
    """
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    return math.exp(-float(raw) / float(tau))
