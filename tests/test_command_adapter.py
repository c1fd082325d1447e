"""The command adapter: the JSON contract of runners/README.md, exit codes, timeouts, logs."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from narrastream.adapters.base import GenerationError, GenerationRequest
from narrastream.adapters.command import CommandGenerator
from narrastream.data.script import Script

RUNNER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from narrastream.video.encode import write_mp4

    request = json.load(open(sys.argv[1]))
    mode = sys.argv[2] if len(sys.argv) > 2 else "ok"
    print("runner got", request["script_id"], "prompts", len(request["prompts"]))
    if mode == "fail":
        print("CUDA out of memory (pretend)", file=sys.stderr)
        sys.exit(7)
    if mode == "sleep":
        import time; time.sleep(30)
    if mode == "nothing":
        sys.exit(0)
    n = request["frames_per_segment"] * len(request["prompts"])
    frames = np.full((n, request["height"], request["width"], 3), 30 * request["seed"] % 255, np.uint8)
    write_mp4(request["output_path"], frames, fps=request["fps"])
    fps_seg = request["frames_per_segment"]
    json.dump({"switch_frames": [k * fps_seg for k in range(1, len(request["prompts"]))],
               "timings": {"core_dit": 1.5}, "device": "cpu", "sampler": "flow-4step"},
              open(request["sidecar_path"], "w"))
""")


@pytest.fixture()
def runner(tmp_path) -> Path:
    path = tmp_path / "my_runner.py"
    path.write_text(RUNNER)
    return path


def _request(tmp_path: Path, seed: int = 1) -> GenerationRequest:
    script = Script(id=12, prompts=("a cat sits", "the cat stands", "the cat leaves"))
    return GenerationRequest(script=script, seed=seed, output_path=tmp_path / "out" / "12-s1.mp4", fps=4,
                             seconds_per_segment=2, width=48, height=32)


def test_contract_round_trip(tmp_path, runner):
    gen = CommandGenerator(command=[sys.executable, str(runner), "{request}"])
    video = gen.generate(_request(tmp_path))
    assert video.num_frames == 24 and video.fps == pytest.approx(4) and (video.width, video.height) == (48, 32)
    assert video.switch_frames == [8, 16]
    assert video.timings["core_dit"] == 1.5 and video.timings["end_to_end"] > 0
    assert video.device == "cpu" and video.extra["sampler"] == "flow-4step"
    assert video.extra["command"]["exit_code"] == 0
    request = json.loads((tmp_path / "out" / "12-s1.request.json").read_text())
    assert request["prompts"] == ["a cat sits", "the cat stands", "the cat leaves"] and request["seed"] == 1
    assert "runner got 12 prompts 3" in (tmp_path / "out" / "12-s1.log").read_text()


def test_request_path_is_appended_without_placeholder(tmp_path, runner):
    video = CommandGenerator(command=f"{sys.executable} {runner}").generate(_request(tmp_path))
    assert video.path.is_file()


def test_nonzero_exit_is_reported_with_log_tail(tmp_path, runner):
    gen = CommandGenerator(command=[sys.executable, str(runner), "{request}", "fail"])
    with pytest.raises(GenerationError, match="exited with code 7") as info:
        gen.generate(_request(tmp_path))
    assert "CUDA out of memory" in str(info.value) and info.value.details["exit_code"] == 7


def test_timeout_kills_the_program(tmp_path, runner):
    gen = CommandGenerator(command=[sys.executable, str(runner), "{request}", "sleep"], timeout_s=1.5)
    with pytest.raises(GenerationError, match="timed out after 2 s"):
        gen.generate(_request(tmp_path))


def test_exit_zero_without_video_is_an_error(tmp_path, runner):
    gen = CommandGenerator(command=[sys.executable, str(runner), "{request}", "nothing"])
    with pytest.raises(GenerationError, match="wrote no video"):
        gen.generate(_request(tmp_path))


def test_missing_program_is_an_error(tmp_path):
    with pytest.raises(GenerationError, match="could not start"):
        CommandGenerator(command=["/nonexistent/generator"]).generate(_request(tmp_path))
