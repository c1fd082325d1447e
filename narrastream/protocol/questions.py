"""The six questions the protocol asks a judge, in our own words, each with a versioned template
and a pydantic schema that validates the answer.

Text-only questions (they depend on the prompts only, so their cached answers serve every model):
segment weights (planner), continuity flags and entity groups (MLLM), per-segment entities
(planner). Questions with frames (VLM): entity grounding per segment, and vlm_score per video.
The ``TEMPLATES`` versions enter the judge's cache key: editing a prompt means bumping its version.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from narrastream.judges.base import ImagePart, Judge, Message
from narrastream.protocol.annotations import MAX_ATTRIBUTES_PER_ENTITY, MAX_ENTITIES_PER_SEGMENT, Entity

TEMPLATES = {
    "segment_weights": "segment_weights/v1",
    "continuity": "continuity/v1",
    "entity_groups": "entity_groups/v2",  # v2: indices through int() as the official (prompt unchanged)
    "segment_entities": "segment_entities/v1",
    "entity_grounding": "entity_grounding/v1",
    "vlm_score": "vlm_score/v1",
}


def _expect_length(values: list, info: ValidationInfo, key: str, what: str) -> list:
    n = (info.context or {}).get(key)
    if n is not None and len(values) != n:
        raise ValueError(f"expected {n} {what}, got {len(values)}")
    return values


# ----------------------------------------------------------------------------- schemas
class SegmentWeightsAnswer(BaseModel):
    segment_importance: list[int]

    @field_validator("segment_importance", mode="before")
    @classmethod
    def _clamp(cls, values: Any) -> Any:  # the official rule: int(), then clamp to 1..100
        if not isinstance(values, list):
            raise ValueError("segment_importance must be a list of integers")
        try:
            return [min(100, max(1, int(float(v)))) for v in values]
        except (TypeError, OverflowError, ValueError):  # null, Infinity, 1e999, "many"
            raise ValueError("segment_importance must hold finite numbers") from None

    @field_validator("segment_importance")
    @classmethod
    def _length(cls, values: list[int], info: ValidationInfo) -> list[int]:
        return _expect_length(values, info, "segments", "segment weights")


class ContinuityAnswer(BaseModel):
    keep: list[bool]

    @field_validator("keep")
    @classmethod
    def _length(cls, values: list[bool], info: ValidationInfo) -> list[bool]:
        return _expect_length(values, info, "transitions", "keep flags")


class EntityGroupsAnswer(BaseModel):
    groups: dict[str, list[int]]

    @field_validator("groups", mode="before")
    @classmethod
    def _keep_lists(cls, value: Any, info: ValidationInfo) -> Any:
        """The official normalisation: list values only; each index through ``int()``; those in ``[0, N)``.

        As the official: ``"1"`` counts as 1, ``2.9`` as 2, ``true`` as 1; what ``int()`` refuses
        (``"2.9"``, ``null``, ``NaN``, nested lists) is dropped, and so is an infinite index (the
        official crashes on it). Order and duplicates are kept (the first listed index is the anchor).
        Names are kept as given (``str(name)``, as the official's dict keys): two names that differ
        only in whitespace stay two entities, each scored, as in the official evaluator, instead of the
        later one overwriting the earlier. An answer with no entity left is invalid.
        """
        if not isinstance(value, dict):
            raise ValueError("groups must be an object: entity -> [segment indices]")
        n = (info.context or {}).get("segments")
        out = {}
        for name, indices in value.items():
            if not isinstance(indices, list):
                continue
            kept = []
            for index in indices:
                try:
                    k = int(index)
                except (TypeError, ValueError, OverflowError):
                    continue
                if n is None or 0 <= k < n:
                    kept.append(k)
            if kept:
                out[str(name)] = kept
        if not out:
            raise ValueError("no entity with valid segment indices")
        return out


class EntityItem(BaseModel):
    name: str
    attributes: list[str] = Field(default_factory=list)


class SegmentEntitiesAnswer(BaseModel):
    entities: list[EntityItem]

    @field_validator("entities", mode="before")
    @classmethod
    def _normalise(cls, value: Any) -> Any:
        """Whitespace collapsed, case-insensitive duplicates merged, plain strings allowed, capped at 4 x 5.

        Attributes are strings (a bare string is one attribute); anything else in the list is dropped,
        never turned into text such as ``"None"``."""
        if not isinstance(value, list):
            raise ValueError("entities must be a list")
        merged: dict[str, dict[str, Any]] = {}
        for item in value:
            name, attrs = (item, []) if isinstance(item, str) else (
                (item.get("name"), item.get("attributes") or []) if isinstance(item, dict) else (None, []))
            if not isinstance(name, str) or not name.strip():
                continue
            name = " ".join(name.split())
            entry = merged.setdefault(name.lower(), {"name": name, "attributes": []})
            if isinstance(attrs, str):  # one attribute given bare
                attrs = [attrs]
            for a in attrs if isinstance(attrs, list) else []:
                if not isinstance(a, str):  # a number, object or null is no attribute ("None", "{...}")
                    continue
                a = " ".join(a.split())
                if a and a.lower() not in {x.lower() for x in entry["attributes"]}:
                    entry["attributes"].append(a)
        return [{"name": e["name"], "attributes": e["attributes"][:MAX_ATTRIBUTES_PER_ENTITY]}
                for e in list(merged.values())[:MAX_ENTITIES_PER_SEGMENT]]

    def to_entities(self) -> tuple[Entity, ...]:
        return tuple(Entity(e.name, tuple(e.attributes)) for e in self.entities)


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("scores must be finite numbers")
    return value


def _not_boolean(value: Any) -> Any:
    """``true`` is no score (pydantic would read it as 1.0: a full score from a malformed answer)."""
    if isinstance(value, bool):
        raise ValueError("scores must be numbers, not booleans")
    return value


class GroundingItem(BaseModel):
    presence: float
    attribute_match: float

    @field_validator("presence", "attribute_match", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        return _not_boolean(value)

    @field_validator("presence", "attribute_match")
    @classmethod
    def _check(cls, value: float) -> float:
        return _finite(value)


class EntityGroundingAnswer(BaseModel):
    entity_results: list[GroundingItem]

    @field_validator("entity_results")
    @classmethod
    def _length(cls, values: list, info: ValidationInfo) -> list:
        return _expect_length(values, info, "entities", "entity results")


class VlmScoreAnswer(BaseModel):
    segment_scores: list[float]
    overall_score: float

    @field_validator("segment_scores", mode="before")
    @classmethod
    def _numbers(cls, values: Any) -> Any:
        if isinstance(values, list):
            for v in values:
                _not_boolean(v)
        return values

    @field_validator("overall_score", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        return _not_boolean(value)

    @field_validator("segment_scores")
    @classmethod
    def _length(cls, values: list[float], info: ValidationInfo) -> list[float]:
        for v in values:
            _finite(v)
        return _expect_length(values, info, "segments", "segment scores")

    @field_validator("overall_score")
    @classmethod
    def _overall(cls, value: float) -> float:
        return _finite(value)


# ----------------------------------------------------------------------------- prompts
def _numbered(prompts: Sequence[str], start: int) -> str:
    return "\n".join(f"{i + start}. {p}" for i, p in enumerate(prompts))


WEIGHTS_PROMPT = """You plan how much each segment of a generated video should count when it is evaluated.
The video follows a script of {n} prompts, one per segment, usually a setup, a development and a closure.
Give every segment an integer importance between 1 and 100, judging the prompts only (no video exists yet).
Score higher: turning points in the relationships between characters; clear, checkable actions that cannot
be swapped for others (interactions, objects changing hands, changes of state, progress of a task);
segments that best reveal whether a video model really followed its prompt; development and climax rather
than opening or closing. Score lower: repetitions, setup and wrap-up. Make the weights discriminate.
Prompts:
{prompts}
Reply with JSON only, exactly {n} integers: {{"segment_importance": [{example}]}}"""

CONTINUITY_PROMPT = """Here are the {n} consecutive prompts of one video, numbered from 0:
{prompts}
For each pair of neighbouring prompts (0-1, 1-2, ...), decide whether the two segments should stay visually
continuous: the same place, the same person or people, or an evident continuation of the same action.
Reply with JSON only: {{"keep": [{m} booleans, one per neighbouring pair, in order]}}"""

GROUPS_PROMPT = """Here are the {n} prompts of one video, numbered from 0 ("index: prompt"):
{prompts}
List the main entities of the story (people and the key objects they handle) and, for each, the indices of
the prompts in which it appears, in order of appearance.
Reply with JSON only: {{"groups": {{"entity name": [segment indices], ...}}}}"""

ENTITIES_PROMPT = """Read this prompt for one segment of a video:
"{prompt}"
List the subjects a viewer could check by looking at the frames: at most {max_e} entities, each with at most
{max_a} visible attributes bound to it (clothing, colour, expression, action, pose, object held, state).
Put first the key people, the objects they handle and the people they interact with. Leave out the setting
and static background (room, table, lamp, window light) unless someone acts on it directly, and leave out
words about style, beauty or image quality.
Reply with JSON only: {{"entities": [{{"name": "...", "attributes": ["...", "..."]}}]}}"""

GROUNDING_PROMPT = """You check, strictly from what is visible in these {k} frames of one video segment (in
temporal order), whether each listed entity is there with its attributes. Use direct visual evidence only:
no inference from story or common sense, and no credit for a merely similar background.
Entities (JSON): {entities}
For every entity, in the same order, give two integers from 0 to 100:
- presence: 0 absent, 30 weak evidence, 50 probably there but unsure, 75 fairly clear, 100 unmistakable.
  When the identity is uncertain, presence should usually be 60 or less.
- attribute_match: 0 a key attribute is wrong, 30 only generic attributes fit, 50 partly, 75 mostly,
  100 nearly exactly. Weigh identity, clothing colour, objects held, action, change of state, whom the
  interaction is with, ownership and direction. A wrong action, object, direction, owner or state change
  usually means 40 or less. An absent entity gets 0; an entity listed without attributes gets 100 if
  present, otherwise 0.
Reply with one line of JSON only, without names: {{"entity_results": [{{"presence": 0, "attribute_match": 0}}, ...]}}"""

VLM_SCORE_PROMPT = """You evaluate a generated video made from a script of {n} prompts, one per segment, shown
below with key frames of each segment in temporal order.
Prompts:
{prompts}
Score how well each segment carries out its own prompt, using only that segment's frames and prompt; its
place in the story earns nothing. A prompt that continues, holds or confirms a previous state may rely on
the state set up in the previous segment, and small motion is not a fault in itself. Look for observable
evidence: the action happens, the interaction happens, the object or state is handed over, timing is right,
and relations and layout that were established persist. If only the characters or the setting match while
the key action, interaction, ownership or handoff stays unclear, give 50 or less; ambiguity about who is
who among several people also rules out a high score. Almost no evidence: 1 to 20; weak or generic
evidence: about 20 to 50. Equal scores and jumps between segments are fine; do not smooth them.
Then give an overall score for whether the key events happen in the right order and later states stay
consistent; smoothness or a consistent setting alone do not earn it. Give 100 only when identity, action,
object relations and timing are all unambiguous. All scores are integers from 1 to 100.
Reply with JSON only: {{"segment_scores": [{n} integers], "overall_score": integer}}"""


# ----------------------------------------------------------------------------- questions
def ask_segment_weights(judge: Judge, prompts: Sequence[str]) -> tuple[int, ...]:
    n = len(prompts)
    text = WEIGHTS_PROMPT.format(n=n, prompts=_numbered(prompts, 1), example=", ".join(["int"] * n))
    answer = judge.structured([Message.user(text)], SegmentWeightsAnswer, template=TEMPLATES["segment_weights"],
                              context={"segments": n})
    return tuple(answer.segment_importance)


def ask_continuity(judge: Judge, prompts: Sequence[str]) -> tuple[bool, ...]:
    n = len(prompts)
    text = CONTINUITY_PROMPT.format(n=n, m=n - 1, prompts=_numbered(prompts, 0))
    answer = judge.structured([Message.user(text)], ContinuityAnswer, template=TEMPLATES["continuity"],
                              context={"transitions": n - 1})
    return tuple(answer.keep)


def ask_entity_groups(judge: Judge, prompts: Sequence[str]) -> dict[str, tuple[int, ...]]:
    n = len(prompts)
    text = GROUPS_PROMPT.format(n=n, prompts="\n".join(f"{i}: {p}" for i, p in enumerate(prompts)))
    answer = judge.structured([Message.user(text)], EntityGroupsAnswer, template=TEMPLATES["entity_groups"],
                              context={"segments": n})
    return {name: tuple(indices) for name, indices in answer.groups.items()}


def ask_segment_entities(judge: Judge, prompt: str) -> tuple[Entity, ...]:
    text = ENTITIES_PROMPT.format(prompt=prompt, max_e=MAX_ENTITIES_PER_SEGMENT, max_a=MAX_ATTRIBUTES_PER_ENTITY)
    answer = judge.structured([Message.user(text)], SegmentEntitiesAnswer, template=TEMPLATES["segment_entities"])
    return answer.to_entities()


def entities_json(entities: Sequence[Entity]) -> str:
    return json.dumps([{"name": e.name, "attributes": list(e.attributes)} for e in entities], ensure_ascii=False)


def ask_entity_grounding(judge: Judge, entities: Sequence[Entity], frames: Sequence[ImagePart]) -> EntityGroundingAnswer:
    """The segment's prompt is not shown, as in the official evaluator: only its entities and frames."""
    text = GROUNDING_PROMPT.format(k=len(frames), entities=entities_json(entities))
    return judge.structured([Message.user(text, *frames)], EntityGroundingAnswer,
                            template=TEMPLATES["entity_grounding"], context={"entities": len(entities)})


def ask_vlm_score(judge: Judge, prompts: Sequence[str], frames: Sequence[Sequence[ImagePart]]) -> VlmScoreAnswer:
    n = len(prompts)
    parts: list[Any] = [VLM_SCORE_PROMPT.format(n=n, prompts=_numbered(prompts, 1))]
    for k, segment_frames in enumerate(frames, start=1):
        parts.append(f"Key frames of segment {k}, in temporal order:")
        parts.extend(segment_frames)
    return judge.structured([Message.user(*parts)], VlmScoreAnswer, template=TEMPLATES["vlm_score"],
                            context={"segments": n})
