"""IAMFlow's visual verifier (reference §3.9-§3.10): a VLM scores 3 frames of every block.

The verifier is any :class:`~narrastream.judges.Judge` with vision (an OpenAI-compatible endpoint serving
Qwen3-VL, or ``LocalVLMJudge``, on a second GPU when there is one). Per block it sends pixel frames
``frames`` (default {0, 4, 8}: one per latent frame) resized to ``size`` x ``size``, the prompt, the
characters' names and, on a prompt's first block, the registry's attributes with a request for corrections.

Two modes:

* ``async`` (the paper's design; default): :meth:`submit` queues the request on one worker thread and
  returns at once; :meth:`result` waits at most ``timeout_s`` for it. A late answer is discarded, never
  applied out of order. At most ``max_pending`` requests are unanswered at once (the running one
  included); beyond that a block is not verified (``skipped``) rather than letting the backlog grow
  without bound.
* ``sync`` (the release's shipped config, ``async_vae_enabled: false``): :meth:`submit` asks the VLM in
  the calling thread, on the DiT's critical path.

Every block ends in one :class:`Verdict` whose ``status`` is ``ok``, ``failed`` (the judge was
unreachable or never answered validly: the reason is kept), ``timeout`` or ``skipped``. Only ``ok``
verdicts carry scores; the agent then uses the semantic score alone for that block (the release scores
such blocks [0.5, 0.5, 0.5], which picks the same frame).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from narrastream.iamflow.questions import verify_chunk
from narrastream.judges.base import ImagePart, Judge, JudgeError
from narrastream.judges.images import encode_jpeg

log = logging.getLogger(__name__)
MODES = ("async", "sync")
STATUSES = ("ok", "failed", "timeout", "skipped")


@dataclass
class Verdict:
    """The verifier's outcome for one block (``key`` = ``p{prompt}_c{chunk}``, 1-based as the release)."""

    key: str
    status: str
    scores: list[float] | None = None
    corrections: dict[int, list[str]] = field(default_factory=dict)
    reason: str = ""
    latency_s: float = 0.0  # the judge's time for this block
    waited_s: float = 0.0  # how long the generator was blocked waiting for it


class VisualVerifier:
    """Scores blocks with a VLM, synchronously or on a worker thread with a bounded wait."""

    def __init__(self, judge: Judge, *, mode: str = "async", timeout_s: float = 30.0, max_pending: int = 8,
                 frames: Sequence[int] = (0, 4, 8), size: int = 256, jpeg_quality: int = 95,
                 max_tokens: int | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"iam.verifier.mode={mode!r}: expected one of {', '.join(MODES)}")
        if timeout_s <= 0 or max_pending < 1 or not frames:
            raise ValueError("iam.verifier: timeout_s must be > 0, max_pending >= 1 and frames non-empty")
        self.judge, self.mode = judge, mode
        self.timeout_s, self.max_pending = float(timeout_s), int(max_pending)
        self.frames, self.size, self.jpeg_quality = tuple(int(f) for f in frames), int(size), int(jpeg_quality)
        self.max_tokens = max_tokens
        self._futures: dict[str, Future] = {}
        self._done: dict[str, Verdict] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iam-verifier") if mode == "async" else None
        self.verdicts: list[Verdict] = []  # every block's outcome, in the order results were taken

    # ------------------------------------------------------------------ requests
    def images(self, pixels: np.ndarray, count: int | None = None) -> list[ImagePart]:
        """The block's representative frames as ``size``² JPEGs: the first ``count`` of ``frames`` (one per
        latent frame of the block), clamped to the frames the block has."""
        picks = [min(f, len(pixels) - 1) for f in self.frames[:count]]
        return [encode_jpeg(pixels[i], quality=self.jpeg_quality, size=(self.size, self.size)) for i in picks]

    def submit(self, key: str, pixels: np.ndarray, prompt: str, names: Sequence[str],
               registry: Mapping[int, tuple[str, Sequence[str]]] | None = None, count: int | None = None) -> None:
        """Ask for the verdict on one block: ``pixels`` (T, H, W, 3) uint8, the block's decoded frames;
        ``count``: how many candidate frames the block has (default: all of ``frames``)."""
        images = self.images(pixels, count)
        count = len(images)
        if self._pool is None:  # sync: the generator waits for the whole request
            verdict = self._ask(key, images, prompt, names, registry, count)
            verdict.waited_s = verdict.latency_s
            self._done[key] = verdict
            return
        with self._lock:
            pending = sum(1 for f in self._futures.values() if not f.done())
            if pending >= self.max_pending:
                self._done[key] = Verdict(key, "skipped", reason=f"{pending} requests already waiting")
                return
            self._futures[key] = self._pool.submit(self._ask, key, images, prompt, names, registry, count)

    def _ask(self, key: str, images: list[ImagePart], prompt: str, names: Sequence[str],
             registry: Mapping[int, tuple[str, Sequence[str]]] | None, count: int) -> Verdict:
        started = time.perf_counter()
        try:
            verdict = verify_chunk(self.judge, prompt, names, images, registry, max_tokens=self.max_tokens)
        except JudgeError as exc:
            return Verdict(key, "failed", reason=str(exc), latency_s=time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - a crashing backend must not kill generation; recorded
            log.warning("visual verifier crashed on %s: %s", key, exc)
            return Verdict(key, "failed", reason=f"{type(exc).__name__}: {exc}",
                           latency_s=time.perf_counter() - started)
        return Verdict(key, "ok", scores=verdict.padded(count), corrections=dict(verdict.corrections),
                       latency_s=time.perf_counter() - started)

    # ------------------------------------------------------------------ results
    def result(self, key: str, timeout_s: float | None = None) -> Verdict:
        """The verdict for ``key``, waiting at most ``timeout_s`` (default: the configured timeout).

        A request still running at the deadline gives a ``timeout`` verdict and its answer is discarded.
        """
        if key in self._done:
            verdict = self._done.pop(key)
        else:
            with self._lock:
                future = self._futures.pop(key, None)
            if future is None:
                raise KeyError(f"no verifier request for block {key}")
            limit = self.timeout_s if timeout_s is None else float(timeout_s)
            started = time.perf_counter()
            done = future.done()
            if not done:
                try:
                    future.result(timeout=limit)
                    done = True
                except FutureTimeout:
                    future.cancel()  # not started yet: never runs; running: its answer is dropped
            waited = time.perf_counter() - started
            verdict = future.result() if done else Verdict(key, "timeout", reason=f"no answer within {limit:g} s")
            verdict.waited_s = waited
        self.verdicts.append(verdict)
        return verdict

    def stats(self) -> dict[str, Any]:
        """For the sidecar: counts per status, the judge's mean latency and the generator's total wait."""
        counts = {s: sum(v.status == s for v in self.verdicts) for s in STATUSES}
        latencies = [v.latency_s for v in self.verdicts if v.status in ("ok", "failed")]
        failures = [f"{v.key}: {v.reason}" for v in self.verdicts if v.status in ("failed", "timeout")]
        return {"mode": self.mode, "model": self.judge.model, "blocks": len(self.verdicts), **counts,
                "mean_latency_s": float(np.mean(latencies)) if latencies else None,
                "blocked_s": float(sum(v.waited_s for v in self.verdicts)),
                "timeout_s": self.timeout_s, "problems": failures[:10]}

    def close(self) -> None:
        """Drop queued requests; a running one finishes in the background and is discarded."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._futures.clear()
        self._done.clear()
