"""File content hashes: the identity of script files, videos and checkpoints in manifests and records.

Hashing a multi-GB checkpoint takes seconds to minutes, and every run needs the hashes of its
checkpoints and videos (they are part of each record's cache key). :func:`sha256_file` therefore
remembers each digest twice: in this process, and on disk under ``cache_dir()/hashes`` (a
``diskcache`` store, safe across processes and shards), keyed by the file's resolved path, size,
modification time in nanoseconds and inode. A file replaced (in place, or by a rename over it) gets a
new mtime, size or inode and is hashed again; a file that did not change is never read twice, even by a
later process.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_cache: dict[tuple[str, int, int, int], str] = {}
_lock = threading.Lock()
_stores: dict[str, Any] = {}


@dataclass
class HashStats:
    """What this process hashed (``files``, ``bytes``) and what it found in the disk cache (``disk_hits``)."""

    files: int = 0
    bytes: int = 0
    disk_hits: int = 0


stats = HashStats()


def _disk_store() -> Any:
    """The persistent digest store of the current cache folder (None when it cannot be opened)."""
    from narrastream.paths import cache_dir

    directory = str(cache_dir() / "hashes")
    with _lock:
        if directory in _stores:
            return _stores[directory]
        for old in _stores.values():  # one cache folder at a time (tests switch it per test)
            if old is not None:
                old.close()
        _stores.clear()
        try:
            import diskcache

            store = diskcache.Cache(directory)
        except Exception as exc:  # noqa: BLE001 - a read-only or broken cache only costs time
            log.warning("file hash cache %s unavailable (%s); hashes are computed in this process only", directory, exc)
            store = None
        _stores[directory] = store
        return store


def sha256_file(path: Path | str) -> str:
    """Streaming sha256 of a file, computed once per (resolved path, size, mtime_ns, inode), across processes."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    with _lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    store = _disk_store()
    disk_key = "|".join(map(str, key))
    value = None
    if store is not None:
        try:
            value = store.get(disk_key)
        except Exception as exc:  # noqa: BLE001
            log.debug("file hash cache read failed (%s)", exc)
    if isinstance(value, str) and len(value) == 64:
        stats.disk_hits += 1
    else:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        value = digest.hexdigest()
        stats.files += 1
        stats.bytes += stat.st_size
        if store is not None:
            try:
                store.set(disk_key, value)
            except Exception as exc:  # noqa: BLE001
                log.debug("file hash cache write failed (%s)", exc)
    with _lock:
        _cache[key] = value
    return value


def sha256_files(paths: Iterable[Path | str], root: Path | str | None = None) -> str:
    """One digest for several files (a checkpoint directory): sha256 over ``name sha256`` lines, sorted.

    ``name`` is the path relative to ``root`` (else the file name), so the digest does not depend
    on where the directory lies.
    """
    lines = []
    for p in paths:
        p = Path(p)
        name = p.relative_to(root).as_posix() if root is not None else p.name
        lines.append(f"{name} {sha256_file(p)}")
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def clear_memory_cache() -> None:
    """Forget the in-process digests (tests; the disk cache stays)."""
    with _lock:
        _cache.clear()
