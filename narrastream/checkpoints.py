"""Comparing a checkpoint's tensors with what a model expects: one computation, many messages.

Every strict loader (backbones, the Wan DiT, FP8 files, LoRA adapters) reports the same three kinds
of mismatch; each words them for its own file format, but they are computed here once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass
class StateMismatch:
    """Keys the model expects but the state lacks, keys the state has but the model does not, and
    keys present in both with different shapes as ``(key, state_shape, expected_shape)``, all sorted."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shapes)


def compare_state(expected: Mapping[str, Any], state: Mapping[str, Any]) -> StateMismatch:
    """``expected``: key -> tensor or shape tuple; ``state``: key -> tensor.

    >>> m = compare_state({"a": (2,), "b": (3,)}, {"b": _Shaped((4,)), "c": _Shaped((1,))})
    >>> m.missing, m.unexpected, m.shapes
    (['a'], ['c'], [('b', (4,), (3,))])
    """
    def shape(value: Any) -> tuple[int, ...]:
        return tuple(value) if isinstance(value, tuple) else tuple(value.shape)

    both = set(expected) & set(state)
    return StateMismatch(
        missing=sorted(set(expected) - set(state)),
        unexpected=sorted(set(state) - set(expected)),
        shapes=sorted((k, shape(state[k]), shape(expected[k])) for k in both if shape(state[k]) != shape(expected[k])),
    )


class _Shaped:  # for the doctest: anything with a ``shape``
    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
