"""Conversion between :class:`Message` and the OpenAI chat-completions wire format.

Used by the ``openai`` backend (to send) and by ``serve-judge`` (to receive): both sides of our own
server speak exactly what the ``openai`` client sends.
"""

from __future__ import annotations

import base64
from typing import Any, Sequence

from narrastream.judges.base import ImagePart, Message


def to_openai(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages as chat-completions ``messages``: plain strings for text-only, content parts otherwise."""
    out = []
    for m in messages:
        if all(isinstance(p, str) for p in m.parts):
            out.append({"role": m.role, "content": m.text()})
            continue
        content = [{"type": "text", "text": p} if isinstance(p, str)
                   else {"type": "image_url", "image_url": {"url": p.data_url()}} for p in m.parts]
        out.append({"role": m.role, "content": content})
    return out


def from_openai(messages: Any) -> list[Message]:
    """Parse request ``messages``; raises ValueError naming the bad entry (inline base64 images only)."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    parsed = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"messages[{i}]: needs a role of system, user or assistant")
        content = m.get("content")
        if isinstance(content, str):
            parsed.append(Message(m["role"], (content,)))
            continue
        if not isinstance(content, list):
            raise ValueError(f"messages[{i}].content must be a string or a list of parts")
        parts: list[Any] = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise ValueError(f"messages[{i}].content[{j}].text must be a string")
                parts.append(part["text"])
            elif kind == "image_url":
                image_url = part.get("image_url")
                url = image_url.get("url") if isinstance(image_url, dict) else None
                if not isinstance(url, str) or not url.startswith("data:image/") or ";base64," not in url:
                    raise ValueError(f"messages[{i}].content[{j}]: only inline base64 data: URLs are accepted")
                try:
                    data = base64.b64decode(url.split(";base64,", 1)[1], validate=True)
                except ValueError:  # binascii.Error
                    raise ValueError(f"messages[{i}].content[{j}]: the data: URL is not valid base64") from None
                parts.append(ImagePart(data))
            else:
                raise ValueError(f"messages[{i}].content[{j}]: unknown part type {kind!r}")
        parsed.append(Message(m["role"], tuple(parts)))
    return parsed
