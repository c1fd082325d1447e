"""A minimal OpenAI-compatible chat-completions server (``POST /v1/chat/completions``, ``GET /v1/models``).

``narrastream serve-judge`` puts a local vision-language model behind it, so one model in one
process can serve many evaluation shards; the tests put scripted answers behind it, so the
``openai`` backend is tested against a real HTTP server speaking the real protocol.

A server answers under its own model name (``model=``), whatever name a request asks for, as a
real serving stack does: a client must never record answers under a name the server did not serve.
``stand_in=True`` (``serve-judge --stand-in``) also marks every ``/v1/models`` entry and response as
the stand-in's (:mod:`narrastream.judges.identity`), so clients label what they record.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from narrastream.judges.identity import STAND_IN_FLAG, STAND_IN_MODEL

log = logging.getLogger(__name__)

#: ``responder(request_body) -> answer text``; raise :class:`HTTPReply` to answer with an error status
Responder = Callable[[dict[str, Any]], str]


class HTTPReply(Exception):
    """Raised by a responder to send an HTTP error (``status``, optional ``headers``).

    ``raw`` sends ``message`` verbatim as the body (with ``content_type``) instead of an error object:
    the tests use it to play a broken endpoint (e.g. HTTP 200 with a body that is not JSON).
    """

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, *, raw: bool = False,
                 content_type: str = "application/json") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.raw = raw
        self.content_type = content_type


class ChatCompletionsServer:
    """Serve ``responder`` on ``host:port`` (port 0 picks a free one) in a background thread.

    Use as a context manager, or call :meth:`serve_forever` in the foreground.
    """

    def __init__(self, responder: Responder, *, model: str, host: str = "127.0.0.1", port: int = 0,
                 stand_in: bool = False) -> None:
        self.responder = responder
        self.model = model
        self.stand_in = stand_in
        self.httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.httpd.server_address[0]}:{self.port}/v1"

    def start(self) -> "ChatCompletionsServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="chat-completions", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "ChatCompletionsServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:  # route to logging, not stderr
                log.debug("%s " + fmt, self.address_string(), *args)

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                if self.path.rstrip("/").endswith("/models"):
                    entry: dict[str, Any] = {"id": server.model, "object": "model", "owned_by": "narrastream"}
                    if server.stand_in:
                        entry.update({"owned_by": STAND_IN_MODEL, STAND_IN_FLAG: True})
                    self._send(200, {"object": "list", "data": [entry]})
                else:
                    self._send(404, _error("not found"))

            def do_POST(self) -> None:  # noqa: N802
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, _error("not found"))
                    return
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                    body = json.loads(self.rfile.read(length) or b"{}")
                    if not isinstance(body, dict):
                        raise ValueError("the request body must be a JSON object")
                    text = server.responder(body)
                except HTTPReply as reply:
                    if reply.raw:
                        self._send_bytes(reply.status, reply.message.encode(), reply.content_type, reply.headers)
                    else:
                        self._send(reply.status, _error(reply.message), reply.headers)
                    return
                except (ValueError, KeyError) as exc:
                    self._send(400, _error(str(exc)))
                    return
                except Exception as exc:  # noqa: BLE001 - a model crash is a 500, the server keeps serving
                    log.exception("responder failed")
                    self._send(500, _error(f"{type(exc).__name__}: {exc}"))
                    return
                self._send(200, {
                    "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
                    "created": int(time.time()), "model": server.model,  # its own name, never the requested one
                    "system_fingerprint": STAND_IN_MODEL if server.stand_in else "narrastream",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                })

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                self._send_bytes(status, json.dumps(payload).encode(), "application/json", headers)

            def _send_bytes(self, status: int, data: bytes, content_type: str,
                            headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error"}}
