"""The judge interface: chat messages with text and images in, text or a validated object out.

A judge is any (multimodal) LLM the protocol asks questions: the planner (segment weights, entity
extraction), the MLLM (continuity flags, entity groups) and the VLM (entity grounding, vlm_score).
Backends implement one method, :meth:`Judge._complete`; this base class adds what every backend
needs the same way: bounded concurrency, the answer cache, JSON extraction, schema validation with a
bounded re-ask, and request statistics.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence, TypeVar, Union

from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)
T = TypeVar("T", bound=BaseModel)


class JudgeError(RuntimeError):
    """A judge request that could not produce a valid answer; ``reason`` is one line for records."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JudgeConfigError(ValueError):
    """A judge that cannot be set up (unknown backend, missing local model): bad input, exit code 2."""


class JudgeUnavailable(JudgeError):
    """The judge cannot be reached or refuses every request (connection, timeout, 429/5xx after retries)."""


class JudgeAnswerError(JudgeError):
    """The judge answered, but never with a valid object (after the allowed re-asks)."""


@dataclass(frozen=True)
class ImagePart:
    """A JPEG image; ``sha256`` identifies it in cache keys (the bytes never enter a key)."""

    jpeg: bytes
    sha256: str = ""

    def __post_init__(self) -> None:
        if not self.sha256:
            object.__setattr__(self, "sha256", hashlib.sha256(self.jpeg).hexdigest())

    def data_url(self) -> str:
        return "data:image/jpeg;base64," + base64.b64encode(self.jpeg).decode("ascii")


Part = Union[str, ImagePart]


@dataclass(frozen=True)
class Message:
    role: str
    parts: tuple[Part, ...]

    @classmethod
    def user(cls, *parts: Part) -> "Message":
        return cls("user", tuple(parts))

    @classmethod
    def system(cls, text: str) -> "Message":
        return cls("system", (text,))

    @classmethod
    def assistant(cls, text: str) -> "Message":
        return cls("assistant", (text,))

    def text(self) -> str:
        return "\n".join(p for p in self.parts if isinstance(p, str))

    def images(self) -> list[ImagePart]:
        return [p for p in self.parts if isinstance(p, ImagePart)]

    def fingerprint(self) -> list[Any]:
        """The message as cache-key material: texts verbatim, images by their sha256."""
        return [self.role, [p if isinstance(p, str) else {"image": p.sha256} for p in self.parts]]


@dataclass
class JudgeStats:
    """Counts of this process's judge traffic, printed in the run summary."""

    requests: int = 0
    cache_hits: int = 0
    cache_writes: int = 0
    reasks: int = 0
    failures: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                setattr(self, key, getattr(self, key) + value)

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("requests", "cache_hits", "cache_writes", "reasks", "failures")}

    def __str__(self) -> str:
        return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in self.as_dict().items())


def extract_json(text: str) -> Any:
    """The JSON value in a model's answer: code fences and a leading ``json`` are stripped, then the
    whole text is parsed, else the span from the first ``{`` to the last ``}`` (the official rule).

    >>> extract_json('```json\\n{"keep": [true]}\\n```')
    {'keep': [True]}
    >>> extract_json('Sure! {"a": 1} hope that helps')
    {'a': 1}
    """
    stripped = re.sub(r"^\s*```(?:json)?\s*|\s*```\s*$", "", text.strip(), flags=re.IGNORECASE).strip()
    if stripped.lower().startswith("json"):
        stripped = stripped[4:].strip()
    try:
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            start, end = stripped.find("{"), stripped.rfind("}")
            if start != -1 and end > start:
                return json.loads(stripped[start:end + 1])
            raise ValueError(f"no JSON object in the answer: {_short(text)!r}") from None
    except RecursionError:  # nested deeper than the parser goes: no answer of ours looks like that
        raise ValueError(f"the answer's JSON is nested too deeply: {_short(text)!r}") from None


class Judge(ABC):
    """Base class of judge backends.

    ``model`` names the model (records and cache keys use it); ``cache`` is a
    :class:`narrastream.judges.cache.AnswerCache` or None; ``concurrency`` bounds requests in flight
    from this process; ``reask`` bounds how often an invalid answer is asked again.
    """

    backend: str = ""
    #: whether the model can be asked about images (a text-only local LLM cannot)
    vision: bool = True

    def __init__(self, model: str, *, cache: Any = None, concurrency: int = 4, reask: int = 2,
                 max_tokens: int = 256, temperature: float = 0.0, endpoint: str = "", use_cache: bool = True,
                 breaker_threshold: int = 3, breaker_cooldown_s: float = 60.0) -> None:
        if concurrency < 1:
            raise ValueError("judge concurrency must be >= 1")
        self.model = model
        self.endpoint = endpoint
        #: the model name the endpoint reports serving (None: unknown); see narrastream.judges.identity
        self.reported_model: str | None = None
        #: True when the answers come from the stand-in server (fake answers, smoke runs only)
        self.stand_in = False
        self.cache = cache
        self.use_cache = use_cache
        self.reask = int(reask)
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.stats = JudgeStats()
        self._slots = threading.BoundedSemaphore(concurrency)
        # circuit breaker: after `breaker_threshold` consecutive JudgeUnavailable, requests fail at once
        # (with the last reason) for `breaker_cooldown_s`, instead of each waiting through its retries
        self.breaker_threshold = int(breaker_threshold)
        self.breaker_cooldown_s = float(breaker_cooldown_s)
        self._breaker_lock = threading.Lock()
        self._consecutive_unavailable = 0
        self._open_until = 0.0
        self._last_unavailable = ""

    @abstractmethod
    def _complete(self, messages: Sequence[Message], *, json_mode: bool, max_tokens: int) -> str:
        """One request to the model; raises :class:`JudgeUnavailable` when it cannot be made."""

    def identity(self) -> dict[str, Any]:
        """What records say about the judge (never a key or token)."""
        return {"backend": self.backend, "model": self.model, "endpoint": self.endpoint}

    def model_identity(self) -> dict[str, Any]:
        """The judge as configurations see it: ``{backend, model (as reported), requested_model, host, stand_in}``."""
        from narrastream.judges.identity import model_identity

        return model_identity(self.backend, self.model, base_url=self.endpoint or None, stand_in=self.stand_in,
                              reported=self.reported_model)

    def complete(self, messages: Sequence[Message], *, json_mode: bool = False, max_tokens: int | None = None) -> str:
        """Plain text answer (no cache, no validation)."""
        with self._breaker_lock:
            if time.monotonic() < self._open_until:
                self.stats.add(failures=1)
                raise JudgeUnavailable(f"{self._last_unavailable} (not retried: the judge failed "
                                       f"{self._consecutive_unavailable} times in a row)")
        try:
            with self._slots:
                self.stats.add(requests=1)
                text = self._complete(messages, json_mode=json_mode, max_tokens=max_tokens or self.max_tokens)
        except JudgeError as exc:  # every failed request counts once, whatever the backend
            self.stats.add(failures=1)
            log.warning("%s", exc.reason)  # one line per failure: the judge and the cause, no traceback
            if isinstance(exc, JudgeUnavailable):
                with self._breaker_lock:
                    self._consecutive_unavailable += 1
                    self._last_unavailable = exc.reason
                    if self.breaker_threshold and self._consecutive_unavailable >= self.breaker_threshold:
                        self._open_until = time.monotonic() + self.breaker_cooldown_s
            raise
        with self._breaker_lock:
            self._consecutive_unavailable = 0
        return text

    def structured(self, messages: Sequence[Message], schema: type[T], *, template: str,
                   context: dict[str, Any] | None = None, max_tokens: int | None = None,
                   use_cache: bool | None = None) -> T:
        """A validated ``schema`` instance for ``messages``.

        ``template`` names the prompt template and its version (e.g. ``"vlm_score/v1"``): part of the
        cache key, so a changed prompt never reuses old answers. Only validated answers are cached.
        An invalid answer is shown back to the model with the validation error, at most ``reask``
        times; then :class:`JudgeAnswerError`. ``context`` reaches the schema's validators (e.g. the
        number of segments an answer must cover).
        """
        use_cache = self.use_cache if use_cache is None else use_cache
        key = self.cache_key(messages, schema, template)
        if use_cache and self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                try:
                    self.stats.add(cache_hits=1)
                    return schema.model_validate(cached, context=context)
                except ValidationError:
                    log.warning("judge cache entry %s no longer validates; asking again", key[:12])
        conversation = list(messages)
        problem = ""
        for attempt in range(self.reask + 1):
            if attempt:
                self.stats.add(reasks=1)
            text = self.complete(conversation, json_mode=True, max_tokens=max_tokens)
            try:
                answer = schema.model_validate(extract_json(text), context=context)
            except (ValueError, ValidationError) as exc:
                problem = _short(str(exc).replace("\n", " "), 300)
                conversation += [Message.assistant(text), Message.user(
                    f"That answer is invalid: {problem}. Answer again with only the JSON object requested.")]
                continue
            if use_cache and self.cache is not None:
                self.cache.set(key, answer.model_dump(mode="json"))
                self.stats.add(cache_writes=1)
            return answer
        self.stats.add(failures=1)
        reason = f"{self.model}: no valid answer after {self.reask + 1} tries ({problem})"
        log.warning("%s", reason)
        raise JudgeAnswerError(reason)

    def cache_key(self, messages: Sequence[Message], schema: type[BaseModel], template: str) -> str:
        payload = {"endpoint": self.endpoint, "model": self.model, "template": template, "schema": schema.__name__,
                   "max_tokens": self.max_tokens, "temperature": self.temperature,
                   "messages": [m.fingerprint() for m in messages]}
        if self.stand_in:  # fake answers never serve a real model's requests from the cache
            payload["stand_in"] = True
        if self.reported_model and self.reported_model != self.model:
            payload["reported_model"] = self.reported_model
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def close(self) -> None:
        """Release models or connections (backends override)."""


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
