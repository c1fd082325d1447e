"""Fallbacks heal: a fallback written because the judge failed (``fallback_score`` with the judge down)
is computed again by the next run, which has a working judge; a fallback by rule stays done; the
summary counts the fallbacks the failed judge caused.

The judge is a real HTTP server on 127.0.0.1 serving the requested model name (so both runs have the
same judge identity, configuration and cache keys): first every request gets HTTP 503, then valid
answers (the stand-in's answers, under the requested name)."""

from __future__ import annotations

from typing import Any

import pytest

from narrastream.judges.identity import forget_probes
from narrastream.judges.server import ChatCompletionsServer, HTTPReply
from narrastream.judges.testing import protocol_responder
from narrastream.metrics.base import MetricResult, needs_retry
from narrastream.protocol.live_annotations import caused_by_failed_questions
from narrastream.results.records import RecordStore

MODEL = "healing-judge"
JUDGE_METRICS = ("entity_grounding", "vlm_score")


class Switch:
    """The server's behaviour, changed between runs: ``down`` answers 503 to every chat request."""

    def __init__(self) -> None:
        self.down = True

    def __call__(self, body: dict[str, Any]) -> str:
        if self.down:
            raise HTTPReply(503, "judge overloaded")
        return protocol_responder(body)


@pytest.fixture
def judge_server():
    switch = Switch()
    forget_probes()
    with ChatCompletionsServer(switch, model=MODEL) as server:
        yield server, switch
    forget_probes()


def session(tmp_path, server, *extra: str):
    from narrastream.harness.session import Session

    return Session.from_overrides([
        "model=synthetic", "preset=tiny", "data.limit=1", f"run.dir={tmp_path / 'run'}",
        "judge=vllm", f"judge.base_url={server.base_url}", f"judge.model={MODEL}", "judge.max_retries=0",
        "judge.breaker_threshold=0", "judge.cache=false",
        "protocol.run_metrics=[entity_grounding,vlm_score]",
        "protocol.metrics.entity_grounding.fallback_score=0.5", "protocol.metrics.vlm_score.fallback_score=0.5",
        *extra,
    ])


def latest(tmp_path, metric: str):
    return RecordStore(tmp_path / "run" / "records").latest()[("synthetic", 0, 0, metric)]


def test_judge_failure_fallbacks_are_retried_and_counted(tmp_path, judge_server):
    server, switch = judge_server
    first = session(tmp_path, server)
    first.generate()
    summary = first.evaluate()
    assert summary.done == 2 and summary.failed == 0
    assert summary.judge_fallbacks == 2
    assert "2 of the done are fallbacks written because the judge failed" in str(summary)
    for metric in JUDGE_METRICS:
        rec = latest(tmp_path, metric)
        assert (rec.status, rec.score) == ("fallback", 0.5)
        assert rec.details["fallback_cause"] == "judge_failed" and needs_retry(rec.status, rec.details)

    switch.down = False  # the judge is back: the same judge, configuration and cache keys
    forget_probes()
    second = session(tmp_path, server).evaluate()
    assert second.done == 2 and second.skipped == 0 and second.judge_fallbacks == 0
    for metric in JUDGE_METRICS:
        rec = latest(tmp_path, metric)
        assert rec.status == "ok" and rec.score != 0.5 and "fallback_cause" not in rec.details

    third = session(tmp_path, server).evaluate()  # healed records are done
    assert (third.done, third.skipped) == (0, 2)


def test_rule_fallbacks_stay_done(tmp_path, judge_server):
    """Without annotations the weights fall back to uniform: a rule, not a failure; never recomputed."""
    server, switch = judge_server
    switch.down = False
    first = session(tmp_path, server, "protocol.annotations=none", "protocol.run_metrics=[vlm_score]")
    first.generate()
    summary = first.evaluate()
    rec = latest(tmp_path, "vlm_score")
    assert rec.status == "fallback" and rec.fallbacks == ["segment_weights: uniform (no narrative annotations)"]
    assert summary.judge_fallbacks == 0 and not needs_retry(rec.status, rec.details)
    forget_probes()
    again = session(tmp_path, server, "protocol.annotations=none", "protocol.run_metrics=[vlm_score]").evaluate()
    assert (again.done, again.skipped) == (0, 1)


def test_needs_retry_classification():
    assert needs_retry("failed", {}) and needs_retry("failed", None)
    assert not needs_retry("ok", {}) and not needs_retry("skipped", {"fallback_cause": "judge_failed"})
    assert needs_retry("fallback", {"fallback_cause": "judge_failed"})
    assert needs_retry("fallback", {"fallback_cause": "annotations_failed"})
    assert not needs_retry("fallback", {"fallback_cause": "something else"}) and not needs_retry("fallback", {})
    assert MetricResult(score=0.5, fallbacks=["x"], details={"fallback_cause": "judge_failed"}).needs_retry


def test_live_annotation_failures_name_the_fallbacks_they_caused():
    errors = ["segment weights: judge down", "entities of segment 1: judge down"]
    assert caused_by_failed_questions(errors, ["segment_weights: uniform (no narrative annotations)"])
    assert caused_by_failed_questions(errors, ["no segment entities in the narrative annotations of this script: "
                                               "fallback_score 0.5"])
    assert not caused_by_failed_questions(errors, ["continuity: all transitions kept (no annotations)"])
    assert not caused_by_failed_questions(["continuity: x"], ["entity_groups: main_subject = all segments (x)"])
    assert not caused_by_failed_questions([], ["segment_weights: uniform (no narrative annotations)"])


def test_live_annotation_failures_mark_their_fallbacks(tmp_path, judge_server):
    """protocol.annotations=live with the judge down: the weights and continuity flags fall back; the
    record says the judge's failure caused it, the summary counts it, the next run computes it again."""
    server, _ = judge_server
    live = ("protocol.annotations=live", "protocol.run_metrics=[conditional_adjacent]")
    first = session(tmp_path, server, *live)
    first.generate()
    summary = first.evaluate()
    rec = latest(tmp_path, "conditional_adjacent")
    assert rec.status == "fallback" and any(f.startswith("continuity:") for f in rec.fallbacks)
    assert rec.details["fallback_cause"] == "annotations_failed" and summary.judge_fallbacks == 1
    forget_probes()
    again = session(tmp_path, server, *live).evaluate()  # still down: asked again, not taken as done
    assert again.done == 1 and again.skipped == 0


def test_judge_answering_200_not_json_is_one_line_per_failure_and_counted(tmp_path, judge_server, caplog):
    """HTTP 200 with a body that is not JSON: both judge metrics fail with a reason naming the endpoint
    and what it sent, no traceback is logged, and the judge summary counts the failures."""
    server, switch = judge_server

    def not_json(body: dict[str, Any]) -> str:
        raise HTTPReply(200, "not json", raw=True)

    first = session(tmp_path, server, "protocol.metrics.entity_grounding.fallback_score=null",
                    "protocol.metrics.vlm_score.fallback_score=null")
    first.generate()
    server.responder = not_json
    with caplog.at_level("WARNING"):
        summary = first.evaluate()
    assert summary.failed == 2 and summary.judge_stats["failures"] >= 2
    where = f"judge http://127.0.0.1:{server.port}/v1 (model {MODEL}): answer is not JSON: 'not json'"
    assert len(summary.failures) == 2 and all(where in line for line in summary.failures)
    for metric in JUDGE_METRICS:
        assert where in latest(tmp_path, metric).reason
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)
    assert "failures 0" not in str(summary)
