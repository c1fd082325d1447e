"""Frames on the device where the networks run: one upload per video, gathered batch by batch.

:meth:`~narrastream.video.segments.SegmentedVideo.device_frames` uploads a decoded video once (through
page-locked memory, on a side CUDA stream, so the prefetch thread can move the next video while the current
one is scored) and keeps it; metrics then hand the backbones :class:`IndexedFrames` -- the frames they
sample, gathered on the device one batch at a time -- instead of copying sampled frames host-side and
sending float32 pixels per batch. On the CPU nothing of this applies: a video's frames are used in place.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch

_streams: dict[str, "torch.cuda.Stream"] = {}
_streams_lock = threading.Lock()


def as_device_tensor(frames: Any, device: torch.device) -> torch.Tensor:
    """``frames`` (a numpy array or a tensor on any device) as a tensor on ``device``, dtype unchanged: uint8
    frames travel as uint8 (a quarter of float32's bytes) and are converted where the network runs."""
    if not isinstance(frames, torch.Tensor):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    return frames.to(device)


class IndexedFrames:
    """Frames ``source[positions]`` gathered batch by batch, so a wrapper's batch loop never materialises them
    all: ``len``, ``shape`` and slicing (``frames[a:b]`` is ``source[positions[a:b]]``, a tensor on the source's
    device). ``source`` is a ``(T, H, W, 3)`` tensor or numpy array (e.g. a video already on the GPU:
    :meth:`narrastream.video.segments.SegmentedVideo.device_frames`).

    >>> frames = IndexedFrames(torch.arange(10).view(10, 1, 1, 1).expand(10, 2, 2, 3), [4, 0, 9])
    >>> len(frames), frames.shape, frames[1:3][:, 0, 0, 0].tolist()
    (3, (3, 2, 2, 3), [0, 9])
    """

    def __init__(self, source: Any, positions: Any) -> None:
        self.source = source if isinstance(source, torch.Tensor) else as_device_tensor(source, torch.device("cpu"))
        self.positions = torch.as_tensor(list(positions) if not isinstance(positions, torch.Tensor) else positions,
                                         dtype=torch.long).reshape(-1)
        if len(self.positions) and (int(self.positions.min()) < 0 or int(self.positions.max()) >= len(self.source)):
            raise IndexError(f"frame positions outside 0..{len(self.source) - 1}")

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.positions), *self.source.shape[1:])

    @property
    def ndim(self) -> int:
        return self.source.ndim

    @property
    def dtype(self) -> torch.dtype:
        return self.source.dtype

    def __getitem__(self, index: slice) -> torch.Tensor:
        if not isinstance(index, slice):
            raise TypeError("IndexedFrames supports slices only")
        return self.source[self.positions[index].to(self.source.device)]


def upload_frames(frames: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """A copy of ``frames`` (uint8, any shape) on the CUDA ``device``: page-locked staging, a non-blocking copy
    on one side stream per device, waited for before returning (safe to use on any stream afterwards; the
    default stream is recorded as a user, so the allocator never recycles the memory under a running kernel).
    """
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"upload_frames is for CUDA devices, got {device}")
    key = str(device)
    with _streams_lock:
        stream = _streams.get(key)
        if stream is None:
            stream = _streams[key] = torch.cuda.Stream(device)
    pinned = torch.from_numpy(np.ascontiguousarray(frames)).pin_memory()
    with torch.cuda.stream(stream):
        on_device = pinned.to(device, non_blocking=True)
    stream.synchronize()
    on_device.record_stream(torch.cuda.default_stream(device))
    return on_device
