"""Video I/O: the only package that decodes. Decode once, segment, sample frames for metrics."""

from narrastream.video.decode import VideoDecodeError, VideoInfo, decode_video, probe_video
from narrastream.video.encode import Mp4Writer, write_mp4
from narrastream.video.segments import (
    FpsMismatchError,
    SegmentationError,
    SegmentedVideo,
    SegmentRule,
    plan_native_segments,
    plan_segments,
)

__all__ = [
    "FpsMismatchError", "Mp4Writer", "SegmentRule", "SegmentationError", "SegmentedVideo", "VideoDecodeError",
    "VideoInfo", "decode_video", "plan_native_segments", "plan_segments", "probe_video", "write_mp4",
]
