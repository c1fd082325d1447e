"""The three questions IAMFlow's agents ask, in our own words, with schemas that validate the answers.

* ``extract_entities`` (LLM, once per prompt before generation, reference §3.2): the human characters
  of a prompt with their visible attributes, ``{"entities": [{"entity": name, "attrs": [...]}]}``.
  Like the release's parser, a bare list or a single ``{"entity": ...}`` object is accepted too.
* ``match_identity`` (LLM, only for names the registry finds ambiguous): ``{"matched_id": int|null}``.
* ``verify_chunk`` (VLM, once per block, §3.10): three frames scored in [0, 1] for how well they show the
  prompt's characters, plus, on a prompt's first block, attribute corrections per registry ID.
  Scores are clipped to [0, 1] and padded with 0.5 (the release's rule); malformed corrections are dropped.

Each template has a version in ``TEMPLATES``; it enters the judge's answer-cache key.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

from pydantic import BaseModel, Field, field_validator, model_validator

from narrastream.iamflow.registry import ExtractedEntity, RegistryEntry
from narrastream.judges.base import ImagePart, Judge, Message

TEMPLATES = {
    "extract_entities": "iam_extract_entities/v1",
    "match_identity": "iam_match_identity/v1",
    "verify_chunk": "iam_verify_chunk/v1",
}
NEUTRAL_SCORE = 0.5  # a missing visual score (release default)


# ----------------------------------------------------------------------------- schemas
class CharacterItem(BaseModel):
    entity: str
    attrs: list[str] = Field(default_factory=list)


class EntityExtraction(BaseModel):
    entities: list[CharacterItem]

    @model_validator(mode="before")
    @classmethod
    def _bare(cls, obj: Any) -> Any:
        """The release also takes a bare list of characters or one character object."""
        if isinstance(obj, list):
            return {"entities": obj}
        if isinstance(obj, dict) and "entities" not in obj and ("entity" in obj or "name" in obj):
            return {"entities": [obj]}
        return obj

    @field_validator("entities", mode="before")
    @classmethod
    def _normalise(cls, value: Any) -> Any:
        """Names trimmed and whitespace collapsed; empty names dropped; repeated names merged."""
        if not isinstance(value, list):
            raise ValueError("entities must be a list of {entity, attrs} objects")
        merged: dict[str, dict[str, Any]] = {}
        for item in value:
            if not isinstance(item, dict):
                raise ValueError("each entity must be an object with 'entity' and 'attrs'")
            name = item.get("entity", item.get("name"))
            if not isinstance(name, str) or not name.strip():
                continue
            name = " ".join(name.split())
            attrs = item.get("attrs", item.get("attributes")) or []
            if not isinstance(attrs, list) or not all(isinstance(a, str) for a in attrs):
                raise ValueError(f"attrs of {name!r} must be a list of strings")
            entry = merged.setdefault(name.lower(), {"entity": name, "attrs": []})
            for attr in attrs:
                attr = " ".join(attr.split())
                if attr and attr.lower() not in {a.lower() for a in entry["attrs"]}:
                    entry["attrs"].append(attr)
        return list(merged.values())

    def to_entities(self) -> list[ExtractedEntity]:
        return [ExtractedEntity(c.entity, tuple(c.attrs)) for c in self.entities]


class IdentityMatch(BaseModel):
    matched_id: int | None

    @field_validator("matched_id", mode="before")
    @classmethod
    def _as_int(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none", "new")):
            return None
        if isinstance(value, bool):
            raise ValueError("matched_id must be an integer ID or null")
        return value


class ChunkVerdict(BaseModel):
    scores: list[float]
    corrections: dict[int, list[str]] = Field(default_factory=dict)

    @field_validator("scores", mode="before")
    @classmethod
    def _scores(cls, value: Any) -> Any:
        if not isinstance(value, list) or not value:
            raise ValueError("scores must be a non-empty list of numbers in [0, 1]")
        out = []
        for v in value:
            if isinstance(v, bool):
                raise ValueError("scores must be numbers, not booleans")
            try:
                v = float(v)
            except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond any float
                raise ValueError("scores must be numbers in [0, 1]") from None
            if not math.isfinite(v):
                raise ValueError("scores must be finite numbers")
            out.append(min(1.0, max(0.0, v)))
        return out

    @field_validator("corrections", mode="before")
    @classmethod
    def _corrections(cls, value: Any) -> Any:
        """Only well-formed ``{"<id>": {"corrected_attrs": [str, ...]}}`` entries are kept (release rule)."""
        if not isinstance(value, dict):
            return {}
        out: dict[int, list[str]] = {}
        for gid, entry in value.items():
            attrs = entry.get("corrected_attrs") if isinstance(entry, dict) else entry
            try:
                key = int(str(gid).strip().removeprefix("ID").strip())
            except ValueError:
                continue
            if isinstance(attrs, list) and all(isinstance(a, str) for a in attrs):
                kept = [" ".join(a.split()) for a in attrs if a.strip()]
                if kept:  # an empty list corrects nothing; it would only erase what the registry knows
                    out[key] = kept
        return out

    def padded(self, count: int) -> list[float]:
        """Exactly ``count`` scores: extra ones dropped, missing ones 0.5 (release)."""
        return (self.scores + [NEUTRAL_SCORE] * count)[:count]


# ----------------------------------------------------------------------------- prompts
EXTRACT_SYSTEM = """You read one prompt of a video script and list the people in it.
List human characters only: never animals, objects, places or groups of extras.
For each person give a short name (their given name, or a short description such as "the old man" when the
prompt names nobody) and only what can be seen of them: hair, clothing, accessories, build, age, skin and
facial features. Leave out actions, poses, gestures, feelings and moods.
Reply with one JSON object only: {"entities": [{"entity": "short name", "attrs": ["attribute", ...]}]}.
When the prompt has no person, reply {"entities": []}."""

MATCH_SYSTEM = """You keep track of the characters of one video script.
Decide whether a character mentioned in a new prompt is one already known. Role words and pronouns (the
protagonist, the main character, he, she) usually point to a known character; the same clothing or look
usually means the same person; words such as another, other, new or different mean a new person.
Reply with one JSON object only: {"matched_id": <the known ID> } or {"matched_id": null} for a new person."""

VERIFY_PROMPT = """These are {n} frames of a generated video, in order. The video should show: "{prompt}"
Characters to look for: {names}.
Score each frame from 0 to 1 for how clearly and faithfully it shows these characters and matches the
description (clarity, consistency with the description, image quality).{registry}
Reply with JSON only: {{"scores": [{slots}], "corrections": {corrections}}}"""

VERIFY_REGISTRY = """
Known characters and their attributes so far:
{lines}
Check these attributes against the frames. For any character whose listed attributes are clearly wrong,
give the attributes you see instead."""


def extract_entities(judge: Judge, prompt: str) -> list[ExtractedEntity]:
    """The characters of one prompt (raises :class:`~narrastream.judges.JudgeError` on failure)."""
    answer = judge.structured([Message.system(EXTRACT_SYSTEM), Message.user(prompt)], EntityExtraction,
                              template=TEMPLATES["extract_entities"])
    return answer.to_entities()


def _render(entity: ExtractedEntity) -> str:
    return f"{entity.name}: {', '.join(entity.attributes) or 'no attributes given'}"


def match_identity(judge: Judge, entity: ExtractedEntity, candidates: Sequence[RegistryEntry]) -> int | None:
    """The registry ID ``entity`` refers to among ``candidates``, or None for a new person; an ID outside
    the candidates counts as a new person (the release allocates a new ID then)."""
    known = "\n".join(f"ID {c.global_id}: {'/'.join([c.name, *c.aliases])}: {', '.join(c.attributes) or '-'}"
                      for c in candidates)
    question = f"New character: {_render(entity)}\nKnown characters:\n{known}\nWhich ID is it, or null?"
    answer = judge.structured([Message.system(MATCH_SYSTEM), Message.user(question)], IdentityMatch,
                              template=TEMPLATES["match_identity"])
    ids = {c.global_id for c in candidates}
    return answer.matched_id if answer.matched_id in ids else None


def verify_messages(prompt: str, names: Sequence[str], images: Sequence[ImagePart],
                    registry: Mapping[int, tuple[str, Sequence[str]]] | None) -> list[Message]:
    """The verifier's request: the block's frames (3 for a full-size block), the prompt, the character
    names and, on a prompt's first block, the registry (``{id: (name, attributes)}``) with the request
    for corrections."""
    block = ""
    corrections = "null"
    if registry:
        lines = "\n".join(f"ID {gid} ({name}): {', '.join(attrs) or '-'}" for gid, (name, attrs) in registry.items())
        block = VERIFY_REGISTRY.format(lines=lines)
        corrections = json.dumps({"<id>": {"corrected_attrs": ["..."]}}) + " or null"
    slots = ", ".join(f"s{i + 1}" for i in range(len(images)))
    text = VERIFY_PROMPT.format(n=len(images), prompt=prompt, names=", ".join(names) or "the main subject",
                                registry=block, corrections=corrections, slots=slots)
    return [Message.user(*images, text)]


def verify_chunk(judge: Judge, prompt: str, names: Sequence[str], images: Sequence[ImagePart],
                 registry: Mapping[int, tuple[str, Sequence[str]]] | None = None,
                 max_tokens: int | None = None) -> ChunkVerdict:
    """The VLM's verdict on one block's frames (raises :class:`~narrastream.judges.JudgeError` on failure)."""
    return judge.structured(verify_messages(prompt, names, images, registry), ChunkVerdict,
                            template=TEMPLATES["verify_chunk"], max_tokens=max_tokens)
