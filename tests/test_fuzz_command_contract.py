"""Property tests (Hypothesis) of the ``command`` contract's response: the sidecar JSON an external
generator program writes beside its video (narrastream/adapters/command_sidecar.py).

The property, for any bytes the program writes: either a typed :class:`ProgramSidecar` whose values
are what the contract allows (and that the final sidecar can hold as strict JSON), or a
:class:`GenerationError` naming the file and the field -- never another exception, never a silently
wrong value. Then the same through a real program run by :class:`CommandGenerator`.
Examples are derandomized; nothing is timed."""

from __future__ import annotations

import json
import math
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from narrastream.adapters.base import Capabilities, GeneratedVideo, GenerationError, GenerationRequest
from narrastream.adapters.command import CommandGenerator
from narrastream.adapters.command_sidecar import MAX_PROGRAM_SIDECAR_BYTES, ProgramSidecar, read_program_sidecar
from narrastream.data.script import Script

FUZZ = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

numbers = st.one_of(st.integers(), st.integers(min_value=10**300, max_value=10**320),
                    st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 400), st.booleans(),
                    st.sampled_from(["12", "1.5", "nan", ""]))
scalars = st.one_of(st.none(), numbers, st.text(max_size=10))
json_values = st.recursive(
    scalars, lambda children: st.one_of(st.lists(children, max_size=5),
                                        st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=20)
switch_frames = st.one_of(st.lists(st.integers(-2, 60), max_size=7), st.lists(numbers, max_size=5), json_values)
reported = st.fixed_dictionaries({}, optional={
    "switch_frames": switch_frames,
    "timings": st.one_of(st.dictionaries(st.sampled_from(["end_to_end", "core_dit", "pixel_fps", "a b", ""]),
                                         numbers, max_size=4), json_values),
    "peak_memory_bytes": st.one_of(numbers, json_values),
    "device": st.one_of(st.sampled_from(["cuda:0", "cpu"]), scalars),
    "device_count": st.one_of(st.integers(-1, 8), numbers),
    "command": json_values,
    "official": json_values,
    "sampler": scalars,
})


def render(obj: Any, style: str) -> bytes:
    text = json.dumps(obj, indent=2 if style == "indented" else None)  # NaN / Infinity as Python writes them
    return text.encode("utf-16" if style == "utf16" else "utf-8")


contents = st.one_of(
    st.builds(render, st.one_of(reported, reported, json_values), st.sampled_from(["plain", "indented", "utf16"])),
    st.binary(max_size=40),
    st.integers(1, 3000).map(lambda d: ("[" * d + "]" * d).encode()),
    st.text(max_size=40).map(str.encode),
)


@pytest.fixture(scope="module")
def sidecar_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("program") / "12-s1.json"


def strict_json(value: Any) -> str:
    return json.dumps(value, allow_nan=False)


@FUZZ
@given(content=contents, segments=st.integers(1, 6))
def test_program_sidecar_is_typed_or_an_error_naming_file_and_field(sidecar_file, content, segments):
    sidecar_file.write_bytes(content)
    try:
        report = read_program_sidecar(sidecar_file, num_segments=segments)
    except GenerationError as exc:
        message = str(exc)
        assert message.startswith(f"{sidecar_file}:") and "\n" not in message
        event("refused")
        return
    event("typed" + (" with switch frames" if report.switch_frames is not None else ""))
    assert isinstance(report, ProgramSidecar)
    if report.switch_frames is not None:
        starts = report.switch_frames
        if len(starts) == segments and starts and starts[0] == 0:
            starts = starts[1:]
        assert len(starts) == segments - 1 and all(type(f) is int for f in starts)
        assert all(b > a for a, b in zip([0, *starts], starts))  # strictly increasing, after frame 0
    for name, value in (report.timings or {}).items():
        assert isinstance(name, str) and type(value) is float and math.isfinite(value)
    for count in (report.peak_memory_bytes, report.device_count):
        assert count is None or (type(count) is int and count >= 0)  # never a boolean read as 1
    assert report.device is None or isinstance(report.device, str)
    assert "command" not in report.extra()  # the adapter's own facts cannot be overwritten
    # the final sidecar holds it as strict JSON
    video = GeneratedVideo(path=sidecar_file.with_suffix(".mp4"), script_id=12, seed=1, fps=4.0, num_frames=24,
                           width=48, height=32, switch_frames=report.switch_frames,
                           timings={"end_to_end": 1.0, **(report.timings or {})},
                           peak_memory_bytes=report.peak_memory_bytes, device=report.device,
                           device_count=report.device_count, extra={**report.extra(), "command": {}})
    strict_json(video.to_sidecar("m", Capabilities()))


@FUZZ
@given(segments=st.integers(1, 6), data=st.data())
def test_well_formed_program_sidecars_are_read_as_written(sidecar_file, segments, data):
    starts = sorted(data.draw(st.sets(st.integers(1, 10_000), min_size=segments - 1, max_size=segments - 1)))
    switch = data.draw(st.sampled_from([starts, [0, *starts]]))
    written = {"switch_frames": switch,
               "timings": data.draw(st.dictionaries(st.text(max_size=8), st.floats(-1e6, 1e6) | st.integers(0, 10**6),
                                                    max_size=4)),
               "peak_memory_bytes": data.draw(st.integers(0, 2**50)), "device": data.draw(st.text(max_size=8)),
               "device_count": data.draw(st.integers(0, 16)), "official": data.draw(json_values.filter(
                   lambda v: "nan" not in json.dumps(v).lower() and "infinity" not in json.dumps(v).lower()))}
    sidecar_file.write_text(json.dumps(written))
    report = read_program_sidecar(sidecar_file, num_segments=segments)
    assert report.switch_frames == switch and report.timings == {k: float(v) for k, v in written["timings"].items()}
    assert (report.peak_memory_bytes, report.device, report.device_count) == (
        written["peak_memory_bytes"], written["device"], written["device_count"])
    assert report.extra() == {"official": written["official"]}


@pytest.mark.parametrize("content, where", [
    (b'{"timings": [1.5, 2.0]}', "timings: Input should be a valid dictionary"),
    (b'{"timings": {"core_dit": "fast"}}', "timings.core_dit: Input should be a valid number"),
    (b'{"timings": {"core_dit": NaN}}', "NaN is not a JSON number"),
    (b'{"device_count": true}', "device_count: Input should be a valid integer (got True)"),
    (b'{"peak_memory_bytes": -1}', "peak_memory_bytes: Input should be greater than or equal to 0"),
    (b'{"switch_frames": [16, 8]}', "switch_frames[1]: 8 after 16"),
    (b'{"switch_frames": [8]}', "switch_frames: 3 prompts need 2 switch frames"),
    (b'{"switch_frames": [0, 8, 8]}', "switch_frames[2]: 8 after 8"),
    (b'{"switch_frames": [8, "16"]}', "switch_frames[1]: Input should be a valid integer"),
    (b'{"command": "mine"}', "command: reserved for the adapter's own facts"),
    (b'{"device": "\xff"}', "not UTF-8 text (byte 12)"),
    (b"[1, 2]", "must be a JSON object, not list"),
    (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
])
def test_bad_program_sidecars_name_the_field(tmp_path, content, where):
    path = tmp_path / "12-s1.json"
    path.write_bytes(content)
    with pytest.raises(GenerationError) as caught:
        read_program_sidecar(path, num_segments=3)
    assert str(caught.value).startswith(f"{path}") and where in str(caught.value)


def test_good_program_sidecar_and_the_size_cap(tmp_path):
    path = tmp_path / "12-s1.json"
    path.write_text(json.dumps({"switch_frames": [0, 8, 16], "timings": {"core_dit": 1, "pixel_fps": 12.5},
                                "peak_memory_bytes": 1024, "device": "cuda:0", "device_count": 1,
                                "official": {"commit": "abc"}}))
    report = read_program_sidecar(path, num_segments=3)
    assert report.switch_frames == [0, 8, 16] and report.timings == {"core_dit": 1.0, "pixel_fps": 12.5}
    assert report.extra() == {"official": {"commit": "abc"}}
    assert read_program_sidecar(tmp_path / "none.json", num_segments=3) is None
    path.write_bytes(b" " * (MAX_PROGRAM_SIDECAR_BYTES + 1))
    with pytest.raises(GenerationError, match="more than the"):
        read_program_sidecar(path, num_segments=3)


# ----------------------------------------------------------------------------- through a real program
RUNNER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from narrastream.video.encode import write_mp4

    request = json.load(open(sys.argv[1]))
    n = request["frames_per_segment"] * len(request["prompts"])
    write_mp4(request["output_path"], np.zeros((n, request["height"], request["width"], 3), np.uint8),
              fps=request["fps"])
    with open(request["sidecar_path"], "wb") as f:
        f.write(bytes.fromhex(sys.argv[2]))
""")


@pytest.mark.parametrize("sidecar, where", [
    (b'{"timings": [1.5]}', "timings: Input should be a valid dictionary"),  # was: TypeError in the harness
    (b'{"switch_frames": [16, 8]}', "switch_frames[1]: 8 after 16"),  # was: accepted
    (b'{"command": {"exit_code": 0}}', "command: reserved"),  # was: the adapter's facts overwritten
])
def test_command_generator_reports_the_bad_field(tmp_path, sidecar, where):
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    generator = CommandGenerator(command=[sys.executable, str(runner), "{request}", sidecar.hex()])
    request = GenerationRequest(script=Script(id=12, prompts=("a cat sits", "the cat stands", "the cat leaves")),
                                seed=1, output_path=tmp_path / "out" / "12-s1.mp4", fps=4, seconds_per_segment=2,
                                width=48, height=32)
    with pytest.raises(GenerationError) as caught:
        generator.generate(request)
    assert where in str(caught.value) and str(tmp_path / "out" / "12-s1.json") in str(caught.value)
    assert caught.value.details["exit_code"] == 0 and caught.value.details["log"].endswith("12-s1.log")
