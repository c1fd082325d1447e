"""The ``narrastream`` console script: data checks and export, narrative annotations (verify, annotate),
protocol checks, leaderboards, HTML reports and shareable results files, registry listings, model weights
(list, download, verify), ``serve-judge``, and ``launch`` / ``status`` for shards.

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


def _bootstrap_settings(args: argparse.Namespace):
    from narrastream.report.bootstrap import BootstrapSettings

    return BootstrapSettings(resamples=args.resamples, seed=args.bootstrap_seed)


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from narrastream.report import build_leaderboard, write_leaderboard

    table = build_leaderboard(args.run_dirs, with_reference=args.with_reference, bootstrap=_bootstrap_settings(args))
    markdown = args.markdown or Path(args.out).with_suffix(".md")
    write_leaderboard(table, args.out, markdown_path=markdown)
    print(Path(markdown).read_text())
    for path, count in table.attrs.get("invalid_records", {}).items():
        print(f"skipped {count} invalid record line(s) in {path} (see the warnings above; they do not count)")
    print(f"wrote {args.out} and {markdown}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from narrastream.report.html import ReportOptions, build_report

    if args.gallery < 0 or args.thumb_height < 16:
        raise ValueError("--gallery must be >= 0 and --thumb-height >= 16")
    options = ReportOptions(with_reference=args.with_reference, bootstrap=_bootstrap_settings(args),
                            gallery_per_row=args.gallery, gallery_scripts=args.scripts, thumb_height=args.thumb_height,
                            data=Path(args.data) if args.data else None, prompts=not args.no_prompts,
                            title=args.title)
    summary = build_report(args.sources, args.out, options)
    print(f"wrote {summary.path} ({summary.bytes / 2**20:.1f} MiB, {summary.rows} rows, "
          f"{summary.gallery_scripts} filmstrip scripts) in {summary.seconds:.1f} s")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from narrastream.report.results_file import build_results, write_results
    from narrastream.report.sources import load_results

    document = build_results(load_results(args.run_dirs), bootstrap=_bootstrap_settings(args),
                             with_items=not args.no_items)
    path = write_results(document, args.out)
    print(f"wrote {path}: {len(document['records'])} records, {len(document['leaderboard'])} leaderboard rows, "
          f"{len(document['configurations'])} configurations, {len(document['videos'])} videos' timings "
          f"({path.stat().st_size / 2**20:.1f} MiB; schema {document['schema']} v{document['schema_version']})")
    return 0


def _add_bootstrap_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resamples", type=int, default=1000,
                        help="bootstrap resamples for the intervals (default 1000)")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap (default 0)")


def _add_report_parsers(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="one self-contained HTML report from run folders and results files")
    report.add_argument("sources", nargs="+", type=Path, help="run folders and/or results files (narrastream export)")
    report.add_argument("--out", type=Path, default=Path("report.html"),
                        help="HTML file to write (default report.html)")
    report.add_argument("--with-reference", action="store_true", help="add the published rows (no intervals)")
    report.add_argument("--gallery", type=int, default=2, metavar="N",
                        help="filmstrips of each row's N worst and N best scripts (default 2; 0: none)")
    report.add_argument("--scripts", type=int, nargs="+", metavar="ID", help="filmstrips of these script ids instead")
    report.add_argument("--thumb-height", type=int, default=120, help="filmstrip frame height in pixels (default 120)")
    report.add_argument("--data", help="scripts file for the segments' sentences (default: the runs' own file, "
                                       "$NARRASTREAM_DATA or the cache; must match the runs' sha256)")
    report.add_argument("--no-prompts", action="store_true",
                        help="never put the scripts' sentences in the page (segments named by script id and number)")
    report.add_argument("--title", default="narrastream report")
    _add_bootstrap_options(report)
    report.set_defaults(func=_cmd_report)

    export = sub.add_parser("export", help="write a shareable results file (records, rows, provenance; "
                                           "no videos, no sentences)")
    export.add_argument("run_dirs", nargs="+", type=Path, help="run folders and/or results files to merge")
    export.add_argument("--out", required=True, type=Path, help="JSON file to write")
    export.add_argument("--no-items", action="store_true", help="leave out per-segment items (smaller file; the "
                                                                "report then has no per-switch breakdown)")
    _add_bootstrap_options(export)
    export.set_defaults(func=_cmd_export)


def _cmd_list(args: argparse.Namespace) -> int:
    if args.what == "generators":
        from narrastream.adapters import GENERATORS as registry
    else:
        from narrastream.metrics import METRICS as registry
    for name in registry.names():
        print(name)
    return 0


def _cmd_serve_judge(args: argparse.Namespace) -> int:
    from narrastream.judges.serve import serve_judge

    if args.stand_in:
        from narrastream.judges.serve import serve_stand_in

        serve_stand_in(args.host, args.port)
        return 0
    if args.max_tokens < 1:
        raise ValueError("--max-tokens must be >= 1")
    serve_judge(args.model, args.host, args.port, device=args.device, dtype=args.dtype, max_tokens=args.max_tokens)
    return 0


def _cmd_annotations_verify(args: argparse.Namespace) -> int:
    from narrastream.data import load_benchmark
    from narrastream.protocol.annotation_checks import verify
    from narrastream.protocol.annotations import DEFAULT_VERSION, NarrativeAnnotations, shipped_annotations_path

    path = Path(args.file) if args.file else shipped_annotations_path(args.version or DEFAULT_VERSION)
    annotations = NarrativeAnnotations.load(path)
    bench = load_benchmark(args.path)
    report = verify(annotations, bench.scripts)
    shown = args.max_problems
    for problem in report.problems[:shown]:
        print(f"{path}: {problem}")
    if len(report.problems) > shown:
        print(f"... and {len(report.problems) - shown} more (--max-problems N shows more)")
    print(f"{path}: version {annotations.version}, sha256 {annotations.sha256}")
    print(f"{len(annotations.scripts)} scripts annotated, {bench.total} in {bench.path.name}; "
          f"{report.entities} segment entities, {report.attributes} attributes")
    for line in report.summary():
        print(f"  {line}")
    print(f"{len(report.problems)} problem(s)" if report.problems else "ok: every check passed")
    return EXIT_BAD_INPUT if report.problems else 0


def _cmd_annotate(args: argparse.Namespace) -> int:
    from narrastream.config import compose_config
    from narrastream.data import load_benchmark
    from narrastream.judges import build_judges
    from narrastream.protocol.live_annotations import annotate_scripts, to_jsonl_line

    cfg = compose_config([f"judge={args.judge}", *(["judge.cache=false"] if args.no_cache else []), *args.set])
    judges = build_judges(cfg["judge"])
    if judges is None:
        raise ValueError("--judge none cannot annotate; choose a judge preset (eval_configs/judge/)")
    bench = load_benchmark(args.path, ids=args.ids)
    try:
        annotations, failures = annotate_scripts(judges, bench.scripts, workers=int(cfg["judge"].get("concurrency", 4)))
    finally:
        judges.close()
    ident = judges.identity()
    header = (f"# Narrative annotations asked live by `narrastream annotate` from planner {ident['planner']['model']} "
              f"and MLLM {ident['vlm']['model']} at {ident['vlm']['endpoint']}.\n")
    lines = [to_jsonl_line(annotations.scripts[s.id]) for s in bench.scripts]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + "\n".join(lines) + "\n", encoding="utf-8")
    for sid, errors in sorted(failures.items()):
        for error in errors:
            print(f"script {sid}: {error}", file=sys.stderr)
    stats = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in judges.stats().items())
    print(f"wrote {len(lines)} scripts to {out} ({len(failures)} with failed questions); judge: {stats}")
    return 3 if failures else 0


def _cmd_check_reference(args: argparse.Namespace) -> int:
    import pandas as pd

    from narrastream.paths import reports_dir
    from narrastream.protocol.aggregate import dimension_scores
    from narrastream.report.leaderboard import load_protocol

    dims = load_protocol()["dimensions"]
    path = Path(args.csv) if args.csv else reports_dir() / "reference" / "narrastream_bench_published.csv"
    published = pd.read_csv(path)
    rows = []
    for _, row in published.iterrows():
        recomputed = dimension_scores({m: row[m] for ms in dims.values() for m in ms}, dims)
        rows.append({"method": row["method"], "overall_published": row["overall"],
                     "overall_recomputed": round(recomputed["overall"], 4),
                     "difference": abs(recomputed["overall"] - row["overall"])})
    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False, floatfmt=".4f"))
    worst = float(table["difference"].max())
    print(f"largest difference: {worst:.4f} ({'ok' if worst < args.tolerance else 'FAIL'}: tolerance {args.tolerance})")
    return 0 if worst < args.tolerance else 1


def _weights_dir(args: argparse.Namespace) -> Path:
    from narrastream.weights_catalog import default_dir

    return Path(args.dir).expanduser() if args.dir else default_dir()


def _cmd_weights_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from narrastream.weights_catalog import catalog, groups

    entries = catalog()
    rows = [[" = ".join((e.name, *e.aliases)), e.kind, e.relative, e.source, "yes" if e.pinned else "no", ", ".join(e.used_by)]
            for e in entries.values()]
    print(tabulate(rows, headers=["name", "kind", "goes to", "published at", "sha256 pinned", "used by"]))
    print("\ngroups: " + ", ".join(sorted(g for g in groups(entries) if g not in entries)))
    print("Each file is its publisher's, under the publisher's terms (their pages: `narrastream weights list "
          "--pages`); narrastream never re-hosts weights.")
    if args.pages:
        for e in entries.values():
            print(f"{e.name}: {e.page}")
    return 0


def _cmd_weights_download(args: argparse.Namespace) -> int:
    import os

    from narrastream.download import MIRROR_ENV, ChecksumError, DownloadError
    from narrastream.weights_catalog import catalog, download, select

    if not args.names and not args.all:
        raise ValueError("name the weights to download (see `narrastream weights list`), or pass --all")
    entries = catalog()
    chosen = select(["all"] if args.all else args.names, entries)
    directory = _weights_dir(args)
    print(f"weights folder: {directory}")
    failed = 0
    previous = os.environ.get(MIRROR_ENV)
    if args.mirror:
        os.environ[MIRROR_ENV] = args.mirror
    try:
        for entry in chosen:
            try:
                what, path = download(entry, directory, progress=not args.quiet)
            except (DownloadError, ChecksumError) as exc:
                failed += 1
                print(f"{entry.name}: FAILED: {exc}", file=sys.stderr)
                continue
            print(f"{entry.name}: {what}: {path}")
    finally:  # main() may be called in-process (tests, notebooks): leave the environment as it was
        if args.mirror:
            if previous is None:
                os.environ.pop(MIRROR_ENV, None)
            else:
                os.environ[MIRROR_ENV] = previous
    if any(e.kind == "hub-cache" for e in chosen):
        print(f"models loaded by hub id (the IAMFlow LLM) are in {directory / 'hub'}: set HF_HUB_CACHE={directory / 'hub'}")
    print(f"use it with: export NARRASTREAM_WEIGHTS={directory}" + ("" if not failed else f"  ({failed} failed)"))
    print("These files are their publishers' (terms: `narrastream weights list --pages`); do not re-host them.")
    return EXIT_BAD_INPUT if failed else 0


def _cmd_weights_verify(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from narrastream.weights_catalog import catalog, select, verify

    entries = catalog()
    chosen = select(args.names or ["all"], entries)
    directory = _weights_dir(args)
    checks = [verify(entry, directory) for entry in chosen]
    rows = [[c.name, c.status, c.size if c.size is not None else "-", c.sha256 or "-", c.detail or str(c.path)]
            for c in checks]
    print(f"weights folder: {directory}")
    print(tabulate(rows, headers=["name", "status", "bytes", "sha256", "detail"]))
    bad = [c for c in checks if not c.good]
    counts = {s: sum(c.status == s for c in checks) for s in ("ok", "unpinned", "missing", "incomplete", "corrupt")}
    print(", ".join(f"{n} {s}" for s, n in counts.items() if n))
    if bad:
        print("missing or bad: " + " ".join(c.name for c in bad))
        print(f"fetch them with: narrastream weights download {' '.join(c.name for c in bad)} --dir {directory}"
              "  (delete a corrupt file first)")
    return EXIT_BAD_INPUT if bad else 0


def _cmd_launch(args: argparse.Namespace) -> int:
    import shlex

    from narrastream.harness.launch import launch, plan_launch
    from narrastream.harness.status import render, run_status
    from narrastream.run import input_errors

    try:
        plan = plan_launch(args.overrides, engine=args.engine, gpus=args.gpus, shards=args.shards, cpus=args.cpus,
                           cpus_per_shard=args.cpus_per_shard, address=args.address)
        if args.dry_run:
            print(shlex.join(plan.shard_command()) if plan.shard_stages else "(no shard stage)")
            if "leaderboard" in plan.stages:
                print(shlex.join([sys.executable, "-m", "narrastream.run", *plan.leaderboard_overrides()]))
            return 0
        result = launch(plan)
    except input_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if (plan.run_dir / "config.yaml").is_file():
        print(render(run_status(plan.run_dir, shard_count=plan.shards)))
    shards = ", ".join(f"{name}: {'no report' if code is None else code}"
                       for name, code in result.shard_exit_codes.items())
    print(f"launch ({plan.engine}, {plan.shards} shard(s)) finished in {result.seconds:.0f} s; exit codes {shards}"
          + (f"; engine exit code {result.engine_exit_code}" if result.engine_exit_code else ""))
    if result.leaderboard is not None:
        print(f"leaderboard: {result.leaderboard}")
    return result.exit_code


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from narrastream.harness.status import render, run_status

    status = run_status(args.run_dir, shard_count=args.shards)
    print(json.dumps(status.to_dict(), indent=1) if args.json else render(status), end="" if not args.json else "\n")
    return 0


def _add_scale_commands(sub) -> None:
    """``launch`` (all shards through Ray or SLURM, then the leaderboard) and ``status`` (progress)."""
    from narrastream.harness.launch import ENGINES

    launch = sub.add_parser("launch", help="run every shard through Ray or SLURM, then merge the leaderboard",
                            description="One shard per GPU on this node (Ray), or on a cluster (Ray, SLURM); then "
                                        "the leaderboard stage over all shards. OVERRIDES are the run's Hydra "
                                        "overrides, as for python -m narrastream.run.")
    launch.add_argument("--engine", choices=list(ENGINES), default="ray",
                        help="ray: this node or a Ray cluster (default); slurm: submitit; "
                             "submitit-local: the submitit path on this machine")
    launch.add_argument("--gpus", type=int, help="GPUs to use, one shard each (default: all this node has); "
                                                 "0: CPU shards")
    launch.add_argument("--shards", type=int, help="number of shards (default: --gpus)")
    launch.add_argument("--cpus", type=int, help="Ray: CPUs of this node to use (default: all)")
    launch.add_argument("--cpus-per-shard", type=int, help="CPUs per shard (default: --cpus / --shards)")
    launch.add_argument("--address", help="Ray: join a running cluster (auto: the one `ray start` made)")
    launch.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    launch.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="e.g. model=longlive data.limit=10")
    launch.set_defaults(func=_cmd_launch)

    status = sub.add_parser("status", help="progress of a run: done / failed / pending per stage and shard")
    status.add_argument("run_dir", type=Path)
    status.add_argument("--shards", type=int, help="shard count to report by (default: the run's config.yaml)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_cmd_status)


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

    board = sub.add_parser("leaderboard", help="build a leaderboard from run folders and results files (shards merge)")
    board.add_argument("run_dirs", nargs="+", type=Path, help="run folders and/or results files (narrastream export)")
    board.add_argument("--out", required=True, type=Path, help="CSV path")
    board.add_argument("--markdown", type=Path, help="Markdown path (default: beside the CSV)")
    board.add_argument("--with-reference", action="store_true", help="add the published rows")
    _add_bootstrap_options(board)
    board.set_defaults(func=_cmd_leaderboard)
    _add_report_parsers(sub)

    ann = sub.add_parser("annotations", help="narrative annotations").add_subparsers(dest="ann_command", required=True)
    averify = ann.add_parser("verify", help="check an annotations file against the scripts: structure, grounding "
                                             "in the prompts, named characters, placeholder names")
    which = averify.add_mutually_exclusive_group()
    which.add_argument("--file", help="annotations JSONL")
    which.add_argument("--version", help="a shipped version, e.g. narrastream-324.v1 (default: the current one)")
    averify.add_argument("--max-problems", type=int, default=100, help="problems listed (the counts cover all)")
    averify.add_argument("--path", help="script file (default: $NARRASTREAM_DATA, cache, or download)")
    averify.set_defaults(func=_cmd_annotations_verify)

    annotate = sub.add_parser("annotate", help="ask a judge for the narrative annotations of scripts (live)")
    annotate.add_argument("--judge", required=True, help="judge preset in eval_configs/judge/ (e.g. siliconflow)")
    annotate.add_argument("--ids", type=int, nargs="+", help="script ids (default: all)")
    annotate.add_argument("--out", required=True, help="annotations JSONL to write")
    annotate.add_argument("--path", help="script file (default: as data verify)")
    annotate.add_argument("--no-cache", action="store_true", help="ask again even when an answer is cached")
    annotate.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                          help="config overrides, e.g. judge.base_url=http://127.0.0.1:8000/v1")
    annotate.set_defaults(func=_cmd_annotate)

    proto = sub.add_parser("protocol", help="protocol checks").add_subparsers(dest="proto_command", required=True)
    check = proto.add_parser("check-reference",
                             help="recompute Overall from the published per-metric table; print the largest difference")
    check.add_argument("--csv", help="published table (default: reports/reference/narrastream_bench_published.csv)")
    check.add_argument("--tolerance", type=float, default=0.005)
    check.set_defaults(func=_cmd_check_reference)

    weights = sub.add_parser("weights", help="model weights: list, download (for offline clusters), verify a folder")
    wsub = weights.add_subparsers(dest="weights_command", required=True)
    wlist = wsub.add_parser("list", help="every published checkpoint a run can need, where it goes, where it comes from")
    wlist.add_argument("--pages", action="store_true", help="also print each publisher's page (their terms)")
    wlist.set_defaults(func=_cmd_weights_list)
    wdown = wsub.add_parser("download", help="fetch weights from their publishers into one folder (resumable)")
    wdown.add_argument("names", nargs="*", metavar="NAME",
                       help="entries or groups (backbones, a model config name such as iamflow); see `weights list`")
    wdown.add_argument("--all", action="store_true", help="everything in `weights list`")
    wdown.add_argument("--dir", help="target folder (default: $NARRASTREAM_WEIGHTS, else ~/.cache/narrastream/weights)")
    wdown.add_argument("--mirror", metavar="URL",
                       help="fetch files from URL/<file> (your own copy of a weights folder served over HTTP) "
                            "instead of the publishers; same as $NARRASTREAM_WEIGHTS_MIRROR")
    wdown.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    wdown.set_defaults(func=_cmd_weights_download)
    wverify = wsub.add_parser("verify", help="check a weights folder: present, size, sha256 against the pins")
    wverify.add_argument("names", nargs="*", metavar="NAME", help="entries or groups (default: all)")
    wverify.add_argument("--dir", help="the folder (default: $NARRASTREAM_WEIGHTS, else ~/.cache/narrastream/weights)")
    wverify.set_defaults(func=_cmd_weights_verify)

    listing = sub.add_parser("list", help="list registered generators or metrics")
    listing.add_argument("what", choices=["generators", "metrics"])
    listing.set_defaults(func=_cmd_list)

    judge = sub.add_parser("serve-judge", help="serve a local vision-language model as an OpenAI-compatible judge")
    what = judge.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="model folder, or a hub id in the local Hugging Face cache")
    what.add_argument("--stand-in", action="store_true",
                      help="serve deterministic fake answers instead of a model (demos, CI, benchmarks)")
    judge.add_argument("--port", required=True, type=int, help="port to listen on (0 picks a free one)")
    judge.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    judge.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")
    judge.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                       help="auto: bfloat16 on a GPU, float32 on the CPU")
    judge.add_argument("--max-tokens", type=int, default=256, help="answer length when a request names none")
    judge.set_defaults(func=_cmd_serve_judge)
    _add_scale_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from narrastream.data import DataSourceError, ScriptFileError
    from narrastream.judges import JudgeError
    from narrastream.protocol.annotations import AnnotationsError
    from narrastream.registry import RegistryError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except (ScriptFileError, DataSourceError, FileNotFoundError, ValueError, RegistryError, AnnotationsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except JudgeError as exc:
        print(f"error: judge: {exc.reason}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
