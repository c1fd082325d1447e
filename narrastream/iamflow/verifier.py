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

A hung VLM must not cost ``timeout_s`` per block for the rest of the video (with one worker, every
later request queues behind the hung one). So the generator's total wait per video is bounded
(``max_wait_per_video_s``: each wait is cut to what is left of it; once it is spent, a block whose
answer is not there yet is a ``timeout`` at once), and ``breaker_timeouts`` consecutive timeouts open
the circuit breaker for the rest of the video: no request is sent any more, the blocks are
``skipped`` with reason ``breaker_open`` and answers still outstanding are not waited for. Both are in
:meth:`stats` (``breaker_trips``, ``blocked_s`` = the total wait, ``wait_budget_spent``).

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
                 max_tokens: int | None = None, max_wait_per_video_s: float | None = None,
                 breaker_timeouts: int = 3) -> None:
        if mode not in MODES:
            raise ValueError(f"iam.verifier.mode={mode!r}: expected one of {', '.join(MODES)}")
        if timeout_s <= 0 or max_pending < 1 or not frames:
            raise ValueError("iam.verifier: timeout_s must be > 0, max_pending >= 1 and frames non-empty")
        if max_wait_per_video_s is not None and not max_wait_per_video_s > 0:
            raise ValueError(f"iam.verifier.max_wait_per_video_s={max_wait_per_video_s!r}: must be > 0 "
                             "(null: no bound)")
        if breaker_timeouts < 0:
            raise ValueError(f"iam.verifier.breaker_timeouts={breaker_timeouts!r}: must be >= 0 (0: never opens)")
        self.judge, self.mode = judge, mode
        self.timeout_s, self.max_pending = float(timeout_s), int(max_pending)
        self.max_wait_per_video_s = None if max_wait_per_video_s is None else float(max_wait_per_video_s)
        self.breaker_timeouts = int(breaker_timeouts)
        self._waited_s = 0.0  # the generator's total wait so far (this verifier serves one video)
        self._consecutive_timeouts = 0
        self.breaker_open_at: str | None = None  # the block whose timeout opened the breaker
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
        if self.breaker_open_at is not None:
            self._done[key] = Verdict(key, "skipped", reason=self._breaker_reason())
            return
        if self._budget_left() == 0.0 and self._pool is None:  # sync: no time left to wait for a request
            self._done[key] = Verdict(key, "skipped", reason=f"wait_budget_spent: {self._budget_text()}")
            return
        images = self.images(pixels, count)
        count = len(images)
        if self._pool is None:  # sync: the generator waits for the whole request
            verdict = self._ask(key, images, prompt, names, registry, count)
            verdict.waited_s = verdict.latency_s
            self._waited_s += verdict.waited_s
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
        """The verdict for ``key``, waiting at most ``timeout_s`` (default: the configured timeout), cut to
        what is left of ``max_wait_per_video_s``; not at all once the breaker is open.

        A request still running at the deadline gives a ``timeout`` verdict and its answer is discarded.
        """
        if key in self._done:
            verdict = self._done.pop(key)
        else:
            with self._lock:
                future = self._futures.pop(key, None)
            if future is None:
                raise KeyError(f"no verifier request for block {key}")
            verdict = self._wait_for(key, future, self.timeout_s if timeout_s is None else float(timeout_s))
        self.verdicts.append(verdict)
        return verdict

    def _wait_for(self, key: str, future: Future, limit: float) -> Verdict:
        if future.done():
            return future.result()
        if self.breaker_open_at is not None:  # the VLM is hung: outstanding answers are not waited for
            future.cancel()
            return Verdict(key, "skipped", reason=self._breaker_reason())
        left = self._budget_left()
        cut = left is not None and left < limit
        wait = min(limit, left) if left is not None else limit
        started = time.perf_counter()
        try:
            verdict = future.result(timeout=wait)
        except FutureTimeout:
            future.cancel()  # not started yet: never runs; running: its answer is dropped
            reason = f"no answer within {wait:g} s"
            if cut:
                reason += f" (wait cut by iam.verifier.max_wait_per_video_s: {self._budget_text()})"
            verdict = Verdict(key, "timeout", reason=reason)
        verdict.waited_s = time.perf_counter() - started
        self._waited_s += verdict.waited_s
        if verdict.status == "timeout":
            self._consecutive_timeouts += 1
            if self.breaker_timeouts and self._consecutive_timeouts >= self.breaker_timeouts:
                self.breaker_open_at = key
                log.warning("IAMFlow visual verifier (%s): %d consecutive timeouts, no more requests for this "
                            "video (breaker_open)", self.judge.model, self._consecutive_timeouts)
        else:  # the VLM answered (validly or not): it is not hung
            self._consecutive_timeouts = 0
        return verdict

    def _budget_left(self) -> float | None:
        if self.max_wait_per_video_s is None:
            return None
        return max(0.0, self.max_wait_per_video_s - self._waited_s)

    def _budget_text(self) -> str:
        return f"{self._waited_s:.1f} s of {self.max_wait_per_video_s:g} s waited"

    def _breaker_reason(self) -> str:
        return f"breaker_open: {self.breaker_timeouts} consecutive timeouts (from block {self.breaker_open_at})"

    def stats(self) -> dict[str, Any]:
        """For the sidecar: counts per status, the judge's mean latency and the generator's total wait."""
        counts = {s: sum(v.status == s for v in self.verdicts) for s in STATUSES}
        latencies = [v.latency_s for v in self.verdicts if v.status in ("ok", "failed")]
        failures = [f"{v.key}: {v.reason}" for v in self.verdicts if v.status in ("failed", "timeout")]
        left = self._budget_left()
        return {"mode": self.mode, "model": self.judge.model, "blocks": len(self.verdicts), **counts,
                "mean_latency_s": float(np.mean(latencies)) if latencies else None,
                "blocked_s": float(sum(v.waited_s for v in self.verdicts)),  # the generator's total wait
                "timeout_s": self.timeout_s, "max_wait_per_video_s": self.max_wait_per_video_s,
                "wait_budget_spent": left is not None and left == 0.0,
                "breaker_timeouts": self.breaker_timeouts, "breaker_trips": int(self.breaker_open_at is not None),
                "breaker_open_at": self.breaker_open_at,
                "breaker_skipped": sum(v.status == "skipped" and v.reason.startswith("breaker_open")
                                       for v in self.verdicts),
                "problems": failures[:10]}

    def close(self) -> None:
        """Drop queued requests; a running one finishes in the background and is discarded."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._futures.clear()
        self._done.clear()
