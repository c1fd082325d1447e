"""Worked examples for the IAMFlow registry and ID memory (hand-computed expectations)."""

import json

import pytest

from narrastream.iamflow.id_memory import (FrameArchive, FrameRecord, IdentityMemory, frame_id_for,
                                           greedy_cover)
from narrastream.iamflow.registry import EntityRegistry, ExtractedEntity, has_new_person_marker
from narrastream.protocol.annotations import Entity


def fr(fid, ids, es, prompt=1, latent=0, score=None):
    return FrameRecord(fid, latent, prompt, frozenset(ids), es if score is None else score, es)


# ---------------------------------------------------------------- registry
def test_returning_character_lookalike_and_new():
    reg = EntityRegistry()
    assert reg.register(0, [Entity("Noah", ("shaved head", "grey coat"))]) == (1,)
    # look-alike with a different name -> distinct ID
    assert reg.register(1, [Entity("Eli", ("shaved head", "grey coat"))]) == (2,)
    assert reg.register(2, []) == ()  # Noah absent
    # Noah returns after absence (case/whitespace differ) with a new attribute; Mara is new
    assert reg.register(3, [("  noah ", ["scarf"]), ("Mara", ["red dress"])]) == (1, 3)
    e = reg.entry(1)
    assert e.attributes == ["shaved head", "grey coat", "scarf"]
    assert e.prompts == [0, 3]
    assert reg.ids_for_prompt(1) == (2,) and reg.ids_for_prompt(2) == ()


def test_alias_match_and_sidecar_json():
    reg = EntityRegistry()
    reg.register(0, [ExtractedEntity("Dr. Ana Silva", ("white coat",), aliases=("Ana",))])
    assert reg.register(1, [ExtractedEntity("ANA", ("glasses",))]) == (1,)
    reg.add_alias(1, "the doctor")
    assert reg.register(2, [("The  Doctor", [])]) == (1,)
    data = json.loads(json.dumps(reg.to_json()))
    assert data["entities"] == [{"id": 1, "name": "Dr. Ana Silva", "aliases": ["Ana", "the doctor"],
                                 "attributes": ["white coat", "glasses"], "prompts": [0, 1, 2]}]
    assert data["prompt_ids"] == {"0": [1], "1": [1], "2": [1]}


def test_per_script_isolation():
    a, b = EntityRegistry(), EntityRegistry()
    a.register(0, [("Noah", [])])
    a.register(1, [("Mara", [])])
    assert b.register(0, [("Mara", [])]) == (1,)  # script B starts at ID 1; nothing carried
    assert len(b) == 1 and b.entry(1).name == "Mara"


def test_new_person_marker_whole_word_not_substring():
    assert has_new_person_marker("another woman") and not has_new_person_marker("Mother")
    reg = EntityRegistry()
    reg.register(0, [("Mother", []), ("woman", [])])
    assert reg.register(1, [("mother", []), ("another woman", [])]) == (1, 3)


def test_same_prompt_entities_never_share_an_id():
    reg = EntityRegistry()
    reg.register(0, [("Sam", [])])
    # the same name twice in one prompt = one entity; a second claimant of ID 1 via alias gets new
    ids = reg.register(1, [("Sam", ["hat"]), ("sam", ["scarf"]), ExtractedEntity("Samuel", aliases=("Sam",))])
    assert ids == (1, 2)
    assert reg.entry(1).attributes == ["hat", "scarf"]


def test_disambiguate_only_when_ambiguous():
    calls = []

    def fake(entity, candidates):
        calls.append((entity.name, [c.global_id for c in candidates]))
        return candidates[-1].global_id

    reg = EntityRegistry(disambiguate=fake)
    reg.register(0, [ExtractedEntity("Alex Kim", aliases=("Alex",)),
                     ExtractedEntity("Alex Ruiz", aliases=("Alex",))])
    assert reg.register(1, [("Alex Kim", [])]) == (1,)  # unique exact match: no call
    assert calls == []
    assert reg.register(2, [("alex", [])]) == (2,)  # matches IDs 1 and 2: callback decides
    assert calls == [("alex", [1, 2])]
    reg.register(3, [("the protagonist", [])])  # generic role word: callback over all IDs
    assert calls[-1] == ("the protagonist", [1, 2])
    # callback returning None -> new ID; no callback -> ambiguous name gets a new ID
    reg2 = EntityRegistry(disambiguate=lambda e, c: None)
    reg2.register(0, [ExtractedEntity("A", aliases=("X",)), ExtractedEntity("B", aliases=("X",))])
    assert reg2.register(1, [("x", [])]) == (3,)
    reg3 = EntityRegistry()
    reg3.register(0, [ExtractedEntity("A", aliases=("X",)), ExtractedEntity("B", aliases=("X",))])
    assert reg3.register(1, [("x", [])]) == (3,)


def test_register_order_enforced():
    reg = EntityRegistry()
    reg.register(1, [("A", [])])
    with pytest.raises(ValueError):
        reg.register(1, [("A", [])])
    with pytest.raises(ValueError):
        reg.register(0, [("A", [])])


# ---------------------------------------------------------------- set cover / retrieval
def test_greedy_cover_minimal_set_and_entity_score_tiebreak():
    A, B, C, D = fr("A", {1, 2}, 0.5), fr("B", {2, 3}, 0.9), fr("C", {3}, 0.99), fr("D", {1}, 0.1)
    # step 1: A and B both cover 2 -> B (higher entity_score); step 2: {1} -> A (0.5 > D's 0.1)
    assert [r.frame_id for r in greedy_cover([A, B, C, D], {1, 2, 3}, 4)] == ["B", "A"]


def test_greedy_cover_insertion_order_tiebreak_and_limit():
    A, B = fr("A", {1}, 0.5), fr("B", {1}, 0.5)
    assert [r.frame_id for r in greedy_cover([A, B], {1}, 4)] == ["A"]
    assert [r.frame_id for r in greedy_cover([B, A], {1}, 4)] == ["B"]
    assert greedy_cover([A, B], {1}, 0) == []
    assert greedy_cover([A, B], {7}, 4) == []


def _memory_with(frames, **kw):
    m = IdentityMemory(max_archived_frames=None, **kw)
    for f in frames:
        m.archive.add(f)
    return m


def test_retrieval_multi_entity_floor_of_two():
    F1, F2, F3 = fr("F1", {1, 2}, 0.2, latent=0), fr("F2", {5}, 0.8, latent=3), fr("F3", {6}, 0.3, latent=6)
    m = _memory_with([F1, F2, F3])
    out = m.start_prompt(2, {1, 2})
    # cover needs 1 frame (F1), floor raises budget to 2, filled with highest entity_score: F2
    assert m.id_memory == ["F1", "F2"]
    assert [r.frame_id for r in out] == ["F1", "F2"]
    # single entity, fully covered by one frame -> exactly 1
    m.start_prompt(3, {1})
    assert m.id_memory == ["F1"]


def test_retrieval_new_single_character_turns_bank_off():
    m = _memory_with([fr("F1", {1}, 0.9)])
    assert m.start_prompt(2, {9}) == [] and m.id_memory == [] and not m.bank_enabled


def test_retrieval_capacity_four():
    frames = [fr(f"F{i}", {i}, 0.1 * i, latent=i) for i in range(1, 7)]
    m = _memory_with(frames)
    m.start_prompt(2, {1, 2, 3, 4, 5, 6})
    # each frame covers one ID; ties on gain broken by entity_score: F6, F5, F4, F3; cap 4
    assert m.id_memory == ["F6", "F5", "F4", "F3"]
    assert [r.frame_id for r in m.injected()] == ["F3", "F4", "F5", "F6"]  # chronological
    assert m.injection_key() == ("F3", "F4", "F5", "F6")


def test_prompt_without_entities_injects_nothing_but_keeps_list():
    m = _memory_with([fr("F1", {1}, 0.9)])
    m.start_prompt(2, {1})
    assert m.start_prompt(3, []) == [] and m.id_memory == ["F1"] and m.injected() == []


# ---------------------------------------------------------------- update rule
def test_update_replaces_lowest_entity_score_in_place():
    m = IdentityMemory(max_archived_frames=None)
    m.start_prompt(1, {1}, first=True)
    for i, es in enumerate([0.5, 0.2, 0.7, 0.4]):
        m.offer(fr(frame_id_for(1, i + 1, 0), {1}, es, latent=3 * i))
    assert m.id_memory == ["p1_c1_f0", "p1_c2_f0", "p1_c3_f0", "p1_c4_f0"]
    m.offer(fr("p1_c5_f1", {1}, 0.3, latent=13))  # 0.3 > 0.2 -> replaces slot 1
    assert m.id_memory == ["p1_c1_f0", "p1_c5_f1", "p1_c3_f0", "p1_c4_f0"]
    m.offer(fr("p1_c6_f0", {1}, 0.3, latent=15))  # lowest now 0.3: equal is not higher -> kept
    m.offer(fr("p1_c7_f0", {1}, 0.1, score=99.0, latent=18))  # fused score is ignored (§9.7)
    assert m.id_memory == ["p1_c1_f0", "p1_c5_f1", "p1_c3_f0", "p1_c4_f0"]
    m.offer(fr("p1_c1_f0", {1}, 0.5))  # a held frame offered again is never held twice
    assert len(set(m.id_memory)) == 4
    assert len(m.archive) == 7


def test_update_retention_fused_option():
    m = IdentityMemory(max_archived_frames=None, capacity=1, retention="score")
    m.offer(fr("a", {1}, 0.5, score=0.1))
    m.offer(fr("b", {1}, 0.1, score=0.2))
    assert m.id_memory == ["b"]


# ---------------------------------------------------------------- archive bound
def test_archive_bound_evicts_redundant_lowest_first():
    arc = FrameArchive(max_frames=3)
    for f in [fr("a", {1}, 0.3), fr("b", {1}, 0.5), fr("c", {2}, 0.05), fr("d", {1}, 0.4)]:
        arc.add(f)
    # ID 2 has only c -> c kept despite lowest score; redundant a/b/d -> evict a (0.3)
    assert [r.frame_id for r in arc.enforce_bound()] == ["a"]
    assert [r.frame_id for r in arc.records()] == ["b", "c", "d"]
    arc.add(fr("e", {1}, 0.45))
    assert [r.frame_id for r in arc.enforce_bound(protected=["d"])] == ["e"]  # d (0.4) protected
    # nothing redundant: the strict bound drops the lowest-score unprotected frame
    arc2 = FrameArchive(max_frames=1)
    arc2.add(fr("x", {1}, 0.2))
    arc2.add(fr("y", {2}, 0.1))
    assert [r.frame_id for r in arc2.enforce_bound()] == ["y"]
    unbounded = FrameArchive(max_frames=None)
    for i in range(50):
        unbounded.add(fr(f"f{i}", {1}, 0.0))
    assert unbounded.enforce_bound() == [] and len(unbounded) == 50


def test_offer_protects_active_memory_under_bound():
    m = IdentityMemory(capacity=2, max_archived_frames=2)
    m.offer(fr("a", {1}, 0.1))
    m.offer(fr("b", {1}, 0.9))
    evicted = m.offer(fr("c", {1}, 0.5))  # c replaces a in memory; archive 3 > 2 -> a evicted
    assert m.id_memory == ["c", "b"] and [r.frame_id for r in evicted] == ["a"]


# ---------------------------------------------------------------- trace
def test_trace_records_active_frames_per_prompt():
    m = IdentityMemory(max_archived_frames=None)
    m.start_prompt(1, {1}, first=True)
    m.offer(fr("p1_c2_f0", {1}, 0.4, prompt=1, latent=3))
    m.offer(fr("p1_c3_f2", {1}, 0.6, prompt=1, latent=8))
    m.start_prompt(2, {1, 2})
    m.offer(fr("p2_c1_f1", {1, 2}, 0.2, prompt=2, latent=13))
    m.start_prompt(3, [])
    assert m.trace.active_per_prompt() == {1: ["p1_c2_f0", "p1_c3_f2"],
                                           2: ["p1_c3_f2", "p1_c2_f0", "p2_c1_f1"], 3: []}
    data = json.loads(json.dumps(m.trace.to_json()))
    assert [e["event"] for e in data["events"]] == ["update", "update", "retrieve", "update", "no-entities"]
    assert data["events"][2]["frames"] == ["p1_c3_f2", "p1_c2_f0"]
