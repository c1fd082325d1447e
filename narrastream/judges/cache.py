"""The judge answer cache: validated answers on disk, shared by runs, shards and processes.

Backed by ``diskcache`` (SQLite, safe across processes), so shards evaluating in parallel share
one cache and the text-only planner answers, which depend only on the script, are asked once for
every model evaluated. Keys are built by :meth:`Judge.cache_key` (endpoint, model, template
version, every message with images by hash); values are the validated answer as JSON data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import diskcache


class AnswerCache:
    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self._cache = diskcache.Cache(str(self.directory))

    def get(self, key: str) -> Any:
        return self._cache.get(key)

    def set(self, key: str, value: Any) -> None:
        self._cache.set(key, value)

    def __len__(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        self._cache.close()
