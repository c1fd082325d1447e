"""How a backbone's forward passes run -- device, precision, batch size -- and what they cost.

Every metric backbone wrapper (:class:`~narrastream.metrics.backbones.provider.ImageEmbedder`,
:class:`~narrastream.metrics.backbones.raft.FlowEstimator`, :class:`~narrastream.metrics.backbones.amt.Interpolator`,
:class:`~narrastream.metrics.backbones.vtss.QualityScorer`,
:class:`~narrastream.metrics.backbones.languagebind.VideoTextEncoder`) holds an :class:`Execution` and runs each
public call inside :meth:`Execution.running` and its batches through :meth:`Execution.map`. One place therefore
decides:

* **precision** (:data:`PRECISIONS`): ``fp32`` runs the weights in float32 with PyTorch's default flags (what the
  official evaluator ran: on Ampere and newer GPUs cuDNN convolutions may use TF32, matrix products do not);
  ``fp16`` casts the weights (the official CLIP on CUDA); ``bf16`` keeps float32 weights and runs the forward
  under ``torch.autocast(dtype=bfloat16)`` (convolutions and matrix products in bf16, reductions and
  coordinate arithmetic in float32, so RAFT's flow accumulation stays float32); ``tf32`` keeps float32 and also
  lets matrix products use TF32 (CUDA only: on the CPU it is plain ``fp32``, and says so);
* **batch size**: items per forward pass. For networks that run at the video's own resolution (RAFT, AMT) the
  configured number is per 832x480 frame (the official size) and scales with the pixel count
  (:meth:`Execution.batch_for`): a 64x48 test video sends all its pairs in one forward, where one forward per
  8 pairs made a tiny CPU run pay the thread start-up of every operation 8 times over. A CUDA out-of-memory
  error halves the batch and retries (recorded), so a default too large for a small GPU slows a run down
  instead of failing it;
* **cost**: wall seconds of every call (CUDA synchronised: every wrapper returns host tensors), items, forward
  passes, and the peak of ``torch.cuda.max_memory_allocated`` during the calls (None on the CPU), for the run
  manifest (:meth:`ExecutionStats.to_dict`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, TypeVar

import torch

from narrastream.video.device import IndexedFrames, as_device_tensor  # noqa: F401 - re-exported for the wrappers

log = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "bf16", "tf32"]
#: what ``backbones.precision`` may name (besides ``auto``)
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16", "tf32")
#: the official frame size: batch sizes of resolution-dependent networks are given for it
REFERENCE_PIXELS = 832 * 480
#: the dtype the weights are stored in, per precision (bf16 and tf32 keep float32 weights)
WEIGHT_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.float32, "tf32": torch.float32,
}

T = TypeVar("T")


@dataclass
class ExecutionStats:
    """What one backbone cost in this process (summed over calls)."""

    calls: int = 0
    items: int = 0
    forwards: int = 0
    seconds: float = 0.0
    #: peak of ``torch.cuda.max_memory_allocated`` (the whole process's allocations) during this backbone's calls
    peak_memory_bytes: int | None = None
    #: the largest batch actually sent, and how often an out-of-memory error halved it
    max_batch: int = 0
    oom_halvings: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "items": self.items, "forwards": self.forwards,
                "seconds": round(self.seconds, 4), "peak_memory_bytes": self.peak_memory_bytes,
                "max_batch": self.max_batch, "oom_halvings": self.oom_halvings}


@dataclass
class Execution:
    """Device, precision and batch size of one backbone, and its running cost."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: Precision = "fp32"
    #: items per forward pass (per 832x480 frame when ``per_pixels``)
    batch_size: int = 8
    #: the network runs at the input's own resolution: scale the batch with the pixel count
    per_pixels: bool = False
    stats: ExecutionStats = field(default_factory=ExecutionStats)
    _depth: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if int(self.batch_size) <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        self.batch_size = int(self.batch_size)

    @property
    def weight_dtype(self) -> torch.dtype:
        return WEIGHT_DTYPES[self.precision]

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None

    def batch_for(self, height: int | None = None, width: int | None = None, requested: int | None = None) -> int:
        """Items per forward pass for inputs of ``height x width`` (an explicit ``requested`` size wins)."""
        if requested is not None:
            if int(requested) <= 0:
                raise ValueError(f"batch_size must be positive, got {requested}")
            return int(requested)
        if not self.per_pixels or not height or not width:
            return self.batch_size
        return max(1, int(self.batch_size * REFERENCE_PIXELS // (int(height) * int(width))))

    @contextlib.contextmanager
    def running(self, items: int) -> Iterator[None]:
        """One public call of the wrapper: inference mode, the precision's autocast and TF32 flags, and its
        cost added to :attr:`stats` (the outermost call only, when calls nest)."""
        outer = self._depth == 0
        cuda = self.device.type == "cuda"
        self._depth += 1
        started = 0.0
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(torch.inference_mode())
                if self.autocast_dtype is not None:
                    stack.enter_context(torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype))
                if self.precision == "tf32" and cuda:
                    stack.enter_context(_tf32_matmuls())
                if outer:
                    if cuda:
                        torch.cuda.synchronize(self.device)
                        torch.cuda.reset_peak_memory_stats(self.device)
                    started = time.perf_counter()
                yield
                if outer and cuda:
                    torch.cuda.synchronize(self.device)
        finally:
            self._depth -= 1
            if outer:
                self.stats.calls += 1
                self.stats.items += int(items)
                self.stats.seconds += time.perf_counter() - started if started else 0.0
                if cuda:
                    peak = int(torch.cuda.max_memory_allocated(self.device))
                    self.stats.peak_memory_bytes = max(self.stats.peak_memory_bytes or 0, peak)

    def map(self, count: int, step: Callable[[int, int], T], batch_size: int) -> list[T]:
        """``[step(start, stop) for each batch]`` over ``count`` items, ``batch_size`` at a time.

        On CUDA an out-of-memory error in a step frees the cache, halves the batch size for the rest of the
        call and retries that step (logged and counted); at batch size 1 it is raised."""
        outputs: list[T] = []
        start = 0
        size = max(1, int(batch_size))
        while start < count:
            stop = min(count, start + size)
            try:
                outputs.append(step(start, stop))
            except torch.cuda.OutOfMemoryError:
                if size == 1 or self.device.type != "cuda":
                    raise
                size = max(1, size // 2)
                self.stats.oom_halvings += 1
                torch.cuda.empty_cache()
                log.warning("out of GPU memory at a batch of %d; retrying with %d (set backbones.batch_size lower)",
                            stop - start, size)
                continue
            self.stats.forwards += 1
            self.stats.max_batch = max(self.stats.max_batch, stop - start)
            start = stop
        return outputs


@contextlib.contextmanager
def _tf32_matmuls() -> Iterator[None]:
    """TF32 for CUDA matrix products and cuDNN convolutions, restored afterwards."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


def resolved_precision(requested: str, device: torch.device, half_on_cuda: bool) -> Precision:
    """What runs for ``backbones.precision=requested`` on ``device``: ``auto`` is fp16 on CUDA for the networks
    the official evaluator runs in half precision (CLIP), else fp32; ``tf32`` is fp32 off CUDA (no TF32 there).

    >>> cpu, cuda = torch.device("cpu"), torch.device("cuda")
    >>> [resolved_precision(p, cpu, True) for p in ("auto", "fp32", "bf16", "tf32")]
    ['fp32', 'fp32', 'bf16', 'fp32']
    >>> [resolved_precision(p, cuda, True) for p in ("auto", "tf32")], resolved_precision("auto", cuda, False)
    (['fp16', 'tf32'], 'fp32')
    """
    if requested == "auto":
        return "fp16" if half_on_cuda and device.type == "cuda" else "fp32"
    if requested == "tf32" and device.type != "cuda":
        return "fp32"
    if requested not in PRECISIONS:
        raise ValueError(f"backbones.precision must be auto or one of {', '.join(PRECISIONS)}, got {requested!r}")
    return requested  # type: ignore[return-value]

