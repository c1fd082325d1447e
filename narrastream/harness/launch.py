"""``narrastream launch``: every shard of a run through an existing engine, then one merged leaderboard.

The engines are Hydra's launcher plugins (``pip install -e ".[cluster]"``), configured in
``eval_configs/hydra/launcher/``:

- ``ray`` (``ray_local.yaml``): one Ray task per shard on this node or on a running Ray cluster; each
  task asks Ray for one GPU, and Ray sets its ``CUDA_VISIBLE_DEVICES``, so N shards fill N GPUs;
- ``slurm`` (``slurm.yaml``): one SLURM array task per shard through submitit, on as many nodes as
  the cluster gives;
- ``submitit-local``: submitit's local executor, the SLURM code path on one machine (CPU shards; it
  gives every job the same GPUs, so it is not the way to fill a node's GPUs: Ray is).

narrastream builds the Hydra multirun (``shard.count=N 'shard.index=range(N)'``, stages generate and
evaluate), waits for it, runs the leaderboard stage once over all shards' records, and reads the run
folder for the outcome. Scheduling, placement, GPU assignment and retries belong to the engine.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2
EXIT_ITEMS_FAILED = 3
SHARD_STAGES = ("generate", "evaluate")


class LaunchError(ValueError):
    """Bad launch arguments or overrides (exit code 2, before anything starts)."""


@dataclass(frozen=True)
class Engine:
    launcher: str  # the hydra/launcher config name
    plugin: str  # the module the launcher plugin lives in
    package: str  # the pip package that provides it


ENGINES: dict[str, Engine] = {
    "ray": Engine("ray_local", "hydra_plugins.hydra_ray_launcher", "hydra-ray-launcher"),
    "slurm": Engine("slurm", "hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "submitit-local": Engine("submitit_local", "hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
}
RESERVED = ("shard.index", "shard.count", "hydra/launcher", "hydra.mode", "hydra.sweeper")


@dataclass
class LaunchPlan:
    """A resolved launch: what each shard runs and on what resources."""

    engine: str
    shards: int
    gpus_per_shard: int
    overrides: list[str]  # the user's overrides, without stage=, run.dir= and hydra.*
    stages: tuple[str, ...]  # the stages asked for (generate, evaluate, leaderboard)
    run_dir: Path
    gpus: int | None = None  # GPUs Ray may use on this node (None: all it finds)
    cpus: int | None = None  # CPUs Ray may use on this node (None: all)
    cpus_per_shard: int | None = None
    address: str | None = None  # Ray: join this cluster instead of starting one on this node
    hydra_overrides: list[str] = field(default_factory=list)  # the user's hydra.* (e.g. hydra.launcher.partition=gpu)
    engine_overrides: list[str] = field(default_factory=list)  # resources, in the engine's terms

    @property
    def shard_stages(self) -> tuple[str, ...]:
        return tuple(s for s in self.stages if s in SHARD_STAGES)

    def shard_command(self) -> list[str]:
        """The Hydra multirun that runs every shard's generate/evaluate stages through the engine."""
        engine = ENGINES[self.engine]
        return [sys.executable, "-m", "narrastream.run", "-m", f"hydra/launcher={engine.launcher}",
                *self.engine_overrides, *self.hydra_overrides, *self.overrides, f"run.dir={self.run_dir}",
                f"stage=[{','.join(self.shard_stages)}]", f"shard.count={self.shards}",
                f"shard.index=range({self.shards})"]

    def leaderboard_overrides(self) -> list[str]:
        """The leaderboard stage, once, over every shard's records (shard 0 of N: config.yaml keeps N)."""
        return [*self.overrides, f"run.dir={self.run_dir}", "stage=leaderboard", f"shard.count={self.shards}",
                "shard.index=0"]


@dataclass
class SplitOverrides:
    run: list[str]  # the run's own overrides (composed, and given to every shard)
    hydra: list[str]  # hydra.* overrides (the launcher's: given to the multirun only)
    stages: tuple[str, ...]
    run_dir: str | None  # run.dir=..., made absolute by the plan


def split_overrides(overrides: Sequence[str]) -> SplitOverrides:
    """Sort the user's overrides; refuse the keys the launcher sets itself."""
    from narrastream.run import requested_stages

    out = SplitOverrides([], [], (), None)
    stage = "all"
    for item in overrides:
        key, _, value = item.partition("=")
        key = key.lstrip("+~")
        if key in RESERVED or item in ("-m", "--multirun") or key.startswith("hydra/launcher"):
            raise LaunchError(f"{item!r}: narrastream launch sets {key} itself (use --shards, --engine)")
        if key == "stage":
            stage = value
        elif key == "run.dir":
            out.run_dir = value
        elif key.startswith("hydra."):
            out.hydra.append(item)
        else:
            out.run.append(item)
    names: Any = [s.strip() for s in stage.strip("[]").split(",")] if stage.startswith("[") else stage
    try:
        out.stages = requested_stages(names)
    except ValueError as exc:
        raise LaunchError(f"stage={stage}: {exc}") from None
    return out


def detect_gpus() -> int:
    """GPUs this process can see (CUDA_VISIBLE_DEVICES respected)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan_launch(overrides: Sequence[str], *, engine: str = "ray", gpus: int | None = None,
                shards: int | None = None, cpus: int | None = None, cpus_per_shard: int | None = None,
                address: str | None = None) -> LaunchPlan:
    """Check the arguments and compose the config (bad overrides fail here, before any engine starts).

    ``address`` (Ray only) joins a running Ray cluster (``auto``: the one ``ray start`` made here);
    the cluster then owns the resources and ``--shards`` says how many tasks to run.
    """
    if engine not in ENGINES:
        raise LaunchError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if address is not None and engine != "ray":
        raise LaunchError("--address is for --engine ray")
    if address is not None and (shards is None or cpus is not None):
        raise LaunchError("--address: the Ray cluster owns the resources; give --shards N (and --gpus 0 for "
                          "CPU shards), not --cpus")
    for name, value in (("--gpus", gpus), ("--cpus", cpus)):
        if value is not None and value < 0:
            raise LaunchError(f"{name} must be >= 0, got {value}")
    if shards is not None and shards < 1:
        raise LaunchError(f"--shards must be >= 1, got {shards}")
    split = split_overrides(overrides)
    user = split.run + ([f"run.dir={split.run_dir}"] if split.run_dir else [])
    if engine == "ray" and gpus is None and address is None:
        gpus = detect_gpus()
        if gpus == 0 and shards is None:
            raise LaunchError("no GPU found: run N shards on the CPU with --gpus 0 --shards N")
    if shards is None:
        if not gpus:
            raise LaunchError(f"--engine {engine}: give --shards N")
        shards = gpus
    if engine == "submitit-local" and gpus:
        raise LaunchError("submitit's local executor gives every job the same GPUs; use --engine ray to run "
                          "one shard per GPU, or --gpus 0 for CPU shards")
    # one GPU per shard when there are GPUs; slurm and a Ray cluster: unless --gpus 0
    gpus_per_shard = 1 if gpus or (gpus is None and (engine == "slurm" or address is not None)) else 0

    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from narrastream.config import compose_config

    try:
        cfg = compose_config([*user, f"shard.count={shards}", "shard.index=0"])
    except (HydraException, OmegaConfBaseException) as exc:
        raise LaunchError(f"overrides {' '.join(user)}: {exc}") from None
    run_dir = Path(cfg["run"]["dir"]).expanduser().resolve()
    plan = LaunchPlan(engine=engine, shards=shards, gpus_per_shard=gpus_per_shard, overrides=split.run,
                      stages=split.stages, run_dir=run_dir, hydra_overrides=split.hydra, gpus=gpus, cpus=cpus,
                      cpus_per_shard=cpus_per_shard, address=address)
    plan.engine_overrides = engine_overrides(plan)
    if judge_is_in_process(cfg) and shards > 1 and plan.shard_stages:
        log.warning("judge=local loads one copy of the judge model in every shard; to share one, serve it with "
                    "`narrastream serve-judge --model PATH --port 8000` and launch with judge=vllm "
                    "judge.base_url=http://HOST:8000/v1")
    return plan


def engine_overrides(plan: LaunchPlan) -> list[str]:
    """Resources in the engine's own terms."""
    if plan.engine == "ray":
        if plan.address is not None:
            return [f"hydra.launcher.ray.init.address={plan.address}",
                    f"hydra.launcher.ray.remote.num_gpus={plan.gpus_per_shard}",
                    f"hydra.launcher.ray.remote.num_cpus={plan.cpus_per_shard or 1}"]
        # Ray is told the same CPU count the shards are sized by, so they all fit at once
        cpus = plan.cpus or usable_cpus()
        per_shard = plan.cpus_per_shard or max(1, cpus // plan.shards)
        out = [f"hydra.launcher.ray.remote.num_gpus={plan.gpus_per_shard}",
               f"hydra.launcher.ray.remote.num_cpus={per_shard}",
               f"hydra.launcher.ray.init.num_cpus={max(cpus, per_shard)}"]
        if plan.gpus is not None:
            out.append(f"hydra.launcher.ray.init.num_gpus={plan.gpus}")
        return out
    out = [] if plan.gpus is None else [f"hydra.launcher.gpus_per_node={plan.gpus_per_shard}"]
    if plan.cpus_per_shard:
        out.append(f"hydra.launcher.cpus_per_task={plan.cpus_per_shard}")
    return out


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def judge_is_in_process(cfg: dict) -> bool:
    return (cfg.get("judge") or {}).get("backend") == "local"


def check_engine_installed(engine: str) -> None:
    spec = ENGINES[engine]
    if importlib.util.find_spec(spec.plugin) is None:
        raise LaunchError(f"--engine {engine} needs the {spec.package} package: pip install -e \".[cluster]\"")


def validate_inputs(plan: LaunchPlan) -> None:
    """Load the scripts and annotations as a shard would: bad input stops here, before the engine starts."""
    from narrastream.config import compose_config
    from narrastream.harness.session import Session

    Session(compose_config([*plan.overrides, f"run.dir={plan.run_dir}", f"shard.count={plan.shards}",
                            "shard.index=0"]))


@dataclass
class LaunchResult:
    exit_code: int
    engine_exit_code: int | None
    shard_exit_codes: dict[str, int | None]
    leaderboard: Path | None
    seconds: float


def launch(plan: LaunchPlan, *, env: dict[str, str] | None = None) -> LaunchResult:
    """Run the shards through the engine, wait, build the leaderboard, and derive the exit code
    (:func:`launch_exit_code`) from the shards' reports in ``shards/``."""
    from narrastream.harness.sharding import shard_name
    from narrastream.results.shard_state import read_states

    check_engine_installed(plan.engine)
    validate_inputs(plan)
    started = time.time()
    engine_code = None
    if plan.shard_stages:
        command = plan.shard_command()
        log.info("launching %d shard(s) through %s: %s", plan.shards, plan.engine, " ".join(command))
        env = dict(os.environ if env is None else env)
        if not plan.gpus_per_shard:  # CPU shards: no GPU visible, whatever the engine does with 0 GPUs
            env["CUDA_VISIBLE_DEVICES"] = ""
        # the engine's and shards' logs go to stderr: stdout stays for the status table and results
        engine_code = subprocess.run(command, env=env, stdout=sys.stderr).returncode
    states = read_states(plan.run_dir)
    names = [shard_name(i, plan.shards) for i in range(plan.shards)]
    codes: dict[str, int | None] = {}
    for name in names:
        state = states.get(name)
        codes[name] = state.exit_code if state is not None and state.started >= started - 1 else None
    board = None
    if "leaderboard" in plan.stages:
        board = build_leaderboard(plan)
    code = launch_exit_code(engine_code, codes) if plan.shard_stages else 0
    return LaunchResult(code, engine_code, codes, board, time.time() - started)


def launch_exit_code(engine_code: int | None, shard_codes: dict[str, int | None]) -> int:
    """2 if a shard stopped on bad input or setup; 1 if the engine failed before any shard reported;
    3 if items failed or a shard did not report (killed, or never started); else 0."""
    codes = list(shard_codes.values())
    if EXIT_BAD_INPUT in codes:
        return EXIT_BAD_INPUT
    if engine_code and all(c is None for c in codes):
        return 1
    if engine_code or any(c != 0 for c in codes):
        return EXIT_ITEMS_FAILED
    return 0


def build_leaderboard(plan: LaunchPlan) -> Path | None:
    """The leaderboard stage in this process, over every shard's records."""
    from narrastream.config import compose_config
    from narrastream.run import execute

    if not (plan.run_dir / "records").is_dir():
        log.warning("%s: no records yet, so no leaderboard", plan.run_dir)
        return None
    execute(compose_config(plan.leaderboard_overrides()))
    return plan.run_dir / "leaderboard.csv"
