"""Videos whose timing is not what it seems: variable frame rates, oversized videos, replaced files."""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np
import pytest

from narrastream.adapters.base import GeneratedVideo, SidecarError, read_sidecar
from narrastream.video import (
    FpsMismatchError,
    SegmentationError,
    SegmentedVideo,
    SegmentRule,
    VideoLimitError,
    VideoLimits,
    decode_video_timed,
    measure_timing,
    plan_segments,
    plan_timestamp_segments,
    probe_video,
    write_mp4,
)

#: the video of the issue: 24 frames 0.1 s apart, then 24 frames 0.4 s apart (12 s)
ISSUE_TIMES = [0.1 * i for i in range(24)] + [2.4 + 0.4 * j for j in range(24)]


def write_vfr_mp4(path: Path, seconds: Sequence[float], size: tuple[int, int] = (32, 32)) -> Path:
    """An H.264 mp4 whose frame k is shown at ``seconds[k]`` (millisecond timestamps set explicitly)."""
    time_base = Fraction(1, 1000)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.codec_context.time_base = time_base
        for k, t in enumerate(seconds):
            image = np.full((size[1], size[0], 3), (37 * k) % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.fixture
def issue_vfr(tmp_path: Path) -> Path:
    return write_vfr_mp4(tmp_path / "vfr.mp4", ISSUE_TIMES)


# ----------------------------------------------------------------------------- variable frame rate


def test_vfr_video_timing_is_measured_not_taken_from_the_header(issue_vfr: Path) -> None:
    nominal = probe_video(issue_vfr).fps
    assert 4.2 < nominal < 4.4  # the container's average: describes no part of the video
    video = SegmentedVideo.from_file(issue_vfr, 1)
    t = video.timing
    assert t["vfr"] is True and t["timestamps"] == "ok" and t["cut_by"] == "timestamps"
    assert t["min_interval_s"] == pytest.approx(0.1) and t["max_interval_s"] == pytest.approx(0.4)
    assert t["duration_s"] == pytest.approx(12.0) and t["mean_fps"] == pytest.approx(4.0)
    assert t["nominal_fps"] == pytest.approx(nominal, abs=1e-5) and t["frames"] == 48
    assert video.fps == pytest.approx(4.0)


def test_vfr_video_is_cut_by_timestamps(issue_vfr: Path) -> None:
    rule = SegmentRule(segment_seconds=6)
    video = SegmentedVideo.from_file(issue_vfr, 2, rule=rule)
    # [0, 6 s): the 24 fast frames (0..2.3 s) and 9 slow ones (2.4..5.6 s); [6 s, 12 s): the other 15
    assert video.bounds == [(0, 33), (33, 48)]
    frame_count = plan_segments(48, probe_video(issue_vfr).fps, 2, rule)
    assert frame_count != video.bounds  # what the header's rate would have given


def test_vfr_length_rules_are_in_seconds(issue_vfr: Path) -> None:
    with pytest.raises(SegmentationError, match=r"vfr.mp4: video too short: 48 frames over 12 s.*need 20 s"):
        SegmentedVideo.from_file(issue_vfr, 2)  # 2 x 10 s needs at least 15 s
    with pytest.raises(SegmentationError, match=r"too long.*12 s.*at most 7\.5 s"):
        SegmentedVideo.from_file(issue_vfr, 1, rule=SegmentRule(segment_seconds=5))
    assert SegmentedVideo.from_file(issue_vfr, 1, rule=SegmentRule(segment_seconds=10)).bounds == [(0, 48)]


def test_timestamp_segments_are_exact_at_boundaries() -> None:
    pts = list(range(30)) + list(range(30, 60, 5))  # 10 s at 3 fps, then 10 s at 0.6 fps (1/3 s ticks)
    assert plan_timestamp_segments(pts, Fraction(1, 3), 2, SegmentRule(segment_seconds=10)) == [(0, 30), (30, 36)]
    # a frame at exactly 0.3 s opens segment 1, although 3 * 0.1 > 0.3 in floating point
    assert plan_timestamp_segments(range(6), Fraction(1, 10), 2, SegmentRule(segment_seconds=0.3)) == [
        (0, 3), (3, 6)]


def test_a_segment_without_frames_is_an_error() -> None:
    pts = [0, 1, 2, 3, 40, 41]  # a 3.7 s gap at 10 ticks per second
    with pytest.raises(SegmentationError, match=r"segment 1 \(1 s to 2 s\) holds no frame: 6 frames over 4.2 s"):
        plan_timestamp_segments(pts, Fraction(1, 10), 5, SegmentRule(segment_seconds=1, min_last_fraction=0.1))


def test_constant_frame_rate_videos_are_cut_by_frame_count_as_before(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 255, (50, 16, 16, 3), dtype=np.uint8)
    for fps, rule, n in ((16.0, SegmentRule(segment_seconds=1), 3), (15.98, SegmentRule(segment_seconds=1), 3),
                         (30000 / 1001, SegmentRule(segment_seconds=0.6), 3)):
        path = write_mp4(tmp_path / f"cfr{fps}.mp4", frames, fps=fps)
        video = SegmentedVideo.from_file(path, n, rule=rule)
        assert video.bounds == plan_segments(50, probe_video(path).fps, n, rule)  # the official int(fps * S)
        assert video.timing["vfr"] is False and video.timing["cut_by"] == "frame count"
        assert video.timing["mean_fps"] == pytest.approx(fps, rel=1e-4)


def test_native_segmentation_keeps_switch_frames_and_records_timing(issue_vfr: Path) -> None:
    video = SegmentedVideo.from_file(issue_vfr, 2, switch_frames=[24])
    assert video.bounds == [(0, 24), (24, 48)] and video.segmentation == "native"
    assert video.timing["vfr"] is True and video.timing["cut_by"] == "switch frames"


def test_expected_fps_refuses_a_vfr_video(issue_vfr: Path) -> None:
    nominal = probe_video(issue_vfr).fps
    with pytest.raises(FpsMismatchError, match=r"vfr.mp4: the video has a variable frame rate \(frame intervals 0\.1 s"):
        SegmentedVideo.from_file(issue_vfr, 1, expected_fps=nominal)


def test_measure_timing_edge_cases() -> None:
    tb = Fraction(1, 1000)
    assert measure_timing(None, None, 16).timestamps == "missing"
    assert measure_timing(np.array([5]), tb, 16).timestamps == "single frame"
    assert measure_timing(np.array([0, 40, 40, 80]), tb, 25).timestamps == "not increasing"
    mkv = measure_timing(np.array([0, 33, 67, 100, 133, 167]), tb, 30)  # 1 ms rounding of 30 fps
    assert mkv.vfr is False
    dropped = measure_timing(np.array([0, 40, 80, 160, 200]), tb, 25)  # one frame missing
    assert dropped.vfr is True and dropped.max_interval_s == pytest.approx(0.08)
    frames = np.zeros((4, 8, 8, 3), np.uint8)
    broken = SegmentedVideo.from_frames(frames, 2.0, 2, SegmentRule(segment_seconds=1), pts=[0, 1, 1, 2],
                                        time_base=Fraction(1, 2))
    assert broken.bounds == [(0, 2), (2, 4)] and broken.timing["cut_by"] == "frame count"


# ---------------------------------------------------------------------------------------- limits


def _no_decoding(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the video was decoded although the header was over the limit")

    monkeypatch.setattr("narrastream.video.segments.decode_video_timed", refuse)


def test_a_4096x4096_video_is_refused_before_decoding(tmp_path: Path, monkeypatch) -> None:
    path = write_mp4(tmp_path / "huge.mp4", np.zeros((2, 4096, 4096, 3), np.uint8), fps=4, preset="ultrafast")
    _no_decoding(monkeypatch)
    limits = VideoLimits(max_frames=100, max_pixels=4096 * 4096)  # one frame's worth
    with pytest.raises(VideoLimitError) as err:
        SegmentedVideo.from_file(path, 1, rule=SegmentRule(segment_seconds=0.5), limits=limits)
    message = str(err.value)
    assert message.startswith(str(path))
    for part in ("2 frames of 4096x4096", str(2 * 4096 * 4096), "limits.max_video_pixels=16777216"):
        assert part in message


def test_too_many_frames_are_refused_before_decoding(tmp_path: Path, monkeypatch) -> None:
    path = write_mp4(tmp_path / "long.mp4", np.zeros((30, 16, 16, 3), np.uint8), fps=10)
    _no_decoding(monkeypatch)
    with pytest.raises(VideoLimitError, match=r"long.mp4: the header declares 30 frames.*limits.max_video_frames=20"):
        SegmentedVideo.from_file(path, 1, rule=SegmentRule(segment_seconds=3), limits=VideoLimits(max_frames=20))


def test_a_header_that_under_declares_is_stopped_while_decoding(tmp_path: Path, monkeypatch) -> None:
    path = write_mp4(tmp_path / "long.mkv", np.zeros((30, 16, 16, 3), np.uint8), fps=10)  # mkv: no frame count
    real = probe_video(path)
    assert real.num_frames == 30
    lying = type(real)(path=path, fps=real.fps, num_frames=5, width=16, height=16)
    monkeypatch.setattr("narrastream.video.decode.probe_video", lambda p: lying)
    with pytest.raises(VideoLimitError, match=r"the decoder yields at least 21 frames.*max_video_frames=20"):
        decode_video_timed(path, limits=VideoLimits(max_frames=20))
    assert len(decode_video_timed(path, limits=VideoLimits(max_frames=30)).frames) == 30


def test_limits_from_config_and_bad_values() -> None:
    assert VideoLimits.from_config({"max_video_frames": 7, "max_video_pixels": None}) == VideoLimits(7, None)
    assert VideoLimits.from_config(None) == VideoLimits()
    with pytest.raises(ValueError, match="limits.max_video_pixels must be a positive integer"):
        VideoLimits(max_pixels=0)


# ------------------------------------------------------------------------- replaced videos (sidecar)


def _sidecar_for(tmp_path: Path, video_path: Path) -> Path:
    info = probe_video(video_path)
    video = GeneratedVideo(path=video_path, script_id=0, seed=0, fps=info.fps, num_frames=info.num_frames,
                           width=info.width, height=info.height, extra={"size_bytes": video_path.stat().st_size})
    from narrastream.adapters.base import Capabilities, write_json_atomic

    side = tmp_path / "run" / "0-s0.json"
    write_json_atomic(side, video.to_sidecar("theirs", Capabilities()))
    return side


def test_a_video_replaced_in_place_refreshes_its_sidecar(tmp_path: Path) -> None:
    path = write_mp4(tmp_path / "v.mp4", np.zeros((8, 16, 16, 3), np.uint8), fps=4)
    side = _sidecar_for(tmp_path, path)
    stamped = json.loads(side.read_text())
    assert stamped["file_size"] == path.stat().st_size and stamped["file_mtime_ns"] == path.stat().st_mtime_ns
    before = side.read_bytes()
    assert read_sidecar(side).num_frames == 8 and side.read_bytes() == before  # unchanged file: nothing rewritten

    write_mp4(path, np.zeros((12, 32, 48, 3), np.uint8), fps=6)  # replaced in place
    video = read_sidecar(side, script_id=0, seed=0)
    assert (video.fps, video.num_frames, video.width, video.height) == (6.0, 12, 48, 32)
    rewritten = json.loads(side.read_text())
    assert (rewritten["fps"], rewritten["num_frames"], rewritten["file_size"]) == (6.0, 12, path.stat().st_size)
    assert rewritten["extra"]["size_bytes"] == path.stat().st_size
    assert rewritten["extra"]["reprobed"]["previous"]["num_frames"] == 8
    assert rewritten["model"] == "theirs"  # the rest of the sidecar is kept


def test_same_size_new_mtime_is_reprobed(tmp_path: Path) -> None:
    path = write_mp4(tmp_path / "v.mp4", np.zeros((8, 16, 16, 3), np.uint8), fps=4)
    side = _sidecar_for(tmp_path, path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    read_sidecar(side)
    assert json.loads(side.read_text())["file_mtime_ns"] == st.st_mtime_ns + 5_000_000_000


def test_an_unstamped_sidecar_is_stamped_once(tmp_path: Path) -> None:
    path = write_mp4(tmp_path / "v.mp4", np.zeros((8, 16, 16, 3), np.uint8), fps=4)
    side = _sidecar_for(tmp_path, path)
    old = json.loads(side.read_text())
    del old["file_size"], old["file_mtime_ns"]
    old["num_frames"] = 99  # written before stamps existed: cannot be trusted
    side.write_text(json.dumps(old))
    assert read_sidecar(side).num_frames == 8
    assert "reprobed" not in json.loads(side.read_text())["extra"]


def test_a_replacement_that_is_not_a_video_is_a_sidecar_error(tmp_path: Path) -> None:
    path = write_mp4(tmp_path / "v.mp4", np.zeros((8, 16, 16, 3), np.uint8), fps=4)
    side = _sidecar_for(tmp_path, path)
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(SidecarError, match=r"0-s0.json: its video changed.*v.mp4: not a readable video"):
        read_sidecar(side)


def test_a_read_only_sidecar_is_refreshed_in_memory(tmp_path: Path, monkeypatch) -> None:
    path = write_mp4(tmp_path / "v.mp4", np.zeros((8, 16, 16, 3), np.uint8), fps=4)
    side = _sidecar_for(tmp_path, path)
    write_mp4(path, np.zeros((10, 16, 16, 3), np.uint8), fps=4)

    def read_only(target, data):
        raise PermissionError(13, "Permission denied", str(target))

    monkeypatch.setattr("narrastream.adapters.base.write_json_atomic", read_only)
    assert read_sidecar(side).num_frames == 10
    assert json.loads(side.read_text())["num_frames"] == 8


def test_a_sidecar_of_another_item_is_refused(tmp_path: Path) -> None:
    path = write_mp4(tmp_path / "v.mp4", np.zeros((8, 16, 16, 3), np.uint8), fps=4)
    side = _sidecar_for(tmp_path, path)
    with pytest.raises(SidecarError, match=r"field script_id: 0, but the sidecar belongs to script_id 3"):
        read_sidecar(side, script_id=3, seed=0)


# ------------------------------------------------------------------------------ through the harness


def _session(tmp_path: Path, mapping: Path, *extra: str):
    from narrastream.harness.session import Session

    return Session.from_overrides([
        "model=precomputed", "model.name=theirs", f"model.params.folder={tmp_path}", f"model.params.mapping={mapping}",
        "preset=tiny", "data.ids=[0,1]", f"run.dir={tmp_path / 'run'}",
        "protocol.run_metrics=[subject_consistency,vtss]", *extra])


def _records(tmp_path: Path) -> dict:
    from narrastream.results.records import RecordStore

    return {(r.script_id, r.metric): r for r in RecordStore(tmp_path / "run" / "records").iter_all()}


def test_harness_cuts_a_vfr_video_by_time_and_records_its_timing(tmp_path: Path) -> None:
    # preset=tiny: 6 prompts x 2 s. Script 0: 6 s at 8 fps then 6 s at 2 fps; script 1: constant 4 fps
    write_vfr_mp4(tmp_path / "vfr.mp4", [k / 8 for k in range(48)] + [6 + k / 2 for k in range(12)], size=(64, 48))
    write_mp4(tmp_path / "cfr.mp4", np.random.default_rng(0).integers(0, 255, (48, 48, 64, 3), np.uint8), fps=4)
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"0": "vfr.mp4", "1": "cfr.mp4"}))
    session = _session(tmp_path, mapping)
    session.generate()
    summary = session.evaluate()
    assert summary.failed == 0, summary.failures
    records = _records(tmp_path)
    vfr = records[(0, "vtss")].details["video_timing"]
    assert vfr["vfr"] is True and vfr["cut_by"] == "timestamps" and vfr["frames"] == 60
    assert vfr["min_interval_s"] == pytest.approx(0.125) and vfr["max_interval_s"] == pytest.approx(0.5)
    cfr = records[(1, "subject_consistency")].details["video_timing"]
    assert cfr["vfr"] is False and cfr["cut_by"] == "frame count" and cfr["mean_fps"] == pytest.approx(4.0)
    assert records[(0, "subject_consistency")].status in ("ok", "fallback")
    segmented = SegmentedVideo.from_file(tmp_path / "vfr.mp4", 6, rule=SegmentRule(segment_seconds=2))
    assert segmented.segment_lengths == [16, 16, 16, 4, 4, 4]  # the header's ~5.2 fps would give 10 each


def test_harness_records_an_oversized_video_as_failed_naming_the_limit(tmp_path: Path) -> None:
    write_mp4(tmp_path / "a.mp4", np.zeros((48, 48, 64, 3), np.uint8), fps=4)
    write_mp4(tmp_path / "b.mp4", np.zeros((48, 96, 128, 3), np.uint8), fps=4)
    mapping = tmp_path / "map.csv"
    mapping.write_text("script_id,path\n0,a.mp4\n1,b.mp4\n")
    session = _session(tmp_path, mapping, f"limits.max_video_pixels={48 * 48 * 64}")
    session.generate()
    summary = session.evaluate()
    assert summary.failed == 2  # two metrics of the big video
    records = _records(tmp_path)
    assert records[(0, "subject_consistency")].status in ("ok", "fallback")
    reason = records[(1, "subject_consistency")].reason
    assert records[(1, "subject_consistency")].status == "failed"
    assert "b.mp4: the header declares 48 frames of 128x96" in reason and f"limits.max_video_pixels={48 * 48 * 64}" in reason


def test_harness_refreshes_the_sidecar_of_a_replaced_precomputed_video(tmp_path: Path) -> None:
    write_mp4(tmp_path / "a.mp4", np.zeros((48, 48, 64, 3), np.uint8), fps=4)
    write_mp4(tmp_path / "b.mp4", np.zeros((48, 48, 64, 3), np.uint8), fps=4)
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"0": "a.mp4", "1": "b.mp4"}))
    session = _session(tmp_path, mapping)
    session.generate()
    assert session.load_sidecar(1, 0).num_frames == 48
    write_mp4(tmp_path / "b.mp4", np.zeros((40, 48, 64, 3), np.uint8), fps=5)  # re-exported at another rate
    again = _session(tmp_path, mapping)
    summary = again.generate()
    assert summary.skipped == 2  # nothing to generate for precomputed videos...
    video = again.load_sidecar(1, 0)
    assert (video.fps, video.num_frames) == (5.0, 40)  # ...but the facts follow the file
    side = json.loads((tmp_path / "run" / "videos" / "theirs" / "1-s0.json").read_text())
    assert (side["fps"], side["num_frames"], side["extra"]["reprobed"]["previous"]["num_frames"]) == (5.0, 40, 48)
