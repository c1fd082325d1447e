"""The ``command`` contract's response: the sidecar JSON an external program may write beside its video.

The program is outside input, so its sidecar is read like any other: a typed object
(:class:`ProgramSidecar`) or a :class:`~narrastream.adapters.base.GenerationError` that names the file
and the field (``timings.end_to_end: Input should be a finite number (got 'NaN')``) -- never a crash
of the harness, never a value that is silently wrong (switch frames out of order, a boolean
read as a count, a ``NaN`` written into the final sidecar). Fields (runners/README.md):

* ``switch_frames``: the frames where prompts 2..N started (``n - 1`` integers, or ``n`` starting
  with 0), strictly increasing;
* ``timings``: seconds (or rates) per boundary, finite numbers;
* ``peak_memory_bytes``, ``device_count``: integers >= 0; ``device``: text;
* anything else is kept under ``extra``, except ``command``, which holds the adapter's own facts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, NonNegativeInt, ValidationError

from narrastream.adapters.base import GenerationError

#: a sidecar holds facts, not data: beyond this it is refused before it is parsed
MAX_PROGRAM_SIDECAR_BYTES = 16 * 1024 * 1024
#: the ``extra`` key the adapter writes its own facts under (argv, exit code, log, elapsed time)
RESERVED = ("command",)


class ProgramSidecar(BaseModel):
    """What a program may report about its video; unknown keys are kept (``model_extra``)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    switch_frames: list[NonNegativeInt] | None = None
    timings: dict[str, float] | None = None
    peak_memory_bytes: NonNegativeInt | None = None
    device: str | None = None
    device_count: NonNegativeInt | None = None

    def extra(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def _place(loc: tuple) -> str:
    """``("switch_frames", 2)`` -> ``switch_frames[2]``; ``("timings", "a b")`` -> ``timings['a b']``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part == "[key]":
            text += " (key)"
        elif text and str(part).isidentifier():
            text += f".{part}"
        elif text:
            text += f"[{str(part)!r}]"
        else:
            text = str(part)
    return text or "the sidecar"


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (write null for an unknown value)")


def read_program_sidecar(path: Path, *, num_segments: int) -> ProgramSidecar | None:
    """The program's sidecar at ``path``, checked against the script it answers (``num_segments``
    prompts); None when the program wrote none. (Whether the switch frames fall inside the video is
    checked where they are used, ``video.segmentation=native``: a failure naming the video.)"""
    path = Path(path)
    if not path.is_file():
        return None
    size = path.stat().st_size
    if size > MAX_PROGRAM_SIDECAR_BYTES:
        raise GenerationError(f"{path}: the program's sidecar is {size} bytes, more than the "
                              f"{MAX_PROGRAM_SIDECAR_BYTES} a sidecar may hold (facts about the video, not data)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GenerationError(f"{path}: the program's sidecar is not UTF-8 text (byte {exc.start})") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise GenerationError(f"{path}:{exc.lineno}: the program's sidecar is not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise GenerationError(f"{path}: the program's sidecar is nested too deeply to be read") from None
    except ValueError as exc:  # NaN / Infinity, or an integer of more digits than Python converts
        raise GenerationError(f"{path}: the program's sidecar is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise GenerationError(f"{path}: the program's sidecar must be a JSON object, not {type(data).__name__}")
    for key in RESERVED:
        if key in data:
            raise GenerationError(f"{path}: {key}: reserved for the adapter's own facts (argv, exit code, log); "
                                  "report it under another name")
    try:
        report = ProgramSidecar.model_validate(data)
    except ValidationError as exc:
        problems = [f"{_place(e['loc'])}: {e['msg']} (got {_shown(e.get('input'))})" for e in exc.errors()[:3]]
        more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
        raise GenerationError(f"{path}: " + "; ".join(problems) + more) from None
    if report.switch_frames is not None:
        _check_switch_frames(path, report.switch_frames, num_segments=num_segments)
    return report


def _check_switch_frames(path: Path, frames: list[int], *, num_segments: int) -> None:
    starts = frames[1:] if len(frames) == num_segments and frames and frames[0] == 0 else frames
    offset = len(frames) - len(starts)  # 1 when the list gave segment 0's start too
    if len(starts) != num_segments - 1:
        raise GenerationError(f"{path}: switch_frames: {num_segments} prompts need {num_segments - 1} switch "
                              f"frames (where prompts 2..{num_segments} start), got {len(frames)}: {_shown(frames)}")
    for k, (previous, current) in enumerate(zip([0, *starts], starts)):
        if current <= previous:
            raise GenerationError(f"{path}: switch_frames[{k + offset}]: {current} after {previous}: switch frames must be "
                                  "strictly increasing and after frame 0")
