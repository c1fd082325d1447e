"""``narrastream serve-judge``: one local vision-language model behind an OpenAI-compatible endpoint.

A judge model is loaded once and shared: evaluation shards (other processes, other machines) point
the ``openai`` judge backend at this server instead of each loading its own copy.
"""

from __future__ import annotations

import logging
from typing import Any

from narrastream.judges.base import Judge
from narrastream.judges.server import ChatCompletionsServer, Responder
from narrastream.judges.wire import from_openai

log = logging.getLogger(__name__)


def make_responder(judge: Judge) -> Responder:
    """A server responder answering chat-completions bodies with ``judge`` (ValueError -> HTTP 400)."""

    def respond(body: dict[str, Any]) -> str:
        if body.get("stream"):
            raise ValueError("streaming is not supported; send stream=false")
        if int(body.get("n") or 1) != 1:
            raise ValueError("only n=1 is supported")
        messages = from_openai(body.get("messages"))
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or judge.max_tokens
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        response_format = body.get("response_format")
        json_mode = isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema")
        return judge.complete(messages, json_mode=json_mode, max_tokens=max_tokens)

    return respond


def serve_judge(model_path: str, host: str, port: int, **kwargs: Any) -> None:
    """Load ``model_path`` as a local judge (a VLM, or a text-only chat LLM such as IAMFlow's entity extractor;
    ``kwargs`` go to it) and serve it until interrupted."""
    from narrastream.judges.local import load_local_judge

    judge = load_local_judge(model_path, **kwargs)
    server = ChatCompletionsServer(make_responder(judge), model=judge.model, host=host, port=port)
    log.info("serving judge %s at %s (model name %r); Ctrl-C stops", model_path, server.base_url, judge.model)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopping the judge server")
    finally:
        server.httpd.server_close()
        judge.close()


def serve_stand_in(host: str, port: int) -> None:
    """Serve the deterministic stand-in judge (:mod:`narrastream.judges.testing`): for demos, CI and the
    judge-throughput benchmark. Its scores measure the plumbing, never a video."""
    from narrastream.judges.testing import stand_in_server

    server = stand_in_server(host, port)
    log.warning("serving the STAND-IN judge at %s: deterministic fake answers, not a model; Ctrl-C stops",
                server.base_url)
    print(f"listening on {server.base_url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopping the judge server")
    finally:
        server.httpd.server_close()
