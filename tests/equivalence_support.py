"""Helpers of the equivalence tests: read a fixture, rebuild the authors'-layout state dict, compare.

The generator lives in ``tools/equivalence/seeded.py`` (shared with the tool that wrote the fixtures);
it is loaded from the file so that the tests need neither the authors' code nor ``tools`` on sys.path.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "equivalence"


def _load_seeded():
    name = "narrastream_equivalence_seeded"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / "equivalence" / "seeded.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


seeded = _load_seeded()


class Fixture:
    """One fixture: its metadata, the authors'-layout state dict it ran with, its inputs and outputs."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.meta, self.ints, self.outputs = seeded.load_fixture(FIXTURES, name)

    @property
    def config(self) -> dict[str, Any]:
        return self.meta["config"]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The authors' state dict (their key names and order), rebuilt from the seed."""
        return seeded.state_dict(self.meta["weights_seed"], self.meta["keys"], self.ints, self.meta.get("aliases"),
                                 self.meta.get("weights_gain", 1.0))

    def uniform_input(self, name: str, tag: str) -> np.ndarray:
        """Input ``name`` regenerated from the inputs' seed; its checksum must be the tool's."""
        spec = self.meta["inputs"][name]
        low, high = spec["range"]
        x = seeded.uniform(self.meta["inputs_seed"], tag, spec["shape"], low, high)
        if spec.get("floor"):
            x = np.floor(x)
        if spec.get("divide"):
            x = np.asarray(x / np.float32(spec["divide"]), dtype=np.float32)
        total, squares = seeded.checksum(x)
        want_total, want_squares = spec["checksum"]
        # the same float32 values summed in float64: equal up to summation order only
        assert np.isclose(total, want_total, rtol=1e-9, atol=1e-6) and np.isclose(squares, want_squares, rtol=1e-9), (
            f"{self.name}: input {name} does not regenerate (checksum {total, squares} vs {want_total, want_squares})")
        return x


def assert_close(name: str, ours: torch.Tensor | np.ndarray, theirs: np.ndarray, *, atol: float, rtol: float = 0.0) -> None:
    """Elementwise ``|ours - theirs| <= atol + rtol |theirs|``, with the worst element in the message."""
    ours = np.asarray(ours.detach().cpu().numpy() if isinstance(ours, torch.Tensor) else ours, dtype=np.float64)
    theirs = np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape, f"{name}: shape {ours.shape} vs the authors' {theirs.shape}"
    excess = np.abs(ours - theirs) - (atol + rtol * np.abs(theirs))
    worst = np.unravel_index(int(np.argmax(excess)), excess.shape) if excess.size else ()
    assert excess.size == 0 or excess.max() <= 0, (
        f"{name}: max |diff| {np.abs(ours - theirs).max():.3g} (at {worst}: ours {ours[worst]:.6g}, "
        f"theirs {theirs[worst]:.6g}); tolerance atol={atol}, rtol={rtol}")


def save_state(path: Path, state: dict[str, torch.Tensor], wrapper: str | None = None, prefix: str = "") -> Path:
    """Write ``state`` as a checkpoint file in the authors' layout (``{wrapper: state}`` if given)."""
    state = {prefix + k: v for k, v in state.items()}
    torch.save({wrapper: state} if wrapper else state, path)
    return path
