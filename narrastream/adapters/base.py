"""The common generator interface: ``Generator.generate(GenerationRequest) -> GeneratedVideo``.

Every adapter, built in or third-party, implements one method. The harness owns paths, resume and
records; an adapter only turns one script into one mp4 (plus facts about how it was made).
"""

from __future__ import annotations

import json
import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Sequence

from narrastream.data.script import Script


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


@dataclass
class GeneratedVideo:
    """An mp4 plus its sidecar facts. ``path`` may lie outside the run (precomputed videos)."""

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

    def to_sidecar(self, model: str, capabilities: Capabilities) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["model"] = model
        d["capabilities"] = capabilities.to_dict()
        return d

    @classmethod
    def from_sidecar(cls, data: dict[str, Any]) -> "GeneratedVideo":
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["path"] = Path(kwargs["path"])
        return cls(**kwargs)


def sidecar_path(video_path: Path | str) -> Path:
    """``x.mp4`` -> ``x.json``: the sidecar lives beside the video."""
    return Path(video_path).with_suffix(".json")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; sidecars are meant to be shared
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:  # a full disk, a kill: no half-written temporary file is left behind
        Path(tmp).unlink(missing_ok=True)
        raise


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
