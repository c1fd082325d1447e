"""Decoding videos with PyAV: every frame, once, into one RGB array.

The official evaluator decodes each video about seven times (once per metric, through OpenCV and
decord). Here a video is decoded once and every metric samples the same array. Any problem with a
file -- missing, not a video, corrupt or truncated -- becomes a :class:`VideoDecodeError` whose
message starts with the file's path, so a failed record says which video to look at.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av
import numpy as np

log = logging.getLogger(__name__)


class VideoDecodeError(ValueError):
    """A video could not be read; the message starts with the file's path."""


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


def decode_video(path: Path | str, *, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """All frames (or the first ``max_frames``) as a (T, H, W, 3) uint8 RGB array, and the fps.

    The array is preallocated from the header's frame count and grown in place when the count is
    unknown. Fewer frames than the header declares means a truncated file and is an error, because a
    silently shortened video would be scored as if it were whole.
    """
    path = Path(path)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        fps = _stream_fps(stream, path)
        stream.thread_type = "AUTO"
        declared = stream.frames
        frames, count = _decode_frames(container, stream, path, declared, max_frames)
    if count == 0:
        raise VideoDecodeError(f"{path}: the video stream has no decodable frames")
    wanted = declared if max_frames is None else min(declared, max_frames)
    if count < wanted:
        raise VideoDecodeError(
            f"{path}: decoded {count} of the {declared} frames the header declares; the file is truncated or corrupt"
        )
    log.debug("decoded %s: %d frames %dx%d at %.3f fps", path, count, frames.shape[2], frames.shape[1], fps)
    return frames, fps


def _decode_frames(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    path: Path,
    declared: int,
    max_frames: int | None,
) -> tuple[np.ndarray, int]:
    """Decode into one buffer; returns the buffer trimmed to the frames decoded, and their count."""
    capacity = declared if declared > 0 else 256
    if max_frames is not None:
        capacity = min(capacity, max_frames)
    buffer: np.ndarray | None = None
    count = 0
    try:
        for frame in container.decode(stream):
            image = frame.to_ndarray(format="rgb24")
            if buffer is None:
                buffer = np.empty((capacity, *image.shape), dtype=np.uint8)
            elif image.shape != buffer.shape[1:]:
                raise VideoDecodeError(
                    f"{path}: frame {count} is {image.shape[1]}x{image.shape[0]}, "
                    f"earlier frames were {buffer.shape[2]}x{buffer.shape[1]}"
                )
            if count == len(buffer):
                # in place (realloc): large buffers grow by remapping pages, not by copying
                buffer.resize((count + max(count // 2, 1), *buffer.shape[1:]), refcheck=False)
            buffer[count] = image
            count += 1
            if count == max_frames:
                break
    except av.FFmpegError as e:
        raise VideoDecodeError(
            f"{path}: corrupt video data after {count} decoded frames ({e.strerror or e})"
        ) from e
    if buffer is None:
        return np.empty((0, 0, 0, 3), dtype=np.uint8), 0
    if count < len(buffer):
        buffer.resize((count, *buffer.shape[1:]), refcheck=False)
    return buffer, count
