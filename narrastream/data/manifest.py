"""The manifest of the official script file (benchmark_data/manifest.yaml): where, which commit, how many."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from narrastream.paths import benchmark_data_dir


@dataclass(frozen=True)
class BenchmarkManifest:
    name: str
    file: str
    repository: str
    commit: str
    path_in_repository: str
    url: str
    license: str
    expected_count: int
    prompts_per_script: int
    seconds_per_prompt: float
    known_sha256: tuple[str, ...]

    @classmethod
    def load(cls, path: Path | None = None) -> "BenchmarkManifest":
        raw = yaml.safe_load((path or benchmark_data_dir() / "manifest.yaml").read_text())
        raw["known_sha256"] = tuple(raw.get("known_sha256") or ())
        return cls(**raw)
