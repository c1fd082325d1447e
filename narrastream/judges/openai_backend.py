"""The ``openai`` backend: any OpenAI-compatible chat-completions endpoint.

Transport retries are the ``openai`` client's own (exponential backoff with jitter, ``Retry-After``
honoured, on connection errors, timeouts, 408/409/429 and 5xx), bounded by ``max_retries``. What is
still failing after that becomes :class:`JudgeUnavailable`, which the metrics record as ``failed``.
An endpoint that answers HTTP 200 with something that is not a chat completion (a body that is not
JSON, an HTML page from a proxy, a JSON object without ``choices``) is unavailable too: one line naming
the endpoint (without credentials) and the start of what it sent, never a traceback.
The API key is read from the environment variable named by ``api_key_env`` when the client is built
and is kept nowhere else: not in configs, identities, records or logs.

At construction the endpoint is asked once what it serves (``GET /v1/models``,
:func:`narrastream.judges.identity.probe_endpoint`): records name the model it reports and flag the
stand-in server, which answers under its own name, never under the requested one.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Sequence

import openai

from narrastream.judges.base import Judge, JudgeError, JudgeUnavailable, Message
from narrastream.judges.identity import endpoint_host, endpoint_label, is_stand_in_response, probe_endpoint
from narrastream.judges.wire import to_openai

log = logging.getLogger(__name__)


class OpenAIJudge(Judge):
    backend = "openai"

    def __init__(self, model: str, *, base_url: str, api_key_env: str | None = None, timeout_s: float = 120.0,
                 max_retries: int = 6, extra_body: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(model, endpoint=base_url, **kwargs)
        key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not key:
            log.warning("judge %s: environment variable %s is not set; sending requests without a key",
                        model, api_key_env)
        self.api_key_env = api_key_env
        self.extra_body = dict(extra_body or {})
        self.client = openai.OpenAI(base_url=base_url, api_key=key or "EMPTY", timeout=timeout_s,
                                    max_retries=max_retries)
        found = probe_endpoint(base_url, model, api_key_env)
        self.reported_model = found["reported_model"]
        self.stand_in = bool(found["stand_in"])

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "endpoint": endpoint_label(self.endpoint), "api_key_env": self.api_key_env}

    @property
    def where(self) -> str:
        """``judge http://host:port/v1 (model M)``: how error messages name this judge (no credentials)."""
        return f"judge {endpoint_label(self.endpoint)} (model {self.model})"

    def _complete(self, messages: Sequence[Message], *, json_mode: bool, max_tokens: int) -> str:
        kwargs: dict[str, Any] = {}
        if json_mode:
            kwargs["response_format"] = {"type": "json_object"}
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        try:  # the raw response keeps the body, which error messages quote when it is no chat completion
            raw = self.client.chat.completions.with_raw_response.create(
                model=self.model, messages=to_openai(messages), max_tokens=max_tokens,
                temperature=self.temperature, **kwargs)
        except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as exc:
            raise JudgeUnavailable(f"{self.where}: {_describe(exc)}") from None
        except openai.APIStatusError as exc:
            raise JudgeError(f"{self.where}: {_describe(exc)}") from None
        body = raw.http_response.text
        try:
            response = raw.parse()
        except (json.JSONDecodeError, openai.APIResponseValidationError):  # HTTP 200, the body is not JSON
            raise JudgeUnavailable(f"{self.where}: answer is not JSON: {_preview(body)}") from None
        return self._answer_text(response, body)

    def _answer_text(self, response: Any, body: str) -> str:
        """The text of a chat completion; :class:`JudgeUnavailable` naming the endpoint when it is not one
        (the client returns a body that is not JSON as a plain string, and does not validate JSON)."""
        if isinstance(response, (str, bytes)):
            raise JudgeUnavailable(f"{self.where}: answer is not JSON: {_preview(body)}")
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list):
            raise JudgeUnavailable(f"{self.where}: answer is not a chat completion (no 'choices' list): "
                                   f"{_preview(body)}")
        self._check_served_by(response)
        if not choices:
            raise JudgeError(f"{self.where}: the response has no choices")
        message = getattr(choices[0], "message", None)
        # some reasoning servers leave content empty and answer in reasoning_content (as the official client reads)
        text = (getattr(message, "content", None) or getattr(message, "reasoning_content", None) or ""
                if message is not None and not isinstance(message, (str, int, float, list, dict)) else None)
        if not isinstance(text, str):
            raise JudgeUnavailable(f"{self.where}: answer is not a chat completion (choices[0].message has no "
                                   f"text content): {_preview(body)}")
        return text

    def _check_served_by(self, response: Any) -> None:
        """Catch a stand-in behind the endpoint that the probe did not see (it was down, or restarted)."""
        served = getattr(response, "model", None)
        if not self.stand_in and is_stand_in_response(served, getattr(response, "system_fingerprint", None)):
            log.warning("judge endpoint %s answers as the narrastream STAND-IN (fake answers); records say so",
                        endpoint_host(self.endpoint))
            self.stand_in = True
            self.reported_model = served

    def close(self) -> None:
        self.client.close()


def _preview(body: str, limit: int = 80) -> str:
    """The first ``limit`` characters of what an endpoint sent, quoted, on one line."""
    text = " ".join(str(body).split())
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    kind = type(exc).__name__
    return f"{kind} (HTTP {status})" if status else f"{kind}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
