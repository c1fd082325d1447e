"""VTSS: the Koala-36M Training Suitability Assessment network (protocol §2.1.5), our own implementation.

The network is a FAST-VQA style ``DiViDeAddEvaluator`` with a single ``fragments`` branch:

* ``fragments_backbone`` -- a Video Swin-T (``swin_tiny_grpb``: patch 2x4x4, embed 96, depths
  2/2/6/2, heads 3/6/12/24, window 8x7x7, MLP ratio 4, qkv bias, patch norm) whose first three
  stages carry a second, *fragment* relative-position table that a gate mixes in
  (gated relative position bias, below);
* ``vqa_head`` -- two 1x1x1 convolutions 768 -> 64 -> 1 with a GELU between them (dropout is a
  no-op at inference), giving a quality *map* ``(B, 1, T/2, H/32, W/32)``.

Parameter and buffer names follow the official checkpoint (``infer.pth``, weights under
``state_dict``), so :func:`load_vtss_checkpoint` loads it with ``strict=True``; the persistent
``relative_position_index`` buffers are part of that layout.

Gated relative position bias (per attention window of ``N`` tokens, per head): every token has the
coordinates ``(d, i, j)`` of the spatial fragment it came from on the 1x7x7 fragment grid (nearest
resampling of the grid to the token map, rolled with the shifted window). For tokens ``p, q``,
``g_pq = |d_p - d_q| + |i_p - i_q| + |j_p - j_q|`` (an integer, 0 within one fragment) and the bias is
``B_pq = R_pq * g_pq + F_pq * (1 - g_pq)`` where ``R`` / ``F`` are looked up in the relative / fragment
tables with the usual Swin relative index. Stage 4 has no fragment table and uses ``R`` alone. As in
the reference, when a window is shrunk to the feature size the first ``N x N`` entries of the
full-window index are used.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from narrastream.metrics.backbones.execution import Execution, as_device_tensor
from narrastream.metrics.backbones.weights import load_state_strict

#: the checkpoint stores the weights under this key
CHECKPOINT_KEY = "state_dict"
#: ImageNet statistics on the 0..255 scale, applied to the assembled fragments
MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
STD: tuple[float, float, float] = (58.395, 57.12, 57.375)
#: the fragment grid the gated bias assumes (1 temporal x 7 x 7 spatial fragments)
FRAGMENT_GRID: tuple[int, int, int] = (1, 7, 7)

#: architecture hyper-parameters per ``arch``; ``full`` is ``swin_tiny_grpb`` + the 768/64 head
ARCHS: dict[str, dict[str, Any]] = {
    "full": dict(patch_size=(2, 4, 4), embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                 window_size=(8, 7, 7), frag_biases=(True, True, True, False), head_hidden=64),
    "tiny": dict(patch_size=(2, 4, 4), embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
                 window_size=(2, 3, 3), frag_biases=(True, True, True, False), head_hidden=8),
}


# ------------------------------------------------------------------------------- window helpers
def _partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """``(B, D, H, W, C)`` -> ``(B * windows, wd * wh * ww, C)``, windows in (d, h, w) raster order."""
    b, d, h, w, c = x.shape
    wd, wh, ww = window
    x = x.view(b, d // wd, wd, h // wh, wh, w // ww, ww, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, wd * wh * ww, c)


def _merge(windows: torch.Tensor, window: Sequence[int], b: int, d: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`_partition`."""
    wd, wh, ww = window
    x = windows.view(b, d // wd, h // wh, w // ww, wd, wh, ww, -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, -1)


def effective_window(size: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A window dimension not smaller than the feature map shrinks to it and loses its shift.

    >>> effective_window((16, 7, 7), (8, 7, 7), (4, 3, 3))
    ((8, 7, 7), (4, 0, 0))
    """
    win, sh = list(window), list(shift)
    for i, s in enumerate(size):
        if s <= window[i]:
            win[i], sh[i] = s, 0
    return tuple(win), tuple(sh)


def relative_index(window: Sequence[int]) -> torch.Tensor:
    """Swin's ``(N, N)`` index into a ``(2wd-1)(2wh-1)(2ww-1)`` table for a window of N tokens."""
    wd, wh, ww = window
    grid = torch.stack(torch.meshgrid(torch.arange(wd), torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
    rel = (grid[:, :, None] - grid[:, None, :]).permute(1, 2, 0)
    rel = rel + torch.tensor([wd - 1, wh - 1, ww - 1])
    return rel[..., 0] * (2 * wh - 1) * (2 * ww - 1) + rel[..., 1] * (2 * ww - 1) + rel[..., 2]


@lru_cache(maxsize=64)
def shift_mask(d: int, h: int, w: int, window: tuple[int, ...], shift: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``(windows, N, N)`` additive mask (0 / -100) for shifted windows, regions as in Swin.

    A dimension with shift 0 yields a single region (its three slices collapse), as in the reference.
    """
    labels = torch.zeros((1, d, h, w, 1), device=device)
    count = 0
    spans = [(slice(-win), slice(-win, -s), slice(-s, None)) for win, s in zip(window, shift)]
    for sd in spans[0]:
        for sh in spans[1]:
            for sw in spans[2]:
                labels[:, sd, sh, sw, :] = count
                count += 1
    flat = _partition(labels, window).squeeze(-1)
    diff = flat.unsqueeze(1) - flat.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


@lru_cache(maxsize=64)
def fragment_gate(d: int, h: int, w: int, window: tuple[int, ...], shift: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``(windows, N, N)`` gate ``g_pq``: L1 distance between the fragment coordinates of tokens p, q."""
    axes = [torch.arange(n) for n in FRAGMENT_GRID]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij")).float()[None].to(device)
    coords = F.interpolate(grid, size=(d, h, w), mode="nearest").long().permute(0, 2, 3, 4, 1)
    coords = torch.roll(coords, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
    flat = _partition(coords, window)
    return (flat[:, None, :] - flat[:, :, None]).abs().sum(-1)


# ------------------------------------------------------------------------------------ modules
class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention3D(nn.Module):
    """Window multi-head self-attention with a relative (and optionally a gated fragment) position bias."""

    def __init__(self, dim: int, window: Sequence[int], num_heads: int, frag_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        entries = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(entries, num_heads))
        if frag_bias:
            self.fragment_position_bias_table = nn.Parameter(torch.zeros(entries, num_heads))
        self.register_buffer("relative_position_index", relative_index(window))
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _bias(self, table: torch.Tensor, n: int) -> torch.Tensor:
        return table[self.relative_position_index[:n, :n].reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, gate: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        bias = self._bias(self.relative_position_bias_table, n).unsqueeze(0)  # (1, nH, N, N)
        if hasattr(self, "fragment_position_bias_table"):
            g = gate.unsqueeze(1).to(bias.dtype)  # (nW, 1, N, N)
            bias = bias * g + self._bias(self.fragment_position_bias_table, n) * (1 - g)
        windows = gate.shape[0]
        attn = (attn.view(b_ // windows, windows, self.num_heads, n, n) + bias.unsqueeze(0)).view(-1, self.num_heads, n, n)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(b_ // nw, nw, self.num_heads, n, n) + mask.to(attn.dtype)[None, :, None]).view(-1, self.num_heads, n, n)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b_, n, c))


class SwinBlock3D(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: Sequence[int], shift: Sequence[int], frag_bias: bool) -> None:
        super().__init__()
        self.window, self.shift = tuple(window), tuple(shift)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, window, num_heads, frag_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)

    def _attend(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, d, h, w, c = x.shape
        window, shift = effective_window((d, h, w), self.window, self.shift)
        x = self.norm1(x)
        pads = [(window[i] - s % window[i]) % window[i] for i, s in enumerate((d, h, w))]
        x = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        _, dp, hp, wp, _ = x.shape
        shifted = any(s > 0 for s in shift)
        if shifted:
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        gate = fragment_gate(dp, hp, wp, window, shift, x.device)
        out = self.attn(_partition(x, window), gate, mask if shifted else None)
        x = _merge(out.view(-1, *window, c), window, b, dp, hp, wp)
        if shifted:
            x = torch.roll(x, shifts=shift, dims=(1, 2, 3))
        return x[:, :d, :h, :w, :].contiguous()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self._attend(x, mask)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w, _ = x.shape
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class Stage(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, window: Sequence[int], frag_bias: bool, downsample: bool) -> None:
        super().__init__()
        self.window = tuple(window)
        self.shift = tuple(s // 2 for s in window)
        self.blocks = nn.ModuleList(
            SwinBlock3D(dim, num_heads, window, (0, 0, 0) if i % 2 == 0 else self.shift, frag_bias) for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, D, H, W) -> (B, C', D, H', W')
        _, _, d, h, w = x.shape
        window, shift = effective_window((d, h, w), self.window, self.shift)
        padded = [int(np.ceil(s / window[i])) * window[i] for i, s in enumerate((d, h, w))]
        mask = shift_mask(*padded, window, shift, x.device)
        x = x.permute(0, 2, 3, 4, 1)
        for block in self.blocks:
            x = block(x, mask)
        if self.downsample is not None:
            x = self.downsample(x)
        return x.permute(0, 4, 1, 2, 3)


class PatchEmbed3D(nn.Module):
    def __init__(self, patch: Sequence[int], dim: int) -> None:
        super().__init__()
        self.patch = tuple(patch)
        self.proj = nn.Conv3d(3, dim, kernel_size=self.patch, stride=self.patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, d, h, w = x.shape
        pd, ph, pw = [(p - s % p) % p for p, s in zip(self.patch, (d, h, w))]
        if pd or ph or pw:
            x = F.pad(x, (0, pw, 0, ph, 0, pd))
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class VideoSwinGRPB(nn.Module):
    """Video Swin Transformer with gated relative position bias (``swin_tiny_grpb`` at the full size)."""

    def __init__(self, *, patch_size: Sequence[int], embed_dim: int, depths: Sequence[int], num_heads: Sequence[int],
                 window_size: Sequence[int], frag_biases: Sequence[bool]) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed3D(patch_size, embed_dim)
        self.layers = nn.ModuleList(
            Stage(embed_dim * 2 ** i, depths[i], num_heads[i], window_size, bool(frag_biases[i]), i < len(depths) - 1)
            for i in range(len(depths))
        )
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, T, H, W) -> (B, C, T/2, H/32, W/32)
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x.contiguous())
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class VQAHead(nn.Module):
    """1x1x1 conv MLP: features ``(B, C, D, H, W)`` -> quality map ``(B, 1, D, H, W)``."""

    def __init__(self, in_channels: int = 768, hidden_channels: int = 64) -> None:
        super().__init__()
        self.fc_hid = nn.Conv3d(in_channels, hidden_channels, 1)
        self.fc_last = nn.Conv3d(hidden_channels, 1, 1)
        self.gelu = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_last(self.gelu(self.fc_hid(x)))


class VTSSEvaluator(nn.Module):
    """``DiViDeAddEvaluator`` with the single ``fragments`` branch and a shared ``vqa_head``."""

    def __init__(self, arch: str = "full") -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown VTSS architecture {arch!r}; expected one of {sorted(ARCHS)}")
        cfg = dict(ARCHS[arch])
        hidden = cfg.pop("head_hidden")
        self.arch = arch
        self.fragments_backbone = VideoSwinGRPB(**cfg)
        self.vqa_head = VQAHead(self.fragments_backbone.num_features, hidden)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """Normalised clips ``(B, 3, T, H, W)`` -> quality map ``(B, 1, T/2, H/32, W/32)`` (``reduce_scores=False``)."""
        return self.vqa_head(self.fragments_backbone(clips))


def build_vtss(arch: str = "full") -> VTSSEvaluator:
    """The VTSS network with fresh weights: ``full`` (the official architecture) or ``tiny`` (tests)."""
    return VTSSEvaluator(arch).eval()


def load_vtss_checkpoint(path: Path | str, arch: str = "full") -> VTSSEvaluator:
    """Build ``arch`` and load the official-layout checkpoint ``{"state_dict": ...}`` strictly.

    A ``module.`` prefix (a DataParallel save) is removed. Any missing, unexpected or mis-shaped
    tensor raises a ValueError that lists them.
    """
    path = Path(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get(CHECKPOINT_KEY), Mapping):
        keys = list(checkpoint)[:10] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(f"{path}: expected the weights under {CHECKPOINT_KEY!r}, found {keys}")
    state = {str(k).removeprefix("module."): v for k, v in checkpoint[CHECKPOINT_KEY].items()}
    return load_state_strict(VTSSEvaluator(arch), state, path, f"VTSS-{arch}")


# ---------------------------------------------------------------------------------- for metrics
class QualityScorer:
    """VTSS with the official input handling: assembled uint8 fragments in, the raw score out."""

    def __init__(self, module: nn.Module, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 execution: Execution | None = None) -> None:
        self.module = module.eval()
        self.device = torch.device(device)
        self.dtype = dtype
        self.execution = execution or Execution(device=self.device, batch_size=4)

    @staticmethod
    def normalise(clips: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(K, T, S, S, 3)`` uint8 -> ``(K, 3, T, S, S)`` float32, ``(x - MEAN) / STD`` per channel, on the
        clips' device (the same float32 operations everywhere)."""
        x = clips if isinstance(clips, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(clips))
        x = x.float()
        x = (x - torch.tensor(MEAN, device=x.device)) / torch.tensor(STD, device=x.device)
        return x.permute(0, 4, 1, 2, 3).contiguous()

    def quality_maps(self, clips: np.ndarray, batch_size: int | None = None) -> list[torch.Tensor]:
        """One float32 CPU quality map ``(1, T/2, S/32, S/32)`` per clip; ``batch_size`` clips per forward
        (default: the configured one). The uint8 clips travel to the device, normalised there."""
        clips = np.asarray(clips)
        if clips.ndim != 5 or clips.shape[-1] != 3 or clips.dtype != np.uint8:
            raise ValueError(f"clips must be a (K, T, S, S, 3) uint8 array, got {clips.dtype} {clips.shape}")
        size = self.execution.batch_for(requested=batch_size)

        def step(start: int, stop: int) -> list[torch.Tensor]:
            x = self.normalise(as_device_tensor(clips[start:stop], self.device)).to(self.dtype)
            return list(self.module(x).float().cpu())

        with self.execution.running(len(clips)):
            return [m for maps in self.execution.map(len(clips), step, size) for m in maps]

    def score(self, clips: np.ndarray, batch_size: int | None = None) -> float:
        """The raw VTSS score: the mean of the quality map over all clips (all maps have one size)."""
        maps = self.quality_maps(clips, batch_size)
        if not maps:
            raise ValueError("no clip to score")
        return float(torch.stack(maps).double().mean())
