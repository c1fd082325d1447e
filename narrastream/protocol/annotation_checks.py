"""Mechanical checks of a narrative annotations file against the scripts (``narrastream annotations verify``).

What is checked, per script: it is annotated, for these very prompts (``prompts_sha256``); one
weight (1..100) per segment and one continuity flag per adjacent pair; entity-group indices in
range; every entity tagged in a segment, and every group member, is named in that segment's prompt
(a character by first name; an object by its name or its head noun, the last word, singular or
plural); and every character of the cast carries the cast's attribute list, the same in every script.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import yaml

from narrastream.paths import benchmark_data_dir
from narrastream.protocol.annotations import NarrativeAnnotations, prompts_sha256


@dataclass(frozen=True)
class Problem:
    script_id: int
    message: str

    def __str__(self) -> str:
        return f"script {self.script_id}: {self.message}"


def load_cast(path: Path | None = None) -> dict[str, tuple[str, ...]]:
    """Character -> attribute list, from ``benchmark_data/annotations/cast.yaml``."""
    data = yaml.safe_load((path or benchmark_data_dir() / "annotations" / "cast.yaml").read_text())
    return {str(name): tuple(attrs) for name, attrs in data.items()}


@lru_cache(maxsize=4096)
def _word(word: str) -> re.Pattern[str]:
    return re.compile(rf"\b{re.escape(word)}(?:s|es)?\b", re.IGNORECASE)


def mentions(prompt: str, name: str, cast: Mapping[str, Sequence[str]]) -> bool:
    """Is ``name`` named in ``prompt``? Characters by exact first name; objects by name or head noun.

    >>> mentions("Noah lifts the brass lamp.", "brass lamp", {}), mentions("Luca reads.", "lamp", {})
    (True, False)
    >>> mentions("the journals lie open", "leather-bound journal", {})
    True
    """
    if name in cast:
        return re.search(rf"\b{re.escape(name)}\b", prompt) is not None
    head = name.split()[-1] if name.split() else name
    return bool(_word(name).search(prompt) or _word(head).search(prompt))


def verify(annotations: NarrativeAnnotations, scripts: Iterable, cast: Mapping[str, Sequence[str]]) -> list[Problem]:
    """Every problem found, in script order (empty when the file passes)."""
    problems: list[Problem] = []
    looks: dict[str, tuple[tuple[str, ...], int]] = {}
    for script in scripts:
        sid, prompts = script.id, list(script.prompts)
        ann = annotations.get(sid)
        if ann is None:
            problems.append(Problem(sid, "not annotated"))
            continue
        if ann.prompts_sha256 != prompts_sha256(prompts):
            problems.append(Problem(sid, "prompts_sha256 missing or made for other prompts"))
        problems += [Problem(sid, p) for p in ann.check_segments(len(prompts))]
        for field in ("segment_weights", "continuity", "entity_groups", "segment_entities"):
            if getattr(ann, field) is None:
                problems.append(Problem(sid, f"no {field}"))
        for k, entities in enumerate(ann.segment_entities or ()):
            if k >= len(prompts):
                break
            if not entities:
                problems.append(Problem(sid, f"segment {k}: no entity"))
            for entity in entities:
                if not mentions(prompts[k], entity.name, cast):
                    problems.append(Problem(sid, f"segment {k}: {entity.name!r} is not named in the prompt"))
                if entity.name in cast:
                    if entity.attributes != tuple(cast[entity.name]):
                        problems.append(Problem(sid, f"segment {k}: {entity.name} has attributes "
                                                     f"{list(entity.attributes)}, the cast says {list(cast[entity.name])}"))
                    seen = looks.setdefault(entity.name, (entity.attributes, sid))
                    if seen[0] != entity.attributes:
                        problems.append(Problem(sid, f"{entity.name} looks different than in script {seen[1]}"))
        for name, indices in (ann.entity_groups or {}).items():
            for k in indices:
                if 0 <= k < len(prompts) and not mentions(prompts[k], name, cast):
                    problems.append(Problem(sid, f"entity group {name!r}: not named in segment {k}"))
    return problems
