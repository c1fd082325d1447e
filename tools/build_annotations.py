"""Rebuild benchmark_data/annotations/narrastream-324.v2.jsonl from the official scripts and the rules.

Inputs: the official scripts file (never committed; $NARRASTREAM_DATA, the cache, or --scripts) and,
in the repository, the rules (narrastream/protocol/annotation_rules.py), their word lists
(benchmark_data/annotations/v2/lexicon.yaml) and per-script overrides
(benchmark_data/annotations/v2/overrides.yaml). The output is the same bytes on every machine: the
shipped file is checked against a rebuild in tests/test_annotations.py.

    python tools/build_annotations.py [--scripts streambench_324.jsonl] [--out FILE] [--check]

``--check`` writes nothing and exits 1 when the shipped file differs from the rebuild.
(v1, ``narrastream-324.v1.jsonl``, was assembled from authored parts that were never published; it
is kept unchanged for old runs and cannot be rebuilt.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from narrastream.data import load_benchmark
from narrastream.protocol.annotation_rules import VERSION, build_file
from narrastream.paths import benchmark_data_dir


def rebuild(scripts_path: str | None) -> str:
    bench = load_benchmark(scripts_path)
    return build_file(bench.scripts, bench.sha256)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scripts", default=None, help="the official scripts file (default: the usual lookup)")
    parser.add_argument("--out", type=Path, default=None, help=f"default: the shipped {VERSION}.jsonl")
    parser.add_argument("--check", action="store_true", help="compare with the shipped file instead of writing")
    args = parser.parse_args()
    text = rebuild(args.scripts)
    out = args.out or benchmark_data_dir() / "annotations" / f"{VERSION}.jsonl"
    if args.check:
        same = out.is_file() and out.read_bytes() == text.encode("utf-8")
        print(f"{out}: {'identical to the rebuild' if same else 'DIFFERS from the rebuild'}")
        return 0 if same else 1
    out.write_bytes(text.encode("utf-8"))
    print(f"{sum(line.startswith('{') for line in text.splitlines())} scripts -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
