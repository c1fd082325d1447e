"""Decoding videos with PyAV: every frame, once, into one RGB array.

The official evaluator decodes each video about seven times (once per metric, through OpenCV and
decord). Here a video is decoded once and every metric samples the same array. Any problem with a
file -- missing, not a video, corrupt or truncated -- becomes a :class:`VideoDecodeError` whose
message starts with the file's path, so a failed record says which video to look at.

Decoding is refused up front when a video is larger than the configured limits (``limits.max_video_frames``,
``limits.max_video_pixels``): :func:`check_video_limits` reads the container header with :func:`probe_video`,
and the decoder stops as soon as a header that under-declared its frames is exceeded.
"""

from __future__ import annotations

import logging
import mmap
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import av
import numpy as np

log = logging.getLogger(__name__)

#: below this size plain np.empty is as fast as a populated mapping
_POPULATE_MIN_BYTES = 64 << 20


class VideoDecodeError(ValueError):
    """A video could not be read; the message starts with the file's path."""


class VideoLimitError(VideoDecodeError):
    """A video is larger than a configured limit; the message names the size and the key that raises it."""


@dataclass(frozen=True)
class VideoLimits:
    """The most a single video may hold before it is decoded (None: no limit).

    ``max_pixels`` bounds frames x width x height, i.e. the decoded RGB array is at most 3 x that
    many bytes; the defaults are the config's ``limits.max_video_frames`` and ``limits.max_video_pixels``.
    """

    max_frames: int | None = 20_000
    max_pixels: int | None = 2**31

    def __post_init__(self) -> None:
        for key, value in (("max_video_frames", self.max_frames), ("max_video_pixels", self.max_pixels)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"limits.{key} must be a positive integer or null, got {value!r}")


    @classmethod
    def from_config(cls, limits: Any) -> "VideoLimits":
        """From the config's ``limits`` section (missing keys keep the defaults)."""
        limits = limits or {}
        return cls(max_frames=limits.get("max_video_frames", cls.max_frames),
                   max_pixels=limits.get("max_video_pixels", cls.max_pixels))


NO_LIMITS = VideoLimits(max_frames=None, max_pixels=None)


@dataclass
class DecodedVideo:
    """Decoded frames with the container's nominal rate and each frame's presentation timestamp.

    ``pts`` holds integer timestamps in ``time_base`` units (None when the container gives none), so
    time arithmetic on them is exact.
    """

    frames: np.ndarray
    fps: float
    pts: np.ndarray | None = None
    time_base: Fraction | None = None


@dataclass
class VideoInfo:
    """What the container says about a video's first video stream."""

    path: Path
    fps: float
    num_frames: int
    width: int
    height: int

    @property
    def duration(self) -> float:
        """Seconds of video at the nominal frame rate."""
        return self.num_frames / self.fps


@contextmanager
def _open_input(path: Path) -> Iterator[av.container.InputContainer]:
    if not path.exists():
        raise VideoDecodeError(f"{path}: no such file")
    if not path.is_file():
        raise VideoDecodeError(f"{path}: not a file")
    try:
        container = av.open(str(path), mode="r")
    except av.FFmpegError as e:
        raise VideoDecodeError(f"{path}: not a readable video ({e.strerror or e})") from e
    try:
        yield container
    finally:
        container.close()


def _video_stream(container: av.container.InputContainer, path: Path) -> av.VideoStream:
    if not container.streams.video:
        raise VideoDecodeError(f"{path}: no video stream")
    return container.streams.video[0]


def _stream_fps(stream: av.VideoStream, path: Path) -> float:
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else 0.0
    if not fps > 0:
        raise VideoDecodeError(f"{path}: the video stream declares no usable frame rate ({rate})")
    return fps


def probe_video(path: Path | str) -> VideoInfo:
    """Frame rate, frame count and size without decoding (packets are counted if the header has no count)."""
    path = Path(path)
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        fps = _stream_fps(stream, path)
        num_frames = stream.frames
        if num_frames <= 0:
            try:
                num_frames = sum(1 for packet in container.demux(stream) if packet.size)
            except av.FFmpegError as e:
                raise VideoDecodeError(f"{path}: demuxing failed ({e.strerror or e})") from e
        ctx = stream.codec_context
        return VideoInfo(path=path, fps=fps, num_frames=num_frames, width=ctx.width, height=ctx.height)


def check_video_limits(info: VideoInfo, limits: VideoLimits) -> None:
    """Refuse a video whose header already says it is larger than ``limits`` (before any decoding)."""
    _check_size(info.path, info.num_frames, info.width, info.height, limits, "the header declares")


def _check_size(path: Path, frames: int, width: int, height: int, limits: VideoLimits, how: str) -> None:
    if limits.max_frames is not None and frames > limits.max_frames:
        raise VideoLimitError(
            f"{path}: {how} {frames} frames, more than limits.max_video_frames={limits.max_frames}; "
            f"raise it (e.g. limits.max_video_frames={frames}) to evaluate this video")
    pixels = frames * width * height
    if limits.max_pixels is not None and pixels > limits.max_pixels:
        raise VideoLimitError(
            f"{path}: {how} {frames} frames of {width}x{height} = {pixels} pixels "
            f"({3 * pixels / 2**30:.1f} GiB decoded), more than limits.max_video_pixels={limits.max_pixels}; "
            f"raise it (e.g. limits.max_video_pixels={pixels}) to evaluate this video")


def decode_video(path: Path | str, *, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """All frames (or the first ``max_frames``) as a (T, H, W, 3) uint8 RGB array, and the fps.

    The array is allocated once from the frame count (the header's, else a packet count) and grown
    only if the decoder yields more. Fewer frames than the header declares means a truncated file and
    is an error, because a silently shortened video would be scored as if it were whole.
    """
    decoded = decode_video_timed(path, max_frames=max_frames)
    return decoded.frames, decoded.fps


def decode_video_timed(path: Path | str, *, max_frames: int | None = None,
                       limits: VideoLimits = NO_LIMITS) -> DecodedVideo:
    """:func:`decode_video` plus each frame's presentation timestamp, refusing videos beyond ``limits``.

    ``max_frames`` keeps the first frames (sampling); ``limits`` refuses the whole video: checked on
    the header first, and again while decoding in case the header under-declared the frame count.
    """
    path = Path(path)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        fps = _stream_fps(stream, path)
        declared = stream.frames
        if declared > 0:
            capacity = declared
            _check_size(path, declared, stream.codec_context.width, stream.codec_context.height, limits,
                        "the header declares")
        else:
            info = probe_video(path)
            check_video_limits(info, limits)
            capacity = info.num_frames
        if max_frames is not None:
            capacity = min(capacity, max_frames)
        stream.thread_type = "AUTO"  # frame threads too: x264 writes one slice per frame
        frames, pts, time_base = _decode_frames(container, stream, path, max(capacity, 1), max_frames, limits)
    if len(frames) == 0:
        raise VideoDecodeError(f"{path}: the video stream has no decodable frames")
    wanted = declared if max_frames is None else min(declared, max_frames)
    if len(frames) < wanted:
        raise VideoDecodeError(
            f"{path}: decoded {len(frames)} of the {declared} frames the header declares; "
            "the file is truncated or corrupt"
        )
    log.debug("decoded %s: %d frames %dx%d at %.3f fps", path, len(frames), frames.shape[2], frames.shape[1], fps)
    return DecodedVideo(frames=frames, fps=fps, pts=pts, time_base=time_base)


def _decode_frames(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    path: Path,
    capacity: int,
    max_frames: int | None,
    limits: VideoLimits = NO_LIMITS,
) -> tuple[np.ndarray, np.ndarray | None, Fraction | None]:
    """Decode into one buffer of ``capacity`` frames (grown if needed).

    Returns the frames decoded, their presentation timestamps (None if any frame has none) and the
    timestamps' time base.
    """
    buffer: np.ndarray | None = None
    count = 0
    pts: list[int] | None = []
    time_base: Fraction | None = None
    try:
        for frame in container.decode(stream):
            if limits.max_frames is not None or limits.max_pixels is not None:
                _check_size(path, count + 1, frame.width, frame.height, limits, "the decoder yields at least")
            image = frame.to_ndarray(format="rgb24")
            if pts is not None:
                if frame.pts is None or frame.time_base is None:
                    pts = None
                else:
                    pts.append(int(frame.pts))
                    time_base = time_base or Fraction(frame.time_base)
            if buffer is None:
                buffer = _empty_frames((capacity, *image.shape))
            elif image.shape != buffer.shape[1:]:
                raise VideoDecodeError(
                    f"{path}: frame {count} is {image.shape[1]}x{image.shape[0]}, "
                    f"earlier frames were {buffer.shape[2]}x{buffer.shape[1]}"
                )
            if count == len(buffer):
                buffer = _grow(buffer)
            buffer[count] = image
            count += 1
            if count == max_frames:
                break
    except av.FFmpegError as e:
        raise VideoDecodeError(f"{path}: corrupt video data after {count} decoded frames ({e.strerror or e})") from e
    if buffer is None:
        return np.empty((0, 0, 0, 3), dtype=np.uint8), None, None
    frames = buffer if count == len(buffer) else buffer[:count].copy()
    timestamps = np.asarray(pts, dtype=np.int64) if pts is not None else None
    return frames, timestamps, time_base if timestamps is not None else None


def _empty_frames(shape: tuple[int, ...]) -> np.ndarray:
    """``np.empty(shape, uint8)``, with large buffers' pages faulted in by one ``MAP_POPULATE`` mmap.

    A 60 s 832x480 video is 1.15 GB; faulting it in page by page on first write was the largest
    single cost of decoding on our 2-core VM: median 2.8 s vs 1.4 s per 960-frame decode without/with.
    """
    size = int(np.prod(shape))
    populate = getattr(mmap, "MAP_POPULATE", 0)  # Linux only
    if not populate or size < _POPULATE_MIN_BYTES:
        return np.empty(shape, dtype=np.uint8)
    memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    return np.frombuffer(memory, dtype=np.uint8).reshape(shape)


def _grow(buffer: np.ndarray) -> np.ndarray:
    """A buffer half as large again holding the same frames (the decoder yielded more than counted)."""
    grown = _empty_frames((len(buffer) + max(len(buffer) // 2, 1), *buffer.shape[1:]))
    grown[: len(buffer)] = buffer
    return grown
