"""The six-dimension taxonomy derived from the official file's line index (not the authors').

Script i has template ``i mod 9``, scene ``(i div 9) mod 12`` and round ``i div 108``; each template
has a fixed cast size and maps to one dimension. The numbers live in benchmark_data/taxonomy.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from narrastream.paths import benchmark_data_dir


@dataclass(frozen=True)
class Taxonomy:
    templates_per_scene: int
    scripts_per_round: int
    scenes: tuple[str, ...]
    cast_size: tuple[int, ...]
    dimension_of_template: dict[int, str]
    cast: tuple[str, ...]
    lookalikes: tuple[str, ...]

    @property
    def dimensions(self) -> list[str]:
        return list(dict.fromkeys(self.dimension_of_template[t] for t in sorted(self.dimension_of_template)))

    def derive(self, script_id: int) -> dict[str, object]:
        """Template, scene, round, cast size and dimension of official script ``script_id``."""
        template = script_id % self.templates_per_scene
        scene = self.scenes[(script_id // self.templates_per_scene) % len(self.scenes)]
        return {
            "template": template,
            "scene": scene,
            "round": script_id // self.scripts_per_round,
            "cast_size": self.cast_size[template],
            "dimension": self.dimension_of_template[template],
        }


@lru_cache(maxsize=4)
def load_taxonomy(path: Path | None = None) -> Taxonomy:
    raw = yaml.safe_load((path or benchmark_data_dir() / "taxonomy.yaml").read_text())
    dims = {t: name for name, templates in raw["dimensions"].items() for t in templates}
    return Taxonomy(
        templates_per_scene=raw["templates_per_scene"],
        scripts_per_round=raw["scripts_per_round"],
        scenes=tuple(raw["scenes"]),
        cast_size=tuple(raw["cast_size"]),
        dimension_of_template=dims,
        cast=tuple(raw["cast"]),
        lookalikes=tuple(raw["lookalikes"]),
    )
