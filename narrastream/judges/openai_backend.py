"""The ``openai`` backend: any OpenAI-compatible chat-completions endpoint.

Transport retries are the ``openai`` client's own (exponential backoff with jitter, ``Retry-After``
honoured, on connection errors, timeouts, 408/409/429 and 5xx), bounded by ``max_retries``. What is
still failing after that becomes :class:`JudgeUnavailable`, which the metrics record as ``failed``.
The API key is read from the environment variable named by ``api_key_env`` when the client is built
and is kept nowhere else: not in configs, identities, records or logs.

At construction the endpoint is asked once what it serves (``GET /v1/models``,
:func:`narrastream.judges.identity.probe_endpoint`): records name the model it reports and flag the
stand-in server, which answers under its own name, never under the requested one.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import openai

from narrastream.judges.base import Judge, JudgeError, JudgeUnavailable, Message
from narrastream.judges.identity import endpoint_host, is_stand_in_response, probe_endpoint
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
        return {**super().identity(), "api_key_env": self.api_key_env}

    def _complete(self, messages: Sequence[Message], *, json_mode: bool, max_tokens: int) -> str:
        kwargs: dict[str, Any] = {}
        if json_mode:
            kwargs["response_format"] = {"type": "json_object"}
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        try:
            response = self.client.chat.completions.create(
                model=self.model, messages=to_openai(messages), max_tokens=max_tokens,
                temperature=self.temperature, **kwargs)
        except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as exc:
            self.stats.add(failures=1)
            raise JudgeUnavailable(f"{self.endpoint} ({self.model}): {_describe(exc)}") from None
        except openai.APIStatusError as exc:
            self.stats.add(failures=1)
            raise JudgeError(f"{self.endpoint} ({self.model}): {_describe(exc)}") from None
        self._check_served_by(response)
        if not response.choices:
            raise JudgeError(f"{self.endpoint} ({self.model}): the response has no choices")
        message = response.choices[0].message
        # some reasoning servers leave content empty and answer in reasoning_content (as the official client reads)
        return message.content or getattr(message, "reasoning_content", None) or ""

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


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    kind = type(exc).__name__
    return f"{kind} (HTTP {status})" if status else f"{kind}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
