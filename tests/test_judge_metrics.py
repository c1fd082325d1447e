"""The two judge metrics (entity_grounding §2.3.1, vlm_score §2.3.3), the protocol's questions and
their schemas, and the live annotations, against a scripted in-process judge (no network, no model).

Every expected score below is worked out by hand in the comments next to it.
"""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pytest
import yaml
from PIL import Image
from pydantic import ValidationError

from narrastream.data.script import Script
from narrastream.judges import JudgeSet
from narrastream.judges.base import ImagePart, Judge, JudgeAnswerError, JudgeUnavailable, Message
from narrastream.judges.testing import protocol_answer
from narrastream.metrics.base import MetricContext, MetricResult
from narrastream.metrics.functional.judged import grounding_segment_score, unit_interval, vlm_score
from narrastream.judges.images import encode_jpeg
from narrastream.metrics.instruction.entity_grounding import EntityGrounding
from narrastream.metrics.instruction.vlm_score import VlmScore
from narrastream.protocol.annotations import Entity, ScriptAnnotations, parse_script_annotations, prompts_sha256
from narrastream.protocol.live_annotations import annotate_script, annotate_scripts, to_jsonl_line
from narrastream.protocol.questions import (
    ContinuityAnswer,
    EntityGroundingAnswer,
    EntityGroupsAnswer,
    GroundingItem,
    SegmentEntitiesAnswer,
    SegmentWeightsAnswer,
    VlmScoreAnswer,
    ask_entity_groups,
    ask_segment_weights,
)
from narrastream.video.segments import SegmentedVideo

REPO = Path(__file__).resolve().parents[1]
PROTOCOL_YAML = REPO / "eval_configs" / "protocol" / "narrastream_v1.yaml"

# the protocol constants (checked against the YAML in test_protocol_constants)
EG_PARAMS = {"frames_per_segment": 5, "empty_entity_score": 0.5, "normalize": "official", "fallback_score": None}
VLM_PARAMS = {"frames_per_segment": 5, "segment_weight": 0.8, "overall_weight": 0.2, "fallback_score": None}

PROMPTS = (
    "PROMPT-ONE: Noah in a red scarf smiles while his dog runs around him in the park.",
    "PROMPT-TWO: Noah ties the red scarf around the dog's neck.",
    "PROMPT-THREE: A cup of tea cools on the bench after they leave.",
)
SEGMENT_LENGTHS = (8, 8, 3)  # the last segment is short: uniform_indices(3, 5) dedups to [0, 1, 2]
KEY_INDICES = ([0, 2, 4, 5, 7], [0, 2, 4, 5, 7], [0, 1, 2])  # round(i * 7 / 4) with half-to-even; round(i * 2 / 4)
ENTITIES = (
    (Entity("Noah", ("red scarf", "smiling")), Entity("dog")),
    (Entity("Noah", ("red scarf",)),),
    (Entity("cup"),),
)
# planner weights: clamped to 1..100 -> [50, 100, 1], sum 151
RAW_WEIGHTS = (50, 150, 0)
W = (50 / 151, 100 / 151, 1 / 151)

# entity_grounding answers, one per segment, and their scores by the official rule:
#   seg 0: Noah presence 250 -> 1.0 (clipped), match 50 -> 0.5: 0.5; dog presence 1 -> 1.0 (kept as is:
#          the official quirk), no attributes -> counts 1 (its match 0 is ignored): 1.0;  mean 0.75
#   seg 1: Noah presence 90 -> 0.9, match 0.5 -> 0.5 (kept): 0.45
#   seg 2: cup presence 0 -> absent, no attributes -> 0 (its match 100 is ignored): 0.0
EG_ANSWERS = (
    {"entity_results": [{"presence": 250, "attribute_match": 50}, {"presence": 1, "attribute_match": 0}]},
    {"entity_results": [{"presence": 90, "attribute_match": 0.5}]},
    {"entity_results": [{"presence": 0, "attribute_match": 100}]},
)
EG_SEGMENT_SCORES = (0.75, 0.45, 0.0)
EG_EXPECTED = (0.75 * 50 + 0.45 * 100 + 0.0 * 1) / 151  # = 82.5 / 151


# ------------------------------------------------------------------------------------------ helpers


class FakeJudge(Judge):
    """A judge whose answers are scripted: a list (taken in order; an exception instance is raised,
    a dict is sent as JSON) or a function ``(last message text, number of its images) -> answer``.
    Every request (the whole conversation) is recorded in ``requests``."""

    backend = "fake"

    def __init__(self, answers: Sequence[Any] | Callable[[str, int], Any], model: str = "fake-vlm", **kw: Any) -> None:
        super().__init__(model, **kw)
        self._answers = answers if callable(answers) else list(answers)
        self.requests: list[list[Message]] = []
        self._lock = threading.Lock()

    def _complete(self, messages: Sequence[Message], *, json_mode: bool, max_tokens: int) -> str:
        with self._lock:
            self.requests.append(list(messages))
            if callable(self._answers):
                answer = self._answers(messages[-1].text(), len(messages[-1].images()))
            else:
                if not self._answers:
                    raise AssertionError("the fake judge was asked more often than scripted")
                answer = self._answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer if isinstance(answer, str) else json.dumps(answer)


def judges_of(vlm: Judge, planner: Judge | None = None) -> JudgeSet:
    return JudgeSet(planner=planner or vlm, vlm=vlm)


def make_video(lengths: Sequence[int] = SEGMENT_LENGTHS, height: int = 24, width: int = 32) -> SegmentedVideo:
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 256, size=(sum(lengths), height, width, 3), dtype=np.uint8)
    switches = list(np.cumsum(lengths)[:-1])
    video = SegmentedVideo.from_frames(frames, 16.0, len(lengths), switch_frames=switches)
    assert video.segment_lengths == list(lengths)
    return video


def make_ctx(judges: JudgeSet | None, *, weights: Any = RAW_WEIGHTS, entities: Any = ENTITIES,
             annotations: bool = True, judge_images: dict | None = None) -> MetricContext:
    ann = ScriptAnnotations(script_id=0, segment_weights=weights, segment_entities=entities) if annotations else None
    return MetricContext(script=Script(id=0, prompts=PROMPTS), backbones=None, annotations=ann, judges=judges,
                         judge_images=judge_images)


def run(metric, video: SegmentedVideo, ctx: MetricContext) -> MetricResult:
    return metric.compute(video, ctx)


# ------------------------------------------------------------------------------------------ formulas


def test_unit_interval_official_rule():
    assert unit_interval(75) == 0.75
    assert unit_interval(1) == 1.0  # an answer of 1 (on 0..100) counts as 100 %: the official quirk
    assert unit_interval(0) == 0.0
    assert unit_interval(0.4) == 0.4  # already on [0, 1]: kept
    assert unit_interval(250) == 1.0  # clipped
    assert unit_interval(-20) == 0.0  # clipped
    assert unit_interval(1.5) == 0.015  # just outside [0, 1]: divided by 100


def test_unit_interval_percent_rule():
    assert unit_interval(1, "percent") == 0.01
    assert unit_interval(0.4, "percent") == pytest.approx(0.004, abs=1e-15)
    assert unit_interval(80, "percent") == 0.8
    assert unit_interval(250, "percent") == 1.0
    assert unit_interval(-3, "percent") == 0.0
    with pytest.raises(ValueError, match="unknown normalisation rule"):
        unit_interval(50, "linear")


def test_grounding_segment_score_by_hand():
    # entity with attributes: presence x match; without: presence when present (> 0) x 1, else 0
    assert grounding_segment_score([0.8], [0.5], [True]) == pytest.approx(0.4, abs=1e-15)
    assert grounding_segment_score([0.3], [0.0], [False]) == pytest.approx(0.3, abs=1e-15)  # match ignored, counts 1
    assert grounding_segment_score([0.0], [1.0], [False]) == 0.0  # absent: 0, whatever the match
    # (0.8 * 0.5 + 0.6 * 1 + 0 * 1) / 3
    assert grounding_segment_score([0.8, 0.6, 0.0], [0.5, 0.1, 0.9], [True, False, False]) == pytest.approx(1.0 / 3)
    with pytest.raises(ValueError):
        grounding_segment_score([], [], [])
    with pytest.raises(ValueError):
        grounding_segment_score([1.0, 0.5], [1.0], [True, True])


def test_vlm_score_weights_split():
    # 0.8 * (0.9 * 1 + 0.3 * 3) / 4 + 0.2 * 0.5 = 0.8 * 0.45 + 0.1 = 0.46
    assert vlm_score([0.9, 0.3], 0.5, [1, 3]) == pytest.approx(0.46, abs=1e-15)
    assert vlm_score([1.0, 1.0], 0.0, [1, 1]) == pytest.approx(0.8, abs=1e-15)
    assert vlm_score([0.0, 0.0], 1.0, [1, 1]) == pytest.approx(0.2, abs=1e-15)
    assert vlm_score([0.9, 0.3], 0.5, [1, 3], segment_weight=0.5, overall_weight=0.5) == pytest.approx(0.475)


def test_vlm_score_divides_by_the_weight_sum():
    # the official divides by the sum of the component weights: 0.8 / 0.4 with both at 0.5 gives 0.5
    # (not 0.8 * 0.5 + 0.4 * 0.5 = 0.6)
    assert vlm_score([0.5, 0.5], 0.5, [1, 1], segment_weight=0.8, overall_weight=0.4) == pytest.approx(0.5, abs=1e-15)
    # (0.8 * 0.45 + 0.4 * 0.5) / 1.2
    assert vlm_score([0.9, 0.3], 0.5, [1, 3], segment_weight=0.8, overall_weight=0.4) == pytest.approx(0.56 / 1.2)
    # a component whose weight is not positive is left out, as in the official
    assert vlm_score([0.9, 0.3], 0.5, [1, 3], segment_weight=1.0, overall_weight=0.0) == pytest.approx(0.45)
    assert vlm_score([0.9, 0.3], 0.5, [1, 3], segment_weight=0.0, overall_weight=2.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="positive segment_weight or overall_weight"):
        vlm_score([0.9], 0.5, [1], segment_weight=0.0, overall_weight=0.0)


def test_protocol_constants():
    metrics = yaml.safe_load(PROTOCOL_YAML.read_text(encoding="utf-8"))["metrics"]
    assert metrics["entity_grounding"] == EG_PARAMS
    assert metrics["vlm_score"] == VLM_PARAMS
    assert "entity_grounding" in metrics and "vlm_score" in metrics


# ------------------------------------------------------------------------------------------ entity_grounding


def test_entity_grounding_exact_score_and_requests():
    judge = FakeJudge(EG_ANSWERS)
    video = make_video()
    result = run(EntityGrounding(**EG_PARAMS), video, make_ctx(judges_of(judge)))
    assert result.status == "ok", result
    assert result.fallbacks == []
    assert result.score == pytest.approx(EG_EXPECTED, abs=1e-12)
    assert [i["score"] for i in result.items] == pytest.approx(EG_SEGMENT_SCORES, abs=1e-12)
    assert [i["weight"] for i in result.items] == pytest.approx(W, abs=1e-12)
    assert result.items[0]["entities"] == [{"name": "Noah", "presence": 1.0, "attribute_match": 0.5},
                                           {"name": "dog", "presence": 1.0, "attribute_match": 0.0}]

    assert len(judge.requests) == 3  # one request per segment
    for k, conversation in enumerate(judge.requests):
        assert len(conversation) == 1
        message = conversation[0]
        images = message.images()
        assert len(images) == len(KEY_INDICES[k])  # 5, 5 and 3 (the short segment dedups its indices)
        expected = [encode_jpeg(f).sha256 for f in video.frames_at(k, KEY_INDICES[k])]
        assert [im.sha256 for im in images] == expected  # the key frames, in temporal order
        text = message.text()
        entity_json = json.dumps([{"name": e.name, "attributes": list(e.attributes)} for e in ENTITIES[k]])
        assert entity_json in text
        assert f"these {len(images)} frames" in text
        for prompt in PROMPTS:  # the segment's prompt is never shown (as in the official evaluator)
            assert prompt not in text
        assert "PROMPT-" not in text


def test_entity_grounding_without_judge_is_skipped():
    result = run(EntityGrounding(**EG_PARAMS), make_video(), make_ctx(None))
    assert result.status == "skipped"
    assert result.score is None
    assert "no judge" in result.reason


def test_entity_grounding_judge_unavailable_fails_with_reason():
    judge = FakeJudge([EG_ANSWERS[0], JudgeUnavailable("connection refused by fake host")])
    result = run(EntityGrounding(**EG_PARAMS), make_video(), make_ctx(judges_of(judge)))
    assert result.status == "failed"
    assert result.score is None
    assert result.reason == "segment 1: connection refused by fake host"
    assert result.details == {"completed_segments": 1}
    assert len(judge.requests) == 2  # stops at the failed segment


def test_entity_grounding_fallback_score_for_failed_segment():
    judge = FakeJudge([EG_ANSWERS[0], JudgeUnavailable("timeout"), EG_ANSWERS[2]])
    params = {**EG_PARAMS, "fallback_score": 0.5}
    result = run(EntityGrounding(**params), make_video(), make_ctx(judges_of(judge)))
    assert result.status == "fallback"
    # segment 1 scores 0.5 instead of 0.45: (0.75 * 50 + 0.5 * 100 + 0 * 1) / 151 = 87.5 / 151
    assert result.score == pytest.approx(87.5 / 151, abs=1e-12)
    assert result.items[1] == {"segment": 1, "score": 0.5, "error": "timeout", "weight": pytest.approx(W[1])}
    assert result.fallbacks == ["segment 1: judge failed, fallback_score 0.5"]


def test_entity_grounding_invalid_answers_fail_with_answer_error():
    # entity_results of the wrong length, three times (reask=2): JudgeAnswerError -> failed
    wrong = {"entity_results": [{"presence": 50, "attribute_match": 50}] * 3}
    judge = FakeJudge([wrong, wrong, wrong])
    result = run(EntityGrounding(**EG_PARAMS), make_video(), make_ctx(judges_of(judge)))
    assert result.status == "failed"
    assert result.reason.startswith("segment 0: fake-vlm: no valid answer after 3 tries")
    assert "expected 2 entity results, got 3" in result.reason
    assert len(judge.requests) == 3


def test_entity_grounding_without_segment_entities_fails():
    judge = FakeJudge([])
    result = run(EntityGrounding(**EG_PARAMS), make_video(), make_ctx(judges_of(judge), entities=None))
    assert result.status == "failed"
    assert result.reason == "no segment entities in the narrative annotations of this script"
    result = run(EntityGrounding(**EG_PARAMS), make_video(), make_ctx(judges_of(judge), annotations=False))
    assert result.status == "failed"
    result = run(EntityGrounding(**EG_PARAMS), make_video(), make_ctx(judges_of(judge), entities=ENTITIES[:2]))
    assert result.status == "failed"
    assert result.reason == "segment entities for 2 segments, 3 needed"
    assert judge.requests == []
    # with fallback_score: the official 0.5, marked fallback
    result = run(EntityGrounding(**{**EG_PARAMS, "fallback_score": 0.5}), make_video(),
                 make_ctx(judges_of(judge), entities=None))
    assert (result.status, result.score) == ("fallback", 0.5)
    assert judge.requests == []


def test_entity_grounding_empty_entity_list_uses_empty_entity_score():
    judge = FakeJudge(EG_ANSWERS[:2])
    entities = (ENTITIES[0], ENTITIES[1], ())
    result = run(EntityGrounding(**EG_PARAMS), make_video(), make_ctx(judges_of(judge), entities=entities))
    assert result.status == "fallback"
    # (0.75 * 50 + 0.45 * 100 + 0.5 * 1) / 151 = 83 / 151
    assert result.score == pytest.approx(83 / 151, abs=1e-12)
    assert result.fallbacks == ["segment 2: no entities annotated, empty_entity_score 0.5"]
    assert len(judge.requests) == 2  # no request for the empty segment
    result = run(EntityGrounding(**{**EG_PARAMS, "empty_entity_score": 0.2}), make_video(),
                 make_ctx(judges_of(FakeJudge(EG_ANSWERS[:2])), entities=entities))
    assert result.score == pytest.approx((37.5 + 45 + 0.2) / 151, abs=1e-12)


def test_entity_grounding_without_planner_weights_is_uniform():
    judge = FakeJudge(EG_ANSWERS)
    result = run(EntityGrounding(**EG_PARAMS), make_video(), make_ctx(judges_of(judge), weights=None))
    assert result.status == "fallback"
    assert result.score == pytest.approx((0.75 + 0.45 + 0.0) / 3, abs=1e-12)  # 0.4
    assert result.fallbacks == ["segment_weights: uniform (no narrative annotations)"]
    assert [i["weight"] for i in result.items] == pytest.approx([1 / 3] * 3)


def test_entity_grounding_fewer_segments_than_prompts_plain_mean():
    judge = FakeJudge(EG_ANSWERS[:2])
    result = run(EntityGrounding(**EG_PARAMS), make_video((8, 8)), make_ctx(judges_of(judge)))
    assert result.status == "fallback"
    assert result.score == pytest.approx((0.75 + 0.45) / 2, abs=1e-12)
    assert "2 segments for 3 prompts" in result.fallbacks[0]


def test_entity_grounding_missing_params_rejected():
    with pytest.raises(ValueError, match="normalize"):
        EntityGrounding(frames_per_segment=5, empty_entity_score=0.5)


# ------------------------------------------------------------------------------------------ vlm_score


def _vlm_answer(scores: list, overall: Any) -> dict:
    return {"segment_scores": scores, "overall_score": overall}


def test_vlm_score_exact_score_and_single_request():
    judge = FakeJudge([_vlm_answer([80, 40, 150], 1)])
    video = make_video()
    result = run(VlmScore(**VLM_PARAMS), video, make_ctx(judges_of(judge)))
    assert result.status == "ok", result
    # percent rule: 0.8, 0.4, 1.0 (clipped); overall 1 -> 0.01 (no quirk here)
    # 0.8 * (0.8 * 50 + 0.4 * 100 + 1.0 * 1) / 151 + 0.2 * 0.01 = 0.8 * 81 / 151 + 0.002
    assert result.score == pytest.approx(0.8 * 81 / 151 + 0.002, abs=1e-12)
    assert result.details["overall"] == 0.01
    assert [i["score"] for i in result.items] == pytest.approx([0.8, 0.4, 1.0])
    assert [i["weight"] for i in result.items] == pytest.approx(W)

    assert len(judge.requests) == 1
    (message,) = judge.requests[0]
    text = message.text()
    for k, prompt in enumerate(PROMPTS, start=1):
        assert f"{k}. {prompt}" in text
    assert "a script of 3 prompts" in text
    # parts: the question, then per segment a caption and its key frames in order
    parts = list(message.parts)
    assert isinstance(parts[0], str)
    position = 1
    for k, indices in enumerate(KEY_INDICES):
        assert parts[position] == f"Key frames of segment {k + 1}, in temporal order:"
        images = parts[position + 1: position + 1 + len(indices)]
        assert all(isinstance(p, ImagePart) for p in images)
        assert [p.sha256 for p in images] == [encode_jpeg(f).sha256 for f in video.frames_at(k, indices)]
        position += 1 + len(indices)
    assert position == len(parts)
    assert len(message.images()) == 5 + 5 + 3


def test_vlm_score_custom_split():
    judge = FakeJudge([_vlm_answer([100, 0, 50], 60)])
    params = {**VLM_PARAMS, "segment_weight": 0.5, "overall_weight": 0.5}
    result = run(VlmScore(**params), make_video(), make_ctx(judges_of(judge), weights=None))
    # uniform weights (recorded): 0.5 * 0.5 + 0.5 * 0.6 = 0.55
    assert result.score == pytest.approx(0.55, abs=1e-12)
    assert result.status == "fallback"
    assert result.fallbacks == ["segment_weights: uniform (no narrative annotations)"]


def test_vlm_score_wrong_length_is_reasked():
    judge = FakeJudge([_vlm_answer([80, 40], 50), _vlm_answer([80, 40, 150], 1)])
    result = run(VlmScore(**VLM_PARAMS), make_video(), make_ctx(judges_of(judge)))
    assert result.status == "ok"
    assert result.score == pytest.approx(0.8 * 81 / 151 + 0.002, abs=1e-12)
    assert len(judge.requests) == 2
    assert judge.stats.reasks == 1
    second = judge.requests[1]
    assert [m.role for m in second] == ["user", "assistant", "user"]
    assert second[1].text() == json.dumps(_vlm_answer([80, 40], 50))
    assert "invalid" in second[2].text() and "expected 3 segment scores, got 2" in second[2].text()


def test_vlm_score_always_invalid_fails():
    judge = FakeJudge(["no idea", _vlm_answer([1], 2), _vlm_answer([10, 20, float("nan")], 30)])
    result = run(VlmScore(**VLM_PARAMS), make_video(), make_ctx(judges_of(judge)))
    assert result.status == "failed"
    assert result.score is None
    assert result.reason.startswith("fake-vlm: no valid answer after 3 tries")
    assert len(judge.requests) == 3
    assert judge.stats.failures == 1


def test_vlm_score_answer_error_type():
    judge = FakeJudge(["{}", "{}", "{}"])
    from narrastream.protocol.questions import ask_vlm_score

    with pytest.raises(JudgeAnswerError):
        ask_vlm_score(judge, ["a"], [[]])


def test_vlm_score_fallback_score():
    judge = FakeJudge([JudgeUnavailable("HTTP 503")])
    result = run(VlmScore(**{**VLM_PARAMS, "fallback_score": 0.5}), make_video(), make_ctx(judges_of(judge)))
    assert (result.status, result.score) == ("fallback", 0.5)
    assert result.fallbacks == ["judge failed (HTTP 503): fallback_score 0.5"]
    judge = FakeJudge([JudgeUnavailable("HTTP 503")])
    result = run(VlmScore(**VLM_PARAMS), make_video(), make_ctx(judges_of(judge)))
    assert (result.status, result.reason) == ("failed", "HTTP 503")


def test_vlm_score_skipped_and_segment_mismatch():
    assert run(VlmScore(**VLM_PARAMS), make_video(), make_ctx(None)).status == "skipped"
    judge = FakeJudge([])
    result = run(VlmScore(**VLM_PARAMS), make_video((8, 8)), make_ctx(judges_of(judge)))
    assert (result.status, result.reason) == ("failed", "2 segments for 3 prompts")
    assert judge.requests == []


# ------------------------------------------------------------------------------------------ key frames


def test_key_frames_encoded_once_and_shared():
    judge = FakeJudge([])
    ctx = make_ctx(judges_of(judge))
    video = make_video()
    eg = EntityGrounding(**EG_PARAMS).prepare(video, ctx)
    vs = VlmScore(**VLM_PARAMS).prepare(video, ctx)
    assert not isinstance(eg, MetricResult) and not isinstance(vs, MetricResult)
    assert len(ctx.shared) == 1
    (frames,) = ctx.shared.values()
    assert [len(f) for f in frames] == [5, 5, 3]
    for k in range(3):
        assert len(eg["frames"][k]) == len(vs["frames"][k])
        for a, b, c in zip(eg["frames"][k], vs["frames"][k], frames[k]):
            assert a is b is c  # the very same ImagePart objects
    assert judge.requests == []  # prepare never asks the judge


def test_key_frames_max_side_downsizes_jpeg():
    video = make_video()  # frames are 32 x 24
    full = EntityGrounding(**EG_PARAMS).prepare(video, make_ctx(judges_of(FakeJudge([]))))
    assert Image.open(io.BytesIO(full["frames"][0][0].jpeg)).size == (32, 24)
    ctx = make_ctx(judges_of(FakeJudge([])), judge_images={"max_side": 16, "quality": 80})
    small = VlmScore(**VLM_PARAMS).prepare(video, ctx)
    for segment in small["frames"]:
        for part in segment:
            image = Image.open(io.BytesIO(part.jpeg))
            assert image.format == "JPEG"
            assert image.size == (16, 12)  # aspect kept: 32 x 24 scaled by 0.5
    key = next(iter(ctx.shared))
    assert 16 in key and 80 in key
    # a max_side above the frame size leaves it as is
    ctx = make_ctx(judges_of(FakeJudge([])), judge_images={"max_side": 64})
    same = VlmScore(**VLM_PARAMS).prepare(video, ctx)
    assert Image.open(io.BytesIO(same["frames"][2][2].jpeg)).size == (32, 24)


# ------------------------------------------------------------------------------------------ schemas


def test_segment_weights_answer_clamps_and_checks_length():
    answer = SegmentWeightsAnswer.model_validate({"segment_importance": [0, 150, 42.9, "7", -3]},
                                                 context={"segments": 5})
    assert answer.segment_importance == [1, 100, 42, 7, 1]
    with pytest.raises(ValidationError, match="expected 3 segment weights, got 2"):
        SegmentWeightsAnswer.model_validate({"segment_importance": [10, 20]}, context={"segments": 3})
    with pytest.raises(ValidationError):
        SegmentWeightsAnswer.model_validate({"segment_importance": "10, 20"})
    with pytest.raises(ValidationError):
        SegmentWeightsAnswer.model_validate({"segment_importance": ["ten"]})


def test_continuity_answer_length():
    assert ContinuityAnswer.model_validate({"keep": [True, False]}, context={"transitions": 2}).keep == [True, False]
    with pytest.raises(ValidationError, match="expected 2 keep flags, got 3"):
        ContinuityAnswer.model_validate({"keep": [True, False, True]}, context={"transitions": 2})


def test_entity_groups_answer_normalisation():
    answer = EntityGroupsAnswer.model_validate(
        {"groups": {"Noah": [0, 5, -1, 2, "1", True], "dog": "0,1", "cup": [7], "tea": [1.0], "cat": ["x", None, [1]]}},
        context={"segments": 3})
    # out-of-range indices, non-list values and entities left empty are dropped; the rest goes through int()
    assert answer.groups == {"Noah": [0, 2, 1, 1], "tea": [1]}
    with pytest.raises(ValidationError, match="no entity with valid segment indices"):
        EntityGroupsAnswer.model_validate({"groups": {"cup": [7, 9], "dog": "all"}}, context={"segments": 3})
    with pytest.raises(ValidationError):
        EntityGroupsAnswer.model_validate({"groups": [["Noah", 0]]})


def test_entity_groups_indices_go_through_int_as_the_official():
    # the official applies int() to each index: {"a": [0, "1", 2.9, true]} -> [0, 1, 2, 1]
    answer = EntityGroupsAnswer.model_validate({"groups": {"a": [0, "1", 2.9, True]}}, context={"segments": 3})
    assert answer.groups == {"a": [0, 1, 2, 1]}
    # what int() refuses is dropped: "2.9", null, NaN, a list; an infinite index too (the official crashes)
    raw = json.loads('{"groups": {"a": [2, "2.9", null, NaN, [1], Infinity, " 1 ", -0.5]}}')
    assert EntityGroupsAnswer.model_validate(raw, context={"segments": 3}).groups == {"a": [2, 1, 0]}


def test_entity_groups_names_differing_in_whitespace_stay_apart():
    # the official keeps each JSON key as its own entity; cleaning the names used to let "Mina " overwrite "Mina"
    answer = EntityGroupsAnswer.model_validate({"groups": {"Mina": [0, 2], "Mina ": [1, 3], " Noah  boy": [1]}},
                                               context={"segments": 4})
    assert answer.groups == {"Mina": [0, 2], "Mina ": [1, 3], " Noah  boy": [1]}
    assert list(answer.groups) == ["Mina", "Mina ", " Noah  boy"]  # the order of the answer


def test_segment_entities_answer_merges_and_caps():
    raw = [
        {"name": "Noah", "attributes": ["red scarf"]},
        {"name": " noah ", "attributes": ["Red  Scarf", "smiling"]},  # merged case-insensitively
        "dog",
        {"name": "", "attributes": ["x"]},
        {"attributes": ["no name"]},
        42,
        {"name": "cat", "attributes": [f"a{i}" for i in range(8)]},
        {"name": "cup"},
        {"name": "lamp"},  # the fifth entity: cut
    ]
    answer = SegmentEntitiesAnswer.model_validate({"entities": raw})
    assert answer.to_entities() == (
        Entity("Noah", ("red scarf", "smiling")),
        Entity("dog"),
        Entity("cat", ("a0", "a1", "a2", "a3", "a4")),  # 5 attributes at most
        Entity("cup"),
    )
    assert SegmentEntitiesAnswer.model_validate({"entities": []}).to_entities() == ()
    with pytest.raises(ValidationError):
        SegmentEntitiesAnswer.model_validate({"entities": "Noah"})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_rejected(bad):
    with pytest.raises(ValidationError, match="finite"):
        GroundingItem.model_validate({"presence": bad, "attribute_match": 50})
    with pytest.raises(ValidationError, match="finite"):
        GroundingItem.model_validate({"presence": 50, "attribute_match": bad})
    with pytest.raises(ValidationError, match="finite"):
        VlmScoreAnswer.model_validate({"segment_scores": [50, bad], "overall_score": 50})
    with pytest.raises(ValidationError, match="finite"):
        VlmScoreAnswer.model_validate({"segment_scores": [50, 50], "overall_score": bad})
    ok = EntityGroundingAnswer.model_validate({"entity_results": [{"presence": 50, "attribute_match": 50}]},
                                              context={"entities": 1})
    assert ok.entity_results[0].presence == 50.0


def test_non_finite_json_answer_is_reasked():
    # json.loads reads NaN / Infinity: such an answer must be re-asked like any invalid one
    judge = FakeJudge(['{"segment_scores": [NaN], "overall_score": 5}', _vlm_answer([20], 40)])
    from narrastream.protocol.questions import ask_vlm_score

    answer = ask_vlm_score(judge, ["a"], [[]])
    assert answer.segment_scores == [20.0] and answer.overall_score == 40.0
    assert judge.stats.reasks == 1


@pytest.mark.parametrize("ask, bad, good", [
    (ask_segment_weights, '{"segment_importance": [null, 50]}', {"segment_importance": [40, 50]}),
    (ask_segment_weights, '{"segment_importance": [Infinity, 50]}', {"segment_importance": [40, 50]}),
    (ask_entity_groups, '{"groups": {"Noah": [1e999]}}', {"groups": {"Noah": [0]}}),
], ids=["weights-null", "weights-infinity", "groups-overflow"])
def test_malformed_number_answers_are_reasked(ask, bad, good):
    """null / Infinity / 1e999 are invalid answers (asked again), not crashes."""
    judge = FakeJudge([bad, good])
    ask(judge, ["p0", "p1"])
    assert judge.stats.reasks == 1


# ------------------------------------------------------------------------------------------ live annotations


def _protocol_judge(model: str, fail_on: str | None = None) -> FakeJudge:
    def answer(text: str, images: int) -> str:
        if fail_on is not None and fail_on in text:
            raise JudgeUnavailable(f"scripted failure on {fail_on}")
        return protocol_answer(text, images)

    return FakeJudge(answer, model=model)


def test_annotate_script_complete():
    planner, vlm = _protocol_judge("fake-planner"), _protocol_judge("fake-vlm")
    ann, errors = annotate_script(JudgeSet(planner=planner, vlm=vlm), 7, list(PROMPTS))
    assert errors == []
    assert ann.script_id == 7
    assert ann.prompts_sha256 == prompts_sha256(PROMPTS)
    assert len(ann.segment_weights) == 3 and all(10 <= w <= 95 for w in ann.segment_weights)
    assert ann.continuity == (True, True)
    assert ann.entity_groups == {"main subject": (0, 1, 2)}
    assert ann.segment_entities == ((Entity("person", ("visible",)),),) * 3
    assert ann.check_segments(3) == []
    # planner: the weights and the 3 entity questions; MLLM (the VLM): continuity and groups
    assert len(planner.requests) == 4 and len(vlm.requests) == 2
    assert '"segment_importance"' in planner.requests[0][0].text()
    assert [PROMPTS[k] in planner.requests[1 + k][0].text() for k in range(3)] == [True] * 3
    assert '"keep"' in vlm.requests[0][0].text() and '"groups"' in vlm.requests[1][0].text()
    # the weights are the planner's answer, unchanged (all within 1..100)
    assert list(ann.segment_weights) == json.loads(protocol_answer(planner.requests[0][0].text(), 0))[
        "segment_importance"]


def test_annotate_script_continuity_failure_only():
    judge = _protocol_judge("fake-vlm", fail_on='"keep"')
    ann, errors = annotate_script(judges_of(judge), 3, list(PROMPTS))
    assert ann.continuity is None
    assert errors == ['continuity: scripted failure on "keep"']
    assert ann.segment_weights is not None and len(ann.segment_weights) == 3
    assert ann.entity_groups == {"main subject": (0, 1, 2)}
    assert ann.segment_entities is not None and len(ann.segment_entities) == 3
    assert ann.prompts_sha256 == prompts_sha256(PROMPTS)


def test_annotate_script_entity_failure_drops_all_entities():
    def answer(text: str, images: int) -> str:
        if '"entities"' in text and PROMPTS[1] in text:
            return "not json at all"
        return protocol_answer(text, images)

    ann, errors = annotate_script(judges_of(FakeJudge(answer)), 0, list(PROMPTS))
    assert ann.segment_entities is None  # one segment failed: no partial entity list
    assert len(errors) == 1 and errors[0].startswith("entities of segment 1: fake-vlm: no valid answer after 3 tries")
    assert ann.continuity == (True, True)


def test_annotate_scripts_many():
    scripts = [Script(id=0, prompts=PROMPTS), Script(id=5, prompts=PROMPTS[:2])]
    judges = JudgeSet(planner=_protocol_judge("fake-planner"), vlm=_protocol_judge("fake-vlm", fail_on='"groups"'))
    annotations, failures = annotate_scripts(judges, scripts, workers=2, progress=False)
    assert annotations.source == "live:fake-planner|fake-vlm"
    assert sorted(annotations.scripts) == [0, 5]
    assert annotations.get(5).continuity == (True,)
    assert annotations.get(5).prompts_sha256 == prompts_sha256(PROMPTS[:2])
    assert failures == {0: ['entity groups: scripted failure on "groups"'],
                        5: ['entity groups: scripted failure on "groups"']}
    ann, why = annotations.for_script(0, PROMPTS)
    assert ann is annotations.get(0) and why is None


def test_to_jsonl_line_round_trips():
    ann, _ = annotate_script(judges_of(_protocol_judge("fake-vlm")), 11, list(PROMPTS))
    line = to_jsonl_line(ann)
    assert "\n" not in line
    assert parse_script_annotations(json.loads(line)) == ann
    # a failed field is left out and stays None
    partial, errors = annotate_script(judges_of(_protocol_judge("fake-vlm", fail_on='"keep"')), 12, list(PROMPTS))
    line = to_jsonl_line(partial)
    assert "continuity" not in json.loads(line)
    assert parse_script_annotations(json.loads(line)) == partial
    # non-ASCII survives, and an empty entity list for a segment too
    special = ScriptAnnotations(script_id=1, segment_weights=(3, 100), entity_groups={"Zoë": (1, 0)},
                                segment_entities=((Entity("Zoë", ("café au lait",)),), ()),
                                prompts_sha256=prompts_sha256(["é", "b"]))
    assert parse_script_annotations(json.loads(to_jsonl_line(special))) == special
