"""Assemble benchmark_data/annotations/narrastream-324.v1.jsonl from the project's authored parts.

How the shipped annotations were made (their provenance, also in the file header): for each
script, the narrastream project read the six prompts and wrote, following the official planner and
MLLM instructions (docs/protocol.md, "Narrative annotations"), the segment weights, the continuity
flags and each segment's entities (characters by first name, objects with their visible
attributes). This tool then adds what is mechanical: every character's attribute list from
``cast.yaml``, the entity groups (the segments where each entity is tagged, plus, for characters,
named), and each script's prompt hash. They are NOT the official planner's outputs.

    python tools/build_annotations.py PART.jsonl [PART.jsonl ...] --scripts streambench_324.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import yaml

from narrastream.data import load_benchmark
from narrastream.paths import benchmark_data_dir
from narrastream.protocol.annotations import prompts_sha256

HEADER = """\
# NarraStream-Bench narrative annotations, v1: one JSON object per script, keyed by script_id.
# Authored by the narrastream project (not the official planner's outputs): the project read each
# script's prompts and wrote segment weights (1..100), continuity flags and per-segment entities
# following the official planner/MLLM instructions; character looks come from cast.yaml and entity
# groups are derived from the tagged segments (tools/build_annotations.py). prompts_sha256 ties each
# line to the exact prompts it annotates. Check with: narrastream annotations verify
"""


def build(parts: list[Path], scripts_path: str | None, out: Path) -> int:
    bench = load_benchmark(scripts_path)
    cast = yaml.safe_load((benchmark_data_dir() / "annotations" / "cast.yaml").read_text())
    authored = {}
    for part in parts:
        for line in part.read_text().splitlines():
            if line.strip():
                obj = json.loads(line)
                authored[obj["script_id"]] = obj
    lines = []
    for script in bench.scripts:
        obj = authored[script.id]
        segments = []
        for entities in obj["segment_entities"]:
            segments.append([{"name": e["name"], "attributes": list(cast[e["name"]]) if e["name"] in cast
                              else list(e.get("attributes", []))} for e in entities])
        groups: dict[str, set[int]] = {}
        for k, entities in enumerate(segments):
            for e in entities:
                groups.setdefault(e["name"], set()).add(k)
        for name in cast:
            for k, prompt in enumerate(script.prompts):
                if name in groups and re.search(rf"\b{name}\b", prompt):
                    groups[name].add(k)
        lines.append(json.dumps({
            "script_id": script.id, "prompts_sha256": prompts_sha256(script.prompts),
            "segment_weights": obj["segment_weights"], "continuity": obj["continuity"],
            "entity_groups": {name: sorted(ks) for name, ks in groups.items()},
            "segment_entities": segments,
        }, ensure_ascii=False))
    out.write_text(HEADER + "\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="+", type=Path)
    parser.add_argument("--scripts", default=None, help="the official scripts file (default: the usual lookup)")
    parser.add_argument("--out", type=Path, default=benchmark_data_dir() / "annotations" / "narrastream-324.v1.jsonl")
    args = parser.parse_args()
    print(f"{build(args.parts, args.scripts, args.out)} scripts -> {args.out}")


if __name__ == "__main__":
    main()
