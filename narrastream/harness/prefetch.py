"""Load the next items in a background thread while the current one is processed, in order.

The evaluation loop (:meth:`narrastream.harness.session.Session.evaluate`) decodes the next video -- and puts its
frames on the GPU -- while the networks score the current one, so the GPU never waits for FFmpeg. One thread,
a bounded look-ahead (at most ``depth`` items loaded or loading beyond the one being processed, so
``depth + 1`` decoded videos at a time), the items' order kept, each item loaded exactly once. An exception raised by ``load`` is
re-raised in the consumer at that item's turn, as if the loop had loaded it itself; closing the iterator early
(a ``break``, an exception in the consumer) stops the thread after the load in flight.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Prefetcher(Generic[T, R]):
    """``for item, loaded in Prefetcher(items, load, depth=1)``: ``loaded`` is ``load(item)``, computed ahead.

    ``depth=0`` loads each item in the consumer's thread when its turn comes (no thread at all).
    ``wait_seconds`` is the time the consumer spent waiting for a load (0 when prefetching hides it all);
    ``load_seconds`` the time spent in ``load``.
    """

    def __init__(self, items: Iterable[T], load: Callable[[T], R], depth: int = 1, name: str = "prefetch") -> None:
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        self.items = list(items)
        self.load = load
        self.depth = int(depth)
        self.name = name
        self.wait_seconds = 0.0
        self.load_seconds = 0.0
        self._ready: deque[tuple[T, R | None, BaseException | None]] = deque()
        self._cond = threading.Condition()
        self._slots = threading.Semaphore(self.depth) if self.depth else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _timed_load(self, item: T) -> tuple[R | None, BaseException | None]:
        started = time.perf_counter()
        try:
            return self.load(item), None
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there at this item's turn
            return None, exc
        finally:
            self.load_seconds += time.perf_counter() - started

    def _run(self) -> None:
        assert self._slots is not None
        for item in self.items:
            while not self._slots.acquire(timeout=0.1):  # a slot: fewer than `depth` loaded (or loading) and not taken
                if self._stop.is_set():
                    return
            if self._stop.is_set():
                return
            value, error = self._timed_load(item)
            with self._cond:
                self._ready.append((item, value, error))
                self._cond.notify_all()

    def __iter__(self) -> Iterator[tuple[T, R]]:
        if not self.depth:
            for item in self.items:
                started = time.perf_counter()
                value, error = self._timed_load(item)
                self.wait_seconds += time.perf_counter() - started
                if error is not None:
                    raise error
                yield item, value  # type: ignore[misc]
            return
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        try:
            for _ in range(len(self.items)):
                started = time.perf_counter()
                with self._cond:
                    while not self._ready:
                        if not self._thread.is_alive() and not self._ready:
                            raise RuntimeError(f"{self.name}: the loading thread ended early")
                        self._cond.wait(timeout=0.1)
                    item, value, error = self._ready.popleft()
                self._slots.release()  # type: ignore[union-attr] - taken: the thread loads the next while this one runs
                self.wait_seconds += time.perf_counter() - started
                if error is not None:
                    raise error
                yield item, value  # type: ignore[misc]
        finally:
            self.close()

    def close(self) -> None:
        """Stop loading (the load in flight finishes) and drop what was loaded but not taken."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._cond:
            self._ready.clear()
