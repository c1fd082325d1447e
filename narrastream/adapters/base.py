"""The common generator interface: ``Generator.generate(GenerationRequest) -> GeneratedVideo``.

Every adapter, built in or third-party, implements one method. The harness owns paths, resume and
records; an adapter only turns one script into one mp4 (plus facts about how it was made).

The facts live in a sidecar JSON beside the video (:func:`sidecar_path`). A sidecar is validated
field by field when read (:func:`read_sidecar`), and it stamps the video file's size and mtime: a
video replaced in place is re-probed and its sidecar rewritten, so its fps and frame count never go stale.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from narrastream.data.script import Script
from narrastream.jsonio import write_json_atomic  # noqa: F401 - re-exported: adapters write sidecars with it

log = logging.getLogger(__name__)


class PromptSwitching(str, Enum):
    """How a generator follows a multi-prompt script."""

    NATIVE = "native"        # switches prompts inside one continuous generation
    ADAPTED = "adapted"      # segment-wise prompting, stitched by the adapter
    SINGLE = "single"        # one prompt for the whole video
    EXTERNAL = "external"    # videos made elsewhere (precomputed)


@dataclass(frozen=True)
class Capabilities:
    """What an adapter declares about itself; recorded in every sidecar."""

    switching: PromptSwitching = PromptSwitching.NATIVE
    fps: float | None = None
    resolution: tuple[int, int] | None = None  # (width, height)
    gpus: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["switching"] = self.switching.value
        return d


@dataclass(frozen=True)
class GenerationRequest:
    """One video to make: the script, the seed, where to write it, and the timing contract."""

    script: Script
    seed: int
    output_path: Path
    fps: float = 16.0
    seconds_per_segment: float = 10.0
    width: int = 832
    height: int = 480
    device: str = "auto"

    @property
    def frames_per_segment(self) -> int:
        return int(self.fps * self.seconds_per_segment)

    @property
    def total_frames(self) -> int:
        return self.frames_per_segment * self.script.num_segments

    def to_json(self) -> dict[str, Any]:
        """The request as the ``command`` contract sends it (runners/README.md)."""
        return {
            "script_id": self.script.id,
            "prompts": list(self.script.prompts),
            "seed": self.seed,
            "fps": self.fps,
            "seconds_per_segment": self.seconds_per_segment,
            "frames_per_segment": self.frames_per_segment,
            "width": self.width,
            "height": self.height,
            "output_path": str(self.output_path),
            "sidecar_path": str(sidecar_path(self.output_path)),
            "device": self.device,
        }


class SidecarError(ValueError):
    """A sidecar that cannot be used; the message names the file and the field."""


class _SidecarFields(BaseModel):
    """The typed fields of a sidecar; other keys (``model``, ``request``, ...) are kept but not read."""

    model_config = ConfigDict(strict=True, extra="ignore")

    path: str = Field(min_length=1)
    script_id: int = Field(ge=0)
    seed: int
    fps: float = Field(gt=0, allow_inf_nan=False)
    num_frames: int = Field(ge=0)
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    switch_frames: list[int] | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    peak_memory_bytes: int | None = Field(default=None, ge=0)
    device: str | None = None
    device_count: int | None = Field(default=None, ge=0)
    extra: dict[str, Any] = Field(default_factory=dict)
    file_size: int | None = Field(default=None, ge=0)
    file_mtime_ns: int | None = None
    generator: dict[str, Any] | None = None


@dataclass
class GeneratedVideo:
    """An mp4 plus its sidecar facts. ``path`` may lie outside the run (precomputed videos).

    ``file_size`` and ``file_mtime_ns`` stamp the file the facts describe (filled in by
    :meth:`to_sidecar`). ``timing`` is the frame timing measured when the evaluator decoded the video
    (:attr:`narrastream.video.SegmentedVideo.timing`); it goes into records, not into the sidecar.
    """

    path: Path
    script_id: int
    seed: int
    fps: float
    num_frames: int
    width: int
    height: int
    switch_frames: list[int] | None = None  # native prompt-switch frames actually used
    timings: dict[str, float] = field(default_factory=dict)  # seconds per profiling boundary
    peak_memory_bytes: int | None = None
    device: str | None = None
    device_count: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: what made the video: ``{"adapter": ..., **Generator.identity(), "output": {...}}``, set by the harness
    generator: dict[str, Any] | None = None
    file_size: int | None = None
    file_mtime_ns: int | None = None
    timing: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # an adapter's wrong type fails its own generation, naming the field, instead of writing a
        # sidecar that every later run would refuse (and regenerate)
        _validate(self._fields(), f"the video of script {self.script_id!r} seed {self.seed!r}")

    def _fields(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in _SidecarFields.model_fields}
        d["path"] = str(self.path)
        return d

    def to_sidecar(self, model: str, capabilities: Capabilities) -> dict[str, Any]:
        """The sidecar's JSON object, stamped with the video file's current size and mtime."""
        if self.file_size is None and Path(self.path).is_file():
            stat = Path(self.path).stat()
            self.file_size, self.file_mtime_ns = stat.st_size, stat.st_mtime_ns
        d = asdict(self)
        d.pop("timing")
        d["path"] = str(self.path)
        d["model"] = model
        d["capabilities"] = capabilities.to_dict()
        return d

    @classmethod
    def from_sidecar(cls, data: Any, source: str | Path = "sidecar") -> "GeneratedVideo":
        """Validate a sidecar's JSON object; a :class:`SidecarError` names ``source`` and the bad field."""
        if not isinstance(data, dict):
            raise SidecarError(f"{source}: expected a JSON object, got {type(data).__name__}")
        kwargs = _validate(data, source).model_dump()
        kwargs["path"] = Path(kwargs["path"])
        return cls(**kwargs)

    def is_stale(self) -> bool:
        """Whether the file at ``path`` is not the one the facts were taken from (or was never stamped)."""
        stat = self.path.stat()
        return (self.file_size, self.file_mtime_ns) != (stat.st_size, stat.st_mtime_ns)


def _validate(data: dict[str, Any], source: Any) -> _SidecarFields:
    try:
        return _SidecarFields.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        got = "missing" if first["type"] == "missing" else f"got {first.get('input')!r:.80}"
        raise SidecarError(f"{source}: field {where}: {first['msg']} ({got})") from None


def sidecar_path(video_path: Path | str) -> Path:
    """``x.mp4`` -> ``x.json``: the sidecar lives beside the video."""
    return Path(video_path).with_suffix(".json")


def read_sidecar(side: Path, *, script_id: int | None = None, seed: int | None = None) -> GeneratedVideo:
    """The validated sidecar ``side``, its relative ``path`` resolved against the sidecar's folder.

    When the video file exists but its size or mtime differ from the stamps (it was replaced in
    place, or the sidecar predates the stamps), the video is probed again, the sidecar is rewritten
    with the new facts (the old ones kept in ``extra.reprobed``) and the new facts are returned.
    Raises :class:`SidecarError` naming the file and the field; ``script_id``/``seed`` are checked
    when given, because a sidecar copied from another item would give that item's video.
    """
    side = Path(side)
    try:
        data = json.loads(side.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise SidecarError(f"{side}: unreadable ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise SidecarError(f"{side}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise SidecarError(f"{side}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise SidecarError(f"{side}: not valid JSON (nested too deeply)") from None
    video = GeneratedVideo.from_sidecar(data, side)
    for name, wanted in (("script_id", script_id), ("seed", seed)):
        if wanted is not None and getattr(video, name) != wanted:
            raise SidecarError(f"{side}: field {name}: {getattr(video, name)}, but the sidecar belongs to "
                               f"{name} {wanted}")
    if not video.path.is_absolute():
        video.path = side.parent / video.path
    if video.path.is_file() and video.is_stale():
        video = _reprobe(side, data, video)
    return video


def _reprobe(side: Path, data: dict[str, Any], video: GeneratedVideo) -> GeneratedVideo:
    """Refresh a sidecar whose video changed: new fps, frame count and size, stamped and written back."""
    from narrastream.video.decode import VideoDecodeError, probe_video

    stat = video.path.stat()
    try:
        info = probe_video(video.path)
    except VideoDecodeError as exc:
        raise SidecarError(f"{side}: its video changed since the sidecar was written and cannot be read: {exc}") from None
    facts = ("fps", "num_frames", "width", "height", "file_size", "file_mtime_ns")
    previous = {key: data.get(key) for key in facts}
    new = {"fps": info.fps, "num_frames": info.num_frames, "width": info.width, "height": info.height,
           "file_size": stat.st_size, "file_mtime_ns": stat.st_mtime_ns}
    if previous["file_size"] is not None:
        changed = {k: f"{previous[k]} -> {new[k]}" for k in facts[:4] if previous[k] != new[k]}
        log.warning("%s: the video %s changed since its sidecar was written (size %s -> %s bytes%s); "
                    "sidecar refreshed", side, video.path, previous["file_size"], stat.st_size,
                    "".join(f", {k} {v}" for k, v in changed.items()))
    if video.switch_frames and previous["file_size"] is not None:
        log.warning("%s: the switch frames %s describe the video as generated, not its replacement",
                    side, video.switch_frames)
    refreshed = {**data, **new}
    extra = dict(refreshed.get("extra") or {})
    if "size_bytes" in extra:
        extra["size_bytes"] = stat.st_size
    if previous["file_size"] is not None:
        extra["reprobed"] = {"previous": previous}
    refreshed["extra"] = extra
    try:
        write_json_atomic(side, refreshed)
    except OSError as exc:  # a read-only run folder: use the fresh facts, probe again next time
        log.warning("%s: could not rewrite the sidecar (%s); its facts were refreshed in memory", side, exc)
    result = GeneratedVideo.from_sidecar(refreshed, side)
    result.path = video.path
    return result


class AdapterConfigError(ValueError):
    """A ``model.params`` value that cannot work (named in the message): the run stops with exit code 2."""


class GenerationError(RuntimeError):
    """A generator could not produce a video for one request; recorded, never swallowed."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


class Generator(ABC):
    """Base class of every adapter.

    Subclasses set ``capabilities`` and implement :meth:`generate`. The contract:

    * write an mp4 at ``request.output_path`` (or, for adapters that do not create files, return
      the path of an existing one);
    * return a :class:`GeneratedVideo` describing what was actually produced;
    * raise :class:`GenerationError` with a clear message on failure.

    Example::

        @GENERATORS.register("mygen")
        class MyGenerator(Generator):
            capabilities = Capabilities(switching=PromptSwitching.NATIVE, fps=16)

            def generate(self, request):
                frames = my_model(request.script.prompts, seed=request.seed)   # (T, H, W, 3) uint8
                write_mp4(request.output_path, frames, fps=request.fps)
                return GeneratedVideo(path=request.output_path, script_id=request.script.id,
                                      seed=request.seed, fps=request.fps, num_frames=len(frames),
                                      width=frames.shape[2], height=frames.shape[1])
    """

    name: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: whether the harness copies the result into runs/<run>/videos (False for precomputed)
    writes_files: ClassVar[bool] = True

    def prepare(self, scripts: Sequence[Script], *, total_scripts: int | None = None) -> None:
        """Called once with the selected scripts (of ``total_scripts`` in the file) before any work.

        Check inputs here, so a bad setup fails at once with every problem listed.
        """

    @abstractmethod
    def generate(self, request: GenerationRequest) -> GeneratedVideo:
        """Make one video. See the class docstring for the contract."""

    def identity(self) -> dict[str, Any]:
        """What makes this generator's videos what they are, for the sidecar and every record.

        E.g. ``{"method": "longlive", "weights": {"dit": "sha256:..."}}``; the harness adds the
        adapter name. Flags that change what a row means (an oracle input, random weights) belong here.
        """
        return {}

    def close(self) -> None:
        """Release models, processes or files."""
