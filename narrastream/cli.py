"""The ``narrastream`` console script: data checks and export, leaderboards, registry listings.

Runs themselves go through the Hydra app ``python -m narrastream.run``. Exit code 2 means bad input
(the message names the file, line and problem).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def _cmd_data_verify(args: argparse.Namespace) -> int:
    from narrastream.data import load_benchmark

    official = {"auto": "auto", "yes": True, "no": False}[args.official]
    bench = load_benchmark(args.path, official=official)
    per_script = ", ".join(str(n) for n in bench.prompts_per_script)
    print(f"file: {bench.path}")
    print(f"scripts: {bench.total}")
    print(f"prompts per script: {per_script}")
    print(f"official: {'yes' if bench.official else 'no'}")
    print(f"sha256: {bench.sha256}")
    return 0


def _cmd_data_export(args: argparse.Namespace) -> int:
    from narrastream.data import load_benchmark
    from narrastream.data.export import export_hf

    bench = load_benchmark(args.path)
    if bench.scripts and bench.scripts[0].dimension is None:
        print(f"{bench.path}: export needs the official file (user files carry no taxonomy)", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = export_hf(bench.scripts, args.out)
    print(f"wrote {len(bench.scripts)} scripts to {out}")
    return 0


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from narrastream.report import build_leaderboard, write_leaderboard
    from narrastream.report.leaderboard import load_protocol

    table = build_leaderboard(args.run_dirs, with_reference=args.with_reference)
    markdown = args.markdown or Path(args.out).with_suffix(".md")
    write_leaderboard(table, args.out, markdown_path=markdown,
                      dimensions=load_protocol(Path(args.run_dirs[0]))["dimensions"])
    print(Path(markdown).read_text())
    print(f"wrote {args.out} and {markdown}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    if args.what == "generators":
        from narrastream.adapters import GENERATORS as registry
    else:
        from narrastream.metrics import METRICS as registry
    for name in registry.names():
        print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="narrastream", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="the benchmark scripts").add_subparsers(dest="data_command", required=True)
    verify = data.add_parser("verify", help="validate a script file; print count, prompts per script, sha256")
    verify.add_argument("--path", help="script file (default: $NARRASTREAM_DATA, cache, or download)")
    verify.add_argument("--official", choices=["auto", "yes", "no"], default="auto",
                        help="check the official shape (324 x 6); auto: by file name, hash or source")
    verify.set_defaults(func=_cmd_data_verify)
    export = data.add_parser("export", help="export the scripts with their taxonomy")
    export.add_argument("--format", choices=["hf"], default="hf")
    export.add_argument("--out", required=True, help="output folder (datasets.save_to_disk)")
    export.add_argument("--path", help="script file (default: as verify)")
    export.set_defaults(func=_cmd_data_export)

    board = sub.add_parser("leaderboard", help="build a leaderboard from run folders (shards merge)")
    board.add_argument("run_dirs", nargs="+", type=Path)
    board.add_argument("--out", required=True, type=Path, help="CSV path")
    board.add_argument("--markdown", type=Path, help="Markdown path (default: beside the CSV)")
    board.add_argument("--with-reference", action="store_true", help="add the published rows")
    board.set_defaults(func=_cmd_leaderboard)

    listing = sub.add_parser("list", help="list registered generators or metrics")
    listing.add_argument("what", choices=["generators", "metrics"])
    listing.set_defaults(func=_cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    from narrastream.data import DataSourceError, ScriptFileError
    from narrastream.registry import RegistryError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except (ScriptFileError, DataSourceError, FileNotFoundError, ValueError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
