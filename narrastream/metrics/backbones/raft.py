"""RAFT optical flow (torchvision's ``raft_large`` architecture) for temporal_flickering and boundary_smoothness.

The official evaluator runs the princeton-vl RAFT code with the ``raft-things.pth`` checkpoint
(protocol §2.1.3): 20 iterations, fp32, full-resolution RGB in [0, 255], inputs padded to a multiple
of 8 in "sintel" mode and the upsampled flow unpadded. torchvision's ``raft_large`` is the same
network (its ``Raft_Large_Weights.C_T_V1`` were ported from that very file); only the parameter
names differ. :func:`load_raft_checkpoint` reads either layout: a torchvision state dict, or the
original checkpoint (``module.fnet.conv1.weight`` ...) through the explicit mapping of
:func:`original_to_torchvision_key`, and loads strictly.

The ``tiny`` architecture (tests, ``backbones.size: tiny``) is the same torchvision ``RAFT`` class
built from smaller pieces: narrow encoders, a 2-level correlation pyramid of radius 2, so that the
64x48 frames of the tiny preset (8x6 feature maps) are large enough without any extra padding.

torchvision is imported lazily (see ``narrastream._compat.ensure_torchvision``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from narrastream.metrics.backbones.execution import Execution, as_device_tensor

#: architectures of :func:`build_raft`
RAFT_ARCHITECTURES: tuple[str, ...] = ("large", "tiny")
#: RAFT predicts flow at 1/8 resolution: inputs are padded to a multiple of this
PAD_MULTIPLE = 8


def _torchvision_raft() -> Any:
    from narrastream._compat import ensure_torchvision

    ensure_torchvision()
    from torchvision.models.optical_flow import raft as tv_raft

    return tv_raft


def build_raft(arch: str = "large") -> nn.Module:
    """A torchvision ``RAFT`` with random weights: ``large`` (= ``raft_large``) or ``tiny`` (tests)."""
    tv = _torchvision_raft()
    if arch == "large":
        return tv.raft_large(weights=None)
    if arch != "tiny":
        raise ValueError(f"unknown RAFT architecture {arch!r}; known: {', '.join(RAFT_ARCHITECTURES)}")
    hidden = 16
    return tv._raft(
        weights=None,
        feature_encoder_layers=(8, 8, 12, 16, 32),
        feature_encoder_block=tv.ResidualBlock,
        feature_encoder_norm_layer=tv.InstanceNorm2d,
        context_encoder_layers=(8, 8, 12, 16, 32),  # 16 hidden-state channels + 16 context channels
        context_encoder_block=tv.ResidualBlock,
        context_encoder_norm_layer=tv.BatchNorm2d,
        corr_block_num_levels=2,  # feature maps need H/8, W/8 >= 2 * 2**(levels-1) = 4: fine at 64x48
        corr_block_radius=2,
        motion_encoder_corr_layers=(16, 12),
        motion_encoder_flow_layers=(8, 8),
        motion_encoder_out_channels=16,
        recurrent_block_hidden_state_size=hidden,
        recurrent_block_kernel_size=((1, 5), (5, 1)),
        recurrent_block_padding=((0, 2), (2, 0)),
        flow_head_hidden_size=16,
        use_mask_predictor=False,
        mask_predictor=tv.MaskPredictor(in_channels=hidden, hidden_size=16, multiplier=0.25),
    )


# ----------------------------------------------------------------------------------- key mapping
# Original princeton-vl RAFT (core/raft.py, extractor.py, update.py) -> torchvision RAFT names.
_ENCODERS = {"fnet": "feature_encoder", "cnet": "context_encoder"}
_ENCODER_TOP = {"conv1": "convnormrelu.0", "norm1": "convnormrelu.1", "conv2": "conv"}
_RESIDUAL = {
    "conv1": "convnormrelu1.0", "norm1": "convnormrelu1.1",
    "conv2": "convnormrelu2.0", "norm2": "convnormrelu2.1",
    "downsample.0": "downsample.0", "downsample.1": "downsample.1",
    # the original ResidualBlock registers its BatchNorm twice: as ``norm3`` and as ``downsample.1``
    "norm3": "downsample.1",
}
_UPDATE = {
    "encoder.convc1": "update_block.motion_encoder.convcorr1.0",
    "encoder.convc2": "update_block.motion_encoder.convcorr2.0",
    "encoder.convf1": "update_block.motion_encoder.convflow1.0",
    "encoder.convf2": "update_block.motion_encoder.convflow2.0",
    "encoder.conv": "update_block.motion_encoder.conv.0",
    "gru.convz1": "update_block.recurrent_block.convgru1.convz",
    "gru.convr1": "update_block.recurrent_block.convgru1.convr",
    "gru.convq1": "update_block.recurrent_block.convgru1.convq",
    "gru.convz2": "update_block.recurrent_block.convgru2.convz",
    "gru.convr2": "update_block.recurrent_block.convgru2.convr",
    "gru.convq2": "update_block.recurrent_block.convgru2.convq",
    "flow_head.conv1": "update_block.flow_head.conv1",
    "flow_head.conv2": "update_block.flow_head.conv2",
    "mask.0": "mask_predictor.convrelu.0",
    "mask.2": "mask_predictor.conv",
}
_PARAM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_ENCODER_TOP_RE = re.compile(rf"^(fnet|cnet)\.(conv1|norm1|conv2)\.{_PARAM}$")
_RESIDUAL_RE = re.compile(rf"^(fnet|cnet)\.layer([1-3])\.([01])\.(conv1|norm1|conv2|norm2|norm3|downsample\.[01])\.{_PARAM}$")
_UPDATE_RE = re.compile(rf"^update_block\.([a-z_]+\.[a-z0-9]+)\.{_PARAM}$")


def original_to_torchvision_key(key: str) -> str | None:
    """The torchvision name of an original RAFT parameter (``module.`` prefix allowed), or None.

    >>> original_to_torchvision_key("module.fnet.layer2.0.conv1.weight")
    'feature_encoder.layer2.0.convnormrelu1.0.weight'
    >>> original_to_torchvision_key("module.cnet.layer3.0.norm3.running_var")
    'context_encoder.layer3.0.downsample.1.running_var'
    >>> original_to_torchvision_key("module.update_block.gru.convq2.bias")
    'update_block.recurrent_block.convgru2.convq.bias'
    >>> original_to_torchvision_key("module.update_block.mask.2.weight")
    'mask_predictor.conv.weight'
    >>> original_to_torchvision_key("module.fnet.layer4.0.conv1.weight") is None
    True
    """
    key = key.removeprefix("module.")
    if m := _ENCODER_TOP_RE.match(key):
        return f"{_ENCODERS[m[1]]}.{_ENCODER_TOP[m[2]]}.{m[3]}"
    if m := _RESIDUAL_RE.match(key):
        return f"{_ENCODERS[m[1]]}.layer{m[2]}.{m[3]}.{_RESIDUAL[m[4]]}.{m[5]}"
    if (m := _UPDATE_RE.match(key)) and m[1] in _UPDATE:
        return f"{_UPDATE[m[1]]}.{m[2]}"
    return None


def _inverse_tables() -> list[tuple[str, str]]:
    pairs = [(f"{tv}.", f"update_block.{orig}.") for orig, tv in _UPDATE.items()]
    for orig_enc, tv_enc in _ENCODERS.items():
        pairs += [(f"{tv_enc}.{tv}.", f"{orig_enc}.{orig}.") for orig, tv in _ENCODER_TOP.items()]
        for layer in "123":
            for block in "01":
                pairs += [
                    (f"{tv_enc}.layer{layer}.{block}.{tv}.", f"{orig_enc}.layer{layer}.{block}.{orig}.")
                    for orig, tv in _RESIDUAL.items() if orig != "norm3"
                ]
    return pairs


def torchvision_to_original_state_dict(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """A torchvision RAFT state dict in the original checkpoint's layout (the inverse mapping).

    Like the original code, a block's downsampling BatchNorm is written twice, as ``norm3`` and as
    ``downsample.1`` (only where it has parameters, i.e. in the batch-normalised context encoder).
    """
    pairs = _inverse_tables()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for tv_prefix, orig_prefix in pairs:
            if key.startswith(tv_prefix):
                orig = orig_prefix + key[len(tv_prefix):]
                out[prefix + orig] = value
                if ".downsample.1." in orig:
                    out[prefix + orig.replace(".downsample.1.", ".norm3.")] = value
                break
        else:
            raise KeyError(f"torchvision RAFT key {key!r} has no counterpart in the original layout")
    return out


def convert_original_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An original RAFT checkpoint's state dict renamed to torchvision's layout.

    Raises:
        KeyError: listing every key the mapping does not know, or a duplicate (``norm3`` and
            ``downsample.1``) whose two copies differ.
    """
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, value in state.items():
        new = original_to_torchvision_key(key)
        if new is None:
            unmapped.append(key)
        elif new in out:
            if not torch.equal(out[new], value):
                raise KeyError(f"original RAFT checkpoint: {key!r} differs from its duplicate {new!r}")
        else:
            out[new] = value
    if unmapped:
        raise KeyError(f"original RAFT checkpoint: {len(unmapped)} unmapped keys: {', '.join(sorted(unmapped))}")
    return out


def _is_original_layout(state: Mapping[str, Any]) -> bool:
    return any(k.removeprefix("module.").startswith(("fnet.", "cnet.")) for k in state)


def load_raft_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load a torchvision-layout or original-layout state dict into ``model`` strictly.

    ``num_batches_tracked`` buffers (unused at inference, absent from very old checkpoints) are the
    only entries that may be missing; anything else missing or unexpected raises with the keys.
    """
    if _is_original_layout(state):
        state = convert_original_state_dict(state)
    state = dict(state)
    expected = model.state_dict()
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise KeyError(
            f"RAFT checkpoint does not match the architecture: missing {missing or 'none'}; "
            f"unexpected {unexpected or 'none'}"
        )
    model.load_state_dict(state, strict=True)
    return model


def load_raft_checkpoint(path: Path | str, arch: str = "large") -> nn.Module:
    """``build_raft(arch)`` with the weights of ``path`` (either layout; see :func:`load_raft_state_dict`)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    return load_raft_state_dict(build_raft(arch), state).eval()


# ----------------------------------------------------------------------------------- inference
def sintel_padding(height: int, width: int, multiple: int = PAD_MULTIPLE) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` replicate padding to a multiple of 8, split as RAFT's ``InputPadder``.

    >>> sintel_padding(480, 832)
    (0, 0, 0, 0)
    >>> sintel_padding(45, 61)
    (1, 2, 1, 2)
    """
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


class FlowEstimator:
    """RAFT with the official preprocessing: uint8 RGB frames in, float32 flow in pixels out."""

    def __init__(self, module: nn.Module, *, device: torch.device, dtype: torch.dtype = torch.float32,
                 execution: Execution | None = None) -> None:
        self.module = module.eval()
        self.device = device
        self.dtype = dtype
        self.execution = execution or Execution(device=device, batch_size=8, per_pixels=True)

    def _pixels(self, frames: Any, padding: tuple[int, int, int, int]) -> torch.Tensor:
        """``(n, H, W, 3)`` frames (numpy or a tensor on any device, [0, 255]) -> padded ``2 x / 255 - 1`` on the
        device: the frames travel as they are (uint8) and are converted where the network runs."""
        x = as_device_tensor(frames, self.device).permute(0, 3, 1, 2).float()  # [0, 255]
        if any(padding):
            x = F.pad(x, padding, mode="replicate")
        return (2.0 * (x / 255.0) - 1.0).to(self.dtype)

    def flow(self, images_a: Any, images_b: Any, iters: int = 20, batch_size: int | None = None, *,
             keep_on_device: bool = False) -> torch.Tensor:
        """Flow ``(N, 2, H, W)`` (x, y displacement in pixels) from ``images_a[i]`` to ``images_b[i]``.

        Frames are ``(N, H, W, 3)`` RGB at full resolution, uint8 (numpy, a tensor on any device, or
        :class:`~narrastream.metrics.backbones.execution.IndexedFrames`). Each pair is padded to a multiple
        of 8 with replicate ("sintel") padding, scaled as RAFT does (``2 x / 255 - 1``), run for ``iters``
        refinement steps; the final upsampled flow is unpadded and returned on the CPU (on the device with
        ``keep_on_device``). ``batch_size`` pairs per forward (default: the configured one, scaled to the
        frame size: :meth:`~narrastream.metrics.backbones.execution.Execution.batch_for`).
        """
        if tuple(images_a.shape) != tuple(images_b.shape) or len(images_a.shape) != 4 or images_a.shape[-1] != 3:
            raise ValueError(f"frames must be two (N, H, W, 3) arrays of one shape, got {tuple(images_a.shape)} "
                             f"and {tuple(images_b.shape)}")
        if iters <= 0:
            raise ValueError(f"iters must be positive, got {iters}")
        n, h, w, _ = images_a.shape
        left, right, top, bottom = sintel_padding(h, w)
        size = self.execution.batch_for(h, w, requested=batch_size)
        out_device = self.device if keep_on_device else torch.device("cpu")

        def step(start: int, stop: int) -> torch.Tensor:
            a, b = (self._pixels(x[start:stop], (left, right, top, bottom)) for x in (images_a, images_b))
            predictions = self.module(a, b, num_flow_updates=int(iters))
            return predictions[-1].float()[..., top:top + h, left:left + w].to(out_device)

        with self.execution.running(n):
            return torch.cat([torch.empty(0, 2, h, w, device=out_device), *self.execution.map(n, step, size)])
