"""Split (script, seed) items across shards without dropping the remainder."""

from __future__ import annotations

from typing import Sequence, TypeVar

T = TypeVar("T")


def shard_items(items: Sequence[T], index: int, count: int) -> list[T]:
    """Round-robin: item i goes to shard ``i % count``. Every item lands in exactly one shard.

    >>> [len(shard_items(range(324), i, 8)) for i in range(8)]
    [41, 41, 41, 41, 40, 40, 40, 40]
    """
    if count < 1:
        raise ValueError(f"shard.count must be >= 1, got {count}")
    if not 0 <= index < count:
        raise ValueError(f"shard.index must be in 0..{count - 1}, got {index}")
    return [item for i, item in enumerate(items) if i % count == index]


def shard_name(index: int, count: int) -> str:
    return f"shard-{index:03d}-of-{count:03d}"
