"""The judge layer against a real HTTP server on 127.0.0.1 speaking chat completions: valid,
malformed, slow, 429 and 500 answers; re-asks, retries, the cache, the breaker, and key secrecy."""

from __future__ import annotations

import io
import socket
import threading
import time
from typing import Any

import pytest
from PIL import Image
from pydantic import BaseModel

from narrastream.judges import JudgeAnswerError, JudgeUnavailable, Message, build_judges, extract_json
from narrastream.judges.base import ImagePart
from narrastream.judges.cache import AnswerCache
from narrastream.judges.openai_backend import OpenAIJudge
from narrastream.judges.server import ChatCompletionsServer, HTTPReply
from narrastream.judges.wire import from_openai


class Answer(BaseModel):
    value: int


class Script:
    """A queue of behaviours; each request takes the next one (the last one repeats)."""

    def __init__(self, *steps: tuple) -> None:
        self.steps = list(steps)
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> str:
        with self._lock:
            self.requests.append(body)
            step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            kind, arg = step
            if kind == "slow":
                time.sleep(arg)
                return '{"value": 1}'
            if kind == "status":
                raise HTTPReply(arg, f"scripted {arg}", {"Retry-After": "0.01"})
            if kind == "raw":  # HTTP 200 with this body verbatim: (content type, body)
                raise HTTPReply(200, arg[1], raw=True, content_type=arg[0])
            return arg
        finally:
            with self._lock:
                self.in_flight -= 1


@pytest.fixture
def serve():
    servers = []

    def start(script: Script) -> ChatCompletionsServer:
        server = ChatCompletionsServer(script, model="scripted").start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def judge_for(server: ChatCompletionsServer, **kwargs: Any) -> OpenAIJudge:
    options = {"max_retries": 0, "timeout_s": 5.0, "reask": 1}
    options.update(kwargs)
    return OpenAIJudge("scripted-model", base_url=server.base_url, **options)


def jpeg(color: tuple[int, int, int]) -> ImagePart:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, format="JPEG")
    return ImagePart(buffer.getvalue())


def test_valid_answer_is_validated_and_cached(serve, tmp_path):
    script = Script(("ok", '```json\n{"value": 7}\n```'))
    judge = judge_for(serve(script), cache=AnswerCache(tmp_path / "c"))
    msgs = [Message.user("give a value", jpeg((255, 0, 0)))]
    assert judge.structured(msgs, Answer, template="t/v1").value == 7
    assert judge.structured(msgs, Answer, template="t/v1").value == 7
    assert len(script.requests) == 1 and judge.stats.cache_hits == 1 and judge.stats.cache_writes == 1
    # the image travels as a data URL and comes back out identical
    sent = from_openai(script.requests[0]["messages"])[0]
    assert sent.images()[0].jpeg == msgs[0].images()[0].jpeg
    assert script.requests[0]["response_format"] == {"type": "json_object"}
    # a different image, template or model is another key
    judge.structured([Message.user("give a value", jpeg((0, 0, 255)))], Answer, template="t/v1")
    judge.structured(msgs, Answer, template="t/v2")
    assert len(script.requests) == 3


def test_malformed_answer_is_asked_again_with_the_error(serve):
    script = Script(("ok", "seven"), ("ok", '{"value": 7}'))
    judge = judge_for(serve(script))
    assert judge.structured([Message.user("q")], Answer, template="t/v1").value == 7
    assert len(script.requests) == 2 and judge.stats.reasks == 1
    second = script.requests[1]["messages"]
    assert second[1] == {"role": "assistant", "content": "seven"}
    assert "invalid" in second[2]["content"]


def test_answers_that_never_validate_fail_and_are_not_cached(serve, tmp_path):
    script = Script(("ok", '{"value": "many"}'))
    cache = AnswerCache(tmp_path / "c")
    judge = judge_for(serve(script), reask=2, cache=cache)
    with pytest.raises(JudgeAnswerError, match="no valid answer after 3 tries"):
        judge.structured([Message.user("q")], Answer, template="t/v1")
    assert len(script.requests) == 3 and len(cache) == 0


def test_429_is_retried_by_the_client(serve):
    script = Script(("status", 429), ("ok", '{"value": 3}'))
    judge = judge_for(serve(script), max_retries=2)
    assert judge.structured([Message.user("q")], Answer, template="t/v1").value == 3
    assert len(script.requests) == 2


def test_persistent_500_makes_the_judge_unavailable(serve):
    script = Script(("status", 500))
    judge = judge_for(serve(script), max_retries=1)
    with pytest.raises(JudgeUnavailable, match="500"):
        judge.structured([Message.user("q")], Answer, template="t/v1")
    assert len(script.requests) == 2  # first try + one retry


def test_slow_answer_times_out(serve):
    script = Script(("slow", 2.0))
    judge = judge_for(serve(script), timeout_s=0.3)
    with pytest.raises(JudgeUnavailable, match="Timeout"):
        judge.complete([Message.user("q")])


@pytest.mark.parametrize("content_type, body, cause", [
    ("application/json", "not json", "answer is not JSON: 'not json'"),
    ("text/html", "<html><body>Gateway login</body></html>", "answer is not JSON: '<html><body>Gateway login"),
    ("application/json", '{"detail": "ok"}', "answer is not a chat completion (no 'choices' list): '{\"detail\""),
    ("application/json", "[1, 2]", "answer is not a chat completion (no 'choices' list): '[1, 2]'"),
    ("application/json", '{"choices": [{"message": 5}]}', "choices[0].message has no text content"),
])
def test_http_200_that_is_not_a_chat_completion_names_the_endpoint(serve, caplog, content_type, body, cause):
    """A broken endpoint (a proxy page, a body that is not JSON) is one line naming the judge's endpoint
    (no credentials) and what it sent, counted as a failure, with no traceback."""
    server = serve(Script(("raw", (content_type, body))))
    judge = judge_for(server)
    with caplog.at_level("WARNING"), pytest.raises(JudgeUnavailable) as caught:
        judge.structured([Message.user("q")], Answer, template="t/v1")
    where = f"judge http://127.0.0.1:{server.port}/v1 (model scripted-model): "
    assert caught.value.reason.startswith(where + "answer is not ") and cause in caught.value.reason
    assert "\n" not in caught.value.reason and len(caught.value.reason) < len(where) + 200
    assert judge.stats.failures == 1 and judge.stats.requests == 1
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and where in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].exc_info is None and "Traceback" not in caplog.text


def test_failure_messages_never_show_url_credentials(serve):
    server = serve(Script(("raw", ("application/json", "not json"))))
    judge = OpenAIJudge("m", base_url=f"http://user:sk-URL-SECRET@127.0.0.1:{server.port}/v1",
                        max_retries=0, timeout_s=5.0)
    with pytest.raises(JudgeUnavailable) as caught:
        judge.complete([Message.user("q")])
    assert "SECRET" not in caught.value.reason and f"127.0.0.1:{server.port}/v1" in caught.value.reason
    assert "SECRET" not in repr(judge.identity())


def test_every_failed_request_is_counted_once(serve):
    script = Script(("status", 500))
    judge = judge_for(serve(script), max_retries=0, breaker_threshold=0)
    for _ in range(2):
        with pytest.raises(JudgeUnavailable):
            judge.complete([Message.user("q")])
    assert judge.stats.failures == 2 and judge.stats.requests == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_closed_port_opens_the_breaker():
    judge = OpenAIJudge("m", base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=0, timeout_s=2,
                        breaker_threshold=2, breaker_cooldown_s=60)
    for _ in range(2):
        with pytest.raises(JudgeUnavailable, match="Connection"):
            judge.complete([Message.user("q")])
    with pytest.raises(JudgeUnavailable, match="not retried"):
        judge.complete([Message.user("q")])
    assert judge.stats.requests == 2  # the third never left the process


def test_concurrency_is_bounded(serve):
    script = Script(("slow", 0.2))
    judge = judge_for(serve(script), concurrency=2)
    threads = [threading.Thread(target=judge.complete, args=([Message.user(f"q{i}")],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(script.requests) == 6 and script.max_in_flight == 2


def test_key_is_sent_but_never_exposed(serve, monkeypatch):
    monkeypatch.setenv("NS_JUDGE_TEST_KEY", "sk-test-SECRET-123")
    seen = {}

    def responder(body):
        return '{"value": 1}'

    server = serve(responder)
    original = server.httpd.RequestHandlerClass.do_POST

    def spy(handler):
        seen["auth"] = handler.headers.get("Authorization")
        return original(handler)

    server.httpd.RequestHandlerClass.do_POST = spy
    judge = judge_for(server, api_key_env="NS_JUDGE_TEST_KEY")
    judge.complete([Message.user("q")])
    assert seen["auth"] == "Bearer sk-test-SECRET-123"
    assert "SECRET" not in repr(judge.identity()) and judge.identity()["api_key_env"] == "NS_JUDGE_TEST_KEY"


def test_build_judges_from_presets(tmp_path):
    from narrastream.config import compose_config

    assert build_judges(compose_config([]).get("judge")) is None  # judge=none by default
    cfg = compose_config(["judge=siliconflow", f"judge.cache_dir={tmp_path}"])["judge"]
    judges = build_judges(cfg)
    assert judges.planner.model == "Qwen/Qwen3.5-27B" and judges.vlm.model == "Qwen/Qwen3-VL-30B-A3B-Instruct"
    assert judges.planner.extra_body == {"enable_thinking": False} and judges.mllm is judges.vlm
    assert judges.vlm.endpoint == "https://api.siliconflow.cn/v1"


def test_extract_json_rules():
    assert extract_json('json {"a": 2}') == {"a": 2}
    with pytest.raises(ValueError, match="no JSON"):
        extract_json("no braces here")


def test_cli_annotate_writes_annotations_and_reports_failures(tmp_path, official_path, monkeypatch):
    from narrastream.cli import main
    from narrastream.judges.testing import protocol_responder
    from narrastream.protocol.annotations import NarrativeAnnotations

    monkeypatch.setenv("NARRASTREAM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ann.jsonl"
    with ChatCompletionsServer(protocol_responder, model="stand-in") as server:
        code = main(["annotate", "--judge", "vllm", "--ids", "0", "7", "--out", str(out), "--path", str(official_path),
                     "--set", f"judge.base_url={server.base_url}"])
    assert code == 0
    loaded = NarrativeAnnotations.load(out)
    assert sorted(loaded.scripts) == [0, 7]
    seven = loaded.get(7)
    assert len(seven.segment_weights) == 6 and len(seven.continuity) == 5 and len(seven.segment_entities) == 6
    assert "asked live" in out.read_text().splitlines()[0]

    closed = tmp_path / "closed.jsonl"
    code = main(["annotate", "--judge", "vllm", "--ids", "0", "--out", str(closed), "--path", str(official_path),
                 "--no-cache", "--set", f"judge.base_url=http://127.0.0.1:{free_port()}/v1", "judge.max_retries=0"])
    assert code == 3
    zero = NarrativeAnnotations.load(closed).get(0)
    assert zero.segment_weights is None and zero.prompts_sha256 is not None  # nothing made up
