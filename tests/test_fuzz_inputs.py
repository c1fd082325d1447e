"""Property tests (Hypothesis) of the parsers that read outside input: mapping files, sidecars, script files.

The property for each: the parser returns a typed object equal to what an independent reading of the
input says, or raises its own error type whose message names the file (and the entry, line or
field); never another exception, never a silently different value.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from narrastream.adapters.base import Capabilities, GeneratedVideo, SidecarError, read_sidecar
from narrastream.adapters.precomputed import PrecomputedVideosError, read_mapping_file
from narrastream.data.loader import ScriptFileError, ScriptLimits, parse_script_file

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ID = re.compile(r"[0-9]+")

# --------------------------------------------------------------------------------- strategies

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
#: ids a mapping may hold: canonical, padded, zero-led, negative, non-ASCII digits, junk
good_ids = (st.integers(0, 6).map(str) | st.integers(0, 6).map(lambda i: f" {i} ")
            | st.integers(0, 6).map(lambda i: f"0{i}"))
id_texts = good_ids | st.integers(-5, -1).map(str) | st.sampled_from(["", "x", "1.0", "1e2", "٣", "+3", "0x1", "³"]) \
    | st.text(max_size=4)
safe_paths = st.text(alphabet="abcxyz019_-. /", min_size=1, max_size=12).filter(
    lambda p: p.strip() and not p.startswith(("/", "~")))
path_values = safe_paths | st.sampled_from(["", "   ", "a\x00b"]) | json_values
#: mostly well-formed entries (so duplicates and exact values are checked), some of any shape
entries = st.tuples(good_ids, safe_paths) | st.tuples(good_ids, safe_paths) | st.tuples(id_texts, path_values)


def _valid_id(key: Any) -> bool:
    return isinstance(key, str) and ID.fullmatch(key.strip()) is not None


def _valid_path(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip()) and "\x00" not in value


def _expected_mapping(folder: Path, pairs: list[tuple[Any, Any]]) -> dict[int, Path] | None:
    """The mapping as the format's rules read it, or None when they say it must be refused."""
    out: dict[int, Path] = {}
    for key, value in pairs:
        if not (_valid_id(key) and _valid_path(value)) or int(key.strip()) in out:
            return None
        out[int(key.strip())] = folder / value
    return out


def _check_mapping(path: Path, expected: dict[int, Path] | None) -> None:
    try:
        got = read_mapping_file(path)
    except PrecomputedVideosError as exc:
        assert str(path) in str(exc), exc
        assert expected is None, f"refused a valid mapping: {exc}"
        return
    assert expected is not None, f"accepted a mapping its rules refuse: {got}"
    assert got == expected


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# ------------------------------------------------------------------------------- JSON mappings


@SETTINGS
@given(pairs=st.lists(entries, max_size=6))
def test_json_mapping_is_read_exactly_or_refused(folder: Path, pairs: list[tuple[str, Any]]) -> None:
    path = folder / "map.json"
    # written by hand so that duplicate keys survive, as a person's file may hold them
    path.write_text("{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}")
    _check_mapping(path, _expected_mapping(folder, pairs))


@SETTINGS
@given(data=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_json_mapping_bytes_give_a_mapping_or_a_named_error(folder: Path, data: bytes) -> None:
    _mapping_or_named_error(folder / "raw.json", data)


# -------------------------------------------------------------------------------- CSV mappings

cells = st.text(max_size=8) | id_texts | safe_paths
#: rows mostly of the header's shape: [id, path] for the first two headers below
good_rows = st.tuples(good_ids, safe_paths).map(list)
rows_of = st.lists(st.lists(cells, max_size=4) | good_rows | good_rows, max_size=6)
headers = st.sampled_from([["script_id", "path"], ["path", "script_id"], [" script_id ", "path", "note"],
                           ["id", "path"], ["script_id", "path", "path"], ["script_id"]])


@SETTINGS
@given(header=headers, rows=rows_of)
def test_csv_mapping_is_read_exactly_or_refused(folder: Path, header: list[str], rows: list[list[str]]) -> None:
    path = folder / "map.csv"
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buffer.getvalue())
    columns = [c.strip() for c in header]
    expected: dict[int, Path] | None
    if not {"script_id", "path"} <= set(columns) or len(set(columns)) != len(columns):
        expected = None
    else:
        kept = [r for r in rows if any(cell.strip() for cell in r)]  # blank lines are skipped
        if any(len(r) != len(columns) for r in kept):
            expected = None
        else:
            sid, where = columns.index("script_id"), columns.index("path")
            expected = _expected_mapping(folder, [(r[sid], r[where]) for r in kept])
    _check_mapping(path, expected)


@SETTINGS
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(lambda t: ("script_id,path\n" + t).encode()))
def test_any_csv_mapping_bytes_give_a_mapping_or_a_named_error(folder: Path, data: bytes) -> None:
    _mapping_or_named_error(folder / "raw.csv", data)


def _mapping_or_named_error(path: Path, data: bytes) -> None:
    """``data`` as a mapping file gives script ids -> paths, or a PrecomputedVideosError naming the file."""
    path.write_bytes(data)
    try:
        got = read_mapping_file(path)
    except PrecomputedVideosError as exc:
        assert str(path) in str(exc)
        return
    assert all(isinstance(k, int) and k >= 0 and isinstance(v, Path) for k, v in got.items())


# ------------------------------------------------------------------------------------ sidecars

finite = st.floats(allow_nan=False, allow_infinity=False)
valid_fields: dict[str, st.SearchStrategy] = {
    "path": st.text(min_size=1, max_size=10).filter(lambda p: "\x00" not in p),
    "script_id": st.integers(0, 10**6),
    "seed": st.integers(-(2**40), 2**40),
    "fps": st.floats(min_value=1e-3, max_value=1e4) | st.integers(1, 240),
    "num_frames": st.integers(0, 10**6),
    "width": st.integers(1, 8192),
    "height": st.integers(1, 8192),
    "switch_frames": st.none() | st.lists(st.integers(0, 10**4), max_size=5),
    "timings": st.dictionaries(st.text(max_size=6), finite | st.integers(0, 10**6), max_size=3),
    "peak_memory_bytes": st.none() | st.integers(0, 2**50),
    "device": st.none() | st.text(max_size=8),
    "device_count": st.none() | st.integers(0, 64),
    "extra": st.dictionaries(st.text(max_size=6), json_values, max_size=3),
    "file_size": st.none() | st.integers(0, 2**40),
    "file_mtime_ns": st.none() | st.integers(0, 2**62),
}
REQUIRED = ("path", "script_id", "seed", "fps", "num_frames", "width", "height")
not_int = st.text(max_size=4) | st.booleans() | finite | st.lists(st.integers(), max_size=2)
wrong_values: dict[str, st.SearchStrategy] = {
    "path": st.just("") | st.integers() | st.none() | st.booleans(),
    "script_id": not_int | st.integers(max_value=-1) | st.none(),
    "seed": not_int | st.none(),
    "fps": st.text(max_size=4) | st.booleans() | st.none() | st.floats(max_value=0)
    | st.sampled_from([math.inf, -math.inf, math.nan]),
    "num_frames": not_int | st.integers(max_value=-1),
    "width": not_int | st.integers(max_value=0),
    "height": not_int | st.integers(max_value=0),
    "switch_frames": st.text(min_size=1, max_size=4) | st.lists(st.text(max_size=2) | st.booleans(), min_size=1,
                                                                max_size=3) | st.integers(),
    "timings": st.lists(finite, min_size=1, max_size=2) | st.dictionaries(st.text(max_size=3), st.text(max_size=3)
                                                                          | st.booleans(), min_size=1, max_size=2),
    "peak_memory_bytes": not_int | st.integers(max_value=-1),
    "device": st.integers() | st.booleans() | st.lists(st.text(), max_size=1),
    "device_count": not_int | st.integers(max_value=-1),
    "extra": st.text(max_size=4) | st.integers() | st.lists(st.integers(), max_size=2),
    "file_size": not_int | st.integers(max_value=-1),
    "file_mtime_ns": not_int,
}


@st.composite
def sidecars(draw) -> dict[str, Any]:
    data = {name: draw(strategy) for name, strategy in valid_fields.items()
            if name in REQUIRED or draw(st.booleans())}
    data.update(draw(st.dictionaries(st.sampled_from(["model", "request", "capabilities", "x"]), json_values,
                                     max_size=2)))
    return data


@SETTINGS
@given(data=sidecars())
def test_a_valid_sidecar_round_trips_with_its_types(data: dict[str, Any]) -> None:
    video = GeneratedVideo.from_sidecar(data, "side.json")
    for name, value in data.items():
        if name in valid_fields:
            got = getattr(video, name)
            if name == "path":
                assert got == Path(value)
            else:
                assert got == value and (value is None or type(got) is type(value) or name in ("fps", "timings"))
    assert isinstance(video.fps, float) and all(isinstance(v, float) for v in video.timings.values())
    again = GeneratedVideo.from_sidecar(video.to_sidecar("m", Capabilities()), "side.json")
    assert again == video


@SETTINGS
@given(data=sidecars(), field=st.sampled_from(sorted(wrong_values)), st_data=st.data())
def test_a_wrong_field_is_refused_by_name(data: dict[str, Any], field: str, st_data) -> None:
    data[field] = st_data.draw(wrong_values[field])
    with pytest.raises(SidecarError) as err:
        GeneratedVideo.from_sidecar(data, "side.json")
    assert str(err.value).startswith("side.json: field ") and f"field {field}" in str(err.value)


@SETTINGS
@given(data=sidecars(), missing=st.sampled_from(REQUIRED))
def test_a_missing_field_is_refused_by_name(data: dict[str, Any], missing: str) -> None:
    del data[missing]
    with pytest.raises(SidecarError, match=rf"side.json: field {missing}: .*missing"):
        GeneratedVideo.from_sidecar(data, "side.json")


@SETTINGS
@given(data=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode())
       | sidecars().map(lambda d: json.dumps(d).encode()))
def test_any_sidecar_file_gives_a_video_or_a_named_error(folder: Path, data: bytes) -> None:
    side = folder / "0-s0.json"
    side.write_bytes(data)
    try:
        video = read_sidecar(side)
    except SidecarError as exc:
        assert str(side) in str(exc)
        return
    assert isinstance(video, GeneratedVideo) and video.path.is_absolute() and isinstance(video.fps, float)


# -------------------------------------------------------------------------------- script files

LIMITS = ScriptLimits(max_prompt_chars=20, max_line_chars=120)
prompt_texts = st.text(max_size=24) | st.sampled_from(["  ", "a\u2028b", "\u0085x", "ok", "e\u0301"])


@SETTINGS
@given(scripts=st.lists(st.lists(prompt_texts, max_size=4), max_size=5), ascii_only=st.booleans())
def test_script_file_is_read_exactly_or_refused(folder: Path, scripts: list[list[str]], ascii_only: bool) -> None:
    path = folder / "scripts.jsonl"
    lines = [json.dumps({"prompts": prompts}, ensure_ascii=ascii_only) for prompts in scripts]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    valid = (bool(scripts) and all(len(line) <= LIMITS.max_line_chars for line in lines)
             and all(p and all(x.strip() and len(x) <= LIMITS.max_prompt_chars for x in p) for p in scripts))
    try:
        got = parse_script_file(path, limits=LIMITS)
    except ScriptFileError as exc:
        assert str(exc).startswith(str(path)) and not valid, exc
        return
    assert valid and got == [tuple(p) for p in scripts]


@SETTINGS
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".json"]))
def test_any_script_file_bytes_give_scripts_or_a_named_error(folder: Path, data: bytes, suffix: str) -> None:
    path = folder / f"raw{suffix}"
    path.write_bytes(data)
    try:
        got = parse_script_file(path, limits=LIMITS)
    except ScriptFileError as exc:
        assert str(exc).startswith(str(path))
        return
    assert got and all(isinstance(p, tuple) and p and all(isinstance(x, str) and x.strip() for x in p) for p in got)


def test_an_adapter_building_a_wrong_video_fails_naming_the_field() -> None:
    """Caught when the adapter builds it, not after a sidecar every later run would refuse is written."""
    with pytest.raises(SidecarError, match=r"the video of script 3 seed 0: field num_frames: .*got True"):
        GeneratedVideo(path=Path("v.mp4"), script_id=3, seed=0, fps=16.0, num_frames=True, width=8, height=8)
    with pytest.raises(SidecarError, match=r"field switch_frames.1: .*got '16'"):
        GeneratedVideo(path=Path("v.mp4"), script_id=3, seed=0, fps=16.0, num_frames=9, width=8, height=8,
                       switch_frames=[8, "16"])
