"""What a video's presentation timestamps say about its frame rate.

A container's frame rate is a claim: a variable-frame-rate (VFR) file -- screen recordings, phone
videos, re-muxed or frame-dropped streams, GIFs -- reports an average that describes no part of it
(24 frames 0.1 s apart then 24 frames 0.4 s apart read as "4.3 fps"). Splitting such a video into
``int(fps * 10)``-frame chunks puts prompt boundaries at the wrong moments, so the timestamps are
measured on every decode, recorded with the scores, and used to cut VFR videos by time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

import numpy as np

#: frame intervals spread wider than this fraction of the median interval mean a variable frame
#: rate. Timestamp rounding stays far below it (a 1 ms time base at 60 fps spreads 16..17 ms: 0.06);
#: one dropped frame (an interval of 2) is above it.
VFR_TOLERANCE = 0.5


@dataclass(frozen=True)
class FrameTiming:
    """The measured timing of a decoded video, as stored in each record's ``details.video_timing``.

    ``timestamps`` is ``ok``, ``missing`` (the container gives none), ``not increasing`` (broken
    timestamps: the nominal rate is used) or ``single frame``. Interval and rate fields are None
    when the timestamps are not ``ok``. ``vfr`` is None when it cannot be measured.
    """

    frames: int
    nominal_fps: float
    timestamps: str
    vfr: bool | None = None
    mean_fps: float | None = None
    duration_s: float | None = None
    min_interval_s: float | None = None
    max_interval_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_timing(pts: np.ndarray | None, time_base: Fraction | None, nominal_fps: float) -> FrameTiming:
    """Frame intervals from integer timestamps ``pts`` (in ``time_base`` units) of the frames in display order.

    ``duration_s`` counts the last frame as lasting as long as the interval before it, so that a
    constant-rate video of ``n`` frames at ``fps`` lasts ``n / fps``, like the nominal duration.

    >>> t = measure_timing(np.arange(0, 48, 3), Fraction(1, 48), 16.0)
    >>> t.vfr, t.mean_fps, t.duration_s
    (False, 16.0, 1.0)
    """
    n = 0 if pts is None else len(pts)
    nominal = round(float(nominal_fps), 6)
    if pts is None or time_base is None:
        return FrameTiming(frames=n, nominal_fps=nominal, timestamps="missing")
    if n < 2:
        return FrameTiming(frames=n, nominal_fps=nominal, timestamps="single frame", vfr=False)
    intervals = np.diff(pts.astype(np.int64))
    if (intervals <= 0).any():
        return FrameTiming(frames=n, nominal_fps=nominal, timestamps="not increasing")
    smallest, largest, median = int(intervals.min()), int(intervals.max()), float(np.median(intervals))
    ticks = int(pts[-1] - pts[0]) + int(intervals[-1])
    seconds = float(ticks * time_base)
    return FrameTiming(
        frames=n, nominal_fps=nominal, timestamps="ok",
        vfr=bool(largest - smallest > VFR_TOLERANCE * median),
        mean_fps=round(n / seconds, 6), duration_s=round(seconds, 6),
        min_interval_s=round(float(smallest * time_base), 6), max_interval_s=round(float(largest * time_base), 6),
    )
