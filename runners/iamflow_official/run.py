"""Run the authors' IAMFlow (github.com/Eddie0521/IAMFlow) for one narrastream request.

Speaks the ``command`` contract of runners/README.md::

    python runners/iamflow_official/run.py REQUEST.json [--repo DIR] [--python EXE] [--config YAML]
                                           [--timeout-s S] [--fixed-geometry] [-- EXTRA AUTHOR ARGS]

Where things come from (flag > environment variable > default):

* ``--repo`` / ``IAMFLOW_REPO``: the authors' checkout (must contain ``iamflow/run_iamflow.py``);
* ``--python`` / ``IAMFLOW_PYTHON``: the authors' environment's python (default ``python``);
* ``--config`` / ``IAMFLOW_CONFIG``: their config, relative to the repo (default ``configs/iamflow.yaml``);
* ``--timeout-s`` / ``IAMFLOW_TIMEOUT_S``: seconds before the authors' process group is killed (3000);
* ``IAMFLOW_EXTRA_ARGS``: extra arguments for ``iamflow.run_iamflow`` (shell-split), after ``--`` too.

For one request the runner writes, in ``<output>.iamflow/`` next to the requested video:
``script.jsonl`` (one line ``{"prompts": [...]}``), ``config.yaml`` (a copy of the authors' config
with ``switch_frame_indices`` and ``num_output_frames`` derived from the request: N prompts of
``seconds_per_segment`` at 16 fps -> latent switches floored to blocks of 3, e.g. 39,78,120,159,198
and 240 latent frames for 6 x 10 s), ``iamflow.log`` (the authors' stdout+stderr, also echoed on our
stdout) and ``out/`` (their output folder). It then runs, with ``cwd`` = the repo::

    $IAMFLOW_PYTHON -m iamflow.run_iamflow --config_path <work>/config.yaml --data_path <work>/script.jsonl
        --output_folder <work>/out --seed <seed> --sample_index_offset <script_id>

moves ``out/rank0-<script_id>-0_iam.mp4`` (any single mp4 there as a fallback) to ``output_path``,
``out/mapping_<script_id>.json`` to ``<output>.mapping.json``, and writes the sidecar with
``switch_frames`` (the native pixel start frames of prompts 2..N: 153, 309, 477, 633, 789 for 6 x 10 s),
``timings`` (seconds, from the authors' "[Comparable Metrics]" printout, see ``parse_profile``) and
``extra.iamflow`` facts.

``--fixed-geometry`` leaves the authors' config untouched: their fixed 6 prompts x 240 latent frames
(switches 40,80,120,160,200 floored to 39,78,120,159,198; 957 frames 480x832 at 16 fps). The output is
always 480x832 at 16 fps whatever the request says (the latent shape is hard-coded in their code); a
mismatching request gets a warning, and narrastream probes the real video anyway.

Exit codes: 0 ok; 2 bad setup (repo/python/config missing, request unusable); 3 the authors' process
failed (its log tail is printed on stderr); 4 it timed out; 5 it exited 0 but no video was found.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

NATIVE_FPS = 16
NATIVE_WIDTH, NATIVE_HEIGHT = 832, 480
STRIDE, BLOCK = 4, 3
UNSET = ("", "none", "null")

#: "[Comparable Metrics]" lines of AgentCausalInferencePipeline.inference (profile=True), in ms:
#:   "  End-to-end total:        12345.67 ms"  -> end_to_end
#:   "  Loop (no output decode): 12345.67 ms"  -> loop_no_output_decode
#:   "  Core DiT time:           12345.67 ms"  -> core_dit
#:   "  Method overhead:         12345.67 ms"  -> method_overhead
#:   "  Output decode total:     12345.67 ms"  -> output_decode
#: plus, from the summary above it, "  Total:  12345.67 ms" -> profiled_total and
#: "  Throughput:  4.20 FPS" -> throughput_latent_fps (240 LATENT frames / total, not pixel frames).
PROFILE_LINES: dict[str, str] = {
    "end_to_end": r"End-to-end total",
    "loop_no_output_decode": r"Loop \(no output decode\)",
    "core_dit": r"Core DiT time",
    "method_overhead": r"Method overhead",
    "output_decode": r"Output decode total",
    "profiled_total": r"Total",
}
_NUMBER = r"([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"


class RunnerError(Exception):
    """``message`` is printed LAST on stderr (after ``detail``, e.g. the authors' log tail), so it stays in the
    few last log lines the command adapter copies into its failure record."""

    def __init__(self, message: str, code: int, detail: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail


def parse_profile(text: str) -> dict[str, float]:
    """Seconds per profiling boundary from the authors' stdout; missing lines are simply absent.

    Looks for ``<label>: <number> ms`` lines (labels in ``PROFILE_LINES``; the first label must start
    the line after whitespace, so "Total:" does not match "End-to-end total:"), converts ms -> s, and
    ``Throughput: <number> FPS`` -> ``throughput_latent_fps`` (not converted). When the printout holds
    several reports (``--seeds``), the last one wins.
    """
    out: dict[str, float] = {}
    for key, label in PROFILE_LINES.items():
        hits = re.findall(rf"^\s*{label}:\s*{_NUMBER}\s*ms\b", text, flags=re.MULTILINE)
        if hits:
            out[key] = float(hits[-1]) / 1000.0
    hits = re.findall(rf"^\s*Throughput:\s*{_NUMBER}\s*FPS\b", text, flags=re.MULTILINE)
    if hits:
        out["throughput_latent_fps"] = float(hits[-1])
    return out


def _switch_plan(num_prompts: int, seconds: float, fps: float) -> tuple[int, list[int], list[int]]:
    """(num latent frames, latent switches, pixel starts of prompts 2..N) for the request."""
    try:
        from narrastream.streaming.switches import plan_switches

        plan = plan_switches(num_prompts, seconds, fps, BLOCK, stride=STRIDE)
        return plan.num_latent_frames, list(plan.switches), list(plan.pixel_starts[1:])
    except ImportError:  # same arithmetic as narrastream.streaming.switches, for a bare python
        per = seconds * fps
        latent = (int(round(num_prompts * per)) // STRIDE) // BLOCK * BLOCK
        switches = [(int(round(i * per)) // STRIDE) // BLOCK * BLOCK for i in range(1, num_prompts)]
        return latent, switches, [STRIDE * s - (STRIDE - 1) for s in switches]


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return default if value is None or value.strip().lower() in UNSET else value


def _write_config(src: Path, dst: Path, switches: list[int] | None, num_latent: int | None) -> None:
    text = src.read_text()
    if switches is not None:
        try:
            from omegaconf import OmegaConf

            cfg = OmegaConf.load(src)
            cfg.switch_frame_indices = ", ".join(str(s) for s in switches)
            cfg.num_output_frames = int(num_latent)
            text = OmegaConf.to_yaml(cfg)
        except ImportError:  # plain line edits of the two top-level keys
            text = re.sub(r"(?m)^switch_frame_indices:.*$",
                          f'switch_frame_indices: "{", ".join(map(str, switches))}"', text)
            text = re.sub(r"(?m)^num_output_frames:.*$", f"num_output_frames: {int(num_latent)}", text)
    dst.write_text(text)


def _run(argv: list[str], cwd: Path, env: dict[str, str], log_file: Path, timeout_s: float) -> int | None:
    with open(log_file, "wb") as log:
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            raise RunnerError(f"iamflow-official: could not start {argv[0]!r}: {exc}", 2) from exc
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None


def _tail(text: str, lines: int = 10) -> str:
    return "\n".join(text.splitlines()[-lines:])


def run(request: dict[str, Any], repo: str | None, python: str, config: str, timeout_s: float,
        fixed_geometry: bool, extra_args: list[str]) -> dict[str, Any]:
    if not repo:
        raise RunnerError("iamflow-official: no IAMFlow repository given; set IAMFLOW_REPO (or "
                          "model.params.env.IAMFLOW_REPO) or pass --repo to a clone of Eddie0521/IAMFlow", 2)
    repo_dir = Path(repo).expanduser().resolve()
    if not (repo_dir / "iamflow" / "run_iamflow.py").is_file():
        raise RunnerError(f"iamflow-official: {repo_dir} is not an IAMFlow checkout "
                          "(no iamflow/run_iamflow.py there); see runners/iamflow_official/README.md", 2)
    config_src = Path(config) if Path(config).is_absolute() else repo_dir / config
    if not config_src.is_file():
        raise RunnerError(f"iamflow-official: config {config_src} not found", 2)

    prompts = [str(p) for p in request["prompts"]]
    script_id, seed = int(request["script_id"]), int(request["seed"])
    fps, seconds = float(request.get("fps", NATIVE_FPS)), float(request.get("seconds_per_segment", 10))
    out = Path(request["output_path"]).resolve()
    warnings: list[str] = []
    if fps != NATIVE_FPS:
        warnings.append(f"requested {fps} fps; IAMFlow writes {NATIVE_FPS} fps, segments planned at {NATIVE_FPS} fps")
    if (request.get("width"), request.get("height")) not in ((NATIVE_WIDTH, NATIVE_HEIGHT), (None, None)):
        warnings.append(f"requested {request.get('width')}x{request.get('height')}; IAMFlow writes "
                        f"{NATIVE_WIDTH}x{NATIVE_HEIGHT}")
    if fixed_geometry:
        if len(prompts) != 6:
            raise RunnerError(f"iamflow-official: --fixed-geometry needs 6 prompts, script has {len(prompts)}", 2)
        num_latent, switches, starts = _switch_plan(6, 10, NATIVE_FPS)
    else:
        try:
            num_latent, switches, starts = _switch_plan(len(prompts), seconds, NATIVE_FPS)
        except ValueError as exc:
            raise RunnerError(f"iamflow-official: cannot plan {len(prompts)} x {seconds} s: {exc}", 2) from exc
    for w in warnings:
        print(f"[iamflow-official] warning: {w}", file=sys.stderr)

    work = out.with_suffix(".iamflow")
    shutil.rmtree(work, ignore_errors=True)
    (work / "out").mkdir(parents=True)
    (work / "script.jsonl").write_text(json.dumps({"prompts": prompts}, ensure_ascii=False) + "\n")
    _write_config(config_src, work / "config.yaml", None if fixed_geometry else switches, num_latent)

    argv = [python, "-m", "iamflow.run_iamflow", "--config_path", str(work / "config.yaml"),
            "--data_path", str(work / "script.jsonl"), "--output_folder", str(work / "out"),
            "--seed", str(seed), "--sample_index_offset", str(script_id), *extra_args]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo_dir), env.get("PYTHONPATH", "")) if p)
    env.setdefault("WAN_MODEL_PATH", str(repo_dir / "pretrained" / "Wan2.1-T2V-1.3B"))
    log_file = work / "iamflow.log"
    print("[iamflow-official] running:", shlex.join(argv), "in", repo_dir, flush=True)
    started = time.perf_counter()
    code = _run(argv, repo_dir, env, log_file, timeout_s)
    wall = time.perf_counter() - started
    log_text = log_file.read_text(errors="replace") if log_file.is_file() else ""
    sys.stdout.write(log_text)
    sys.stdout.flush()
    if code is None:
        raise RunnerError(f"iamflow-official: the authors' process timed out after {timeout_s:.0f} s; "
                          f"log {log_file}", 4, _tail(log_text))
    if code != 0:
        raise RunnerError(f"iamflow-official: the authors' process exited with code {code}; log {log_file}",
                          3, _tail(log_text))

    video = work / "out" / f"rank0-{script_id}-0_iam.mp4"
    if not video.is_file():
        found = sorted((work / "out").rglob("*.mp4"))
        if len(found) != 1:
            raise RunnerError(f"iamflow-official: the authors' process exited 0 but produced "
                              f"{'no' if not found else len(found)} mp4 under {work / 'out'} "
                              f"(expected {video.name}); log {log_file}", 5, _tail(log_text))
        video = found[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(video), str(out))
    mapping = work / "out" / f"mapping_{script_id}.json"
    mapping_dst = None
    if mapping.is_file():
        mapping_dst = out.with_suffix(".mapping.json")
        shutil.move(str(mapping), str(mapping_dst))

    timings = parse_profile(log_text)
    timings["process_wall"] = round(wall, 3)
    return {
        "switch_frames": starts,
        "timings": timings,
        "iamflow": {
            "repo": str(repo_dir), "python": python, "config": str(config_src), "argv": argv,
            "latent_switch_indices": switches, "num_latent_frames": num_latent,
            "fixed_geometry": fixed_geometry, "log": str(log_file),
            "mapping": str(mapping_dst) if mapping_dst else None, "warnings": warnings,
        },
    }


def main(argv: list[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in args_in:
        i = args_in.index("--")
        args_in, extra = args_in[:i], args_in[i + 1:]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("request")
    parser.add_argument("--repo", default=_env("IAMFLOW_REPO"))
    parser.add_argument("--python", default=_env("IAMFLOW_PYTHON", "python"))
    parser.add_argument("--config", default=_env("IAMFLOW_CONFIG", "configs/iamflow.yaml"))
    parser.add_argument("--timeout-s", type=float, default=float(_env("IAMFLOW_TIMEOUT_S", "3000")))
    parser.add_argument("--fixed-geometry", action="store_true",
                        default=(_env("IAMFLOW_FIXED_GEOMETRY", "0") or "0").lower() in ("1", "true", "yes"))
    args = parser.parse_args(args_in)
    extra = shlex.split(_env("IAMFLOW_EXTRA_ARGS", "") or "") + extra
    try:
        request = json.loads(Path(args.request).read_text())
        result = run(request, args.repo if args.repo and args.repo.strip().lower() not in UNSET else None,
                     args.python, args.config, args.timeout_s, args.fixed_geometry, extra)
    except RunnerError as exc:
        if exc.detail:
            print(f"--- last lines of the authors' log ---\n{exc.detail}\n---", file=sys.stderr)
        print(str(exc), file=sys.stderr)
        return exc.code
    except (OSError, KeyError, ValueError) as exc:
        print(f"iamflow-official: unusable request {args.request}: {exc!r}", file=sys.stderr)
        return 2
    sidecar = request.get("sidecar_path")
    if sidecar:
        Path(sidecar).write_text(json.dumps(result, indent=2))
    print(f"[iamflow-official] wrote {request['output_path']}; switch frames {result['switch_frames']}; "
          f"timings {result['timings']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
