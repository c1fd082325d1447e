"""The precomputed adapter: official layout, mapping files, natural order, and loud mismatches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from narrastream.adapters.base import GenerationRequest
from narrastream.adapters.precomputed import PrecomputedGenerator, PrecomputedVideosError, natural_key
from narrastream.data.script import Script
from narrastream.video.encode import write_mp4

SCRIPTS = [Script(id=i, prompts=("a", "b")) for i in range(4)]


def _video(path: Path, frames: int = 8) -> Path:
    data = np.full((frames, 32, 48, 3), 100, np.uint8)
    return write_mp4(path, data, fps=4)


def _request(script: Script, tmp: Path) -> GenerationRequest:
    return GenerationRequest(script=script, seed=0, output_path=tmp / "unused.mp4", fps=4, seconds_per_segment=1)


def test_official_layout(tmp_path):
    for i in range(4):
        _video(tmp_path / f"sample_{i}.mp4")
    gen = PrecomputedGenerator(folder=str(tmp_path))
    gen.prepare(SCRIPTS, total_scripts=4)
    video = gen.generate(_request(SCRIPTS[2], tmp_path))
    assert video.path.name == "sample_2.mp4" and video.num_frames == 8 and (video.width, video.height) == (48, 32)
    assert gen.resolved_layout == "official"


def test_missing_video_names_the_ids(tmp_path):
    for i in (0, 2):
        _video(tmp_path / f"sample_{i}.mp4")
    gen = PrecomputedGenerator(folder=str(tmp_path))
    with pytest.raises(PrecomputedVideosError, match=r"no video for 2 script\(s\).*ids 1, 3"):
        gen.prepare(SCRIPTS, total_scripts=4)
    gen.prepare(SCRIPTS[:1], total_scripts=4)  # a selection that has its videos is fine


def test_extra_video_is_an_error(tmp_path):
    for i in (0, 1, 2, 3, 7):
        _video(tmp_path / f"sample_{i}.mp4")
    with pytest.raises(PrecomputedVideosError, match=r"with no script \(ids 7"):
        PrecomputedGenerator(folder=str(tmp_path)).prepare(SCRIPTS, total_scripts=4)


def test_stray_video_beside_official_names_is_an_error(tmp_path):
    for i in range(4):
        _video(tmp_path / f"sample_{i}.mp4")
    _video(tmp_path / "rank0-3-extra.mp4")
    with pytest.raises(PrecomputedVideosError, match="rank0-3-extra.mp4"):
        PrecomputedGenerator(folder=str(tmp_path)).prepare(SCRIPTS, total_scripts=4)


def test_natural_order_only_when_counts_match(tmp_path):
    for name in ("clip10.mp4", "clip2.mp4", "clip1.mp4", "clip3.mp4"):
        _video(tmp_path / name)
    gen = PrecomputedGenerator(folder=str(tmp_path))
    gen.prepare(SCRIPTS, total_scripts=4)
    assert [gen.paths[i].name for i in range(4)] == ["clip1.mp4", "clip2.mp4", "clip3.mp4", "clip10.mp4"]
    with pytest.raises(PrecomputedVideosError, match="4 video\\(s\\) for 5 scripts"):
        PrecomputedGenerator(folder=str(tmp_path)).prepare(SCRIPTS, total_scripts=5)
    assert sorted(["Sample_10", "sample_2"], key=natural_key) == ["sample_2", "Sample_10"]


def test_mapping_json_and_csv(tmp_path):
    videos = tmp_path / "v"
    for i in range(4):
        _video(videos / f"rank{i % 2}-{i}.mp4")
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({str(i): f"v/rank{i % 2}-{i}.mp4" for i in range(4)}))
    gen = PrecomputedGenerator(folder=str(videos), mapping=str(mapping))
    gen.prepare(SCRIPTS, total_scripts=4)
    assert gen.paths[3] == tmp_path / "v" / "rank1-3.mp4"
    csv = tmp_path / "map.csv"
    csv.write_text("script_id,path\n0,v/rank0-0.mp4\nx,v/rank1-1.mp4\n")
    with pytest.raises(PrecomputedVideosError, match=r"map.csv:3: script id 'x'"):
        PrecomputedGenerator(folder=str(videos), mapping=str(csv)).prepare(SCRIPTS, total_scripts=4)


def test_corrupt_video_fails_generation_with_the_file_name(tmp_path):
    from narrastream.adapters.base import GenerationError

    for i in range(4):
        (tmp_path / f"sample_{i}.mp4").write_bytes(b"not a video at all")
    gen = PrecomputedGenerator(folder=str(tmp_path))
    gen.prepare(SCRIPTS, total_scripts=4)
    with pytest.raises(GenerationError, match="sample_1.mp4"):
        gen.generate(_request(SCRIPTS[1], tmp_path))
