"""Video I/O: the only package that decodes. Decode once, segment, sample frames for metrics."""

from narrastream.video.decode import (
    DecodedVideo,
    VideoDecodeError,
    VideoInfo,
    VideoLimitError,
    VideoLimits,
    check_video_limits,
    decode_video,
    decode_video_timed,
    probe_video,
)
from narrastream.video.encode import Mp4Writer, write_mp4
from narrastream.video.segments import (
    FpsMismatchError,
    SegmentationError,
    SegmentedVideo,
    SegmentRule,
    plan_native_segments,
    plan_segments,
    plan_timestamp_segments,
)
from narrastream.video.timing import FrameTiming, measure_timing

__all__ = [
    "DecodedVideo", "FpsMismatchError", "FrameTiming", "Mp4Writer", "SegmentRule", "SegmentationError",
    "SegmentedVideo", "VideoDecodeError", "VideoInfo", "VideoLimitError", "VideoLimits", "check_video_limits",
    "decode_video", "decode_video_timed", "measure_timing", "plan_native_segments", "plan_segments",
    "plan_timestamp_segments", "probe_video", "write_mp4",
]
