"""Video I/O: protocol samplers, segment planning, encode/decode round trips, error messages."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from narrastream.video import (
    FpsMismatchError,
    Mp4Writer,
    SegmentationError,
    SegmentedVideo,
    SegmentRule,
    VideoDecodeError,
    decode_video,
    plan_native_segments,
    plan_segments,
    probe_video,
    write_mp4,
)
from narrastream.video.samplers import (
    boundary_window,
    fragment_indices,
    interpolation_triplets,
    linspace_indices,
    positional_indices,
    quartile_indices,
    uniform_indices,
)


def smooth_frames(t: int = 20, h: int = 48, w: int = 64) -> np.ndarray:
    """Gradients that drift over time: compress well, so decoded pixels stay close to the source."""
    ti = np.arange(t)[:, None, None]
    y = np.arange(h)[None, :, None]
    x = np.arange(w)[None, None, :]
    frames = np.empty((t, h, w, 3), dtype=np.uint8)
    frames[..., 0] = x * 2 + y + ti * 2
    frames[..., 1] = 200 - y * 2 - ti
    frames[..., 2] = 60 + x + ti * 3
    return frames


@pytest.fixture
def small_mp4(tmp_path: Path) -> tuple[Path, np.ndarray]:
    frames = smooth_frames()
    return write_mp4(tmp_path / "small.mp4", frames, fps=8), frames


# ------------------------------------------------------------------------------------- samplers


def test_sampler_table_for_160_frames() -> None:
    """Every row of docs/official-protocol.md §1.4 for N_f = 160."""
    assert positional_indices(160) == [16, 48, 80, 111, 143]
    assert uniform_indices(160, 8) == [0, 23, 45, 68, 91, 114, 136, 159]
    assert quartile_indices(160) == [0, 40, 80, 120, 159]
    assert uniform_indices(160, 5) == [0, 40, 80, 119, 159]
    assert linspace_indices(160, 8) == [0, 22, 45, 68, 90, 113, 136, 159]
    triplets = interpolation_triplets(160)
    assert len(triplets) == 79 and triplets[0] == (0, 1, 2) and triplets[-1] == (156, 157, 158)
    assert [a for a, _, _ in triplets] == list(range(0, 158, 2))
    assert boundary_window(160, 160) == ([158, 159], [0, 1])
    clips = fragment_indices(160)
    assert [c[0] for c in clips] == [0, 40, 80, 120]
    assert all(len(c) == 32 and all((b - a) % 160 == 2 for a, b in zip(c, c[1:])) for c in clips)
    assert clips[3][19:22] == [158, 0, 2]  # wraps modulo N_f


def test_samplers_on_one_and_two_frames() -> None:
    assert positional_indices(1) == [0]
    assert uniform_indices(1, 8) == [0] and uniform_indices(1, 5) == [0]
    assert quartile_indices(1) == [0]
    assert linspace_indices(1, 8) == [0] * 8
    assert interpolation_triplets(1) == []
    assert boundary_window(1, 1) == ([0], [0])
    assert fragment_indices(1) == [[0] * 32] * 4

    assert positional_indices(2) == [0, 1]  # round(0.5) == 0: half to even
    assert uniform_indices(2, 8) == [0, 1] and uniform_indices(2, 5) == [0, 1]
    assert quartile_indices(2) == [0, 1]
    assert linspace_indices(2, 8) == [0, 0, 0, 0, 0, 0, 0, 1]
    assert interpolation_triplets(2) == []
    assert boundary_window(2, 2) == ([0, 1], [0, 1])
    assert fragment_indices(2) == [[0] * 32] * 4


# -------------------------------------------------------------------------------- plan_segments


def test_exact_length_gives_equal_segments() -> None:
    assert plan_segments(960, 16.0, 6) == [(k * 160, (k + 1) * 160) for k in range(6)]


@pytest.mark.parametrize("num_frames, last", [(961, 161), (957, 157), (880, 80), (1040, 240)])
def test_last_segment_absorbs_the_difference(num_frames: int, last: int) -> None:
    bounds = plan_segments(num_frames, 16.0, 6)
    assert len(bounds) == 6
    assert [b - a for a, b in bounds] == [160] * 5 + [last]
    assert bounds[-1][1] == num_frames


def test_fractional_fps_truncates_like_the_official_evaluator() -> None:
    assert plan_segments(959, 15.98, 6)[0] == (0, 159)


@pytest.mark.parametrize("num_frames", [480, 879])
def test_too_short_video_is_an_error_with_numbers(num_frames: int) -> None:
    with pytest.raises(SegmentationError) as err:
        plan_segments(num_frames, 16.0, 6)
    message = str(err.value)
    assert "too short" in message
    for number in (str(num_frames), "16", "10", "960"):
        assert number in message


def test_too_long_video_is_an_error_with_numbers() -> None:
    with pytest.raises(SegmentationError, match=r"too long.*1041 frames at 16 fps.*10 s.*960"):
        plan_segments(1041, 16.0, 6)


def test_segment_rule_is_configurable() -> None:
    strict = SegmentRule(min_last_fraction=1.0, max_tail_fraction=0.0)
    assert plan_segments(960, 16.0, 6, strict)[-1] == (800, 960)
    with pytest.raises(SegmentationError):
        plan_segments(961, 16.0, 6, strict)
    with pytest.raises(SegmentationError):
        plan_segments(959, 16.0, 6, strict)
    assert plan_segments(40, 4.0, 2, SegmentRule(segment_seconds=5.0)) == [(0, 20), (20, 40)]


def test_less_than_one_frame_per_segment_is_an_error() -> None:
    with pytest.raises(SegmentationError, match="frames per segment"):
        plan_segments(10, 0.05, 1)
    with pytest.raises(SegmentationError, match="at least one segment"):
        plan_segments(960, 16.0, 0)


# ------------------------------------------------------------------------- native segmentation


def test_native_segments_from_switch_frames() -> None:
    assert plan_native_segments(100, [30, 50], 3) == [(0, 30), (30, 50), (50, 100)]
    assert plan_native_segments(100, [0, 30, 50], 3) == [(0, 30), (30, 50), (50, 100)]
    assert plan_native_segments(7, [], 1) == [(0, 7)]


@pytest.mark.parametrize(
    "switches, match",
    [
        ([30], "need 2 switch frames, got 1"),
        ([30, 50, 70], "need 2 switch frames, got 3"),
        ([50, 30], "strictly increasing"),
        ([30, 30], "strictly increasing"),
        ([0, 30], "strictly increasing"),
        ([30, 100], "switch frame 100 is not inside the video's 100 frames"),
    ],
)
def test_bad_switch_frames_are_errors(switches: list[int], match: str) -> None:
    with pytest.raises(SegmentationError, match=match):
        plan_native_segments(100, switches, 3)


# ------------------------------------------------------------------------------ encode / decode


def test_round_trip(small_mp4: tuple[Path, np.ndarray]) -> None:
    path, source = small_mp4
    info = probe_video(path)
    assert (info.fps, info.num_frames, info.width, info.height) == (8.0, 20, 64, 48)
    assert info.duration == 2.5
    frames, fps = decode_video(path)
    assert frames.shape == (20, 48, 64, 3) and frames.dtype == np.uint8 and fps == 8.0
    assert np.abs(frames.astype(int) - source).mean() < 3
    first, _ = decode_video(path, max_frames=5)
    assert np.array_equal(first, frames[:5])


def test_fractional_fps_and_iterable_input(tmp_path: Path) -> None:
    path = write_mp4(tmp_path / "ntsc.mp4", iter(smooth_frames(6)), fps=30000 / 1001)
    assert probe_video(path).fps == pytest.approx(29.97003, abs=1e-4)
    assert decode_video(path)[0].shape[0] == 6


def test_encoding_is_deterministic(tmp_path: Path) -> None:
    frames = smooth_frames()
    a = write_mp4(tmp_path / "a.mp4", frames, fps=8)
    b = write_mp4(tmp_path / "b.mp4", frames, fps=8)
    assert a.read_bytes() == b.read_bytes()


def test_odd_sizes_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even frame width.*65x48"):
        write_mp4(tmp_path / "odd.mp4", np.zeros((2, 48, 65, 3), np.uint8), fps=8)
    with pytest.raises(ValueError, match="even frame height"):
        write_mp4(tmp_path / "odd.mp4", np.zeros((2, 47, 64, 3), np.uint8), fps=8)
    assert list(tmp_path.iterdir()) == []


def test_writer_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "v.mp4"
    with pytest.raises(RuntimeError, match="generator died"):
        with Mp4Writer(target, fps=8) as writer:
            writer.write(np.zeros((16, 16, 3), np.uint8))
            raise RuntimeError("generator died")
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary file
    with pytest.raises(ValueError, match="earlier frames were 16x16"):
        with Mp4Writer(target, fps=8) as writer:
            writer.write(np.zeros((16, 16, 3), np.uint8))
            writer.write(np.zeros((16, 32, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_non_rgb_frames(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        write_mp4(tmp_path / "f.mp4", np.zeros((2, 16, 16, 3), np.float32), fps=8)


# ------------------------------------------------------------------------------ decode failures


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.mp4"
    for call in (decode_video, probe_video):
        with pytest.raises(VideoDecodeError, match="no such file") as err:
            call(path)
        assert str(err.value).startswith(str(path))


def test_garbage_bytes(tmp_path: Path) -> None:
    path = tmp_path / "garbage.mp4"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(VideoDecodeError, match="not a readable video") as err:
        decode_video(path)
    assert str(err.value).startswith(str(path))


def test_truncated_file(small_mp4: tuple[Path, np.ndarray]) -> None:
    path, _ = small_mp4
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # loses the index at the end
    with pytest.raises(VideoDecodeError) as err:
        decode_video(path)
    assert str(err.value).startswith(str(path))


def _packet_spans(path: Path) -> list[tuple[int, int]]:
    with av.open(str(path)) as container:
        return [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]


def test_corrupt_data_reports_frames_decoded(small_mp4: tuple[Path, np.ndarray]) -> None:
    path, _ = small_mp4
    spans = _packet_spans(path)
    data = bytearray(path.read_bytes())
    start, end = spans[10][0], spans[-1][0] + spans[-1][1]
    data[start:end] = b"\xab" * (end - start)
    path.write_bytes(bytes(data))
    with pytest.raises(VideoDecodeError, match=r"after \d+ decoded frames|decoded \d+ of the 20 frames") as err:
        decode_video(path)
    assert str(err.value).startswith(str(path))


def test_silently_short_stream_is_an_error(tmp_path: Path) -> None:
    """Index first (faststart), data cut at a packet boundary: the decoder stops early without an error."""
    path = tmp_path / "faststart.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for image in smooth_frames():
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    cut = _packet_spans(path)[12][0]
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(VideoDecodeError, match=r"decoded \d+ of the 20 frames the header declares") as err:
        decode_video(path)
    assert str(err.value).startswith(str(path))


def test_audio_only_file_has_no_video_stream(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000, layout="mono")
        samples = (np.sin(np.arange(800) / 5) * 1000).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(VideoDecodeError, match="no video stream") as err:
        decode_video(path)
    assert str(err.value).startswith(str(path))


# ------------------------------------------------------------------------------ SegmentedVideo


def test_segments_are_views_and_samples_are_copies(small_mp4: tuple[Path, np.ndarray]) -> None:
    path, _ = small_mp4
    video = SegmentedVideo.from_file(path, num_segments=2, rule=SegmentRule(segment_seconds=1.25))
    assert (video.num_frames, video.width, video.height, video.fps) == (20, 64, 48, 8.0)
    assert video.segmentation == "time" and video.path == path
    assert len(video) == video.num_segments == 2 and video.segment_lengths == [10, 10]
    segment = video.segment(1)
    assert segment.shape == (10, 48, 64, 3) and np.shares_memory(segment, video.frames)
    assert np.array_equal(segment, video.frames[10:20])
    picked = video.frames_at(1, [0, 9])
    assert picked.shape == (2, 48, 64, 3) and not np.shares_memory(picked, video.frames)
    assert np.array_equal(picked[1], video.frames[19])
    with pytest.raises(IndexError, match="segment 1 has 10 frames"):
        video.frames_at(1, [10])
    with pytest.raises(IndexError, match="2 segments"):
        video.segment(2)


def test_native_segmentation_from_frames() -> None:
    video = SegmentedVideo.from_frames(smooth_frames(), fps=8, num_segments=3, switch_frames=[5, 12])
    assert video.segmentation == "native" and video.bounds == [(0, 5), (5, 12), (12, 20)]
    assert video.segment_lengths == [5, 7, 8]


def test_segmentation_error_from_file_names_the_file(small_mp4: tuple[Path, np.ndarray]) -> None:
    path, _ = small_mp4
    with pytest.raises(SegmentationError, match="too short") as err:
        SegmentedVideo.from_file(path, num_segments=6)
    assert str(err.value).startswith(f"{path}: video too short: 20 frames at 8 fps")


def test_fps_mismatch(small_mp4: tuple[Path, np.ndarray]) -> None:
    path, _ = small_mp4
    with pytest.raises(FpsMismatchError, match=r"runs at 8 fps, expected 16 fps") as err:
        SegmentedVideo.from_file(path, num_segments=1, expected_fps=16.0)
    assert str(err.value).startswith(str(path))
    video = SegmentedVideo.from_file(path, num_segments=1, rule=SegmentRule(segment_seconds=2.5), expected_fps=8.005)
    assert video.segment_lengths == [20]


def test_frames_must_be_rgb_uint8() -> None:
    with pytest.raises(ValueError, match="uint8"):
        SegmentedVideo.from_frames(np.zeros((4, 8, 8, 3), np.float32), fps=2, num_segments=1, switch_frames=[])
