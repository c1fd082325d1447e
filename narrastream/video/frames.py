"""A few frames of a long video, without decoding all of it: for pictures (the report's filmstrips).

A 60 s video at 16 fps has 960 frames; a filmstrip needs about ten of them. The packets are read
once (no decoding) to learn each frame's timestamp and where the keyframes are; then, for each
wanted frame in order, decoding either continues from where it is or seeks to the keyframe before
the frame when that keyframe lies further ahead; frames no other frame refers to are not decoded unless
wanted. Only the wanted frames are converted to RGB, and only at the size asked for. Frame ``i`` is
the ``i``-th frame in presentation order, the same numbering as
:func:`narrastream.video.decode.decode_video`.
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Iterable, Iterator

import av
import numpy as np

from narrastream.video.decode import VideoDecodeError, _open_input, _video_stream


def thumbnail_size(width: int, height: int, max_height: int | None) -> tuple[int, int]:
    """(width, height) scaled down to ``max_height`` (never up), both even, aspect kept.

    >>> thumbnail_size(832, 480, 120)
    (208, 120)
    >>> thumbnail_size(64, 48, 120)
    (64, 48)
    """
    if not max_height or height <= max_height:
        return width, height
    scaled_w = max(2, int(round(width * max_height / height / 2)) * 2)
    return scaled_w, max(2, max_height - max_height % 2)


def frames_at(path: Path | str, indices: Iterable[int], *, max_height: int | None = None) -> dict[int, np.ndarray]:
    """The frames at ``indices`` as (H, W, 3) uint8 RGB arrays, scaled down to ``max_height`` if given.

    Indices outside the video are an error naming the file and the frame count.
    """
    path = Path(path)
    wanted = sorted(set(int(i) for i in indices))
    if not wanted:
        return {}
    out: dict[int, np.ndarray] = {}
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        try:
            packets = [(p.pts, bool(p.is_keyframe)) for p in container.demux(stream) if p.pts is not None and p.size]
        except av.FFmpegError as e:
            raise VideoDecodeError(f"{path}: demuxing failed ({e.strerror or e})") from e
        pts = sorted(p for p, _ in packets)
        keyframes = sorted(p for p, key in packets if key)
        if not pts or not keyframes:
            raise VideoDecodeError(f"{path}: no decodable frames")
        if wanted[0] < 0 or wanted[-1] >= len(pts):
            raise VideoDecodeError(f"{path}: frame {wanted[-1] if wanted[-1] >= len(pts) else wanted[0]} "
                                   f"asked, the video has {len(pts)} frames")
        ctx = stream.codec_context
        size = thumbnail_size(ctx.width, ctx.height, max_height)
        targets = {pts[i]: i for i in wanted}
        packets = None  # the demuxer, positioned somewhere after a keyframe
        position = None  # pts of the last frame decoded
        try:
            for index in wanted:
                target = pts[index]
                if index in out:
                    continue
                keyframe = keyframes[max(0, bisect.bisect_right(keyframes, target) - 1)]
                if packets is None or position is None or position >= target or keyframe > position:
                    container.seek(keyframe, stream=stream, backward=True, any_frame=False)
                    packets = container.demux(stream)
                    position = None
                for frame in _decode_until(packets, ctx, targets, target):
                    position = max(position or frame.pts, frame.pts)
                    if frame.pts in targets and targets[frame.pts] not in out:
                        out[targets[frame.pts]] = frame.reformat(width=size[0], height=size[1],
                                                                 format="rgb24").to_ndarray()
                if index not in out:
                    raise VideoDecodeError(f"{path}: the stream ended before frame {index}")
        except av.FFmpegError as e:
            raise VideoDecodeError(f"{path}: corrupt video data ({e.strerror or e})") from e
    return out


def _decode_until(packets: Iterator[av.Packet], ctx: av.VideoCodecContext, targets: dict[int, int],
                  target: int) -> Iterator[av.VideoFrame]:
    """Decode packets until the frame at ``target`` comes out, or the stream ends (the demuxer's last,
    empty packet flushes the decoder).

    Frames no other frame refers to (most B-frames) are skipped unless they are wanted: skipping a
    non-reference frame cannot change any other frame, and about two thirds of an x264 stream's
    frames are such B-frames.
    """
    for packet in packets:
        ctx.skip_frame = "DEFAULT" if packet.pts in targets or packet.pts is None else "NONREF"
        reached = False
        for frame in ctx.decode(packet):  # every frame of a packet, even past the target: the next may want it
            if frame.pts is not None:
                reached |= frame.pts >= target
                yield frame
        if reached:
            return
