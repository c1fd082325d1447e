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


def test_json_mapping_with_a_duplicate_id_is_refused(tmp_path):
    """json.loads keeps the last of two equal keys: the mapping must not silently pick one video."""
    for i in range(4):
        _video(tmp_path / f"v{i}.mp4")
    mapping = tmp_path / "map.json"
    mapping.write_text('{"0": "v0.mp4", "1": "v1.mp4", "2": "v2.mp4", "3": "v3.mp4", "1": "v2.mp4"}')
    with pytest.raises(PrecomputedVideosError, match=r"map.json: entry '1': script 1 is mapped twice \(also at entry '1'\)"):
        PrecomputedGenerator(folder=str(tmp_path), mapping=str(mapping)).prepare(SCRIPTS, total_scripts=4)
    mapping.write_text('{"0": "v0.mp4", "1": "v1.mp4", "2": "v2.mp4", "3": "v3.mp4", "01": "v2.mp4"}')
    with pytest.raises(PrecomputedVideosError, match=r"entry '01': script 1 is mapped twice \(also at entry '1'\)"):
        PrecomputedGenerator(folder=str(tmp_path), mapping=str(mapping)).prepare(SCRIPTS, total_scripts=4)


def test_csv_mapping_with_a_duplicate_id_names_both_lines(tmp_path):
    for i in range(4):
        _video(tmp_path / f"v{i}.mp4")
    mapping = tmp_path / "map.csv"
    mapping.write_text("script_id,path\n0,v0.mp4\n1,v1.mp4\n2,v2.mp4\n3,v3.mp4\n1,v3.mp4\n")
    with pytest.raises(PrecomputedVideosError, match=r"map.csv:6: script 1 is mapped twice \(also at line 3\)"):
        PrecomputedGenerator(folder=str(tmp_path), mapping=str(mapping)).prepare(SCRIPTS, total_scripts=4)


@pytest.mark.parametrize("content, match", [
    ('{"0": null}', r"map.json: entry '0': the path of script 0 is null, not a string"),
    ('{"0": 5}', r"entry '0': the path of script 0 is int"),
    ('{"0": ""}', r"entry '0': the path of script 0 is empty"),
    ('{"-1": "a.mp4"}', r"entry '-1': script id '-1' is not a non-negative integer"),
    ('{"1.0": "a.mp4"}', r"script id '1.0' is not"),
    ('[["0", "a.mp4"]]', r"map.json: expected a JSON object mapping script id -> path, got list"),
    ('{"0": "a.mp4",', r"map.json:1: not valid JSON"),
    ('[' * 100000, r"map.json: not valid JSON \(nested too deeply\)"),
])
def test_bad_json_mapping_entries_name_the_entry(tmp_path, content, match):
    mapping = tmp_path / "map.json"
    mapping.write_text(content)
    with pytest.raises(PrecomputedVideosError, match=match):
        PrecomputedGenerator(folder=str(tmp_path), mapping=str(mapping)).prepare(SCRIPTS[:1], total_scripts=4)


@pytest.mark.parametrize("content, match", [
    (b"script_id,path\n0\n", r"map.csv:2: 1 fields, the header has 2"),
    (b"script_id,path\n0,a,b.mp4\n", r"map.csv:2: 3 fields, the header has 2 \(quote a path that contains a comma\)"),
    (b"id,file\n0,a.mp4\n", r"map.csv: a CSV mapping needs the columns script_id,path \(the header has 'id', 'file'\)"),
    (b"script_id,path\n0,\xff\xfe.mp4\n", r"map.csv:2: not UTF-8 text"),
    (b"script_id,path\n0,\n", r"map.csv:2: the path of script 0 is empty"),
    (b"", r"the header has nothing"),
])
def test_bad_csv_mapping_rows_name_the_line(tmp_path, content, match):
    mapping = tmp_path / "map.csv"
    mapping.write_bytes(content)
    with pytest.raises(PrecomputedVideosError, match=match):
        PrecomputedGenerator(folder=str(tmp_path), mapping=str(mapping)).prepare(SCRIPTS[:1], total_scripts=4)


def test_csv_mapping_tolerates_a_bom_blank_lines_and_extra_columns(tmp_path):
    for i in range(2):
        _video(tmp_path / f"v {i}.mp4")
    mapping = tmp_path / "map.csv"
    mapping.write_bytes("\ufeffscript_id, path ,note\r\n 0 ,v 0.mp4,first\r\n\r\n1,\"v 1.mp4\",\r\n".encode())
    gen = PrecomputedGenerator(folder=str(tmp_path), mapping=str(mapping))
    gen.prepare(SCRIPTS[:2], total_scripts=4)
    assert gen.paths == {0: tmp_path / "v 0.mp4", 1: tmp_path / "v 1.mp4"}


def test_a_mapped_file_that_does_not_exist_is_found_before_any_work(tmp_path):
    _video(tmp_path / "v0.mp4")
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"0": "v0.mp4", "1": "v_1.mp4"}))
    with pytest.raises(PrecomputedVideosError, match=r"maps 1 script\(s\) to a file that does not exist: 1: .*v_1.mp4"):
        PrecomputedGenerator(folder=str(tmp_path), mapping=str(mapping)).prepare(SCRIPTS[:2], total_scripts=4)
    PrecomputedGenerator(folder=str(tmp_path), mapping=str(mapping)).prepare(SCRIPTS[:1], total_scripts=4)


def test_generated_sidecar_is_stamped_and_refreshed_after_replacement(tmp_path):
    """The harness path: prepare -> generate -> sidecar; the video is replaced; reading refreshes it."""
    from narrastream.adapters.base import read_sidecar, write_json_atomic

    for i in range(4):
        _video(tmp_path / f"sample_{i}.mp4")
    gen = PrecomputedGenerator(folder=str(tmp_path))
    gen.prepare(SCRIPTS, total_scripts=4)
    video = gen.generate(_request(SCRIPTS[2], tmp_path))
    side = tmp_path / "run" / "2-s0.json"
    write_json_atomic(side, video.to_sidecar("theirs", gen.capabilities))
    assert read_sidecar(side).num_frames == 8
    _video(tmp_path / "sample_2.mp4", frames=12)
    refreshed = read_sidecar(side, script_id=2, seed=0)
    assert refreshed.num_frames == 12 and refreshed.extra["size_bytes"] == (tmp_path / "sample_2.mp4").stat().st_size
