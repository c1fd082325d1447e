"""Property tests (Hypothesis) of every parser of a judge's answer: the six protocol answers
(narrastream/protocol/questions.py), IAMFlow's three (narrastream/iamflow/questions.py), the JSON
extraction and the re-ask loop (narrastream/judges/base.py), the chat-completions wire format
(narrastream/judges/wire.py) and what the ``openai`` backend makes of an HTTP 200 body.

The property, for any input: either a typed object whose values are in their documented ranges, or
a clear error naming the place (a pydantic error located at a field of the schema, a
:class:`JudgeError` naming the judge) -- never another exception, never a silently wrong value.
Examples are derandomized (the same every run); nothing is timed."""

from __future__ import annotations

import json
import math
import string
from typing import Any, Callable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context, event
from pydantic import BaseModel, ValidationError

from narrastream.iamflow.questions import (
    ChunkVerdict,
    EntityExtraction,
    IdentityMatch,
    extract_entities,
    match_identity,
    verify_chunk,
)
from narrastream.iamflow.registry import ExtractedEntity, RegistryEntry
from narrastream.judges.base import ImagePart, Judge, JudgeAnswerError, JudgeError, Message, extract_json
from narrastream.judges.wire import from_openai, to_openai
from narrastream.metrics.functional.judged import grounding_segment_score, unit_interval, vlm_score
from narrastream.protocol.annotations import MAX_ATTRIBUTES_PER_ENTITY, MAX_ENTITIES_PER_SEGMENT, Entity
from narrastream.protocol.questions import (
    ContinuityAnswer,
    EntityGroundingAnswer,
    EntityGroupsAnswer,
    SegmentEntitiesAnswer,
    SegmentWeightsAnswer,
    VlmScoreAnswer,
    ask_continuity,
    ask_entity_grounding,
    ask_entity_groups,
    ask_segment_entities,
    ask_segment_weights,
    ask_vlm_score,
)

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------- strategies
#: numbers as judges write them, and as they must not: huge integers, non-finite floats, numeric text
numbers = st.one_of(
    st.integers(), st.integers(min_value=10**300, max_value=10**320), st.integers(min_value=-10**320, max_value=-1),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(min_value=-200, max_value=200),
    st.integers(min_value=-5, max_value=150),
    st.sampled_from(["50", "0.5", "1e999", "-inf", "nan", " 3 ", "٣", "0x10", "1_0", "", "many", "7.9"]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12))
json_values = st.recursive(
    scalars, lambda children: st.one_of(st.lists(children, max_size=6),
                                        st.dictionaries(st.text(max_size=8), children, max_size=5)),
    max_leaves=25)
names = st.one_of(st.text(max_size=12), st.sampled_from(["Mira", " mira ", "MIRA", "the old man", "", "  "]))


def count(name: str) -> None:
    """Tell Hypothesis's statistics which outcome an example had (``--hypothesis-show-statistics``)."""
    if currently_in_test_context():
        event(name)


def near(valid: st.SearchStrategy, wrong: st.SearchStrategy, odds: int = 3) -> st.SearchStrategy:
    """``valid`` values ``odds`` times as often as ``wrong`` ones: both outcomes are exercised."""
    return st.one_of(*[valid] * odds, wrong)


def element(valid: st.SearchStrategy, wrong: st.SearchStrategy) -> st.SearchStrategy:
    return near(valid, wrong, odds=9)


def sized(n: int, item: st.SearchStrategy) -> st.SearchStrategy:
    """Lists of ``n`` items mostly, of another length sometimes, or anything."""
    return near(st.lists(item, min_size=n, max_size=n), st.one_of(st.lists(item, max_size=n + 2), json_values))


percent = st.one_of(st.integers(0, 100), st.floats(0, 100), st.integers(-5, 150))


def shaped(**fields: st.SearchStrategy) -> st.SearchStrategy:
    """Objects with the schema's field names (to reach its validators), sometimes with extra keys."""
    return st.one_of(st.fixed_dictionaries(fields), st.fixed_dictionaries(fields, optional={"extra": json_values}),
                     json_values)


def lists_of(element: st.SearchStrategy, max_size: int = 8) -> st.SearchStrategy:
    return st.one_of(st.lists(element, max_size=max_size), json_values)


def validated(schema: type[BaseModel], obj: Any, context: dict[str, Any] | None = None) -> BaseModel | None:
    """``schema`` validated on ``obj``, or None after checking that the error names the place."""
    try:
        answer = schema.model_validate(obj, context=context)
    except ValidationError as exc:
        count("invalid")
        assert schema.__name__ in str(exc)
        for error in exc.errors():  # at a field of the schema, or about the object as a whole
            assert not error["loc"] or error["loc"][0] in schema.model_fields, error
            assert error["msg"]
        return None
    count("valid")
    return answer


def strings_in(obj: Any) -> set[str]:
    """Every string in a JSON value (keys included), whitespace-collapsed and lower-cased."""
    if isinstance(obj, str):
        return {" ".join(obj.split()).lower()}
    if isinstance(obj, dict):
        return set().union(*(strings_in(k) | strings_in(v) for k, v in obj.items())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(strings_in(v) for v in obj)) if obj else set()
    return set()


def unit(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0


# ----------------------------------------------------------------------------- the six protocol answers
@FUZZ
@given(case=st.integers(1, 8).flatmap(
    lambda n: st.tuples(st.just(n), shaped(segment_importance=sized(n, element(percent, numbers))))))
def test_segment_weights_answer(case):
    n, obj = case
    answer = validated(SegmentWeightsAnswer, obj, {"segments": n})
    if answer is not None:
        assert len(answer.segment_importance) == n
        assert all(type(v) is int and 1 <= v <= 100 for v in answer.segment_importance)


@FUZZ
@given(case=st.integers(2, 8).flatmap(
    lambda n: st.tuples(st.just(n), shaped(keep=sized(n - 1, element(st.booleans(), scalars))))))
def test_continuity_answer(case):
    n, obj = case
    answer = validated(ContinuityAnswer, obj, {"transitions": n - 1})
    if answer is not None:
        assert len(answer.keep) == n - 1 and all(type(v) is bool for v in answer.keep)


@FUZZ
@given(case=st.one_of(st.none(), st.integers(1, 8)).flatmap(lambda n: st.tuples(st.just(n), shaped(groups=near(
    st.dictionaries(names, st.lists(element(st.integers(0, (n or 8) - 1), numbers), max_size=4), max_size=4),
    json_values)))))
def test_entity_groups_answer(case):
    n, obj = case
    answer = validated(EntityGroupsAnswer, obj, {"segments": n} if n is not None else None)
    if answer is not None:
        assert answer.groups  # an answer without any entity is invalid
        for name, indices in answer.groups.items():
            assert isinstance(name, str) and indices and all(type(k) is int for k in indices)
            assert n is None or all(0 <= k < n for k in indices)


entity_items = st.one_of(
    names, st.fixed_dictionaries({"name": st.one_of(names, scalars)},
                                 optional={"attributes": st.one_of(lists_of(st.one_of(names, scalars)), names)}),
    json_values)


@FUZZ
@given(obj=shaped(entities=lists_of(entity_items)))
def test_segment_entities_answer(obj):
    answer = validated(SegmentEntitiesAnswer, obj)
    if answer is not None:
        assert len(answer.entities) <= MAX_ENTITIES_PER_SEGMENT
        assert len({e.name.lower() for e in answer.entities}) == len(answer.entities)  # merged, case-insensitively
        for e in answer.entities:
            assert e.name and e.name == " ".join(e.name.split())
            assert len(e.attributes) <= MAX_ATTRIBUTES_PER_ENTITY
            # only text the judge wrote: never "None", "3" or "{...}" made up from other values
            assert all(isinstance(a, str) and a and a == " ".join(a.split()) for a in e.attributes)
            assert {e.name.lower(), *(a.lower() for a in e.attributes)} <= strings_in(obj)
            assert len({a.lower() for a in e.attributes}) == len(e.attributes)
        assert all(isinstance(x, Entity) for x in answer.to_entities())


grounding_items = element(
    st.fixed_dictionaries({"presence": element(percent, scalars), "attribute_match": element(percent, scalars)}),
    json_values)


@FUZZ
@given(case=st.integers(1, 5).flatmap(lambda k: st.tuples(st.just(k), shaped(entity_results=sized(k, grounding_items)))),
       rule=st.sampled_from(["official", "percent"]), has=st.lists(st.booleans(), min_size=5, max_size=5))
def test_entity_grounding_answer_and_its_segment_score(case, rule, has):
    k, obj = case
    answer = validated(EntityGroundingAnswer, obj, {"entities": k})
    if answer is None:
        return
    assert len(answer.entity_results) == k
    presence = [unit_interval(r.presence, rule) for r in answer.entity_results]
    match = [unit_interval(r.attribute_match, rule) for r in answer.entity_results]
    assert all(unit(v) for v in presence + match)  # a score outside [0, 1] never gets through
    assert unit(grounding_segment_score(presence, match, has[:k]))


@FUZZ
@given(case=st.integers(1, 6).flatmap(lambda n: st.tuples(st.just(n), shaped(
    segment_scores=sized(n, element(percent, st.one_of(numbers, scalars))),
    overall_score=element(percent, st.one_of(numbers, scalars))))))
def test_vlm_score_answer_and_its_score(case):
    n, obj = case
    answer = validated(VlmScoreAnswer, obj, {"segments": n})
    if answer is None:
        return
    assert len(answer.segment_scores) == n
    segments = [unit_interval(v, "percent") for v in answer.segment_scores]
    overall = unit_interval(answer.overall_score, "percent")
    assert all(unit(v) for v in segments) and unit(overall)
    assert unit(vlm_score(segments, overall, [1.0 / n] * n))


# well-formed answers are all accepted, with the values the rules give (no answer is refused wrongly)
finite = st.one_of(st.integers(-10**6, 10**6), st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False))


@FUZZ
@given(values=st.lists(finite, min_size=1, max_size=8))
def test_well_formed_segment_weights_are_clamped(values):
    answer = SegmentWeightsAnswer.model_validate({"segment_importance": values}, context={"segments": len(values)})
    assert answer.segment_importance == [min(100, max(1, int(v))) for v in values]


@FUZZ
@given(keep=st.lists(st.booleans(), min_size=1, max_size=7))
def test_well_formed_continuity_is_kept(keep):
    assert ContinuityAnswer.model_validate({"keep": keep}, context={"transitions": len(keep)}).keep == keep


@FUZZ
@given(n=st.integers(1, 8), groups=st.dictionaries(st.text(max_size=10), st.lists(st.integers(-3, 10), max_size=5),
                                                    min_size=1, max_size=4))
def test_well_formed_entity_groups_keep_the_indices_in_range(n, groups):
    expected = {name: [k for k in ks if 0 <= k < n] for name, ks in groups.items()}
    expected = {name: ks for name, ks in expected.items() if ks}
    if not expected:
        with pytest.raises(ValidationError, match="no entity with valid segment indices"):
            EntityGroupsAnswer.model_validate({"groups": groups}, context={"segments": n})
        return
    assert EntityGroupsAnswer.model_validate({"groups": groups}, context={"segments": n}).groups == expected


@FUZZ
@given(results=st.lists(st.tuples(finite, finite), min_size=1, max_size=5), rule=st.sampled_from(["official", "percent"]))
def test_well_formed_grounding_answers_score_in_the_unit_interval(results, rule):
    answer = EntityGroundingAnswer.model_validate(
        {"entity_results": [{"presence": p, "attribute_match": a} for p, a in results]},
        context={"entities": len(results)})
    presence = [unit_interval(r.presence, rule) for r in answer.entity_results]
    match = [unit_interval(r.attribute_match, rule) for r in answer.entity_results]
    assert all(unit(v) for v in presence + match)
    assert unit(grounding_segment_score(presence, match, [True] * len(results)))


@FUZZ
@given(scores=st.lists(finite, min_size=1, max_size=6), overall=finite)
def test_well_formed_vlm_score_answers_score_in_the_unit_interval(scores, overall):
    answer = VlmScoreAnswer.model_validate({"segment_scores": scores, "overall_score": overall},
                                           context={"segments": len(scores)})
    assert answer.segment_scores == [float(v) for v in scores] and answer.overall_score == float(overall)
    segments = [unit_interval(v, "percent") for v in answer.segment_scores]
    assert unit(vlm_score(segments, unit_interval(overall, "percent"), [1.0] * len(scores)))


@FUZZ
@given(scores=st.lists(finite, min_size=1, max_size=5))
def test_well_formed_chunk_scores_are_clipped(scores):
    assert ChunkVerdict.model_validate({"scores": scores}).scores == [min(1.0, max(0.0, float(v))) for v in scores]


@FUZZ
@given(matched=st.one_of(st.none(), st.integers(-10**6, 10**6)))
def test_well_formed_identity_matches_are_kept(matched):
    assert IdentityMatch.model_validate({"matched_id": matched}).matched_id == matched


@FUZZ
@given(people=st.lists(st.tuples(st.text(min_size=1, max_size=10).filter(str.strip),
                                 st.lists(st.text(max_size=10), max_size=4)), max_size=4))
def test_well_formed_extractions_keep_every_named_person(people):
    answer = EntityExtraction.model_validate({"entities": [{"entity": n, "attrs": a} for n, a in people]})
    assert {c.entity.lower() for c in answer.entities} == {" ".join(n.split()).lower() for n, _ in people}


def test_booleans_are_no_scores():
    """``true`` would be read as 1.0 (a full score from a malformed answer): refused, at the field."""
    with pytest.raises(ValidationError, match="presence"):
        EntityGroundingAnswer.model_validate({"entity_results": [{"presence": True, "attribute_match": 50}]})
    with pytest.raises(ValidationError, match="overall_score"):
        VlmScoreAnswer.model_validate({"segment_scores": [50], "overall_score": False})
    with pytest.raises(ValidationError, match="segment_scores"):
        VlmScoreAnswer.model_validate({"segment_scores": [True], "overall_score": 50})
    with pytest.raises(ValidationError, match="overall_score"):
        VlmScoreAnswer.model_validate({"segment_scores": [50], "overall_score": "inf"})


def test_attributes_are_the_strings_given():
    answer = SegmentEntitiesAnswer.model_validate(
        {"entities": [{"name": "Mira", "attributes": [None, 3, {"colour": "red"}, True, " red  coat "]},
                      {"name": "Noah", "attributes": "blue scarf"}]})
    assert [(e.name, e.attributes) for e in answer.entities] == [("Mira", ["red coat"]), ("Noah", ["blue scarf"])]


# ----------------------------------------------------------------------------- IAMFlow's three answers
character_items = st.one_of(
    st.fixed_dictionaries({"entity": st.one_of(names, scalars)},
                          optional={"attrs": lists_of(st.one_of(names, scalars)), "name": names}),
    json_values)


@FUZZ
@given(obj=st.one_of(shaped(entities=lists_of(character_items)), lists_of(character_items), character_items))
def test_entity_extraction_answer(obj):
    answer = validated(EntityExtraction, obj)
    if answer is not None:
        assert len({c.entity.lower() for c in answer.entities}) == len(answer.entities)
        for c in answer.entities:
            assert c.entity and c.entity == " ".join(c.entity.split())
            assert all(isinstance(a, str) and a and a == " ".join(a.split()) for a in c.attrs)
            assert {c.entity.lower(), *(a.lower() for a in c.attrs)} <= strings_in(obj)
        assert all(isinstance(e, ExtractedEntity) for e in answer.to_entities())


@FUZZ
@given(obj=st.one_of(shaped(matched_id=st.one_of(numbers, scalars, st.sampled_from(["null", "new", "None", " "]))),
                     json_values))
def test_identity_match_answer(obj):
    answer = validated(IdentityMatch, obj)
    if answer is not None:
        assert answer.matched_id is None or type(answer.matched_id) is int


corrections = st.one_of(
    st.dictionaries(st.one_of(st.text(max_size=6), st.sampled_from(["1", "ID 2", " 3 ", "٣", "x"])),
                    st.one_of(st.fixed_dictionaries({"corrected_attrs": lists_of(st.one_of(names, scalars))}),
                              lists_of(names), json_values), max_size=4),
    json_values)


@FUZZ
@given(obj=shaped(scores=near(st.lists(element(st.floats(-0.5, 1.5), st.one_of(numbers, scalars)), min_size=1,
                                         max_size=5), json_values),
                  corrections=corrections), count=st.integers(1, 5))
def test_chunk_verdict_answer(obj, count):
    answer = validated(ChunkVerdict, obj)
    if answer is None:
        return
    assert answer.scores and all(unit(v) for v in answer.scores)  # clipped to [0, 1], finite
    padded = answer.padded(count)
    assert len(padded) == count and all(unit(v) for v in padded)
    for gid, attrs in answer.corrections.items():
        assert type(gid) is int and attrs and all(isinstance(a, str) and a.strip() for a in attrs)


def test_huge_integer_score_is_an_invalid_answer_not_a_crash():
    with pytest.raises(ValidationError, match="scores"):
        ChunkVerdict.model_validate({"scores": [10**400]})


# ----------------------------------------------------------------------------- through the judge: the re-ask loop
class TextJudge(Judge):
    """A judge whose every answer is ``text`` (no transport)."""

    backend = "fake"

    def __init__(self, text: str, reask: int = 1) -> None:
        super().__init__("fuzz-judge", reask=reask, breaker_threshold=0)
        self.text = text

    def _complete(self, messages: Sequence[Message], *, json_mode: bool, max_tokens: int) -> str:
        return self.text


def answer_texts(shapes: st.SearchStrategy) -> st.SearchStrategy:
    """What a model may send: the JSON of an object (fenced, with chatter, or bare), or any text."""
    def render(obj: Any, style: str) -> str:
        text = json.dumps(obj)  # NaN and Infinity as Python writes them, which the parser reads
        return {"bare": text, "fenced": f"```json\n{text}\n```", "chatter": f"Sure! {text} hope that helps",
                "prefix": f"json {text}"}[style]

    rendered = st.builds(render, shapes, st.sampled_from(["bare", "fenced", "chatter", "prefix"]))
    nested = st.integers(1, 3000).map(lambda d: "[" * d + "]" * d)  # deeper than the JSON parser goes
    return st.one_of(rendered, st.text(max_size=60), nested,
                     st.text(alphabet=string.printable, max_size=40).map(lambda t: "{" + t + "}"))


def ask(call: Callable[[Judge], Any], text: str) -> Any:
    """The question's result, or None after checking the failure is the judge's own, naming the judge."""
    judge = TextJudge(text)
    try:
        answer = call(judge)
        count("answered")
        return answer
    except JudgeAnswerError as exc:
        count("judge error")
        assert exc.reason.startswith("fuzz-judge: no valid answer after 2 tries (") and "\n" not in exc.reason
        assert judge.stats.failures == 1 and judge.stats.reasks == 1
        return None


PROMPTS = ["Mira walks.", "Mira sits.", "Noah arrives."]
FRAMES = [[ImagePart(b"\xff\xd8 frame")] for _ in PROMPTS]
ENTITIES = (Entity("Mira", ("red coat",)), Entity("Noah", ()))


@FUZZ
@given(text=answer_texts(shaped(segment_importance=sized(3, element(percent, numbers)))))
def test_ask_segment_weights(text):
    got = ask(lambda j: ask_segment_weights(j, PROMPTS), text)
    assert got is None or (len(got) == 3 and all(type(v) is int and 1 <= v <= 100 for v in got))


@FUZZ
@given(text=answer_texts(shaped(keep=sized(2, element(st.booleans(), scalars)))))
def test_ask_continuity(text):
    got = ask(lambda j: ask_continuity(j, PROMPTS), text)
    assert got is None or (len(got) == 2 and all(type(v) is bool for v in got))


@FUZZ
@given(text=answer_texts(shaped(groups=st.dictionaries(names, st.lists(element(st.integers(0, 2), numbers),
                                                                        max_size=3), max_size=3))))
def test_ask_entity_groups(text):
    got = ask(lambda j: ask_entity_groups(j, PROMPTS), text)
    assert got is None or (got and all(all(0 <= k < 3 for k in v) for v in got.values()))


@FUZZ
@given(text=answer_texts(shaped(entities=lists_of(entity_items))))
def test_ask_segment_entities(text):
    got = ask(lambda j: ask_segment_entities(j, PROMPTS[0]), text)
    assert got is None or all(isinstance(e, Entity) and e.name for e in got)


@FUZZ
@given(text=answer_texts(shaped(entity_results=sized(2, grounding_items))))
def test_ask_entity_grounding(text):
    got = ask(lambda j: ask_entity_grounding(j, ENTITIES, FRAMES[0]), text)
    if got is not None:
        assert len(got.entity_results) == len(ENTITIES)
        assert all(unit(unit_interval(r.presence)) and unit(unit_interval(r.attribute_match))
                   for r in got.entity_results)


@FUZZ
@given(text=answer_texts(shaped(segment_scores=sized(3, element(percent, numbers)),
                                 overall_score=element(percent, numbers))))
def test_ask_vlm_score(text):
    got = ask(lambda j: ask_vlm_score(j, PROMPTS, FRAMES), text)
    if got is not None:
        assert len(got.segment_scores) == 3 and math.isfinite(got.overall_score)


CANDIDATES = [RegistryEntry(global_id=1, name="Mira", attributes=["red coat"]),
              RegistryEntry(global_id=4, name="Noah")]


@FUZZ
@given(text=answer_texts(st.one_of(shaped(entities=lists_of(character_items)), lists_of(character_items))))
def test_ask_extract_entities(text):
    got = ask(lambda j: extract_entities(j, "Mira in a red coat meets Noah."), text)
    assert got is None or all(isinstance(e, ExtractedEntity) and e.name for e in got)


@FUZZ
@given(text=answer_texts(shaped(matched_id=near(st.sampled_from([1, 4, 2, None, "new", "4"]), scalars))))
def test_ask_match_identity(text):
    got = ask(lambda j: match_identity(j, ExtractedEntity("she", ("red coat",)), CANDIDATES), text)
    assert got in (None, 1, 4)  # an ID outside the candidates is a new person, never a made-up ID


@FUZZ
@given(text=answer_texts(shaped(scores=st.lists(element(st.floats(0, 1), numbers), min_size=1, max_size=4),
                                 corrections=corrections)))
def test_ask_verify_chunk(text):
    got = ask(lambda j: verify_chunk(j, "Mira walks", ["Mira"], FRAMES[0] * 3, {1: ("Mira", ("red coat",))}), text)
    if got is not None:
        assert all(unit(v) for v in got.padded(3))


@FUZZ
@given(text=st.one_of(st.text(max_size=80), answer_texts(json_values)))
def test_extract_json_returns_a_value_or_a_value_error(text):
    try:
        value = extract_json(text)
    except ValueError as exc:
        assert str(exc)
        return
    json.dumps(value)  # a plain JSON value


def test_deeply_nested_answer_is_invalid_not_a_crash():
    with pytest.raises(ValueError, match="nested too deeply"):
        extract_json("[" * 100_000 + "]" * 100_000)
    assert ask(lambda j: ask_vlm_score(j, PROMPTS, FRAMES), '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}") is None


# ----------------------------------------------------------------------------- the wire format (serve-judge's input)
image_urls = st.one_of(
    st.fixed_dictionaries({"url": st.one_of(
        st.sampled_from(["data:image/jpeg;base64,/9j/AA==", "data:image/jpeg;base64,@@", "http://x/y.jpg"]),
        scalars)}),
    scalars, json_values)
content_parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(st.text(max_size=10), scalars)}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": image_urls}),
    st.fixed_dictionaries({"type": st.one_of(st.just("image_url"), scalars)}, optional={"image_url": image_urls}),
    json_values)
well_formed = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                              "content": st.one_of(st.text(max_size=10),
                                                                   st.lists(content_parts, min_size=1, max_size=3))}),
                       min_size=1, max_size=3)
messages = st.one_of(
    well_formed, well_formed,
    st.lists(st.fixed_dictionaries({"role": st.one_of(st.sampled_from(["system", "user", "tool"]), scalars),
                                    "content": st.one_of(st.text(max_size=10), st.lists(content_parts, max_size=3),
                                                         scalars)}), max_size=3),
    json_values)


@FUZZ
@given(value=messages)
def test_from_openai_parses_or_names_the_bad_entry(value):
    try:
        parsed = from_openai(value)
    except ValueError as exc:
        assert "messages" in str(exc)
        return
    assert parsed and all(isinstance(m, Message) and m.role in ("system", "user", "assistant") for m in parsed)
    assert all(isinstance(p, (str, ImagePart)) for m in parsed for p in m.parts)
    def seen(ms: list[Message]) -> list[tuple]:  # what a model is shown: texts (joined) and images, per message
        return [(m.role, m.text(), [i.jpeg for i in m.images()]) for m in ms]

    assert seen(from_openai(to_openai(parsed))) == seen(parsed)  # what we read, we send back the same


# ----------------------------------------------------------------------------- an HTTP 200 body, through the openai client
@pytest.fixture(scope="module")
def raw_server():
    from narrastream.judges.server import ChatCompletionsServer, HTTPReply

    reply = {"body": "", "type": "application/json"}

    def responder(body: dict[str, Any]) -> str:
        raise HTTPReply(200, reply["body"], raw=True, content_type=reply["type"])

    with ChatCompletionsServer(responder, model="fuzz-model") as server:
        yield server, reply


def chat_completion(content: Any) -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "fuzz-model",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]}


bodies = st.one_of(
    st.text(max_size=60), json_values.map(json.dumps),
    st.one_of(st.text(max_size=20), scalars, json_values).map(lambda c: json.dumps(chat_completion(c))),
    st.builds(lambda c: json.dumps({"choices": c}), json_values))


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=bodies, content_type=st.sampled_from(["application/json", "text/plain", "text/html"]))
def test_any_http_200_body_is_text_or_a_judge_error_naming_the_endpoint(raw_server, body, content_type):
    from narrastream.judges.openai_backend import OpenAIJudge

    server, reply = raw_server
    reply.update(body=body, type=content_type)
    judge = OpenAIJudge("fuzz-model", base_url=server.base_url, max_retries=0, timeout_s=10.0, breaker_threshold=0)
    try:
        text = judge.complete([Message.user("q")])
    except JudgeError as exc:
        assert exc.reason.startswith(f"judge http://127.0.0.1:{server.port}/v1 (model fuzz-model): ")
        assert "\n" not in exc.reason and judge.stats.failures == 1
        return
    finally:
        judge.close()
    assert isinstance(text, str)
