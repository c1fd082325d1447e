r"""AMT-S video frame interpolation (Li et al., CVPR 2023) for motion_smoothness (protocol §2.1.4).

The official evaluator runs the MCG-NKU AMT code (``networks/AMT-S.py``, as vendored by VBench) with
the ``amt-s.pth`` checkpoint. This module is our own implementation of that network; its module tree
reproduces the original parameter names and shapes, so the checkpoint loads strictly
(:func:`load_amt_checkpoint`). The file stores the model's state dict under the key ``"state_dict"``
(:data:`CHECKPOINT_KEY`), as the official loader reads it (``model.load_state_dict(ckpt["state_dict"])``).

Network (AMT-S: ``corr_radius=3, corr_lvls=4, num_flows=3, channels=[20, 32, 44, 56], skip_channels=20``):

* ``feat_encoder``: a RAFT "small" encoder (7x7 stride-2 stem of 32 channels, three stages of two
  bottleneck blocks of 32 / 64 / 96 channels, a 1x1 projection to 84), instance-normalised (so it has
  no normalisation parameters), 1/8 resolution; the two frames' feature maps give a bidirectional
  all-pairs correlation volume with a 4-level average-pooled pyramid, looked up in a
  :math:`(2r+1)^2` window (:class:`BidirCorrBlock`).
* ``encoder``: an IFRNet-style 4-level pyramid (two conv+PReLU per level, stride 2) of 20/32/44/56 channels.
* ``decoder4`` (1/16 -> 1/8), ``decoder3`` (-> 1/4), ``decoder2`` (-> 1/2): predict the two flows
  :math:`t \to 0, t \to 1` and an intermediate feature, each followed by a correlation-guided
  residual update (``update4/3/2``, :class:`SmallUpdateBlock`; the lookup assumes linear motion and
  rescales the flows by :math:`1/t` and :math:`1/(1-t)`).
* ``decoder1``: full resolution, ``num_flows`` flow pairs with blending masks and residuals, merged
  by warping both frames along every flow pair and the small ``comb_block`` CNN (:func:`multi_flow_combine`).

Input handling of the official metric (:class:`Interpolator`): frames /255 (float32), replicate
padding centred on the frame to a multiple of ``16 / scale``, one forward pass at ``embt = 0.5``,
unpadding, then ``x255``, clip to [0, 255] and a **truncating** cast to uint8
(:func:`~narrastream.metrics.functional.motion.prediction_to_uint8`).

``scale``: the official code shrinks the internal resolution when free VRAM is short
(:func:`official_scale`: :math:`s = \frac{1024 \cdot 512}{HW} \sqrt{\max(\text{free} - 2500\,\text{MiB}, 1) / 1500\,\text{MiB}}`,
capped at 1, then ``16 / floor(16 / sqrt(s))``), which makes the score depend on the GPU and on what
else runs on it. We **fix** ``scale = 1`` (what the official code gets on any GPU with about 3.4 GiB
free at 832x480, and on the CPU), so the score is a function of the video only; a different scale
can still be requested explicitly.

The ``tiny`` architecture (tests, ``backbones.size: tiny``) is the same network with narrow layers,
two flow pairs and a 2-level correlation pyramid of radius 2, so that 64x48 frames work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from narrastream.metrics.backbones.execution import Execution, IndexedFrames, as_device_tensor
from narrastream.metrics.backbones.weights import load_state_strict
from narrastream.metrics.functional.motion import prediction_to_uint8

#: architectures of :func:`build_amt`
AMT_ARCHITECTURES: tuple[str, ...] = ("s", "tiny")
#: the official checkpoint keeps the model's state dict under this key
CHECKPOINT_KEY = "state_dict"
#: inputs are padded to a multiple of ``PAD_BASE / scale`` (the coarsest pyramid level is 1/16)
PAD_BASE = 16
#: the interpolation time of motion_smoothness: the middle between two even frames
DEFAULT_EMBT = 0.5
DEFAULT_BATCH_SIZE = 4

_MIB = 1024**2


@dataclass(frozen=True)
class AMTConfig:
    """Widths of one AMT variant (the defaults are AMT-S, ``networks/AMT-S.py``)."""

    corr_radius: int = 3
    corr_levels: int = 4
    num_flows: int = 3
    channels: tuple[int, int, int, int] = (20, 32, 44, 56)
    skip_channels: int = 20
    #: stem and stage widths of the correlation feature encoder, and its output width
    feat_stem: int = 32
    feat_stages: tuple[int, int, int] = (32, 64, 96)
    feat_dim: int = 84
    #: update blocks: GRU-like hidden width, flow / correlation / fused feature widths
    hidden_dim: int = 76
    flow_dim: int = 20
    corr_dim: int = 64
    fc_dim: int = 68


AMT_CONFIGS: dict[str, AMTConfig] = {
    "s": AMTConfig(),
    "tiny": AMTConfig(
        corr_radius=2, corr_levels=2, num_flows=2, channels=(8, 12, 16, 20), skip_channels=4,
        feat_stem=8, feat_stages=(8, 12, 16), feat_dim=16, hidden_dim=16, flow_dim=8, corr_dim=16, fc_dim=16,
    ),
}


# --------------------------------------------------------------------------------- primitives
def resize(x: torch.Tensor, scale_factor: float) -> torch.Tensor:
    """Bilinear resize by ``scale_factor`` (``align_corners=False``), as every AMT block does."""
    return F.interpolate(x, scale_factor=scale_factor, mode="bilinear", align_corners=False)


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    r"""Backward-warp ``image`` by ``flow`` (pixels): sample at :math:`(x + f_x, y + f_y)`.

    Bilinear, border padding, ``align_corners=True``: the base grid is ``linspace(-1, 1, W)`` and the
    flow is normalised by :math:`(W-1)/2` (resp. :math:`(H-1)/2`).

    Example:
        >>> image = torch.arange(4.0).view(1, 1, 1, 4)
        >>> flow = torch.zeros(1, 2, 1, 4); flow[:, 0] = 1.0
        >>> warp(image, flow).flatten().tolist()
        [1.0, 2.0, 3.0, 3.0]
    """
    n, _, h, w = flow.shape
    gx = torch.linspace(-1.0, 1.0, w, dtype=flow.dtype, device=flow.device).view(1, 1, w).expand(n, h, w)
    gy = torch.linspace(-1.0, 1.0, h, dtype=flow.dtype, device=flow.device).view(1, h, 1).expand(n, h, w)
    gx = gx + flow[:, 0] / ((w - 1.0) / 2.0) if w > 1 else gx + 0 * flow[:, 0]
    gy = gy + flow[:, 1] / ((h - 1.0) / 2.0) if h > 1 else gy + 0 * flow[:, 1]
    grid = torch.stack((gx, gy), dim=-1).to(image.dtype)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def coords_grid(batch: int, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """Pixel coordinates ``(batch, 2, height, width)``: channel 0 is x, channel 1 is y."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return torch.stack((xs, ys)).float()[None].repeat(batch, 1, 1, 1)


def _sample_window(volume: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup (zero padding, ``align_corners=True``) of ``volume (N, 1, H, W)`` at pixel ``coords (N, h, w, 2)``."""
    h, w = volume.shape[-2:]
    x = 2.0 * coords[..., 0] / max(w - 1, 1) - 1.0  # a 1-pixel level: the original divides by 0 (sizes < 8 px at 1/8)
    y = 2.0 * coords[..., 1] / max(h - 1, 1) - 1.0
    return F.grid_sample(volume, torch.stack((x, y), dim=-1), align_corners=True)


class BidirCorrBlock:
    r"""All-pairs correlation of two 1/8 feature maps, both ways, with an average-pooled pyramid.

    :math:`C(p, q) = \langle f_0(p), f_1(q) \rangle / \sqrt{D}`; ``C`` is indexed by the positions of
    frame 0 and looked up around points in frame 1, its transpose the other way. A lookup at level
    :math:`l` samples the :math:`(2r+1)^2` window around :math:`c / 2^l`; as in RAFT, the window
    offsets are laid out with the *first* window index moving along x (channel ``i (2r+1) + j`` holds
    the offset :math:`(i - r, j - r)` in (x, y)), which the trained 1x1 ``convc1`` depends on.
    """

    def __init__(self, fmap0: torch.Tensor, fmap1: torch.Tensor, num_levels: int, radius: int) -> None:
        self.num_levels, self.radius = num_levels, radius
        b, d, h, w = fmap0.shape
        corr = torch.matmul(fmap0.reshape(b, d, h * w).transpose(1, 2), fmap1.reshape(b, d, h * w))
        corr = corr / torch.sqrt(torch.tensor(float(d)))
        level = corr.reshape(b * h * w, 1, h, w)
        level_t = corr.transpose(1, 2).reshape(b * h * w, 1, h, w)
        self.pyramid, self.pyramid_t = [level], [level_t]
        for _ in range(num_levels - 1):
            level, level_t = F.avg_pool2d(level, 2, stride=2), F.avg_pool2d(level_t, 2, stride=2)
            self.pyramid.append(level)
            self.pyramid_t.append(level_t)

    def _offsets(self, device: torch.device) -> torch.Tensor:
        r = self.radius
        steps = torch.linspace(-r, r, 2 * r + 1, device=device)
        first, second = torch.meshgrid(steps, steps, indexing="ij")
        return torch.stack((first, second), dim=-1).view(1, 2 * r + 1, 2 * r + 1, 2)  # (x, y) = (first, second)

    def __call__(self, coords0: torch.Tensor, coords1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Window correlations ``(B, levels (2r+1)^2, h, w)`` around ``coords0`` (in C) and ``coords1`` (in C^T)."""
        if coords0.shape != coords1.shape:
            raise ValueError(f"coordinate grids differ: {tuple(coords0.shape)} vs {tuple(coords1.shape)}")
        b, _, h, w = coords0.shape
        offsets = self._offsets(coords0.device)
        c0 = coords0.permute(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2)
        c1 = coords1.permute(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2)
        out0, out1 = [], []
        for level, (volume, volume_t) in enumerate(zip(self.pyramid, self.pyramid_t)):
            out0.append(_sample_window(volume, c0 / 2**level + offsets).view(b, h, w, -1))
            out1.append(_sample_window(volume_t, c1 / 2**level + offsets).view(b, h, w, -1))
        # the original casts to float32 (a no-op in its fp32 runs); keep the model's dtype so fp16 runs too
        return (
            torch.cat(out0, dim=-1).permute(0, 3, 1, 2).contiguous().to(coords0.dtype),
            torch.cat(out1, dim=-1).permute(0, 3, 1, 2).contiguous().to(coords0.dtype),
        )


# --------------------------------------------------------------------- correlation feature encoder
class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 residual block, instance-normalised (no norm parameters)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes // 4, kernel_size=1, padding=0)
        self.conv2 = nn.Conv2d(planes // 4, planes // 4, kernel_size=3, padding=1, stride=stride)
        self.conv3 = nn.Conv2d(planes // 4, planes, kernel_size=1, padding=0)
        self.norm1 = nn.InstanceNorm2d(planes // 4)
        self.norm2 = nn.InstanceNorm2d(planes // 4)
        self.norm3 = nn.InstanceNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1:
            self.norm4 = nn.InstanceNorm2d(planes)
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride), self.norm4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        y = self.relu(self.norm3(self.conv3(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class SmallEncoder(nn.Module):
    """RAFT's small feature encoder (instance norm): 1/8 resolution, ``output_dim`` channels."""

    def __init__(self, output_dim: int, stem: int, stages: Sequence[int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3)
        self.norm1 = nn.InstanceNorm2d(stem)
        self.relu1 = nn.ReLU(inplace=True)
        planes = stem
        for index, (width, stride) in enumerate(zip(stages, (1, 2, 2)), start=1):
            self.add_module(f"layer{index}", nn.Sequential(BottleneckBlock(planes, width, stride), BottleneckBlock(width, width, 1)))
            planes = width
        self.conv2 = nn.Conv2d(planes, output_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.norm1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.conv2(x)


# ------------------------------------------------------------------------ IFRNet-style blocks
def convrelu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=True), nn.PReLU(out_channels))


class ResBlock(nn.Module):
    """Residual block whose last ``side_channels`` channels get two extra side convolutions."""

    def __init__(self, in_channels: int, side_channels: int) -> None:
        super().__init__()
        self.side_channels = side_channels
        self.conv1 = convrelu(in_channels, in_channels)
        self.conv2 = convrelu(side_channels, side_channels)
        self.conv3 = convrelu(in_channels, in_channels)
        self.conv4 = convrelu(side_channels, side_channels)
        self.conv5 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1, bias=True)
        self.prelu = nn.PReLU(in_channels)

    def _side(self, out: torch.Tensor, conv: nn.Module) -> torch.Tensor:
        s = self.side_channels
        return torch.cat((out[:, :-s], conv(out[:, -s:])), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self._side(self.conv1(x), self.conv2))
        out = self.conv5(self._side(out, self.conv4))
        return self.prelu(x + out)


class Encoder(nn.Module):
    """The context pyramid: level ``k`` halves the resolution (conv stride 2 + conv, each with PReLU)."""

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.levels = len(channels)
        previous = 3
        for index, width in enumerate(channels, start=1):
            self.add_module(f"pyramid{index}", nn.Sequential(convrelu(previous, width, 3, 2, 1), convrelu(width, width, 3, 1, 1)))
            previous = width

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for index in range(1, self.levels + 1):
            x = getattr(self, f"pyramid{index}")(x)
            features.append(x)
        return features


class InitDecoder(nn.Module):
    """Coarsest decoder: both 1/16 features and the time -> flows t->0, t->1 and a feature at 1/8."""

    def __init__(self, in_ch: int, out_ch: int, skip_ch: int) -> None:
        super().__init__()
        self.convblock = nn.Sequential(
            convrelu(in_ch * 2 + 1, in_ch * 2), ResBlock(in_ch * 2, skip_ch),
            nn.ConvTranspose2d(in_ch * 2, out_ch + 4, 4, 2, 1, bias=True),
        )

    def forward(self, f0: torch.Tensor, f1: torch.Tensor, embt: torch.Tensor) -> tuple[torch.Tensor, ...]:
        t = embt.expand(f0.shape[0], 1, *f0.shape[2:])
        out = self.convblock(torch.cat((f0, f1, t), dim=1))
        return out[:, 0:2], out[:, 2:4], out[:, 4:]


class IntermediateDecoder(nn.Module):
    """Warps both frames' features by the current flows and refines flows and feature at twice the resolution."""

    def __init__(self, in_ch: int, out_ch: int, skip_ch: int) -> None:
        super().__init__()
        self.convblock = nn.Sequential(
            convrelu(in_ch * 3 + 4, in_ch * 3), ResBlock(in_ch * 3, skip_ch),
            nn.ConvTranspose2d(in_ch * 3, out_ch + 4, 4, 2, 1, bias=True),
        )

    def forward(self, ft: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor,
                flow0: torch.Tensor, flow1: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.convblock(torch.cat((ft, warp(f0, flow0), warp(f1, flow1), flow0, flow1), dim=1))
        return (out[:, 0:2] + 2.0 * resize(flow0, 2.0), out[:, 2:4] + 2.0 * resize(flow1, 2.0), out[:, 4:])


class MultiFlowDecoder(nn.Module):
    """Full-resolution decoder: ``num_flows`` flow pairs, their blending masks (sigmoid) and RGB residuals."""

    def __init__(self, in_ch: int, skip_ch: int, num_flows: int) -> None:
        super().__init__()
        self.num_flows = num_flows
        self.convblock = nn.Sequential(
            convrelu(in_ch * 3 + 4, in_ch * 3), ResBlock(in_ch * 3, skip_ch),
            nn.ConvTranspose2d(in_ch * 3, 8 * num_flows, 4, 2, 1, bias=True),
        )

    def forward(self, ft: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor,
                flow0: torch.Tensor, flow1: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = self.num_flows
        out = self.convblock(torch.cat((ft, warp(f0, flow0), warp(f1, flow1), flow0, flow1), dim=1))
        delta0, delta1, mask, residual = torch.split(out, [2 * n, 2 * n, n, 3 * n], dim=1)
        flow0 = delta0 + 2.0 * resize(flow0, 2.0).repeat(1, n, 1, 1)
        flow1 = delta1 + 2.0 * resize(flow1, 2.0).repeat(1, n, 1, 1)
        return flow0, flow1, torch.sigmoid(mask), residual


class SmallUpdateBlock(nn.Module):
    """Correlation-guided residual update of an intermediate feature and the two flows.

    With ``scale_factor`` s, the update runs at 1/8 resolution (inputs resized by 1/s) and its
    outputs are resized back (the flow also multiplied by s).
    """

    def __init__(self, cdim: int, hidden_dim: int, flow_dim: int, corr_dim: int, fc_dim: int,
                 corr_levels: int, radius: int, scale_factor: int | None = None) -> None:
        super().__init__()
        corr_planes = corr_levels * (2 * radius + 1) ** 2
        self.scale_factor = scale_factor
        self.convc1 = nn.Conv2d(2 * corr_planes, corr_dim, 1, padding=0)
        self.convf1 = nn.Conv2d(4, flow_dim * 2, 7, padding=3)
        self.convf2 = nn.Conv2d(flow_dim * 2, flow_dim, 3, padding=1)
        self.conv = nn.Conv2d(corr_dim + flow_dim, fc_dim, 3, padding=1)

        def head(out: int, first_in: int = hidden_dim) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(first_in, hidden_dim, 3, padding=1), nn.LeakyReLU(0.1, inplace=True),
                nn.Conv2d(hidden_dim, out, 3, padding=1),
            )

        self.gru = head(hidden_dim, fc_dim + 4 + cdim)
        self.feat_head = head(cdim)
        self.flow_head = head(4)
        self.lrelu = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, net: torch.Tensor, flow: torch.Tensor, corr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.scale_factor
        if s is not None:
            net = resize(net, 1 / s)
        motion = torch.cat((self.lrelu(self.convc1(corr)), self.lrelu(self.convf2(self.lrelu(self.convf1(flow))))), dim=1)
        hidden = self.gru(torch.cat((self.lrelu(self.conv(motion)), flow, net), dim=1))
        delta_net, delta_flow = self.feat_head(hidden), self.flow_head(hidden)
        if s is not None:
            delta_net = resize(delta_net, s)
            delta_flow = s * resize(delta_flow, s)
        return delta_net, delta_flow


def multi_flow_combine(comb_block: nn.Module, img0: torch.Tensor, img1: torch.Tensor, flow0: torch.Tensor,
                       flow1: torch.Tensor, mask: torch.Tensor, img_res: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    r"""Merge the ``n`` candidate frames :math:`m_k W(I_0, F^0_k) + (1 - m_k) W(I_1, F^1_k) + \mu + r_k`.

    The prediction is their mean plus ``comb_block`` applied to all of them stacked on channels.
    """
    b, c, h, w = flow0.shape
    n = c // 2
    flow0 = flow0.reshape(b * n, 2, h, w)
    flow1 = flow1.reshape(b * n, 2, h, w)
    mask = mask.reshape(b * n, 1, h, w)
    img_res = img_res.reshape(b * n, 3, h, w)
    img0 = img0.unsqueeze(1).expand(b, n, 3, h, w).reshape(b * n, 3, h, w)
    img1 = img1.unsqueeze(1).expand(b, n, 3, h, w).reshape(b * n, 3, h, w)
    mean = mean.reshape(b, 1, 1, 1, 1).expand(b, n, 1, 1, 1).reshape(b * n, 1, 1, 1)
    candidates = (mask * warp(img0, flow0) + (1 - mask) * warp(img1, flow1) + mean + img_res).reshape(b, n, 3, h, w)
    return candidates.mean(1) + comb_block(candidates.reshape(b, n * 3, h, w))


# ------------------------------------------------------------------------------------- network
class AMT(nn.Module):
    """AMT frame interpolation; ``forward(img0, img1, embt)`` predicts the frame at time ``embt`` in [0, 1]."""

    def __init__(self, config: AMTConfig = AMTConfig()) -> None:
        super().__init__()
        self.config = config
        c = config
        ch = c.channels
        self.radius, self.corr_levels, self.num_flows = c.corr_radius, c.corr_levels, c.num_flows
        self.feat_encoder = SmallEncoder(c.feat_dim, c.feat_stem, c.feat_stages)
        self.encoder = Encoder(ch)
        self.decoder4 = InitDecoder(ch[3], ch[2], c.skip_channels)
        self.decoder3 = IntermediateDecoder(ch[2], ch[1], c.skip_channels)
        self.decoder2 = IntermediateDecoder(ch[1], ch[0], c.skip_channels)
        self.decoder1 = MultiFlowDecoder(ch[0], c.skip_channels, c.num_flows)
        self.update4 = self._update_block(ch[2], None)
        self.update3 = self._update_block(ch[1], 2)
        self.update2 = self._update_block(ch[0], 4)
        n = c.num_flows
        self.comb_block = nn.Sequential(nn.Conv2d(3 * n, 6 * n, 3, 1, 1), nn.PReLU(6 * n), nn.Conv2d(6 * n, 3, 3, 1, 1))

    def _update_block(self, cdim: int, scale_factor: int | None) -> SmallUpdateBlock:
        c = self.config
        return SmallUpdateBlock(cdim, c.hidden_dim, c.flow_dim, c.corr_dim, c.fc_dim,
                                corr_levels=c.corr_levels, radius=c.corr_radius, scale_factor=scale_factor)

    @staticmethod
    def _lookup(corr_fn: BidirCorrBlock, coord: torch.Tensor, flow0: torch.Tensor, flow1: torch.Tensor,
                embt: torch.Tensor, downsample: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Correlations at the 0<->1 correspondences implied by flows t->0 / t->1 under linear motion."""
        if downsample != 1:
            flow0 = resize(flow0, 1 / downsample) / downsample
            flow1 = resize(flow1, 1 / downsample) / downsample
        corr0, corr1 = corr_fn(coord + flow1 * (1.0 / embt), coord + flow0 * (1.0 / (1.0 - embt)))
        return torch.cat((corr0, corr1), dim=1), torch.cat((flow0, flow1), dim=1)

    def _refine(self, update: nn.Module, corr_fn: BidirCorrBlock, coord: torch.Tensor, flow0: torch.Tensor,
                flow1: torch.Tensor, ft: torch.Tensor, embt: torch.Tensor, downsample: int) -> tuple[torch.Tensor, ...]:
        corr, flow = self._lookup(corr_fn, coord, flow0, flow1, embt, downsample)
        delta_ft, delta_flow = update(ft, flow, corr)
        return flow0 + delta_flow[:, 0:2], flow1 + delta_flow[:, 2:4], ft + delta_ft

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, embt: torch.Tensor | float,
                scale_factor: float = 1.0) -> torch.Tensor:
        """The frame at ``embt``, ``(B, 3, H, W)`` in [0, 1], from frames ``(B, 3, H, W)`` in [0, 1].

        ``H`` and ``W`` must be multiples of ``16 / scale_factor`` (:class:`Interpolator` pads).
        """
        b = img0.shape[0]
        embt = torch.as_tensor(embt, dtype=img0.dtype, device=img0.device).reshape(-1, 1, 1, 1).expand(b, 1, 1, 1)
        # mean over channels, then rows, then columns of both frames stacked vertically (the original's order)
        mean = torch.cat((img0, img1), dim=2).mean(1, keepdim=True).mean(2, keepdim=True).mean(3, keepdim=True)
        img0, img1 = img0 - mean, img1 - mean
        in0 = resize(img0, scale_factor) if scale_factor != 1.0 else img0
        in1 = resize(img1, scale_factor) if scale_factor != 1.0 else img1
        _, _, h, w = in0.shape
        coord = coords_grid(b, h // 8, w // 8, img0.device).to(img0.dtype)

        fmap0, fmap1 = self.feat_encoder(torch.cat((in0, in1), dim=0)).split(b, dim=0)
        corr_fn = BidirCorrBlock(fmap0, fmap1, num_levels=self.corr_levels, radius=self.radius)
        f0_1, f0_2, f0_3, f0_4 = self.encoder(in0)
        f1_1, f1_2, f1_3, f1_4 = self.encoder(in1)

        flow0, flow1, ft = self.decoder4(f0_4, f1_4, embt)                    # 1/8
        flow0, flow1, ft = self._refine(self.update4, corr_fn, coord, flow0, flow1, ft, embt, 1)
        flow0, flow1, ft = self.decoder3(ft, f0_3, f1_3, flow0, flow1)        # 1/4
        flow0, flow1, ft = self._refine(self.update3, corr_fn, coord, flow0, flow1, ft, embt, 2)
        flow0, flow1, ft = self.decoder2(ft, f0_2, f1_2, flow0, flow1)        # 1/2
        flow0, flow1, ft = self._refine(self.update2, corr_fn, coord, flow0, flow1, ft, embt, 4)
        flow0, flow1, mask, img_res = self.decoder1(ft, f0_1, f1_1, flow0, flow1)  # 1/1

        if scale_factor != 1.0:
            flow0 = resize(flow0, 1.0 / scale_factor) * (1.0 / scale_factor)
            flow1 = resize(flow1, 1.0 / scale_factor) * (1.0 / scale_factor)
            mask = resize(mask, 1.0 / scale_factor)
            img_res = resize(img_res, 1.0 / scale_factor)
        prediction = multi_flow_combine(self.comb_block, img0, img1, flow0, flow1, mask, img_res, mean)
        return prediction.clamp(0.0, 1.0)


def build_amt(arch: str = "s") -> AMT:
    """An AMT with random weights: ``s`` (AMT-S, the official checkpoint's layout) or ``tiny`` (tests)."""
    if arch not in AMT_CONFIGS:
        raise ValueError(f"unknown AMT architecture {arch!r}; known: {', '.join(AMT_ARCHITECTURES)}")
    return AMT(AMT_CONFIGS[arch])


def _state_dict_of(checkpoint: Any, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(checkpoint, Mapping) and CHECKPOINT_KEY in checkpoint and isinstance(checkpoint[CHECKPOINT_KEY], Mapping):
        return checkpoint[CHECKPOINT_KEY]
    keys = sorted(checkpoint)[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
    raise ValueError(
        f"{path}: not an AMT checkpoint: expected a dict with the model weights under {CHECKPOINT_KEY!r} "
        f"(as the official amt-s.pth), got {keys}"
    )


def load_amt_checkpoint(path: Path | str, arch: str = "s") -> AMT:
    """Build ``arch`` and load the official-layout checkpoint ``{"state_dict": ...}`` strictly.

    A ``module.`` prefix (a DataParallel save) is removed. Any missing, unexpected or mis-shaped
    parameter raises a ValueError that lists them.
    """
    path = Path(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = {key.removeprefix("module."): value for key, value in _state_dict_of(checkpoint, path).items()}
    return load_state_strict(build_amt(arch), state, path, f"AMT-{arch}")


# ---------------------------------------------------------------------------------- for metrics
def official_scale(height: int, width: int, free_bytes: float) -> float:
    r"""The official VRAM-adaptive internal scale (documented; :class:`Interpolator` fixes ``scale = 1``).

    :math:`s = \min\!\big(1, \frac{1024 \cdot 512}{HW} \sqrt{\max(\text{free} - 2500\,\text{MiB}, 1) / 1500\,\text{MiB}}\big)`,
    then ``16 / floor(16 / sqrt(s))``.

    Example:
        >>> official_scale(480, 832, 3.4 * 1024**3)  # 832x480 with about 3.4 GiB free
        1.0
        >>> official_scale(480, 832, 2600 * 1024**2) == 16 / 27  # short of memory: about 0.59 of the resolution
        True
    """
    s = (1024 * 512) / (height * width) * math.sqrt(max(free_bytes - 2500 * _MIB, 1) / (1500 * _MIB))
    s = min(s, 1.0)
    return 16.0 / math.floor(16.0 / math.sqrt(s))


def centred_padding(height: int, width: int, multiple: int) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` padding to the next multiple, split as the official ``InputPadder``.

    >>> centred_padding(48, 64, 16), centred_padding(45, 61, 16)
    ((0, 0, 0, 0), (1, 2, 1, 2))
    """
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def _is_uint8(frames: Any) -> bool:
    return frames.dtype in (np.uint8, torch.uint8)


class Interpolator:
    """AMT with the official motion_smoothness preprocessing: uint8 RGB pairs in, uint8 middle frames out."""

    def __init__(self, module: nn.Module, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, scale: float = 1.0, execution: Execution | None = None) -> None:
        if not 0 < scale <= 1:
            raise ValueError(f"scale must be in (0, 1], got {scale}")
        self.module = module.eval()
        self.device = torch.device(device)
        self.dtype = dtype
        self.scale = float(scale)
        self.execution = execution or Execution(device=self.device, batch_size=DEFAULT_BATCH_SIZE, per_pixels=True)

    @property
    def pad_multiple(self) -> int:
        """Inputs are padded to a multiple of ``16 / scale`` (16 at the fixed scale 1)."""
        return int(PAD_BASE / self.scale)

    def _check(self, a: Any, b: Any, embt: float) -> None:
        if (tuple(a.shape) != tuple(b.shape) or len(a.shape) != 4 or a.shape[-1] != 3
                or not _is_uint8(a) or not _is_uint8(b)):
            raise ValueError(f"frames must be two (N, H, W, 3) uint8 arrays of one shape, got {a.dtype} "
                             f"{tuple(a.shape)} and {b.dtype} {tuple(b.shape)}")
        if not 0.0 < embt < 1.0:
            raise ValueError(f"embt must be strictly between 0 and 1, got {embt}")

    def _predict(self, a: Any, b: Any, embt: float, padding: tuple[int, int, int, int]) -> torch.Tensor:
        """One batch: uint8 ``(n, H, W, 3)`` pairs (any device) -> uint8 predictions ``(n, 3, H, W)`` on the device."""
        left, right, top, bottom = padding
        img0, img1 = (
            F.pad(as_device_tensor(x, self.device).permute(0, 3, 1, 2).float() / 255.0, padding,
                  mode="replicate").to(self.dtype)
            for x in (a, b)
        )
        prediction = self.module(img0, img1, embt, scale_factor=self.scale)
        h, w = a.shape[1], a.shape[2]
        return prediction_to_uint8(prediction[..., top:top + h, left:left + w])

    def interpolate(self, frames_a: Any, frames_b: Any, embt: float = DEFAULT_EMBT,
                    batch_size: int | None = None) -> np.ndarray:
        """The frames at time ``embt`` between ``frames_a[i]`` and ``frames_b[i]``, ``(N, H, W, 3)`` uint8.

        Each frame is divided by 255 (float32), padded with replicated borders (centred) to a
        multiple of :attr:`pad_multiple`, interpolated in batches of ``batch_size`` pairs (default: the
        configured one, scaled to the frame size), unpadded, and converted back with ``x255``, clip and a
        truncating cast. Pairs are independent: the batch size changes nothing but the speed (up to float
        rounding of batched convolutions). Frames: numpy, tensors on any device, or
        :class:`~narrastream.metrics.backbones.execution.IndexedFrames`.
        """
        a = frames_a if isinstance(frames_a, (torch.Tensor, IndexedFrames)) else np.asarray(frames_a)
        b = frames_b if isinstance(frames_b, (torch.Tensor, IndexedFrames)) else np.asarray(frames_b)
        self._check(a, b, embt)
        n, h, w, _ = a.shape
        padding = centred_padding(h, w, self.pad_multiple)
        size = self.execution.batch_for(h, w, requested=batch_size)

        def step(start: int, stop: int) -> np.ndarray:
            return self._predict(a[start:stop], b[start:stop], embt, padding).permute(0, 2, 3, 1).cpu().numpy()

        with self.execution.running(n):
            return np.concatenate([np.empty((0, h, w, 3), dtype=np.uint8), *self.execution.map(n, step, size)])

    def frame_errors(self, frames_a: Any, frames_b: Any, targets: Any, embt: float = DEFAULT_EMBT,
                     batch_size: int | None = None) -> list[float]:
        """Per pair, the mean absolute difference (0-255) between the interpolated frame and ``targets[i]``:
        :func:`~narrastream.metrics.functional.motion.frame_abs_errors` of :meth:`interpolate`, computed where
        the network runs (exact integer sums), so only one number per frame comes back to the host."""
        a = frames_a if isinstance(frames_a, (torch.Tensor, IndexedFrames)) else np.asarray(frames_a)
        b = frames_b if isinstance(frames_b, (torch.Tensor, IndexedFrames)) else np.asarray(frames_b)
        t = targets if isinstance(targets, (torch.Tensor, IndexedFrames)) else np.asarray(targets)
        self._check(a, b, embt)
        if tuple(t.shape) != tuple(a.shape) or not _is_uint8(t):
            raise ValueError(f"targets must be uint8 of the frames' shape {tuple(a.shape)}, got {t.dtype} {tuple(t.shape)}")
        n, h, w, _ = a.shape
        padding = centred_padding(h, w, self.pad_multiple)
        size = self.execution.batch_for(h, w, requested=batch_size)

        def step(start: int, stop: int) -> torch.Tensor:
            predicted = self._predict(a[start:stop], b[start:stop], embt, padding).permute(0, 2, 3, 1)
            target = as_device_tensor(t[start:stop], self.device)
            return (predicted.to(torch.int16) - target.to(torch.int16)).abs().sum(dim=(1, 2, 3), dtype=torch.int64)

        with self.execution.running(n):
            sums = torch.cat([torch.empty(0, dtype=torch.int64, device=self.device),
                              *self.execution.map(n, step, size)]).cpu().tolist()
        count = h * w * 3
        return [int(total) / count for total in sums]
