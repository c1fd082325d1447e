"""A procedural video generator for testing the evaluator. A TEST INSTRUMENT, NOT A MODEL.

It draws flat shapes on a patterned background, so its videos say nothing about any real generator's
quality. What it offers is control: every property a metric is meant to measure -- a character's
look staying the same across segments, content changing at each prompt switch, smooth motion -- is
built in exactly, and named faults (``identity_swap``, ``frozen``, ``flicker``, ``hard_cut``,
``drop_character``) break one property at a known segment. A metric that does not react to its
fault, or reacts to the others, is wrong. It also lets the whole pipeline run on CPU in seconds.

What is drawn:

* a background (colour, floor gradient, grid) derived from the script's scene (or its first prompt);
* one flat shape per named character, its shape and colour fixed by a hash of the name, so the same
  character looks the same in every script; it moves smoothly inside its own lane;
* characters present in a segment are those its prompt names (none named: the previous segment's);
* a stripe along the top edge and a prop block in it, both changing at every prompt switch.

Faults, each ``{"kind": ..., "segment": k, ...}`` with ``k`` the 0-based segment where it starts
(for switch faults, the switch into segment ``k``, so ``k >= 1``):

* ``identity_swap`` -- from segment ``k`` on, two characters (``characters: [a, b]``, default the
  first two named) swap looks;
* ``frozen`` -- every frame of segment ``k`` equals its first frame;
* ``flicker`` -- frames of segment ``k`` are alternately brightened and darkened by ``amplitude``
  grey levels (default 60);
* ``hard_cut`` -- at the switch into ``k`` the background changes and every character jumps one lane
  over (and half a motion period), and stays there;
* ``drop_character`` -- from segment ``k`` on, ``character`` (default the first named) is not drawn.
"""

from __future__ import annotations

import colorsys
import hashlib
import logging
import math
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator, Mapping, Sequence

import av
import numpy as np

from narrastream.adapters.base import (
    Capabilities,
    GeneratedVideo,
    GenerationError,
    GenerationRequest,
    Generator,
    PromptSwitching,
)
from narrastream.data.script import Script
from narrastream.data.taxonomy import load_taxonomy
from narrastream.video.encode import Mp4Writer

log = logging.getLogger(__name__)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "hexagon")

#: Hash salt for character looks. Chosen once, by search, so that the 15 cast names of
#: benchmark_data/taxonomy.yaml get colours at least 67 RGB levels apart and at most 3 share a
#: shape (tests/test_synthetic.py checks). Changing it changes every synthetic video.
_LOOK_SALT = "narrastream-synthetic/9170"

FAULT_KINDS: tuple[str, ...] = ("identity_swap", "frozen", "flicker", "hard_cut", "drop_character")
#: optional keys of each fault kind, besides ``kind`` and ``segment``
_FAULT_KEYS: dict[str, frozenset[str]] = {
    "identity_swap": frozenset({"characters"}),
    "frozen": frozenset(),
    "flicker": frozenset({"amplitude"}),
    "hard_cut": frozenset(),
    "drop_character": frozenset({"character"}),
}
#: faults that happen at a prompt switch, so they cannot start in segment 0
_SWITCH_FAULTS = frozenset({"identity_swap", "hard_cut"})

# Title-case words that are not names when a user script names no cast member.
_COMMON_WORDS = frozenset(
    "A An And As At After Before But By During Each Every For From He Her Here His I If In Into It Its "
    "Later Meanwhile Mr Mrs Ms Dr Next Now Of On Once One Or Our She So Some The Their Then There These "
    "They This Those Though Through To Two Three Under Until We When Where While With You Your "
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
_SENTENCE_END = re.compile(r"[.!?:;][\"')\]]*\s*$")


@dataclass(frozen=True)
class Appearance:
    """How a character is drawn: a flat shape in one RGB colour."""

    shape: str
    colour: tuple[int, int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "colour": list(self.colour)}


def _digest(text: str) -> bytes:
    return hashlib.sha256(f"{_LOOK_SALT}:{text}".encode()).digest()


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def character_appearance(name: str) -> Appearance:
    """The look of ``name``: the same in every script and process (sha256, not ``hash()``).

    Colours are saturated and bright, so they stand apart from the muted backgrounds.
    """
    d = _digest(name)
    hue = int.from_bytes(d[1:3], "big") / 65536
    return Appearance(SHAPES[d[0] % len(SHAPES)], _hsv(hue, 0.55 + 0.45 * d[3] / 255, 0.6 + 0.4 * d[4] / 255))


def find_characters(prompts: Sequence[str], cast: Sequence[str]) -> list[str]:
    """Named characters in order of first mention: cast names as whole words, else proper-noun guesses.

    The fallback (for user scripts naming no cast member) takes capitalised words that do not start
    a sentence and are not common words.
    """
    if cast:
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, cast)) + r")\b")
        found = [m.group(1) for prompt in prompts for m in pattern.finditer(prompt)]
        if found:
            return list(dict.fromkeys(found))
    return list(dict.fromkeys(name for prompt in prompts for name in _proper_nouns(prompt)))


def _proper_nouns(text: str) -> Iterator[str]:
    for m in _WORD.finditer(text):
        word = m.group(0)
        if len(word) < 2 or not (word[0].isupper() and word[1:].islower()) or word in _COMMON_WORDS:
            continue
        before = text[: m.start()]
        if before.strip() and not _SENTENCE_END.search(before):
            yield word


def _named_in(prompt: str, characters: Sequence[str]) -> list[str]:
    return [c for c in characters if re.search(rf"\b{re.escape(c)}\b", prompt)]


@lru_cache(maxsize=64)
def shape_mask(shape: str, size: int) -> np.ndarray:
    """A (size, size) boolean mask of ``shape``; every shape covers the centre pixel."""
    u = (np.arange(size) - (size - 1) / 2) / (size / 2)
    x, y = np.meshgrid(u, u)
    masks = {
        "circle": x**2 + y**2 <= 1.0,
        "square": np.maximum(abs(x), abs(y)) <= 0.85,
        "triangle": (y >= -0.95) & (abs(x) <= (y + 0.95) / 1.9),
        "diamond": abs(x) + abs(y) <= 1.0,
        "cross": ((abs(x) <= 0.35) | (abs(y) <= 0.35)) & (np.maximum(abs(x), abs(y)) <= 0.95),
        "hexagon": (abs(y) <= 0.85) & (abs(x) * 0.85 + abs(y) * 0.5 <= 0.9),
    }
    mask = masks[shape]
    mask.flags.writeable = False
    return mask


# ------------------------------------------------------------------------------------------ faults


def normalise_fault(fault: Mapping[str, Any]) -> dict[str, Any]:
    """Check one fault's structure (kind, segment, known options); returns a plain dict copy."""
    if not isinstance(fault, Mapping):
        raise ValueError(f"fault {fault!r}: must be a mapping with 'kind' and 'segment'")
    kind = fault.get("kind")
    if kind not in _FAULT_KEYS:
        raise ValueError(f"fault {dict(fault)!r}: unknown kind {kind!r}; known kinds: {', '.join(FAULT_KINDS)}")
    unknown = set(fault) - {"kind", "segment"} - _FAULT_KEYS[kind]
    if unknown:
        raise ValueError(f"fault {dict(fault)!r}: unknown option(s) {sorted(unknown)} for {kind}")
    segment = fault.get("segment")
    if not isinstance(segment, int) or isinstance(segment, bool) or segment < 0:
        raise ValueError(f"fault {dict(fault)!r}: 'segment' must be a 0-based segment index")
    out: dict[str, Any] = {"kind": kind, "segment": segment}
    if "characters" in fault:
        pair = [str(c) for c in fault["characters"]]
        if len(pair) != 2 or pair[0] == pair[1]:
            raise ValueError(f"fault {dict(fault)!r}: 'characters' must name two different characters")
        out["characters"] = pair
    if "character" in fault:
        out["character"] = str(fault["character"])
    if kind == "flicker":
        amplitude = fault.get("amplitude", 60)
        if not isinstance(amplitude, (int, float)) or not 0 < amplitude <= 255:
            raise ValueError(f"fault {dict(fault)!r}: 'amplitude' must be a grey-level step in (0, 255]")
        out["amplitude"] = int(round(amplitude))
    return out


def resolve_fault(fault: dict[str, Any], num_segments: int, characters: Sequence[str]) -> dict[str, Any]:
    """Check a normalised fault against one script; fill in default characters."""
    kind, segment = fault["kind"], fault["segment"]
    lowest = 1 if kind in _SWITCH_FAULTS else 0
    if not lowest <= segment < num_segments:
        raise ValueError(
            f"fault {fault!r}: segment {segment} is out of range; this script has segments 0..{num_segments - 1}"
            + (" and a switch fault needs segment >= 1" if lowest else "")
        )
    out = dict(fault)
    if kind == "identity_swap":
        pair = fault.get("characters", list(characters[:2]))
        if len(pair) < 2:
            raise ValueError(f"fault {fault!r}: needs two characters; the script names {list(characters)}")
        out["characters"] = list(pair)
    elif kind == "drop_character":
        if not characters and "character" not in fault:
            raise ValueError(f"fault {fault!r}: the script names no character to drop")
        out["character"] = fault.get("character", characters[0] if characters else None)
    for name in out.get("characters", []) + ([out["character"]] if "character" in out else []):
        if name not in characters:
            raise ValueError(f"fault {fault!r}: {name!r} is not a character of this script ({list(characters)})")
    return out


# ------------------------------------------------------------------------------------------- scene


@dataclass(frozen=True)
class _Motion:
    """A smooth looping path: sinusoids with seed- and name-dependent periods and phases."""

    period_x: float
    period_y: float
    phase_x: float
    phase_y: float

    @classmethod
    def for_character(cls, seed: int, name: str) -> "_Motion":
        # seeded by (seed, name) so a character's path does not depend on who else is in the script
        rng = np.random.default_rng([seed, int.from_bytes(_digest(name)[:8], "big")])
        px, py = rng.uniform(3.0, 7.0, size=2)
        fx, fy = rng.uniform(0.0, 2 * math.pi, size=2)
        return cls(float(px), float(py), float(fx), float(fy))


class SyntheticScene:
    """Everything needed to render one request's frames, one at a time.

    Public so tests can ask where a character is drawn (:meth:`position`) and what it looks like
    (:meth:`appearance`) at any frame, and check the decoded video against it.
    """

    def __init__(
        self,
        request: GenerationRequest,
        faults: Sequence[dict[str, Any]],
        cast: Sequence[str],
        motion_amplitude: float,
        character_size: float,
    ) -> None:
        script = request.script
        self.width, self.height, self.fps = request.width, request.height, request.fps
        self.frames_per_segment = request.frames_per_segment
        self.num_segments = script.num_segments
        self.num_frames = request.total_frames
        self.characters = find_characters(script.prompts, cast)
        self.faults = [resolve_fault(f, self.num_segments, self.characters) for f in faults]
        self.presence = self._presence(script.prompts)
        self._theme = _digest(script.scene or script.prompts[0])
        self.band = max(2, self.height // 8)  # the stripe along the top; characters stay below it
        lanes = max(1, len(self.characters))
        lane_width = self.width / lanes
        side = int(character_size * min(self.width, self.height))
        self.size = max(4, min(side, int(0.8 * lane_width), self.height - self.band))
        self._lane_width = lane_width
        self._amp_x = max(0.0, min(motion_amplitude * self.width, (lane_width - self.size) / 2))
        self._amp_y = max(0.0, min(motion_amplitude * self.height, (self.height - self.band - self.size) / 2))
        self._motion = {name: _Motion.for_character(request.seed, name) for name in self.characters}
        self._backgrounds: dict[int, np.ndarray] = {}

    def _presence(self, prompts: Sequence[str]) -> list[list[str]]:
        presence: list[list[str]] = []
        for prompt in prompts:
            named = _named_in(prompt, self.characters)
            presence.append(named or (presence[-1] if presence else []))
        return presence

    def _faults_of(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.faults if f["kind"] == kind]

    def _fault_at(self, kind: str, segment: int) -> dict[str, Any] | None:
        return next((f for f in self._faults_of(kind) if f["segment"] == segment), None)

    def cuts_before(self, segment: int) -> int:
        """How many hard cuts happened at or before the switch into ``segment``."""
        return sum(1 for f in self._faults_of("hard_cut") if f["segment"] <= segment)

    def drawn(self, segment: int) -> list[str]:
        """Characters drawn in ``segment``: present, minus any dropped by then."""
        dropped = {f["character"] for f in self._faults_of("drop_character") if f["segment"] <= segment}
        return [c for c in self.presence[segment] if c not in dropped]

    def appearance(self, name: str, segment: int) -> Appearance:
        """``name``'s look in ``segment``, after any identity swaps up to it."""
        for f in self._faults_of("identity_swap"):
            if f["segment"] <= segment and name in f["characters"]:
                a, b = f["characters"]
                name = b if name == a else a
        return character_appearance(name)

    def segment_of(self, t: int) -> int:
        return min(t // self.frames_per_segment, self.num_segments - 1)

    def position(self, name: str, t: int) -> tuple[int, int]:
        """Pixel (x, y) of the centre of ``name``'s shape at frame ``t``."""
        cuts = self.cuts_before(self.segment_of(t))
        # each hard cut moves every character one lane over and shifts its motion by half a period
        lane = (self.characters.index(name) + cuts) % len(self.characters)
        m, seconds, shift = self._motion[name], t / self.fps, math.pi * cuts
        cx = (lane + 0.5) * self._lane_width + self._amp_x * math.sin(2 * math.pi * seconds / m.period_x + m.phase_x + shift)
        cy = (self.band + self.height) / 2 + self._amp_y * math.sin(2 * math.pi * seconds / m.period_y + m.phase_y + shift)
        half = self.size // 2
        x = min(max(int(round(cx)), half), self.width - self.size + half)
        y = min(max(int(round(cy)), self.band + half), self.height - self.size + half)
        return x, y

    def background(self, cuts: int) -> np.ndarray:
        """The scene's backdrop (cached): muted colour, darker floor, faint grid; each hard cut changes it."""
        if cuts not in self._backgrounds:
            d = self._theme
            hue = d[0] / 256 + 0.37 * cuts
            base = np.array(_hsv(hue, 0.15 + 0.2 * d[1] / 255, 0.3 + 0.2 * d[2] / 255), dtype=np.float32)
            rows = np.linspace(1.1, 0.7, self.height, dtype=np.float32)[:, None, None]
            image = np.broadcast_to(base * rows, (self.height, self.width, 3)).copy()
            spacing = max(4, int(min(self.width, self.height) * (0.08 + 0.08 * d[3] / 255)))
            offset = (d[4] + 7 * cuts) % spacing
            image[offset::spacing] *= 1.25
            image[:, offset::spacing] *= 1.25
            self._backgrounds[cuts] = np.clip(image, 0, 255).astype(np.uint8)
        return self._backgrounds[cuts]

    def stripe_colour(self, segment: int) -> tuple[int, int, int]:
        """The top stripe's colour in ``segment``: a new hue at every prompt switch."""
        return _hsv(self._theme[5] / 256 + 0.618 * segment, 0.45, 0.85)

    def render(self, t: int) -> np.ndarray:
        """Frame ``t`` without frame-level faults (frozen, flicker)."""
        k = self.segment_of(t)
        frame = self.background(self.cuts_before(k)).copy()
        frame[: self.band] = self.stripe_colour(k)
        prop = max(2, self.band)
        x = int((self._theme[6] / 256 + 0.37 * k) % 1.0 * (self.width - prop))
        frame[: self.band, x : x + prop] = self.stripe_colour(k + 3)
        half = self.size // 2
        for name in self.drawn(k):
            look = self.appearance(name, k)
            cx, cy = self.position(name, t)
            region = frame[cy - half : cy - half + self.size, cx - half : cx - half + self.size]
            region[shape_mask(look.shape, self.size)] = look.colour
        return frame

    def frames(self) -> Iterator[np.ndarray]:
        """Every frame in order, with all faults applied; one frame in memory at a time."""
        held: np.ndarray | None = None
        for t in range(self.num_frames):
            k = self.segment_of(t)
            j = t - k * self.frames_per_segment  # frame index within the segment
            if self._fault_at("frozen", k):
                held = self.render(t) if j == 0 else held
                frame = held.copy()
            else:
                frame = self.render(t)
            flicker = self._fault_at("flicker", k)
            if flicker:
                frame = _brightness_lut(flicker["amplitude"] * (1 if j % 2 == 0 else -1))[frame]
            yield frame


@lru_cache(maxsize=16)
def _brightness_lut(delta: int) -> np.ndarray:
    return np.clip(np.arange(256) + delta, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------- generator


class SyntheticGenerator(Generator):
    """Deterministic procedural videos for tests and smoke runs. A TEST INSTRUMENT, NOT A MODEL.

    The same request gives the same frames, byte for byte. All constructor arguments are plain
    JSON/YAML values so they round-trip through Hydra configs:

    * ``crf``, ``preset``: libx264 settings of the written mp4 (``veryfast`` keeps a 60 s video at a
      few seconds on two cores);
    * ``faults``: a list of ``{"kind": ..., "segment": ...}`` dicts, see the module docstring;
    * ``motion_amplitude``: how far characters swing, as a fraction of the frame (capped so that
      characters in neighbouring lanes never overlap);
    * ``character_size``: the shapes' side as a fraction of the frame's shorter side;
    * ``cast``: the names to look for; ``None`` means the cast of benchmark_data/taxonomy.yaml.
    """

    name = "synthetic"
    capabilities = Capabilities(switching=PromptSwitching.NATIVE)

    def __init__(
        self,
        crf: int = 18,
        faults: list[dict[str, Any]] | None = None,
        motion_amplitude: float = 0.15,
        character_size: float = 0.2,
        preset: str = "veryfast",
        cast: list[str] | None = None,
    ) -> None:
        if not 0 <= motion_amplitude <= 1:
            raise ValueError(f"motion_amplitude is a fraction of the frame, got {motion_amplitude}")
        if not 0 < character_size <= 1:
            raise ValueError(f"character_size is a fraction of the frame, got {character_size}")
        self.crf = int(crf)
        self.preset = preset
        self.faults = [normalise_fault(f) for f in faults or []]
        self.motion_amplitude = float(motion_amplitude)
        self.character_size = float(character_size)
        self.cast = list(cast) if cast is not None else list(load_taxonomy().cast)

    def identity(self) -> dict[str, Any]:
        """Everything that shapes the frames: a named fault or another cast makes another configuration."""
        cast = hashlib.sha256("\n".join(self.cast).encode()).hexdigest()[:16]
        return {"method": "synthetic", "renderer": _LOOK_SALT, "faults": self.faults, "crf": self.crf,
                "preset": self.preset, "motion_amplitude": self.motion_amplitude,
                "character_size": self.character_size, "cast_sha256": cast}

    def prepare(self, scripts: Sequence[Script], *, total_scripts: int | None = None) -> None:
        """Check the faults against every script before any video is made; lists every misfit."""
        problems = []
        for script in scripts:
            characters = find_characters(script.prompts, self.cast)
            for fault in self.faults:
                try:
                    resolve_fault(fault, script.num_segments, characters)
                except ValueError as e:
                    problems.append(f"script {script.id}: {e}")
        if problems:
            raise ValueError("synthetic: faults that do not fit their scripts:\n" + "\n".join(problems))

    def scene(self, request: GenerationRequest) -> SyntheticScene:
        """The renderer for ``request`` (raises ValueError if a fault does not fit its script)."""
        return SyntheticScene(request, self.faults, self.cast, self.motion_amplitude, self.character_size)

    def generate(self, request: GenerationRequest) -> GeneratedVideo:
        start = time.perf_counter()
        scene = self.scene(request)
        render = _Stopwatch()
        loop_start = time.perf_counter()
        try:
            with Mp4Writer(request.output_path, request.fps, crf=self.crf, preset=self.preset) as writer:
                for frame in render.iterate(scene.frames()):
                    writer.write(frame)
        except (OSError, av.FFmpegError) as e:
            raise GenerationError(f"synthetic: could not write {request.output_path}: {e}") from e
        end = time.perf_counter()
        per_segment = request.frames_per_segment
        return GeneratedVideo(
            path=request.output_path,
            script_id=request.script.id,
            seed=request.seed,
            fps=request.fps,
            num_frames=scene.num_frames,
            width=request.width,
            height=request.height,
            switch_frames=[k * per_segment for k in range(1, scene.num_segments)],
            timings={
                "end_to_end": end - start,
                "render": render.seconds,
                "encode": end - loop_start - render.seconds,  # frame conversion, x264, muxing, flush
            },
            device="cpu",
            device_count=0,
            extra={
                "characters": {c: character_appearance(c).to_dict() for c in scene.characters},
                "presence": scene.presence,
                "faults": scene.faults,
            },
        )


class _Stopwatch:
    """Adds up the time spent producing an iterator's items (rendering), apart from consuming them."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def iterate(self, items: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        while True:
            t0 = time.perf_counter()
            item = next(items, None)
            self.seconds += time.perf_counter() - t0
            if item is None:
                return
            yield item
