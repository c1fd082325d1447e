"""The unit of the benchmark: one script of prompts, switching every ``seconds_per_prompt``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Script:
    """One multi-prompt script.

    ``id`` is the 0-based line index in the file it came from (the official evaluator's
    ``sample_<id>``). The taxonomy fields are derived from the id for the official file
    (see docs/taxonomy.md) and are ``None`` for user-supplied files.
    """

    id: int
    prompts: tuple[str, ...]
    template: int | None = None
    scene: str | None = None
    round: int | None = None
    cast_size: int | None = None
    dimension: str | None = None

    @property
    def num_segments(self) -> int:
        return len(self.prompts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["prompts"] = list(self.prompts)
        return d
