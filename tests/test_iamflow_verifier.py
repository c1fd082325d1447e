"""IAMFlow's agent questions (schemas, extraction, ID matching), the visual verifier (async/sync,
timeouts, failures, backlog, the frames it sends), score fusion (§3.5 step 5) and the agent with a
verifier inside the tiny streaming pipeline (lagged choices, attribute corrections, §3.9-§3.10).

Every judge here is a scripted fake (a :class:`Judge` subclass); nothing is timed: a blocked judge waits
on a :class:`threading.Event` that the test releases."""

from __future__ import annotations

import io
import json
import re
import threading
from typing import Callable, Sequence

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from narrastream.iamflow.agent import IdentityAgent, fuse_scores
from narrastream.iamflow.entities import EntityExtractionError, MatchMemo, extract_script_entities
from narrastream.iamflow.questions import (EXTRACT_SYSTEM, MATCH_SYSTEM, ChunkVerdict, EntityExtraction,
                                           IdentityMatch, extract_entities, match_identity, verify_chunk,
                                           verify_messages)
from narrastream.iamflow.registry import EntityRegistry, ExtractedEntity, RegistryEntry
from narrastream.iamflow.verifier import VisualVerifier
from narrastream.judges.base import ImagePart, Judge, JudgeAnswerError, JudgeUnavailable, Message
from narrastream.judges.images import encode_jpeg

RELEASE_WAIT_S = 10.0  # how long a blocked fake judge waits for its event (never reached in a passing run)


# ----------------------------------------------------------------------------- fakes and helpers
class FakeJudge(Judge):
    """A judge whose answers come from ``answer(messages) -> str`` (which may raise or block)."""

    backend = "fake"

    def __init__(self, answer: Callable[[list[Message]], str], *, model: str = "fake-model", reask: int = 1,
                 breaker_threshold: int = 0) -> None:
        super().__init__(model, reask=reask, breaker_threshold=breaker_threshold)
        self.answer = answer
        self.calls: list[list[Message]] = []
        self.threads: list[threading.Thread] = []
        self._calls_lock = threading.Lock()

    def _complete(self, messages: Sequence[Message], *, json_mode: bool, max_tokens: int) -> str:
        with self._calls_lock:
            self.calls.append(list(messages))
            self.threads.append(threading.current_thread())
        return self.answer(list(messages))


def last_text(messages: Sequence[Message]) -> str:
    return messages[-1].text()


def system_text(messages: Sequence[Message]) -> str:
    return messages[0].text() if messages[0].role == "system" else ""


def shown_prompt(messages: Sequence[Message]) -> str:
    """The prompt a verifier request shows the VLM (``The video should show: "..."``)."""
    found = re.search(r'The video should show: "(.*?)"', messages[0].text())
    assert found, messages[0].text()
    return found.group(1)


def constant_block(values: Sequence[int], height: int = 40, width: int = 60) -> np.ndarray:
    """A (T, H, W, 3) uint8 block whose frame t is the flat grey ``values[t]``."""
    return np.stack([np.full((height, width, 3), v, dtype=np.uint8) for v in values])


def decode(image: ImagePart) -> np.ndarray:
    with Image.open(io.BytesIO(image.jpeg)) as im:
        assert im.format == "JPEG"
        return np.asarray(im.convert("RGB"))


def scores_json(scores: Sequence[float], corrections: dict | None = None) -> str:
    return json.dumps({"scores": list(scores), "corrections": corrections})


# ----------------------------------------------------------------------------- 1. schemas
def test_extraction_accepts_fenced_json_bare_list_and_single_object():
    answers = iter([
        '```json\n{"entities": [{"entity": "Mira", "attrs": ["red coat", "short hair"]}]}\n```',
        '[{"entity": "Mira", "attrs": ["red coat"]}, {"entity": "Noah", "attrs": []}]',
        'Here you go: {"entity": "the old man", "attrs": ["grey beard"]}',
    ])
    judge = FakeJudge(lambda messages: next(answers))
    assert extract_entities(judge, "Mira in a red coat") == [ExtractedEntity("Mira", ("red coat", "short hair"))]
    assert extract_entities(judge, "Mira and Noah") == [ExtractedEntity("Mira", ("red coat",)),
                                                        ExtractedEntity("Noah", ())]
    assert extract_entities(judge, "an old man") == [ExtractedEntity("the old man", ("grey beard",))]
    # the extraction question: system instruction + the raw prompt as the user message
    assert system_text(judge.calls[0]) == EXTRACT_SYSTEM and last_text(judge.calls[0]) == "Mira in a red coat"
    assert judge.stats.reasks == 0


def test_extraction_merges_repeated_names_and_drops_empty_ones():
    parsed = EntityExtraction.model_validate({"entities": [
        {"entity": "  Mira ", "attrs": ["red  coat"]},
        {"entity": "", "attrs": ["ghost"]},
        {"entity": "   ", "attrs": []},
        {"entity": "mira", "attrs": ["Red Coat", "blue scarf"]},
        {"entity": "Old   Tom", "attrs": None},
    ]})
    assert parsed.to_entities() == [ExtractedEntity("Mira", ("red coat", "blue scarf")),
                                    ExtractedEntity("Old Tom", ())]
    single = EntityExtraction.model_validate({"name": "Mira", "attributes": ["red coat"]})  # as list items accept
    assert single.to_entities() == [ExtractedEntity("Mira", ("red coat",))]
    assert EntityExtraction.model_validate({"entities": []}).to_entities() == []
    for bad in ({"entities": "Mira"}, {"entities": ["Mira"]}, {"entities": [{"entity": "Mira", "attrs": "coat"}]},
                {"something": 1}):
        with pytest.raises(ValidationError):
            EntityExtraction.model_validate(bad)


def test_garbage_extraction_is_reasked_then_fails():
    judge = FakeJudge(lambda messages: "I cannot see any people, sorry.", reask=2)
    with pytest.raises(JudgeAnswerError, match="no valid answer after 3 tries"):
        extract_entities(judge, "Mira walks")
    assert len(judge.calls) == 3 and judge.stats.reasks == 2 and judge.stats.failures == 1
    # the re-ask shows the model its invalid answer
    second = judge.calls[1]
    assert second[-2].role == "assistant" and "I cannot see any people" in second[-2].text()
    assert "invalid" in last_text(second)


def test_garbage_then_valid_extraction_succeeds_after_one_reask():
    answers = iter(['{"entities": "Mira"}', '{"entities": [{"entity": "Mira", "attrs": []}]}'])
    judge = FakeJudge(lambda messages: next(answers), reask=1)
    assert extract_entities(judge, "Mira walks") == [ExtractedEntity("Mira", ())]
    assert len(judge.calls) == 2 and judge.stats.reasks == 1


@pytest.mark.parametrize("raw, expected", [
    (3, 3), ("3", 3), (None, None), ("null", None), ("NULL", None), ("new", None), (" None ", None), ("", None),
])
def test_identity_match_accepts(raw, expected):
    assert IdentityMatch.model_validate({"matched_id": raw}).matched_id == expected


@pytest.mark.parametrize("raw", [True, False, "Mira", 2.5, [1]])
def test_identity_match_rejects(raw):
    with pytest.raises(ValidationError):
        IdentityMatch.model_validate({"matched_id": raw})


def test_chunk_verdict_clips_and_pads_scores():
    verdict = ChunkVerdict.model_validate({"scores": [1.7, -0.2, "0.4"], "corrections": None})
    assert verdict.scores == [1.0, 0.0, pytest.approx(0.4)] and verdict.corrections == {}
    assert ChunkVerdict.model_validate({"scores": [0.2]}).padded(3) == [0.2, 0.5, 0.5]
    assert ChunkVerdict.model_validate({"scores": [0.1, 0.2, 0.3, 0.9]}).padded(3) == [0.1, 0.2, 0.3]
    assert ChunkVerdict.model_validate({"scores": [0.1, 0.2, 0.3]}).padded(1) == [0.1]
    for bad in ([], [float("nan")], [0.2, float("inf")], ["high"], [None], "0.5"):
        with pytest.raises(ValidationError):
            ChunkVerdict.model_validate({"scores": bad})


def test_chunk_verdict_keeps_only_well_formed_corrections():
    verdict = ChunkVerdict.model_validate({"scores": [0.5, 0.5, 0.5], "corrections": {
        "1": {"corrected_attrs": ["blue   scarf", "  ", "green hat"]},
        "ID 2": {"corrected_attrs": ["grey beard"]},
        "7": ["bare", "list"],
        "abc": {"corrected_attrs": ["x"]},
        "3": {"corrected_attrs": "not a list"},
        "4": {"corrected_attrs": [1, 2]},
        "5": {"something_else": ["x"]},
    }})
    assert verdict.corrections == {1: ["blue scarf", "green hat"], 2: ["grey beard"], 7: ["bare", "list"]}
    assert all(isinstance(k, int) for k in verdict.corrections)
    assert ChunkVerdict.model_validate({"scores": [0.5], "corrections": ["x"]}).corrections == {}
    assert ChunkVerdict.model_validate({"scores": [0.5], "corrections": "none"}).corrections == {}
    # an empty correction would only erase what the registry knows: dropped
    assert ChunkVerdict.model_validate({"scores": [0.5], "corrections": {"1": {"corrected_attrs": [" "]}}}).corrections == {}


def test_chunk_verdict_rejects_boolean_scores():
    with pytest.raises(ValidationError, match="booleans"):
        ChunkVerdict.model_validate({"scores": [True, 0.5, 0.5]})


def test_verify_chunk_reasks_invalid_scores_then_fails():
    judge = FakeJudge(lambda messages: '{"scores": []}', reask=1)
    image = encode_jpeg(constant_block([0])[0])
    with pytest.raises(JudgeAnswerError):
        verify_chunk(judge, "Mira walks", ["Mira"], [image])
    assert len(judge.calls) == 2


def test_verify_messages_show_the_registry_only_when_given():
    images = [encode_jpeg(f) for f in constant_block([10, 20, 30])]
    plain = verify_messages("Mira walks", ["Mira", "Noah"], images, None)
    assert len(plain) == 1 and plain[0].images() == images
    text = plain[0].text()
    assert "Mira walks" in text and "Mira, Noah" in text and "s1, s2, s3" in text
    assert "Known characters" not in text and '"corrections": null' in text
    assert verify_messages("x", [], images, {})[0].text() == verify_messages("x", [], images, None)[0].text()
    assert "the main subject" in verify_messages("x", [], images, None)[0].text()
    with_registry = verify_messages("Mira walks", ["Mira"], images[:2], {1: ("Mira", ("red coat",)), 4: ("Noah", ())})
    text = with_registry[0].text()
    assert "Known characters" in text and "ID 1 (Mira): red coat" in text and "ID 4 (Noah): -" in text
    assert "corrected_attrs" in text and "s1, s2]" in text and "s3" not in text


# ----------------------------------------------------------------------------- 2. script entities
def scripted_llm(extractions: dict[str, list[dict]], matches: Callable[[str], int | None] | None = None,
                 fail_on: str | None = None) -> FakeJudge:
    """An LLM answering extraction by prompt text and matching via ``matches(question)``."""

    def answer(messages: list[Message]) -> str:
        system, text = system_text(messages), last_text(messages)
        if system == EXTRACT_SYSTEM:
            if fail_on is not None and text == fail_on:
                raise JudgeUnavailable("llm endpoint refused the request")
            return json.dumps({"entities": extractions[text]})
        assert system == MATCH_SYSTEM, system
        return json.dumps({"matched_id": matches(text) if matches else None})

    return FakeJudge(answer)


def match_questions(judge: FakeJudge) -> list[str]:
    return [last_text(call) for call in judge.calls if system_text(call) == MATCH_SYSTEM]


SCRIPT = ["Mira, in a red coat, walks along the pier.",
          "The woman in a red coat stops to read a letter.",
          "The woman in a red coat smiles; Noah in a green hat waves."]
EXTRACTED = {
    SCRIPT[0]: [{"entity": "Mira", "attrs": ["red coat"]}],
    SCRIPT[1]: [{"entity": "the woman", "attrs": ["red coat"]}],
    SCRIPT[2]: [{"entity": "the woman", "attrs": ["red coat"]}, {"entity": "Noah", "attrs": ["green hat"]}],
}


def test_script_entities_per_prompt_and_one_match_question_per_ambiguous_name():
    llm = scripted_llm(EXTRACTED, matches=lambda question: 1)
    characters, memo = extract_script_entities(llm, SCRIPT)
    assert characters == [[ExtractedEntity("Mira", ("red coat",))],
                          [ExtractedEntity("the woman", ("red coat",))],
                          [ExtractedEntity("the woman", ("red coat",)), ExtractedEntity("Noah", ("green hat",))]]
    # "Mira" (prompt 1, empty registry) and "Noah" (an unknown proper name) never reach the LLM; "the woman"
    # is a generic role word: asked once for candidates (1,), and the same question in prompt 3 is remembered
    questions = match_questions(llm)
    assert len(questions) == 1
    assert "New character: the woman: red coat" in questions[0] and "ID 1: Mira: red coat" in questions[0]
    assert isinstance(memo, MatchMemo) and list(memo.answers.values()) == [1]
    assert len(llm.calls) == 3 + 1  # 3 extractions + 1 match
    # the registry built during generation reaches the same IDs through the memo without asking again
    registry = EntityRegistry(memo)
    assert [registry.register(p, found) for p, found in enumerate(characters)] == [(1,), (1,), (1, 2)]
    assert len(llm.calls) == 4


def test_match_memo_asks_again_for_other_candidates_or_attributes():
    llm = scripted_llm({}, matches=lambda question: None)
    memo = MatchMemo(llm)
    mira, noah = RegistryEntry(1, "Mira", attributes=["red coat"]), RegistryEntry(2, "Noah")
    woman = ExtractedEntity("the woman", ("red coat",))
    assert memo(woman, [mira]) is None and memo(ExtractedEntity("The  Woman", ("red coat",)), [mira]) is None
    assert len(llm.calls) == 1  # same normalised name, attributes and candidates
    memo(woman, [noah, mira])
    memo(woman, [mira, noah])  # candidate order does not matter
    assert len(llm.calls) == 2
    memo(ExtractedEntity("the woman", ("blue scarf",)), [mira])
    assert len(llm.calls) == 3


def test_script_entities_name_the_failing_prompt():
    llm = scripted_llm(EXTRACTED, fail_on=SCRIPT[1])
    with pytest.raises(EntityExtractionError, match="prompt 2") as caught:
        extract_script_entities(llm, SCRIPT)
    assert "llm endpoint refused the request" in str(caught.value)
    assert isinstance(caught.value.__cause__, JudgeUnavailable)
    # garbage answers on a match question also fail the script with the prompt named
    bad_match = FakeJudge(lambda messages: (json.dumps({"entities": EXTRACTED[last_text(messages)]})
                                            if system_text(messages) == EXTRACT_SYSTEM else "no idea"))
    with pytest.raises(EntityExtractionError, match=r"prompt 2: identity matching failed"):
        extract_script_entities(bad_match, SCRIPT)


def test_no_match_question_without_candidates():
    """Every known ID is taken in the prompt: the role word is a new person, and no question is asked."""
    llm = scripted_llm({"p1": [{"entity": "Mira", "attrs": []}],
                        "p2": [{"entity": "Mira", "attrs": []}, {"entity": "the woman", "attrs": []}]},
                       matches=lambda question: None)
    characters, memo = extract_script_entities(llm, ["p1", "p2"])
    assert match_questions(llm) == []
    registry = EntityRegistry(memo)
    registry.register(0, characters[0])
    assert registry.register(1, characters[1]) == (1, 2)


# ----------------------------------------------------------------------------- 3. match_identity
def test_match_identity_ignores_ids_outside_the_candidates():
    candidates = [RegistryEntry(1, "Mira", aliases=["the woman"], attributes=["red coat"]),
                  RegistryEntry(3, "Noah")]
    entity = ExtractedEntity("she", ("red coat",))
    for answer, expected in (('{"matched_id": 3}', 3), ('{"matched_id": 1}', 1), ('{"matched_id": 2}', None),
                             ('{"matched_id": 99}', None), ('{"matched_id": "new"}', None),
                             ('{"matched_id": null}', None)):
        judge = FakeJudge(lambda messages, a=answer: a)
        assert match_identity(judge, entity, candidates) == expected, answer
    question = last_text(judge.calls[0])
    assert "New character: she: red coat" in question
    assert "ID 1: Mira/the woman: red coat" in question and "ID 3: Noah: -" in question


# ----------------------------------------------------------------------------- 4. the verifier
def by_prompt_vlm(table: dict[str, list[float]], gate: threading.Event | None = None,
                  block_on: str | None = None) -> FakeJudge:
    """A VLM scoring each request by the prompt it shows; requests for ``block_on`` (or all, when
    ``block_on`` is None) wait for ``gate`` first."""

    def answer(messages: list[Message]) -> str:
        prompt = shown_prompt(messages)
        if gate is not None and (block_on is None or prompt == block_on):
            assert gate.wait(RELEASE_WAIT_S), "the test never released the fake judge"
        return scores_json(table[prompt])

    return FakeJudge(answer, model="fake-vlm")


BLOCK = constant_block([0, 20, 40, 60, 80, 100, 120, 140, 160, 180, 200, 220])


def test_async_results_belong_to_their_keys_whatever_the_order_taken():
    gate = threading.Event()
    judge = by_prompt_vlm({"a": [0.1, 0.2, 0.3], "b": [0.9, 0.8, 0.7], "c": [0.0, 1.0, 0.0]}, gate)
    verifier = VisualVerifier(judge, mode="async", timeout_s=RELEASE_WAIT_S)
    try:
        for key in "abc":
            verifier.submit(key, BLOCK, key, ["Mira"])
        gate.set()
        got = {key: verifier.result(key) for key in "cab"}
    finally:
        gate.set()
        verifier.close()
    assert {k: (v.key, v.status, v.scores) for k, v in got.items()} == {
        "a": ("a", "ok", [0.1, 0.2, 0.3]), "b": ("b", "ok", [0.9, 0.8, 0.7]), "c": ("c", "ok", [0.0, 1.0, 0.0])}
    assert [shown_prompt(call) for call in judge.calls] == ["a", "b", "c"]  # one worker, submission order
    assert all(t.name.startswith("iam-verifier") for t in judge.threads)
    assert [v.key for v in verifier.verdicts] == ["c", "a", "b"]  # the record follows the order taken
    with pytest.raises(KeyError):
        verifier.result("a")  # a verdict is taken once
    with pytest.raises(KeyError):
        verifier.result("never-submitted")


def test_timeout_discards_the_late_answer_and_later_keys_get_their_own():
    gate = threading.Event()
    judge = by_prompt_vlm({"slow": [0.9, 0.9, 0.9], "fast": [0.1, 0.2, 0.3]}, gate, block_on="slow")
    verifier = VisualVerifier(judge, mode="async", timeout_s=RELEASE_WAIT_S)
    try:
        verifier.submit("p1_c1", BLOCK, "slow", ["Mira"])
        late = verifier.result("p1_c1", timeout_s=0.05)
        verifier.submit("p1_c2", BLOCK, "fast", ["Mira"])
        gate.set()
        later = verifier.result("p1_c2")
    finally:
        gate.set()
        verifier.close()
    assert (late.key, late.status, late.scores, late.corrections) == ("p1_c1", "timeout", None, {})
    assert "0.05" in late.reason
    assert (later.key, later.status, later.scores) == ("p1_c2", "ok", [0.1, 0.2, 0.3])
    assert [v.status for v in verifier.verdicts] == ["timeout", "ok"]
    with pytest.raises(KeyError):
        verifier.result("p1_c1")  # the late answer is never handed out
    stats = verifier.stats()
    assert (stats["timeout"], stats["ok"], stats["blocks"]) == (1, 1, 2)
    assert any(p.startswith("p1_c1:") for p in stats["problems"])


def test_queued_request_cancelled_at_its_deadline_is_never_asked():
    gate = threading.Event()
    judge = by_prompt_vlm({"slow": [0.9], "queued": [0.8], "next": [0.3]}, gate, block_on="slow")
    verifier = VisualVerifier(judge, mode="async", timeout_s=RELEASE_WAIT_S)
    try:
        verifier.submit("k1", BLOCK, "slow", [])
        verifier.submit("k2", BLOCK, "queued", [])
        assert verifier.result("k2", timeout_s=0.01).status == "timeout"  # still queued behind k1
        verifier.submit("k3", BLOCK, "next", [])
        gate.set()
        assert verifier.result("k3").scores == [0.3, 0.5, 0.5]
        assert verifier.result("k1").scores == [0.9, 0.5, 0.5]
    finally:
        gate.set()
        verifier.close()
    assert [shown_prompt(call) for call in judge.calls] == ["slow", "next"]


def test_failures_are_recorded_with_their_reason():
    def unavailable(messages):
        raise JudgeUnavailable("vlm endpoint down (503)")

    def crash(messages):
        raise RuntimeError("cuda out of memory")

    for mode in ("async", "sync"):
        verifier = VisualVerifier(FakeJudge(unavailable, model="fake-vlm"), mode=mode, timeout_s=RELEASE_WAIT_S)
        verifier.submit("k", BLOCK, "Mira walks", ["Mira"])
        verdict = verifier.result("k")
        verifier.close()
        assert (verdict.status, verdict.scores) == ("failed", None) and "vlm endpoint down (503)" in verdict.reason

    garbage = FakeJudge(lambda messages: "The frames look lovely!", model="fake-vlm", reask=2)
    verifier = VisualVerifier(garbage, mode="async", timeout_s=RELEASE_WAIT_S)
    verifier.submit("k", BLOCK, "Mira walks", ["Mira"])
    verdict = verifier.result("k")
    verifier.close()
    assert verdict.status == "failed" and "no valid answer after 3 tries" in verdict.reason
    assert len(garbage.calls) == 3

    verifier = VisualVerifier(FakeJudge(crash), mode="async", timeout_s=RELEASE_WAIT_S)
    verifier.submit("k", BLOCK, "Mira walks", ["Mira"])
    verdict = verifier.result("k")
    verifier.close()
    assert verdict.status == "failed" and verdict.reason == "RuntimeError: cuda out of memory"


def test_backlog_beyond_max_pending_is_skipped():
    gate = threading.Event()
    judge = by_prompt_vlm({str(i): [i / 10] for i in range(7)}, gate)
    verifier = VisualVerifier(judge, mode="async", timeout_s=RELEASE_WAIT_S, max_pending=2)
    try:
        for i in range(5):
            verifier.submit(f"k{i}", BLOCK, str(i), [])
        skipped = verifier.result("k4")  # answered at once, without waiting for the blocked judge
        assert skipped.status == "skipped" and "already waiting" in skipped.reason and skipped.scores is None
        gate.set()
        verdicts = [verifier.result(f"k{i}") for i in range(4)]
        verifier.submit("k5", BLOCK, "5", [])  # the backlog has drained: accepted again
        after = verifier.result("k5")
    finally:
        gate.set()
        verifier.close()
    assert [v.status for v in verdicts] == ["ok", "ok", "skipped", "skipped"]
    assert [v.scores for v in verdicts[:2]] == [[0.0, 0.5, 0.5], [0.1, 0.5, 0.5]]
    assert (after.status, after.scores) == ("ok", [0.5, 0.5, 0.5])
    assert [shown_prompt(call) for call in judge.calls] == ["0", "1", "5"]  # skipped blocks never asked
    assert verifier.stats()["skipped"] == 3


def hung_vlm(table: dict[str, list[float]]) -> tuple[FakeJudge, dict[str, threading.Event]]:
    """A VLM that hangs on every prompt starting with ``hang`` until the test sets that prompt's event
    (a request stuck in the one worker: every later request queues behind it)."""
    events: dict[str, threading.Event] = {}

    def answer(messages: list[Message]) -> str:
        prompt = shown_prompt(messages)
        if prompt.startswith("hang"):
            assert events.setdefault(prompt, threading.Event()).wait(RELEASE_WAIT_S), "never released"
        return scores_json(table.get(prompt, [0.5]))

    return FakeJudge(answer, model="fake-vlm"), events


def release(events: dict[str, threading.Event], *names: str) -> None:
    for name in names:
        events.setdefault(name, threading.Event()).set()


def test_hung_vlm_trips_the_breaker_and_later_blocks_are_skipped_without_waiting():
    judge, events = hung_vlm({})
    verifier = VisualVerifier(judge, mode="async", timeout_s=0.05, breaker_timeouts=2)
    try:
        verifier.submit("p1_c1", BLOCK, "hang", ["Mira"])
        first = verifier.result("p1_c1")
        verifier.submit("p1_c2", BLOCK, "fine", ["Mira"])  # queued behind the hung request
        second = verifier.result("p1_c2")
        later = []
        for i in range(3, 7):
            verifier.submit(f"p1_c{i}", BLOCK, "fine", ["Mira"])
            later.append(verifier.result(f"p1_c{i}"))
    finally:
        release(events, "hang")
        verifier.close()
    assert [first.status, second.status] == ["timeout", "timeout"]
    assert all(v.status == "skipped" and v.reason.startswith("breaker_open") and v.waited_s == 0.0 for v in later)
    assert "2 consecutive timeouts (from block p1_c2)" in later[0].reason and later[0].scores is None
    assert [shown_prompt(call) for call in judge.calls] == ["hang"]  # nothing sent after the breaker opened
    stats = verifier.stats()
    assert {k: stats[k] for k in ("blocks", "timeout", "skipped", "breaker_trips", "breaker_open_at",
                                  "breaker_skipped", "breaker_timeouts")} == {
        "blocks": 6, "timeout": 2, "skipped": 4, "breaker_trips": 1, "breaker_open_at": "p1_c2",
        "breaker_skipped": 4, "breaker_timeouts": 2}
    assert stats["blocked_s"] == pytest.approx(first.waited_s + second.waited_s)


def test_an_outstanding_request_is_not_waited_for_once_the_breaker_is_open():
    judge, events = hung_vlm({})
    verifier = VisualVerifier(judge, mode="async", timeout_s=0.05, breaker_timeouts=1)
    try:
        verifier.submit("k1", BLOCK, "hang", [])
        verifier.submit("k2", BLOCK, "fine", [])  # submitted before the breaker opens (lag 1)
        assert verifier.result("k1").status == "timeout"
        outstanding = verifier.result("k2")
    finally:
        release(events, "hang")
        verifier.close()
    assert (outstanding.status, outstanding.waited_s) == ("skipped", 0.0)
    assert outstanding.reason.startswith("breaker_open")


def test_answers_between_timeouts_keep_the_breaker_closed():
    judge, events = hung_vlm({"fine": [0.7]})
    verifier = VisualVerifier(judge, mode="async", timeout_s=0.05, breaker_timeouts=2)
    try:
        verifier.submit("k1", BLOCK, "hang-1", [])
        assert verifier.result("k1").status == "timeout"
        release(events, "hang-1")  # the VLM recovers: the next answer resets the count
        verifier.submit("k2", BLOCK, "fine", [])
        assert verifier.result("k2", timeout_s=RELEASE_WAIT_S).status == "ok"
        verifier.submit("k3", BLOCK, "hang-2", [])
        assert verifier.result("k3").status == "timeout"
        verifier.submit("k4", BLOCK, "fine", [])  # one timeout in a row: still asked
        release(events, "hang-2")
        assert verifier.result("k4", timeout_s=RELEASE_WAIT_S).scores == [0.7, 0.5, 0.5]
    finally:
        release(events, "hang-1", "hang-2")
        verifier.close()
    assert verifier.stats()["breaker_trips"] == 0 and verifier.breaker_open_at is None
    assert [shown_prompt(call) for call in judge.calls] == ["hang-1", "fine", "hang-2", "fine"]


def test_total_wait_per_video_is_bounded():
    """timeout_s is 10 s, but the video may wait 0.1 s in all: the first wait is cut to it, and once it
    is spent an answer that is not there yet is a timeout at once."""
    judge, events = hung_vlm({})
    verifier = VisualVerifier(judge, mode="async", timeout_s=RELEASE_WAIT_S, max_wait_per_video_s=0.1,
                              breaker_timeouts=0)
    try:
        verifier.submit("k1", BLOCK, "hang", [])
        first = verifier.result("k1")
        verifier.submit("k2", BLOCK, "fine", [])
        second = verifier.result("k2")
    finally:
        release(events, "hang")
        verifier.close()
    assert first.status == "timeout" and "no answer within 0.1 s" in first.reason
    assert second.status == "timeout" and "max_wait_per_video_s" in second.reason
    stats = verifier.stats()
    assert stats["wait_budget_spent"] is True and stats["max_wait_per_video_s"] == 0.1
    assert stats["breaker_trips"] == 0  # breaker_timeouts=0: never opens


def test_sync_mode_stops_asking_once_the_wait_budget_is_spent():
    judge = by_prompt_vlm({"Mira walks": [0.2, 0.9, 0.4]})
    verifier = VisualVerifier(judge, mode="sync", max_wait_per_video_s=1e-9)
    verifier.submit("k1", BLOCK, "Mira walks", ["Mira"])  # asked: the budget is not spent yet
    verifier.submit("k2", BLOCK, "Mira walks", ["Mira"])
    first, second = verifier.result("k1"), verifier.result("k2")
    verifier.close()
    assert first.status == "ok" and len(judge.calls) == 1
    assert second.status == "skipped" and second.reason.startswith("wait_budget_spent")


def test_verifier_rejects_bad_bounds():
    judge = by_prompt_vlm({})
    for kwargs in ({"max_wait_per_video_s": 0}, {"max_wait_per_video_s": -1.0}, {"breaker_timeouts": -1}):
        with pytest.raises(ValueError, match="max_wait_per_video_s|breaker_timeouts"):
            VisualVerifier(judge, **kwargs)


def test_sync_mode_asks_in_the_calling_thread():
    judge = by_prompt_vlm({"Mira walks": [0.2, 0.9, 0.4]})
    verifier = VisualVerifier(judge, mode="sync")
    verifier.submit("p1_c1", BLOCK, "Mira walks", ["Mira"])
    assert len(judge.calls) == 1 and judge.threads == [threading.current_thread()]  # asked inside submit
    verdict = verifier.result("p1_c1")
    assert (verdict.status, verdict.scores) == ("ok", [0.2, 0.9, 0.4])
    assert verdict.waited_s == verdict.latency_s  # sync: the generator waited for the whole request
    verifier.close()

    async_judge = by_prompt_vlm({"Mira walks": [0.2, 0.9, 0.4]})
    verifier = VisualVerifier(async_judge, mode="async", timeout_s=RELEASE_WAIT_S)
    verifier.submit("p1_c1", BLOCK, "Mira walks", ["Mira"])
    assert verifier.result("p1_c1").scores == [0.2, 0.9, 0.4]
    verifier.close()
    assert async_judge.threads[0] is not threading.current_thread()


def test_verifier_rejects_bad_settings():
    judge = by_prompt_vlm({})
    for kwargs in ({"mode": "parallel"}, {"timeout_s": 0}, {"max_pending": 0}, {"frames": ()}):
        with pytest.raises(ValueError):
            VisualVerifier(judge, **kwargs)


def test_frames_sent_are_256_square_jpegs_of_pixel_frames_0_4_8():
    seen: list[list[ImagePart]] = []

    def answer(messages):
        seen.append(messages[0].images())
        return scores_json([0.5] * len(messages[0].images()))

    verifier = VisualVerifier(FakeJudge(answer), mode="sync")
    verifier.submit("full", BLOCK, "Mira walks", ["Mira"])  # 12 pixel frames, 3 latent frames
    verifier.submit("two", BLOCK, "Mira walks", ["Mira"], count=2)  # a block of 2 latent frames
    verifier.submit("short", BLOCK[:5], "Mira walks", ["Mira"])  # fewer pixel frames than frame 8
    assert [len(images) for images in seen] == [3, 2, 3]
    for images in seen:
        for image in images:
            assert decode(image).shape == (256, 256, 3)
    grey = [[int(round(decode(image).mean())) for image in images] for images in seen]
    assert [[abs(g - e) <= 3 for g, e in zip(got, want)] for got, want in
            zip(grey, [[0, 80, 160], [0, 80], [0, 80, 80]])] == [[True] * 3, [True] * 2, [True] * 3]
    assert verifier.result("two").scores == [0.5, 0.5]  # as many scores as candidate frames
    verifier.close()

    custom = VisualVerifier(FakeJudge(answer), mode="sync", frames=(1, 11), size=64)
    custom.submit("k", BLOCK, "Mira walks", [])
    assert [decode(image).shape for image in seen[-1]] == [(64, 64, 3)] * 2
    assert [int(round(decode(image).mean())) for image in seen[-1]] == pytest.approx([20, 220], abs=3)
    assert custom.result("k").scores == [0.5, 0.5]
    custom.close()


def test_verifier_pads_and_truncates_scores_to_the_candidates():
    answers = iter([scores_json([0.7]), scores_json([0.1, 0.2, 0.3, 0.4, 0.5]), scores_json([2.0, -1.0, 0.5])])
    verifier = VisualVerifier(FakeJudge(lambda messages: next(answers)), mode="sync")
    for key in ("short", "long", "clip"):
        verifier.submit(key, BLOCK, "Mira walks", ["Mira"])
    assert [verifier.result(k).scores for k in ("short", "long", "clip")] == [
        [0.7, 0.5, 0.5], [0.1, 0.2, 0.3], [1.0, 0.0, 0.5]]
    verifier.close()


def test_stats_count_every_status():
    gate = threading.Event()

    def answer(messages):
        prompt = shown_prompt(messages)
        if prompt == "down":
            raise JudgeUnavailable("vlm endpoint down")
        if prompt == "slow":
            assert gate.wait(RELEASE_WAIT_S)
        return scores_json([0.3, 0.6, 0.9], {"1": {"corrected_attrs": ["blue scarf"]}})

    verifier = VisualVerifier(FakeJudge(answer, model="fake-vlm"), mode="async", timeout_s=RELEASE_WAIT_S,
                              max_pending=1)
    try:
        verifier.submit("p1_c1", BLOCK, "fine", ["Mira"], registry={1: ("Mira", ("red coat",))})
        ok = verifier.result("p1_c1")
        verifier.submit("p1_c2", BLOCK, "down", ["Mira"])
        failed = verifier.result("p1_c2")
        verifier.submit("p1_c3", BLOCK, "slow", ["Mira"])
        verifier.submit("p1_c4", BLOCK, "fine", ["Mira"])  # one already waiting: skipped
        skipped = verifier.result("p1_c4")
        timed_out = verifier.result("p1_c3", timeout_s=0.05)
    finally:
        gate.set()
        verifier.close()
    assert [v.status for v in (ok, failed, skipped, timed_out)] == ["ok", "failed", "skipped", "timeout"]
    assert ok.corrections == {1: ["blue scarf"]}
    stats = verifier.stats()
    assert {k: stats[k] for k in ("mode", "model", "blocks", "ok", "failed", "timeout", "skipped", "timeout_s")} == {
        "mode": "async", "model": "fake-vlm", "blocks": 4, "ok": 1, "failed": 1, "timeout": 1, "skipped": 1,
        "timeout_s": RELEASE_WAIT_S}
    assert stats["mean_latency_s"] is not None and stats["mean_latency_s"] >= 0 and stats["blocked_s"] >= 0
    assert len(stats["problems"]) == 2
    assert stats["problems"][0].startswith("p1_c2:") and "vlm endpoint down" in stats["problems"][0]
    assert stats["problems"][1].startswith("p1_c3:")
    empty = VisualVerifier(by_prompt_vlm({}), mode="sync").stats()
    assert (empty["blocks"], empty["ok"], empty["mean_latency_s"], empty["blocked_s"]) == (0, 0, None, 0.0)


# ----------------------------------------------------------------------------- 5. fusion
def test_fuse_scores_by_hand():
    semantic = torch.tensor([2.0, 4.0, 3.0])  # minmax -> [0, 1, 0.5]
    # 0.7 * [0, 1, 0.5] + 0.3 * [1, 0, 0.5] = [0.3, 0.7, 0.5]
    assert fuse_scores(semantic, [1.0, 0.0, 0.5]).tolist() == pytest.approx([0.3, 0.7, 0.5])
    # weight 0.8: 0.2 * [0, 1, 0.5] + 0.8 * [1, 0, 0.5] = [0.8, 0.2, 0.5]
    assert fuse_scores(semantic, [1.0, 0.0, 0.5], weight=0.8).tolist() == pytest.approx([0.8, 0.2, 0.5])
    # range below 1e-8: every normalised score is 0.5 -> 0.35 + 0.3 * v
    flat = torch.tensor([5.0, 5.0, 5.0])
    assert fuse_scores(flat, [0.2, 0.9, 0.4]).tolist() == pytest.approx([0.41, 0.62, 0.47])
    # missing visual scores are 0.5; extra ones are ignored
    assert fuse_scores(semantic, [0.9]).tolist() == pytest.approx([0.27, 0.85, 0.5])
    assert fuse_scores(semantic, [0.0, 0.0, 0.0, 1.0]).tolist() == pytest.approx([0.0, 0.7, 0.35])
    # without visual scores: the raw semantic scores, not normalised
    raw = torch.tensor([-0.3, 0.25, 0.1])
    assert torch.equal(fuse_scores(raw, None), raw)
    # the fused argmax can differ from the semantic argmax: 0.7 * [0, 1, 0.95] + 0.3 * [0, 0, 1]
    close = torch.tensor([2.0, 4.0, 3.9])
    assert fuse_scores(close, [0.0, 0.0, 1.0]).tolist() == pytest.approx([0.0, 0.7, 0.965])
    assert int(fuse_scores(close, [0.0, 0.0, 1.0]).argmax()) == 2 and int(close.argmax()) == 1


# ----------------------------------------------------------------------------- 6. agent + verifier in the pipeline
PROMPTS = ["Mira in a red coat walks along the pier at dawn.", "Mira in a red coat reads a book on a bench."]
CHARACTERS = [[ExtractedEntity("Mira", ("red coat",))]] * 2
BLOCKS = 4  # 2 prompts x 6 s x 4 fps -> 12 latent frames -> 4 blocks of 3, all with characters


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("diffusers")
    from narrastream.streaming.tiny import build_tiny

    return build_tiny(0)


def run_pipeline(tiny, agent: IdentityAgent, transition: str = "soft") -> list[tuple[str, int]]:
    """Generate the 2-prompt script with ``agent``; returns (event, len(decisions)) after every hook."""
    from narrastream.streaming.kv_cache import CachePolicy
    from narrastream.streaming.pipeline import StreamingSpec, StreamingWanPipeline

    trace: list[tuple[str, int]] = []
    for hook in ("after_commit", "before_switch", "on_video_end"):
        original = getattr(agent, hook)

        def spy(*args, _original=original, _hook=hook):
            _original(*args)
            trace.append((_hook, len(agent.decisions)))

        setattr(agent, hook, spy)
    spec = StreamingSpec(cache=CachePolicy.sink(9, 3, sma=True), transition=transition, memory="identity",
                         bank_size=6, block_frames=3)
    pipeline = StreamingWanPipeline(*tiny, spec)
    result = pipeline.generate(PROMPTS, seed=0, seconds_per_segment=6, fps=4, height=48, width=64,
                               memory_agent=agent)
    assert result.details["num_blocks"] == BLOCKS
    return trace


def argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])


def test_agent_without_verifier_keeps_the_semantic_argmax(tiny):
    agent = IdentityAgent(PROMPTS, CHARACTERS)
    trace = run_pipeline(tiny, agent)
    assert [d["block"] for d in agent.decisions] == ["p1_c1", "p1_c2", "p2_c1", "p2_c2"]
    for d in agent.decisions:
        assert len(d["semantic"]) == 3 and d["frame"] == f"{d['block']}_f{argmax(d['semantic'])}"
        assert "verifier" not in d
    # no verifier: every block is decided at its own commit
    assert [n for event, n in trace if event == "after_commit"] == [1, 2, 3, 4]
    assert "verifier" not in agent.to_json()


def test_vlm_with_full_weight_decides_every_frame(tiny):
    vlm = FakeJudge(lambda messages: scores_json([0.0, 0.0, 1.0] if len(messages[0].images()) == 3 else [1.0]),
                    model="fake-vlm")
    verifier = VisualVerifier(vlm, mode="sync")
    agent = IdentityAgent(PROMPTS, CHARACTERS, verifier=verifier, visual_weight=1.0, lag_blocks=1)
    trace = run_pipeline(tiny, agent)
    verifier.close()
    assert len(agent.decisions) == BLOCKS and len(vlm.calls) == BLOCKS
    assert all(len(call[0].images()) == 3 for call in vlm.calls)
    assert all(decode(image).shape == (256, 256, 3) for call in vlm.calls for image in call[0].images())
    for d in agent.decisions:
        assert d["frame"].endswith("_f2") and d["verifier"] == "ok" and d["visual"] == [0.0, 0.0, 1.0]
    # the VLM overrode the semantic choice somewhere (else this test would prove nothing)
    assert any(argmax(d["semantic"]) != 2 for d in agent.decisions)
    assert all(t is threading.main_thread() or t is threading.current_thread() for t in vlm.threads)
    # sync mode ignores the lag: each block is decided at its commit
    assert [n for event, n in trace if event == "after_commit"] == [1, 2, 3, 4]
    assert agent.to_json()["verifier"]["ok"] == BLOCKS


def test_async_lag_settles_every_block_and_applies_first_block_corrections(tiny):
    requests: list[str] = []
    visual = [0.0, 1.0, 0.25]

    def answer(messages):
        text = messages[0].text()
        requests.append(text)
        corrections = None
        if "Known characters" in text:  # a prompt's first block
            seen = "blue scarf" if "pier" in shown_prompt(messages) else "green hat"
            corrections = {"1": {"corrected_attrs": [seen]}, "99": {"corrected_attrs": ["nobody"]}}
        return scores_json(visual, corrections)

    verifier = VisualVerifier(FakeJudge(answer, model="fake-vlm"), mode="async", timeout_s=RELEASE_WAIT_S)
    agent = IdentityAgent(PROMPTS, CHARACTERS, verifier=verifier, lag_blocks=1)
    trace = run_pipeline(tiny, agent)
    verifier.close()
    # lag 1: block b is decided at block b+1's commit, also across a soft switch (the cached K/V survive it);
    # the video's end settles what is pending
    assert trace == [("after_commit", 0), ("after_commit", 1), ("before_switch", 1), ("after_commit", 2),
                     ("after_commit", 3), ("on_video_end", 4)]
    assert [d["block"] for d in agent.decisions] == ["p1_c1", "p1_c2", "p2_c1", "p2_c2"]
    assert all(d.get("archived", True) for d in agent.decisions)
    # prompt 1's last choice, settled during prompt 2, is archived but does not enter the ID memory
    late = agent.decisions[1]["frame"]
    assert late in agent.kv and late not in agent.memory.id_memory
    events = agent.to_json()["memory_trace"]["events"]
    assert {"prompt": 0, "event": "archive", "frames": [late]} in events
    assert not any(late in e["frames"] for e in events if e["event"] != "archive")
    assert all(d["verifier"] == "ok" and d["visual"] == visual for d in agent.decisions)
    # default weight: 0.7 * minmax(semantic) + 0.3 * visual, by hand
    for d in agent.decisions:
        lo, hi = min(d["semantic"]), max(d["semantic"])
        fused = [0.7 * (s - lo) / (hi - lo) + 0.3 * v for s, v in zip(d["semantic"], visual)]
        ranked = sorted(fused)
        if ranked[-1] - ranked[-2] > 1e-3:  # recorded semantics are rounded: skip near ties
            assert d["frame"] == f"{d['block']}_f{argmax(fused)}"
    # only first blocks show the registry and carry corrections; unknown IDs are ignored
    assert ["Known characters" in text for text in requests] == [True, False, True, False]
    assert "ID 1 (Mira): red coat" in requests[0]
    assert "blue scarf" in requests[2]  # prompt 1's correction is what prompt 2's first block is shown
    assert agent.decisions[0]["corrections"] == {"1": ["blue scarf"]}
    assert agent.decisions[2]["corrections"] == {"1": ["green hat"]}
    assert "corrections" not in agent.decisions[1] and "corrections" not in agent.decisions[3]
    registry = agent.to_json()["registry"]
    assert [(e["id"], e["name"], e["attributes"]) for e in registry["entities"]] == [(1, "Mira", ["green hat"])]
    stats = agent.to_json()["verifier"]
    assert (stats["mode"], stats["blocks"], stats["ok"]) == ("async", BLOCKS, BLOCKS)


def test_failing_vlm_falls_back_to_the_semantic_choice(tiny):
    def down(messages):
        raise JudgeUnavailable("vlm endpoint down")

    verifier = VisualVerifier(FakeJudge(down, model="fake-vlm"), mode="async", timeout_s=RELEASE_WAIT_S)
    agent = IdentityAgent(PROMPTS, CHARACTERS, verifier=verifier, lag_blocks=1, visual_weight=1.0)
    run_pipeline(tiny, agent)
    verifier.close()
    assert len(agent.decisions) == BLOCKS
    checked = 0
    for d in agent.decisions:
        assert d["verifier"] == "failed" and d["visual"] is None and "vlm endpoint down" in d["reason"]
        ranked = sorted(d["semantic"])
        if ranked[-1] - ranked[-2] > 1e-5:  # recorded semantics are rounded to 1e-6: skip near ties
            assert d["frame"] == f"{d['block']}_f{argmax(d['semantic'])}"
            checked += 1
        assert "corrections" not in d
    assert checked > 0
    assert [e["attributes"] for e in agent.registry.to_json()["entities"]] == [["red coat"]]
    assert agent.to_json()["verifier"]["failed"] == BLOCKS


def test_hung_vlm_in_the_pipeline_trips_the_breaker_and_the_sidecar_says_so(tiny):
    gate = threading.Event()

    def hung(messages):
        assert gate.wait(RELEASE_WAIT_S), "never released"
        return scores_json([0.1, 0.2, 0.3])

    vlm = FakeJudge(hung, model="fake-vlm")
    verifier = VisualVerifier(vlm, mode="async", timeout_s=0.05, breaker_timeouts=2, max_wait_per_video_s=60)
    agent = IdentityAgent(PROMPTS, CHARACTERS, verifier=verifier, lag_blocks=1)
    try:
        run_pipeline(tiny, agent)
    finally:
        gate.set()
        verifier.close()
    assert [d["verifier"] for d in agent.decisions] == ["timeout", "timeout", "skipped", "skipped"]
    assert all(d["reason"].startswith("breaker_open") for d in agent.decisions[2:])
    assert all(d.get("archived", True) for d in agent.decisions)  # the semantic choice is archived
    stats = agent.to_json()["verifier"]  # what the sidecar's extra.iam.verifier holds
    assert (stats["timeout"], stats["breaker_trips"], stats["breaker_open_at"], stats["breaker_skipped"]) == (
        2, 1, "p1_c2", 2)
    assert len(vlm.calls) == 1 and stats["blocked_s"] >= 0 and stats["max_wait_per_video_s"] == 60


def test_bad_verifier_bounds_are_refused_at_start():
    with pytest.raises(ValueError, match=r"max_wait_per_video_s=0: expected a number of seconds > 0"):
        _iamflow_generator("model.params.iam.verifier.enabled=true", "model.params.iam.verifier.max_wait_per_video_s=0")
    with pytest.raises(ValueError, match=r"breaker_timeouts=-1: expected an integer >= 0"):
        _iamflow_generator("model.params.iam.verifier.enabled=true", "model.params.iam.verifier.breaker_timeouts=-1")
    assert _iamflow_generator("model.params.iam.verifier.enabled=true",
                              "model.params.iam.verifier.max_wait_per_video_s=null")


def test_async_lag_settles_before_a_kv_recache_switch(tiny):
    verifier = VisualVerifier(FakeJudge(lambda messages: scores_json([0.2, 0.4, 0.6]), model="fake-vlm"),
                              mode="async", timeout_s=RELEASE_WAIT_S)
    agent = IdentityAgent(PROMPTS, CHARACTERS, verifier=verifier, lag_blocks=1)
    trace = run_pipeline(tiny, agent, transition="kv_recache")
    verifier.close()
    # a re-cache rewrites the cached K/V at the switch: prompt 1's pending choice is made before it
    assert trace == [("after_commit", 0), ("after_commit", 1), ("before_switch", 2), ("after_commit", 2),
                     ("after_commit", 3), ("on_video_end", 4)]
    assert all(d["verifier"] == "ok" and d.get("archived", True) for d in agent.decisions)
    # ... while prompt 1 is still current, so it updates prompt 1's ID memory (not archived only)
    late = agent.decisions[1]["frame"]
    events = agent.to_json()["memory_trace"]["events"]
    assert any(e["event"] == "update" and e["prompt"] == 0 and late in e["frames"] for e in events)
    assert not any(e["event"] == "archive" for e in events)


# ----------------------------------------------------------------------------- adapter settings
def _iamflow_generator(*overrides: str):
    from narrastream.adapters.streaming_wan import StreamingWanGenerator
    from narrastream.config import compose_config

    params = compose_config(["model=iamflow", "preset=tiny", *overrides])["model"]["params"]
    return StreamingWanGenerator(**params)


def test_lag_beyond_the_cache_is_refused_at_start():
    # full-size blocks of 3 latent frames in the 9 local frames of the cache: a choice may wait 2 blocks at most
    assert _iamflow_generator("generation.latent_block_frames=3", "model.params.iam.verifier.enabled=true",
                              "model.params.iam.verifier.lag_blocks=2")
    with pytest.raises(ValueError, match=r"lag_blocks=3: must be 0\.\.2"):
        _iamflow_generator("generation.latent_block_frames=3", "model.params.iam.verifier.enabled=true",
                           "model.params.iam.verifier.lag_blocks=3")
    with pytest.raises(ValueError, match="iam.entities='annotations': expected one of llm, prompt_names, oracle"):
        _iamflow_generator("model.params.iam.entities=annotations")  # the old name of the oracle is gone
    # sync mode has no lag, and a disabled verifier is not checked
    assert _iamflow_generator("generation.latent_block_frames=3", "model.params.iam.verifier.lag_blocks=3")


def test_iam_judges_need_a_backend_and_a_model():
    generator = _iamflow_generator("model.params.iam.llm.backend=none")
    with pytest.raises(ValueError, match=r"model\.params\.iam\.llm: IAMFlow's llm needs a judge config"):
        generator._iam_judge("llm")
    generator = _iamflow_generator("model.params.iam.verifier.judge.model=null")
    with pytest.raises(ValueError, match=r"model\.params\.iam\.verifier\.judge"):
        generator._iam_judge("verifier")
