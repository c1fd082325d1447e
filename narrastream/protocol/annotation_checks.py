"""Mechanical checks of a narrative annotations file against the scripts (``narrastream annotations verify``).

What is checked, per script (docs/protocol.md, "Checks"):

- structure: the script is annotated, for these very prompts (``prompts_sha256``); every field is
  present; one weight (1..100) per segment and one continuity flag per adjacent pair; group indices
  in range; no segment without an entity;
- grounding (:mod:`narrastream.protocol.grounding`): every entity name and every attribute of an
  entity in segment k has its content words in the prompt of segment k, or in the prompt of an
  earlier segment where the same entity is tagged or grouped (where it was last described); a
  character is tagged only in segments whose prompt names them;
- coverage of named characters: every cast member a prompt names (possessives included) has an
  entity group listing that segment, and is among that segment's entities unless the segment
  already lists four characters (the entity cap);
- no placeholder names ("item", "object", "piece", ...: :data:`PLACEHOLDERS`).

The counts of each kind are reported, so two files (v1, v2) can be compared.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import yaml

from narrastream.paths import benchmark_data_dir
from narrastream.protocol.annotations import MAX_ENTITIES_PER_SEGMENT, NarrativeAnnotations, prompts_sha256
from narrastream.protocol.grounding import Grounding, bases, content_words

#: names made only of these words (after normalisation) say nothing the judge could check
PLACEHOLDERS = frozenset({"item", "object", "piece", "thing", "stuff", "element", "entity", "setup", "arrangement",
                          "belonging", "subject", "main"})

KINDS = {
    "ungrounded_attribute": "ungrounded attributes",
    "ungrounded_name": "ungrounded entity names",
    "untagged_character": "untagged named characters",
    "placeholder_name": "placeholder names",
    "structure": "structure problems",
}


@dataclass(frozen=True)
class Problem:
    script_id: int
    message: str
    kind: str = "structure"

    def __str__(self) -> str:
        return f"script {self.script_id}: {self.message}"


@dataclass
class Report:
    """Every problem found, in script order, and what was counted."""

    problems: list[Problem] = field(default_factory=list)
    attributes: int = 0
    names: int = 0
    named_characters: int = 0  # (character, segment) pairs where a prompt names a cast member
    entities: int = 0

    def count(self, kind: str) -> int:
        return sum(1 for p in self.problems if p.kind == kind)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> list[str]:
        counts = Counter(p.kind for p in self.problems)
        totals = {"ungrounded_attribute": self.attributes, "ungrounded_name": self.names,
                  "untagged_character": self.named_characters}
        lines = []
        for kind, label in KINDS.items():
            of = f" of {totals[kind]}" if kind in totals else ""
            lines.append(f"{label}: {counts.get(kind, 0)}{of}")
        return lines


def load_cast(path: Path | None = None) -> dict[str, tuple[str, ...]]:
    """Character -> attribute list, from ``benchmark_data/annotations/cast.yaml`` (the looks v1 gave
    every character; not a source of v2 and not used by :func:`verify`)."""
    data = yaml.safe_load((path or benchmark_data_dir() / "annotations" / "cast.yaml").read_text())
    return {str(name): tuple(attrs) for name, attrs in data.items()}


def cast_names() -> tuple[str, ...]:
    from narrastream.data import load_taxonomy

    return load_taxonomy().cast


def names_in(prompt: str, cast: Iterable[str]) -> list[str]:
    """The cast members ``prompt`` names, possessives included ("Milan's" names Milan)."""
    return [name for name in cast if re.search(rf"\b{re.escape(name)}\b", prompt)]


def mentions(prompt: str, name: str, cast: Sequence[str] | None = None) -> bool:
    """Is ``name`` named in ``prompt``? A cast member by first name; anything else when its content words
    occur (after the grounding normalisation).

    >>> mentions("Noah lifts the brass lamp.", "brass lamp"), mentions("Luca reads.", "lamp")
    (True, False)
    >>> mentions("the journals lie open", "journal")
    True
    """
    cast = cast_names() if cast is None else cast
    if name in cast:
        return bool(names_in(prompt, [name]))
    return Grounding(prompt).grounds(name)


def is_placeholder(name: str) -> bool:
    """Is ``name`` only placeholder words ("item", "small object", "items") or no content word at all?"""
    words = content_words(name)
    placeholder = [not bases(w).isdisjoint(PLACEHOLDERS) for w in words]
    return not words or (any(placeholder) and all(p or w in _PLACEHOLDER_FREE_WORDS
                                                  for w, p in zip(words, placeholder)))


# size and position words do not make a placeholder a name ("small item" is still a placeholder)
_PLACEHOLDER_FREE_WORDS = frozenset({"small", "large", "little", "big", "same", "other", "key", "main", "new",
                                     "last", "final", "first"})


def verify(annotations: NarrativeAnnotations, scripts: Iterable, cast: Sequence[str] | None = None) -> Report:
    """Check ``annotations`` against ``scripts`` (objects with ``id`` and ``prompts``); see the module doc."""
    cast = tuple(cast_names() if cast is None else cast)
    report = Report()
    for script in scripts:
        _verify_script(annotations, script.id, list(script.prompts), cast, report)
    return report


def _verify_script(annotations: NarrativeAnnotations, sid: int, prompts: list[str], cast: tuple[str, ...],
                   report: Report) -> None:
    def problem(message: str, kind: str = "structure") -> None:
        report.problems.append(Problem(sid, message, kind))

    ann = annotations.get(sid)
    if ann is None:
        problem("not annotated")
        return
    if ann.prompts_sha256 != prompts_sha256(prompts):
        problem("prompts_sha256 missing or made for other prompts")
    for message in ann.check_segments(len(prompts)):
        problem(message)
    for name in ("segment_weights", "continuity", "entity_groups", "segment_entities"):
        if getattr(ann, name) is None:
            problem(f"no {name}")
    n = len(prompts)
    texts = [Grounding(p) for p in prompts]
    named = [names_in(p, cast) for p in prompts]
    segments = [list(seg) for seg in (ann.segment_entities or ())][:n]
    groups = {name: [k for k in ks if 0 <= k < n] for name, ks in (ann.entity_groups or {}).items()}
    # where each entity is tagged or grouped: the segments its later attributes may come from
    present: dict[str, set[int]] = {name: set(ks) for name, ks in groups.items()}
    for k, entities in enumerate(segments):
        for e in entities:
            present.setdefault(e.name, set()).add(k)

    def grounded(phrase: str, entity: str, k: int) -> bool:
        if texts[k].grounds(phrase):
            return True
        return any(texts[j].grounds(phrase) for j in sorted(present.get(entity, ())) if j < k)

    def check_name(name: str, k: int, where: str) -> None:
        report.names += 1
        if name in cast:
            if name not in named[k]:
                problem(f"{where}: {name} is tagged but segment {k} does not name them", "ungrounded_name")
        elif not grounded(name, name, k):
            missing = texts[k].missing(name)
            problem(f"{where}: entity name {name!r} is not in the prompt (missing: {', '.join(missing)})",
                    "ungrounded_name")
        if name not in cast and is_placeholder(name):
            problem(f"{where}: placeholder entity name {name!r}", "placeholder_name")

    for k, entities in enumerate(segments):
        if not entities:
            problem(f"segment {k}: no entity")
        for e in entities:
            report.entities += 1
            check_name(e.name, k, f"segment {k}")
            for attribute in e.attributes:
                report.attributes += 1
                if not grounded(attribute, e.name, k):
                    missing = texts[k].missing(attribute)
                    problem(f"segment {k}: {e.name}: attribute {attribute!r} is not grounded in segment {k} "
                            f"nor where {e.name} was last described (missing: {', '.join(missing)})",
                            "ungrounded_attribute")
    for name, ks in groups.items():
        for k in ks:
            if name in cast:
                if name not in named[k]:
                    problem(f"entity group {name!r}: not named in segment {k}", "ungrounded_name")
            elif not grounded(name, name, k):
                problem(f"entity group {name!r}: not in the prompt of segment {k}", "ungrounded_name")
        if name not in cast and is_placeholder(name) and not any(e.name == name for seg in segments for e in seg):
            problem(f"entity group {name!r}: placeholder entity name", "placeholder_name")
    for k in range(n):
        tagged = {e.name for e in segments[k]} if k < len(segments) else set()
        characters = sum(1 for name in tagged if name in cast)
        for name in named[k]:
            report.named_characters += 1
            if name not in groups:
                problem(f"segment {k} names {name}, who has no entity group", "untagged_character")
            elif k not in groups[name]:
                problem(f"segment {k} names {name}, whose entity group misses segment {k}", "untagged_character")
            elif name not in tagged and characters < MAX_ENTITIES_PER_SEGMENT:
                problem(f"segment {k} names {name}, who is not among its entities (objects do not take a "
                        "character's place)", "untagged_character")
