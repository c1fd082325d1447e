"""Export scripts as a Hugging Face ``datasets.Dataset`` with the taxonomy columns."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from narrastream.data.script import Script


def to_hf_dataset(scripts: Sequence[Script]):
    import datasets

    rows = [s.to_dict() for s in scripts]
    features = datasets.Features({
        "id": datasets.Value("int32"),
        "prompts": datasets.Sequence(datasets.Value("string")),
        "template": datasets.Value("int32"),
        "scene": datasets.Value("string"),
        "round": datasets.Value("int32"),
        "cast_size": datasets.Value("int32"),
        "dimension": datasets.Value("string"),
    })
    return datasets.Dataset.from_list(rows, features=features)


def export_hf(scripts: Sequence[Script], out: Path | str) -> Path:
    out = Path(out)
    to_hf_dataset(scripts).save_to_disk(str(out))
    return out
