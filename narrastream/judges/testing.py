"""A stand-in judge for tests and benchmarks: valid, deterministic answers to the protocol's questions
and to IAMFlow's agent questions (entity extraction, ID matching, block verification).

``protocol_responder`` plugs into :class:`~narrastream.judges.server.ChatCompletionsServer`: it reads
which question a request asks (from the JSON shape our templates request) and answers it with
numbers derived from a hash of the request, so answers are stable and differ between requests.
It measures plumbing, never model quality: :func:`stand_in_server` serves it under its own name
(:data:`~narrastream.judges.identity.STAND_IN_MODEL`) and marked as the stand-in, so records and
leaderboard rows made with it are labelled ``smoke: stand-in judge`` and never ranked.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from narrastream.judges.identity import STAND_IN_MODEL
from narrastream.judges.wire import from_openai


def _numbers(seed: str, count: int, low: int, high: int) -> list[int]:
    digest = hashlib.sha256(seed.encode()).digest()
    return [low + digest[i % len(digest)] % (high - low + 1) for i in range(count)]


_NOT_NAMES = frozenset("""a an the he she they it his her their in on at as by with while then after before
when where from into through across one two three later meanwhile finally suddenly inside outside""".split())


def iamflow_answer(system: str, text: str, images: int) -> str | None:
    """The answer to one of IAMFlow's agent questions (narrastream.iamflow.questions), or None."""
    seed = f"{system}|{text}|{images}"
    if '"entity": "short name"' in system:  # extraction: capitalised words that are not sentence openers
        names = []
        for word in re.findall(r"\b[A-Z][a-z]+\b", text):
            if word.lower() not in _NOT_NAMES and word not in names:
                names.append(word)
        return json.dumps({"entities": [{"entity": n, "attrs": []} for n in names[:2]]})
    if '"matched_id"' in system:
        known = re.findall(r"^ID (\d+):", text, flags=re.MULTILINE)
        return json.dumps({"matched_id": int(known[0]) if known else None})
    if '"scores": [s1' in text:
        scores = [v / 100 for v in _numbers(seed, max(1, images), 0, 100)]
        known = re.findall(r"^ID (\d+) \(", text, flags=re.MULTILINE)
        corrections = {known[0]: {"corrected_attrs": ["as seen in the frames"]}} if known else None
        return json.dumps({"scores": scores, "corrections": corrections})
    return None


def protocol_answer(text: str, images: int) -> str:
    """The answer to one of the six protocol questions, as JSON text."""
    seed = f"{text}|{images}"
    if '"segment_importance"' in text:
        n = int(re.search(r"exactly (\d+) integers", text).group(1))
        return json.dumps({"segment_importance": _numbers(seed, n, 10, 95)})
    if '"keep"' in text:
        n = int(re.search(r"Here are the (\d+) consecutive prompts", text).group(1))
        return json.dumps({"keep": [True] * (n - 1)})
    if '"groups"' in text:
        n = int(re.search(r"Here are the (\d+) prompts", text).group(1))
        return json.dumps({"groups": {"main subject": list(range(n))}})
    if '"entity_results"' in text:
        entities = json.loads(re.search(r"Entities \(JSON\): (\[.*?\])\n", text).group(1))
        values = _numbers(seed, 2 * len(entities), 30, 100)
        return json.dumps({"entity_results": [{"presence": values[2 * i], "attribute_match": values[2 * i + 1]}
                                              for i in range(len(entities))]})
    if '"segment_scores"' in text:
        n = int(re.search(r"a script of (\d+) prompts", text).group(1))
        values = _numbers(seed, n + 1, 1, 100)
        return json.dumps({"segment_scores": values[:n], "overall_score": values[n]})
    if '"entities"' in text:
        return json.dumps({"entities": [{"name": "person", "attributes": ["visible"]}]})
    return "I am a test judge."


def protocol_responder(body: dict[str, Any]) -> str:
    """Responder for :class:`ChatCompletionsServer` answering the last user message."""
    messages = from_openai(body.get("messages"))
    last = messages[-1]
    system = messages[0].text() if messages[0].role == "system" else ""
    answer = iamflow_answer(system, last.text(), len(last.images()))
    return answer if answer is not None else protocol_answer(last.text(), len(last.images()))


def stand_in_server(host: str = "127.0.0.1", port: int = 0) -> "ChatCompletionsServer":
    """The stand-in judge behind an OpenAI-compatible server (not started): ``narrastream serve-judge --stand-in``."""
    from narrastream.judges.server import ChatCompletionsServer

    return ChatCompletionsServer(protocol_responder, model=STAND_IN_MODEL, host=host, port=port, stand_in=True)
