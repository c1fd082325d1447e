"""The synthetic generator: deterministic, persistent characters, and faults that break one thing each."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from narrastream.adapters import GENERATORS, build_generator
from narrastream.adapters.base import GenerationRequest, PromptSwitching
from narrastream.adapters.synthetic import (
    SHAPES,
    SyntheticGenerator,
    SyntheticScene,
    character_appearance,
    find_characters,
)
from narrastream.data.script import Script
from narrastream.data.taxonomy import load_taxonomy
from narrastream.video import decode_video, probe_video

# Our own short prompts (never the official sentences). Segment 2 names nobody: it keeps segment 1's cast.
SCRIPT = Script(
    id=7,
    prompts=(
        "At the cafe corner table, Noah stirs a cup while Ava reads a menu.",
        "At the cafe corner table, Noah slides the sugar bowl towards Ava.",
        "The waiter brings two plates to the cafe corner table.",
        "At the cafe corner table, Kai arrives and sits beside Ava.",
    ),
    scene="cafe corner table",
)
FPS, SECONDS, WIDTH, HEIGHT = 4.0, 2.0, 128, 96
PER_SEGMENT = int(FPS * SECONDS)
COLOUR_TOLERANCE = 20  # grey levels, after yuv420 + crf 18


def request(tmp_path: Path, name: str = "v.mp4", script: Script = SCRIPT, seed: int = 1) -> GenerationRequest:
    return GenerationRequest(
        script=script, seed=seed, output_path=tmp_path / name, fps=FPS, seconds_per_segment=SECONDS,
        width=WIDTH, height=HEIGHT,
    )


def raw_frames(faults: list[dict[str, Any]] | None, tmp_path: Path) -> np.ndarray:
    scene = SyntheticGenerator(faults=faults).scene(request(tmp_path))
    return np.stack(list(scene.frames()))


def generate(tmp_path: Path, faults: list[dict[str, Any]] | None = None) -> tuple[SyntheticScene, np.ndarray]:
    generator = SyntheticGenerator(faults=faults)
    req = request(tmp_path, "faulty.mp4" if faults else "clean.mp4")
    generator.generate(req)
    return generator.scene(req), decode_video(req.output_path)[0]


def colour_at(frame: np.ndarray, xy: tuple[int, int]) -> np.ndarray:
    """Mean colour of the 3x3 pixels around ``xy``: robust to single-pixel coding noise."""
    x, y = xy
    return frame[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).mean(axis=0)


def close(a: np.ndarray, b: tuple[int, int, int] | np.ndarray) -> bool:
    return bool(np.abs(np.asarray(a, float) - np.asarray(b, float)).max() <= COLOUR_TOLERANCE)


def colour_present(frame: np.ndarray, colour: tuple[int, int, int], band: int) -> bool:
    """Whether a 3x3 patch of ``colour`` shows up below the stripe (single stray pixels do not count)."""
    near = (np.abs(frame[band:].astype(int) - colour).max(axis=-1) <= COLOUR_TOLERANCE)
    return bool((near[:-2, :-2] & near[1:-1, 1:-1] & near[2:, 2:]).any())


def segment_slice(k: int) -> slice:
    return slice(k * PER_SEGMENT, (k + 1) * PER_SEGMENT)


# --------------------------------------------------------------------------------- the generator


def test_same_request_gives_identical_frames(tmp_path: Path) -> None:
    generator = SyntheticGenerator()
    a = generator.generate(request(tmp_path, "a.mp4"))
    b = SyntheticGenerator().generate(request(tmp_path, "b.mp4"))
    assert np.array_equal(decode_video(a.path)[0], decode_video(b.path)[0])
    assert a.path.read_bytes() == b.path.read_bytes()
    other_seed = SyntheticGenerator().generate(request(tmp_path, "c.mp4", seed=2))
    assert not np.array_equal(decode_video(a.path)[0], decode_video(other_seed.path)[0])


def test_generated_video_fields(tmp_path: Path) -> None:
    generator = SyntheticGenerator()
    video = generator.generate(request(tmp_path))
    n = 4 * PER_SEGMENT
    assert (video.path, video.script_id, video.seed) == (tmp_path / "v.mp4", 7, 1)
    assert (video.fps, video.num_frames, video.width, video.height) == (FPS, n, WIDTH, HEIGHT)
    assert video.switch_frames == [8, 16, 24]
    assert set(video.timings) == {"end_to_end", "render", "encode"}
    assert all(v >= 0 for v in video.timings.values())
    assert (video.device, video.device_count) == ("cpu", 0)
    assert list(video.extra["characters"]) == ["Noah", "Ava", "Kai"]
    assert video.extra["characters"]["Kai"] == character_appearance("Kai").to_dict()
    assert video.extra["presence"] == [["Noah", "Ava"], ["Noah", "Ava"], ["Noah", "Ava"], ["Ava", "Kai"]]
    assert video.extra["faults"] == []
    info = probe_video(video.path)
    assert (info.num_frames, info.fps, info.width, info.height) == (n, FPS, WIDTH, HEIGHT)
    sidecar = video.to_sidecar("synthetic", generator.capabilities)
    assert json.loads(json.dumps(sidecar))["capabilities"]["switching"] == PromptSwitching.NATIVE.value


def test_registry_and_plain_config_values(tmp_path: Path) -> None:
    config = {"crf": 23, "faults": [{"kind": "frozen", "segment": 1}], "motion_amplitude": 0.1}
    generator = build_generator("synthetic", **json.loads(json.dumps(config)))
    assert isinstance(generator, SyntheticGenerator) and GENERATORS.get("synthetic") is SyntheticGenerator
    assert generator.faults == [{"kind": "frozen", "segment": 1}]
    assert generator.generate(request(tmp_path)).extra["faults"] == [{"kind": "frozen", "segment": 1}]


def test_characters_keep_their_look_in_every_segment(tmp_path: Path) -> None:
    scene, frames = generate(tmp_path)
    for name in scene.characters:
        look = character_appearance(name).colour
        seen = [k for k in range(scene.num_segments) if name in scene.drawn(k)]
        assert seen, name
        for k in seen:
            for t in (k * PER_SEGMENT, (k + 1) * PER_SEGMENT - 1):
                assert close(colour_at(frames[t], scene.position(name, t)), look), (name, k, t)


def test_a_character_looks_the_same_in_another_script(tmp_path: Path) -> None:
    other = Script(id=99, prompts=("In the library reading room, Ava shelves a book.", "Kai helps Ava."), scene="x")
    video = SyntheticGenerator().generate(request(tmp_path, "other.mp4", script=other, seed=5))
    mine = SyntheticGenerator().generate(request(tmp_path, "mine.mp4"))
    assert video.extra["characters"]["Ava"] == mine.extra["characters"]["Ava"]


def test_cast_looks_are_distinct() -> None:
    looks = {name: character_appearance(name) for name in load_taxonomy().cast}
    for a, b in itertools.combinations(looks, 2):
        distance = np.linalg.norm(np.subtract(looks[a].colour, looks[b].colour))
        assert distance >= 60, (a, b, distance)
    assert max(sum(look.shape == s for look in looks.values()) for s in SHAPES) <= 3


def test_content_switches_at_every_prompt_switch(tmp_path: Path) -> None:
    scene, frames = generate(tmp_path)
    stripe = [frames[k * PER_SEGMENT, : scene.band // 2, :4].reshape(-1, 3).mean(axis=0) for k in range(4)]
    for k in range(3):
        assert np.abs(stripe[k] - stripe[k + 1]).max() > 30
    assert not colour_present(frames[3 * PER_SEGMENT], character_appearance("Noah").colour, scene.band)


def test_motion_is_smooth_and_stays_in_frame(tmp_path: Path) -> None:
    scene = SyntheticGenerator().scene(request(tmp_path))
    path = [scene.position("Ava", t) for t in range(scene.num_frames)]
    steps = [max(abs(x1 - x0), abs(y1 - y0)) for (x0, y0), (x1, y1) in zip(path, path[1:])]
    assert len(set(path)) > scene.num_frames // 2  # it moves
    assert max(steps) <= 0.15 * WIDTH * 2 * np.pi / 3.0 / FPS + 1  # amplitude x fastest angular speed
    half = scene.size // 2
    assert all(half <= x <= WIDTH - half and scene.band + half <= y <= HEIGHT - half for x, y in path)


def test_user_scripts_without_cast_names() -> None:
    prompts = ("On the pier, Marguerite feeds the gulls.", "Then Bertrand joins Marguerite. The gulls scatter.")
    assert find_characters(prompts, load_taxonomy().cast) == ["Marguerite", "Bertrand"]
    assert find_characters(("Avalon glows while Noah and Nora talk.",), ["Ava", "Noah", "Nora"]) == ["Noah", "Nora"]


# ----------------------------------------------------------------------------------------- faults


def test_frozen_segment(tmp_path: Path) -> None:
    clean, faulty = raw_frames(None, tmp_path), raw_frames([{"kind": "frozen", "segment": 1}], tmp_path)
    frozen = faulty[segment_slice(1)]
    assert all(np.array_equal(f, frozen[0]) for f in frozen)
    assert np.array_equal(frozen[0], clean[PER_SEGMENT])
    assert not all(np.array_equal(f, clean[PER_SEGMENT]) for f in clean[segment_slice(1)])
    others = np.r_[0:PER_SEGMENT, 2 * PER_SEGMENT : 4 * PER_SEGMENT]
    assert np.array_equal(faulty[others], clean[others])
    _, decoded = generate(tmp_path, [{"kind": "frozen", "segment": 1}])
    _, moving = generate(tmp_path)

    def largest_change(frames: np.ndarray) -> float:  # x264 may refine a static picture slightly
        return max(float(np.abs(f.astype(int) - frames[0]).mean()) for f in frames)

    assert largest_change(decoded[segment_slice(1)]) < 0.5 < 2 < largest_change(moving[segment_slice(1)])


def test_flicker(tmp_path: Path) -> None:
    clean = raw_frames(None, tmp_path).astype(int)
    faulty = raw_frames([{"kind": "flicker", "segment": 2, "amplitude": 40}], tmp_path).astype(int)
    for j, t in enumerate(range(2 * PER_SEGMENT, 3 * PER_SEGMENT)):
        assert np.array_equal(faulty[t], np.clip(clean[t] + (40 if j % 2 == 0 else -40), 0, 255))
    others = np.r_[0 : 2 * PER_SEGMENT, 3 * PER_SEGMENT : 4 * PER_SEGMENT]
    assert np.array_equal(faulty[others], clean[others])
    _, decoded = generate(tmp_path, [{"kind": "flicker", "segment": 2}])  # default: 60 grey levels
    means = decoded[segment_slice(2)].reshape(PER_SEGMENT, -1).mean(axis=1)
    assert all(abs(a - b) > 60 for a, b in zip(means, means[1:]))


def test_identity_swap(tmp_path: Path) -> None:
    fault = {"kind": "identity_swap", "segment": 1, "characters": ["Noah", "Ava"]}
    scene, frames = generate(tmp_path, [fault])
    noah, ava = character_appearance("Noah").colour, character_appearance("Ava").colour
    assert close(colour_at(frames[0], scene.position("Noah", 0)), noah)
    for t in (PER_SEGMENT, 3 * PER_SEGMENT - 1):
        assert close(colour_at(frames[t], scene.position("Noah", t)), ava)
        assert close(colour_at(frames[t], scene.position("Ava", t)), noah)
    clean = raw_frames(None, tmp_path)
    assert np.array_equal(raw_frames([fault], tmp_path)[:PER_SEGMENT], clean[:PER_SEGMENT])
    kai = SyntheticGenerator(faults=[{"kind": "identity_swap", "segment": 3}]).generate(request(tmp_path, "k.mp4"))
    assert kai.extra["faults"][0]["characters"] == ["Noah", "Ava"]  # default: the first two


def test_drop_character(tmp_path: Path) -> None:
    scene, frames = generate(tmp_path, [{"kind": "drop_character", "segment": 1, "character": "Ava"}])
    ava, noah = character_appearance("Ava").colour, character_appearance("Noah").colour
    assert colour_present(frames[0], ava, scene.band)
    assert not any(colour_present(f, ava, scene.band) for f in frames[PER_SEGMENT:])
    assert all(colour_present(f, noah, scene.band) for f in frames[PER_SEGMENT : 3 * PER_SEGMENT])
    clean = raw_frames(None, tmp_path)
    faulty = raw_frames([{"kind": "drop_character", "segment": 1, "character": "Ava"}], tmp_path)
    assert np.array_equal(faulty[:PER_SEGMENT], clean[:PER_SEGMENT])
    default = SyntheticGenerator(faults=[{"kind": "drop_character", "segment": 0}]).scene(request(tmp_path))
    assert default.drawn(0) == ["Ava"]  # default: the first character


def test_hard_cut(tmp_path: Path) -> None:
    fault = {"kind": "hard_cut", "segment": 2}
    clean, faulty = raw_frames(None, tmp_path), raw_frames([fault], tmp_path)
    assert np.array_equal(faulty[: 2 * PER_SEGMENT], clean[: 2 * PER_SEGMENT])
    scene = SyntheticGenerator(faults=[fault]).scene(request(tmp_path))
    before, after = scene.background(0), scene.background(1)
    assert np.abs(before.astype(int) - after).mean() > 10
    t = 2 * PER_SEGMENT
    corner = (slice(HEIGHT - 3, HEIGHT), slice(0, 3))  # characters never reach the corner pixels
    assert np.array_equal(faulty[t][corner], after[corner]) and np.array_equal(clean[t][corner], before[corner])
    clean_scene = SyntheticGenerator().scene(request(tmp_path))
    for name in scene.characters:  # everyone moves one lane over: a jump of at least one shape
        assert abs(scene.position(name, t)[0] - clean_scene.position(name, t)[0]) >= scene.size


@pytest.mark.parametrize(
    "fault, match",
    [
        ({"kind": "melt", "segment": 1}, "unknown kind 'melt'"),
        ({"kind": "frozen"}, "'segment' must be"),
        ({"kind": "frozen", "segment": -1}, "'segment' must be"),
        ({"kind": "frozen", "segment": 1, "colour": "red"}, r"unknown option\(s\) \['colour'\]"),
        ({"kind": "flicker", "segment": 1, "amplitude": 0}, "amplitude"),
        ({"kind": "identity_swap", "segment": 1, "characters": ["Ava", "Ava"]}, "two different"),
    ],
)
def test_malformed_faults_are_rejected_at_construction(fault: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        SyntheticGenerator(faults=[fault])
    assert str(err.value).startswith("fault ")


@pytest.mark.parametrize(
    "fault, match",
    [
        ({"kind": "frozen", "segment": 4}, "segment 4 is out of range; this script has segments 0..3"),
        ({"kind": "hard_cut", "segment": 0}, "switch fault needs segment >= 1"),
        ({"kind": "identity_swap", "segment": 0}, "switch fault needs segment >= 1"),
        ({"kind": "drop_character", "segment": 1, "character": "Nora"}, "'Nora' is not a character"),
        ({"kind": "identity_swap", "segment": 1, "characters": ["Ava", "Mina"]}, "'Mina' is not a character"),
    ],
)
def test_faults_that_do_not_fit_the_script(tmp_path: Path, fault: dict[str, Any], match: str) -> None:
    generator = SyntheticGenerator(faults=[fault])
    with pytest.raises(ValueError, match=match):
        generator.prepare([SCRIPT])
    with pytest.raises(ValueError, match=match):
        generator.generate(request(tmp_path))
    assert not (tmp_path / "v.mp4").exists()


def test_identity_swap_needs_two_characters(tmp_path: Path) -> None:
    solo = Script(id=0, prompts=("Noah sorts screws.", "Noah labels the box."), scene="workshop workbench")
    with pytest.raises(ValueError, match="needs two characters") as err:
        SyntheticGenerator(faults=[{"kind": "identity_swap", "segment": 1}]).prepare([SCRIPT, solo])
    assert "script 0:" in str(err.value) and "script 7:" not in str(err.value)  # every misfit, named
