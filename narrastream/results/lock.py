"""One process per shard of a run folder: an exclusive lock file, ``locks/<shard>.lock``.

Two processes on the same run folder and shard would do all the work twice and write the same
records file. The generate and evaluate stages therefore hold the shard's lock: an ``flock`` on the
lock file, which the kernel releases when the holder exits in any way (kill -9 included), and which
holds the holder's pid, host and start time as JSON so that a refused process can name it.

- Free (no file, or a file left by a process that is gone): taken, its content replaced (a warning
  names the previous holder).
- Held by a live process: :class:`ShardLockError` (exit code 2) naming the pid, host and since when.
- On a filesystem without ``flock`` the file itself is the lock (created exclusively); a file naming
  a process of this host that no longer runs is stale and taken over, one naming another host is
  not (its process cannot be checked from here: delete the file when you know it is gone).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
#: flock errors that mean "not supported here" (some network and FUSE filesystems)
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
#: an empty or unreadable lock file older than this (s) is left over from a crash (exclusive-file mode)
EMPTY_LOCK_GRACE_S = 60.0


class ShardLockError(RuntimeError):
    """Another process holds the lock of this run folder's shard (exit code 2)."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or last held) a lock, as written in the lock file."""

    pid: int
    host: str
    since: str
    shard: str = ""

    @classmethod
    def me(cls, shard: str) -> "LockHolder":
        return cls(pid=os.getpid(), host=socket.gethostname(), since=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   shard=shard)

    @classmethod
    def parse(cls, text: str | bytes) -> "LockHolder | None":
        try:
            data = json.loads(text)
            return cls(pid=int(data["pid"]), host=str(data["host"]), since=str(data.get("since", "?")),
                       shard=str(data.get("shard", "")))
        except (ValueError, TypeError, KeyError, RecursionError):
            return None

    def to_json(self) -> str:
        return json.dumps({"pid": self.pid, "host": self.host, "since": self.since, "shard": self.shard})

    def is_local(self) -> bool:
        return self.host == socket.gethostname()

    def __str__(self) -> str:
        return f"pid {self.pid} on host {self.host} since {self.since}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (a zombie counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


class ShardLock:
    """The exclusive lock of one shard of a run folder; ``with ShardLock(path, shard): ...``."""

    def __init__(self, path: Path | str, shard: str = "") -> None:
        self.path = Path(path)
        self.shard = shard
        self._fd: int | None = None
        self._exclusive_file = False

    @property
    def held(self) -> bool:
        return self._fd is not None or self._exclusive_file

    def holder(self) -> LockHolder | None:
        """What the lock file says (whoever holds it now, or held it last)."""
        try:
            return LockHolder.parse(self.path.read_bytes())
        except OSError:
            return None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`ShardLockError` naming the live holder."""
        if self.held:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            existed = self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._busy(self.holder()) from None
            except OSError as exc:
                os.close(fd)
                if exc.errno in _NO_FLOCK:
                    log.debug("%s: flock not supported (%s); using an exclusive file", self.path, exc)
                    if not existed:  # the empty file this attempt created is not a lock
                        self.path.unlink(missing_ok=True)
                    self._acquire_exclusive_file()
                    return
                raise
            if not self._still_named(fd):  # the previous holder removed the file while releasing: retry
                os.close(fd)
                continue
            previous = LockHolder.parse(_read_fd(fd))
            if previous is not None:
                log.warning("%s: taking over the lock of shard %s left by %s (that process is gone)", self.path,
                            self.shard or previous.shard, previous)
            _write_fd(fd, LockHolder.me(self.shard).to_json())
            self._fd = fd
            return
        raise ShardLockError(f"{self.path}: could not take the lock (the file kept being replaced)")

    def release(self) -> None:
        """Give the lock back and remove the file (a finished run leaves no lock behind)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                if self._still_named(fd):
                    self.path.unlink(missing_ok=True)  # while still locked: a waiter re-checks the name
            finally:
                os.close(fd)
        elif self._exclusive_file:
            self._exclusive_file = False
            holder = self.holder()
            if holder is not None and holder.pid == os.getpid() and holder.is_local():
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> "ShardLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # ------------------------------------------------------------------ helpers
    def _still_named(self, fd: int) -> bool:
        try:
            named, mine = os.stat(self.path), os.fstat(fd)
        except FileNotFoundError:
            return False
        return (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino)

    def _busy(self, holder: LockHolder | None) -> ShardLockError:
        who = str(holder) if holder else "another process (the lock file names no holder yet)"
        if holder is not None and holder.is_local() and not pid_alive(holder.pid):
            who += " (that pid has exited, but a process it started still holds the lock)"
        return ShardLockError(
            f"shard {self.shard or self.path.stem} of this run folder is in use by {who} (lock file {self.path}). "
            "Wait for it to finish, or use another run.dir or shard; two processes on one shard would do the "
            "same work twice.")

    def _acquire_exclusive_file(self) -> None:
        """Fallback without flock: the file is the lock; a stale one (dead local pid) is taken over."""
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is not None and holder.is_local() and not pid_alive(holder.pid):
                    log.warning("%s: taking over a stale lock of shard %s: %s is gone", self.path, self.shard, holder)
                    self.path.unlink(missing_ok=True)
                    continue
                if holder is None and _age(self.path) > EMPTY_LOCK_GRACE_S:
                    log.warning("%s: taking over an unreadable lock file left by a crash", self.path)
                    self.path.unlink(missing_ok=True)
                    continue
                raise self._busy(holder) from None
            try:
                _write_fd(fd, LockHolder.me(self.shard).to_json())
            finally:
                os.close(fd)
            self._exclusive_file = True
            return
        raise ShardLockError(f"{self.path}: could not take the lock (the file kept being replaced)")


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _read_fd(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _write_fd(fd: int, text: str) -> None:
    data = (text + "\n").encode()
    os.ftruncate(fd, 0)
    view = memoryview(data)
    offset = 0
    while offset < len(data):
        written = os.pwrite(fd, view[offset:], offset)
        if written <= 0:
            raise OSError(errno.EIO, "could not write the lock file")
        offset += written
    os.fsync(fd)
