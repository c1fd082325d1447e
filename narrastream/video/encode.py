"""Writing mp4 files with PyAV: streamed frame by frame, atomic, deterministic.

Generators stream frames through :class:`Mp4Writer` so a 60 s video never has to sit in memory;
:func:`write_mp4` is the one-call form for arrays and iterables. The file appears under its final
name only once it is complete (temporary file in the same folder, then ``os.replace``), so a crash
or an interrupted run never leaves a half-written video that a resumed run would take as done.
"""

from __future__ import annotations

import logging
import os
import uuid
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Iterable

import av
import numpy as np

log = logging.getLogger(__name__)

#: codecs that take x264-style ``crf`` and ``preset`` options
_CRF_CODECS = frozenset({"libx264", "libx265"})


def frame_rate(fps: float) -> Fraction:
    """The container frame rate for ``fps``: exact for integers and NTSC rates (30000/1001).

    >>> frame_rate(16), frame_rate(29.97), frame_rate(30000 / 1001)
    (Fraction(16, 1), Fraction(2997, 100), Fraction(30000, 1001))
    """
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    return Fraction(fps).limit_denominator(1001)


def check_frame_size(width: int, height: int, pix_fmt: str) -> None:
    """Reject sizes that a chroma-subsampled pixel format cannot hold (odd sides for yuv420p)."""
    fmt = av.VideoFormat(pix_fmt)
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    if fmt.chroma_width(2) == 1 and width % 2:
        raise ValueError(f"{pix_fmt} needs an even frame width, got {width}x{height}: crop or pad one column")
    if fmt.chroma_height(2) == 1 and height % 2:
        raise ValueError(f"{pix_fmt} needs an even frame height, got {width}x{height}: crop or pad one row")


def _as_rgb_frame(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frames must be (H, W, 3) uint8 RGB arrays, got {frame.dtype} {frame.shape}")
    return np.ascontiguousarray(frame)


class Mp4Writer:
    """Context manager that encodes RGB frames one at a time into ``path``.

    The size is taken from the first frame; every later frame must match it. On a clean exit the
    file is moved into place; on an exception the temporary file is removed and nothing appears.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "x.mp4"
    >>> with Mp4Writer(out, fps=8) as w:
    ...     for _ in range(4):
    ...         w.write(np.zeros((16, 32, 3), np.uint8))
    >>> out.exists(), w.num_frames
    (True, 4)
    """

    def __init__(
        self,
        path: Path | str,
        fps: float,
        *,
        crf: int = 18,
        codec: str = "libx264",
        pix_fmt: str = "yuv420p",
        preset: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.fps = fps
        self.rate = frame_rate(fps)
        self.crf = crf
        self.codec = codec
        self.pix_fmt = pix_fmt
        self.preset = preset
        av.VideoFormat(pix_fmt)  # fail now on an unknown pixel format, not at the first frame
        self.num_frames = 0
        self.size: tuple[int, int] | None = None  # (width, height)
        self._tmp: Path | None = None
        self._container: av.container.OutputContainer | None = None
        self._stream: av.VideoStream | None = None

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _open(self, width: int, height: int) -> None:
        check_frame_size(width, height, self.pix_fmt)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # not mkstemp: its 0600 mode would survive the rename; a random name keeps writers apart
        self._tmp = self.path.with_name(f".{self.path.stem}.{uuid.uuid4().hex[:12]}.partial{self.path.suffix}")
        self._container = av.open(str(self._tmp), mode="w")  # muxer chosen by the suffix
        stream = self._container.add_stream(self.codec, rate=self.rate)
        stream.width, stream.height, stream.pix_fmt = width, height, self.pix_fmt
        stream.options = self._codec_options()
        self._stream = stream
        self.size = (width, height)

    def _codec_options(self) -> dict[str, str]:
        options: dict[str, str] = {}
        if self.codec in _CRF_CODECS:
            options["crf"] = str(self.crf)
            if self.preset:
                options["preset"] = self.preset
        if self.codec == "libx264":
            # x264's macroblock-tree rate control made the bitstream for identical frames differ
            # between runs (about 1 write in 10 in the test suite, depending on memory reuse);
            # without it output is reproducible, at a few percent more bits at the same crf
            options["x264-params"] = "mbtree=0"
        return options

    def write(self, frame: np.ndarray) -> None:
        """Encode one (H, W, 3) uint8 RGB frame."""
        frame = _as_rgb_frame(frame)
        height, width = frame.shape[:2]
        if self._container is None:
            self._open(width, height)
        elif (width, height) != self.size:
            raise ValueError(f"frame {self.num_frames} is {width}x{height}, earlier frames were {self.size[0]}x{self.size[1]}")
        video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
        video_frame.pts = self.num_frames
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)
        self.num_frames += 1

    def close(self) -> Path:
        """Flush the encoder and move the finished file into place; returns the final path."""
        if self._container is None:
            raise ValueError(f"{self.path}: no frames were written")
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
        except BaseException:
            self.abort()
            raise
        self._container = None
        os.replace(self._tmp, self.path)
        log.debug("wrote %s: %d frames at %s fps", self.path, self.num_frames, self.rate)
        return self.path

    def abort(self) -> None:
        """Drop the partial file; the final path is left untouched."""
        if self._container is not None:
            try:
                self._container.close()
            except av.FFmpegError:  # an encoder that failed mid-stream may also fail to flush
                log.debug("closing aborted %s failed", self._tmp, exc_info=True)
            self._container = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)


def write_mp4(
    path: Path | str,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float,
    *,
    crf: int = 18,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    preset: str | None = None,
) -> Path:
    """Write a (T, H, W, 3) uint8 array, or an iterable of (H, W, 3) frames, to ``path`` atomically.

    ``crf`` and ``preset`` apply to libx264/libx265 and are ignored by other codecs.
    """
    with Mp4Writer(path, fps, crf=crf, codec=codec, pix_fmt=pix_fmt, preset=preset) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.path
