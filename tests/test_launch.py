"""``narrastream launch`` and the Hydra launcher configs: Ray and submitit shards merge bit for bit.

The end-to-end tests need the ``cluster`` extra (CI installs it: ``pip install -e ".[dev,cluster]"``).
They run a small metric set on 4 tiny synthetic videos: what is tested is the launch and the merge,
which do not depend on which metrics run.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from narrastream.harness.launch import LaunchError, launch_exit_code, plan_launch, split_overrides

RAY = importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is not None
SUBMITIT = importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None
needs_ray = pytest.mark.skipif(not RAY, reason="needs the cluster extra (hydra-ray-launcher)")
needs_submitit = pytest.mark.skipif(not SUBMITIT, reason="needs the cluster extra (hydra-submitit-launcher)")

METRICS = "protocol.run_metrics=[subject_consistency,background_consistency,conditional_adjacent]"
RUN = ["model=synthetic", "preset=tiny", "data.limit=4", METRICS]


def run(args: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout)


def check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    if proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def one_shard(tmp_path_factory) -> Path:
    """The reference: the same run as one shard, without any launcher."""
    run_dir = tmp_path_factory.mktemp("launch") / "one"
    check(run(["narrastream.run", *RUN, f"run.dir={run_dir}"]))
    return run_dir


# ----------------------------------------------------------------------------- planning (no engine)
def test_overrides_are_sorted_and_reserved_keys_refused():
    split = split_overrides(["model=x", "stage=[generate,evaluate]", "run.dir=out", "hydra.launcher.partition=gpu"])
    assert split.run == ["model=x"] and split.hydra == ["hydra.launcher.partition=gpu"]
    assert split.stages == ("generate", "evaluate") and split.run_dir == "out"
    assert split_overrides(["stage=all"]).stages == ("generate", "evaluate", "leaderboard")
    for bad in (["shard.count=3"], ["shard.index=1"], ["hydra/launcher=slurm"], ["-m"], ["stage=train"]):
        with pytest.raises(LaunchError):
            split_overrides(bad)


def test_ray_plan_asks_one_gpu_per_shard_or_none(tmp_path):
    plan = plan_launch([*RUN, f"run.dir={tmp_path / 'r'}"], engine="ray", gpus=4, cpus=32)
    command = plan.shard_command()
    assert plan.shards == 4 and command[:5] == [sys.executable, "-m", "narrastream.run", "-m",
                                                 "hydra/launcher=ray_local"]
    for expected in ("hydra.launcher.ray.remote.num_gpus=1", "hydra.launcher.ray.init.num_gpus=4",
                     "hydra.launcher.ray.remote.num_cpus=8", "hydra.launcher.ray.init.num_cpus=32",
                     "shard.count=4", "shard.index=range(4)",
                     "stage=[generate,evaluate]", f"run.dir={tmp_path / 'r'}"):
        assert expected in command
    assert plan.leaderboard_overrides()[-3:] == ["stage=leaderboard", "shard.count=4", "shard.index=0"]
    cpu = plan_launch([*RUN, "run.dir=rel/run"], engine="ray", gpus=0, shards=2)
    assert "hydra.launcher.ray.remote.num_gpus=0" in cpu.shard_command()
    assert cpu.run_dir.is_absolute()  # Ray workers need not share the launcher's working directory
    cluster = plan_launch(RUN, engine="ray", address="auto", shards=16)
    assert "hydra.launcher.ray.init.address=auto" in cluster.shard_command()
    assert not any("ray.init.num_" in o for o in cluster.shard_command())  # the cluster owns its resources


def test_plan_refuses_what_cannot_work():
    with pytest.raises(LaunchError, match="--shards"):
        plan_launch(RUN, engine="ray", gpus=0)
    with pytest.raises(LaunchError, match="same GPUs"):
        plan_launch(RUN, engine="submitit-local", gpus=2)
    with pytest.raises(LaunchError, match="data.limt"):
        plan_launch(["data.limt=3"], engine="slurm", shards=2)
    with pytest.raises(LaunchError, match="--address"):
        plan_launch(RUN, engine="ray", address="auto")  # no --shards


def test_slurm_plan_keeps_the_config_gpus_and_passes_hydra_overrides():
    plan = plan_launch([*RUN, "hydra.launcher.partition=gpu"], engine="slurm", shards=8)
    command = plan.shard_command()
    assert "hydra/launcher=slurm" in command and "hydra.launcher.partition=gpu" in command
    assert not any(o.startswith("hydra.launcher.gpus_per_node") for o in command)  # slurm.yaml: 1 per shard
    assert "hydra.launcher.gpus_per_node=0" in plan_launch(RUN, engine="slurm", shards=2, gpus=0).shard_command()
    assert all(not o.startswith("hydra.") for o in plan.leaderboard_overrides())


def test_exit_code_comes_from_the_shards_reports():
    assert launch_exit_code(0, {"a": 0, "b": 0}) == 0
    assert launch_exit_code(1, {"a": 0, "b": 3}) == 3  # items failed in b: the run finished
    assert launch_exit_code(1, {"a": 2, "b": 3}) == 2  # bad input wins
    assert launch_exit_code(1, {"a": 0, "b": None}) == 3  # b never reported (killed)
    assert launch_exit_code(1, {"a": None, "b": None}) == 1  # the engine itself failed


@needs_submitit
def test_slurm_config_renders_a_valid_sbatch_script(tmp_path, monkeypatch):
    """slurm.yaml through submitit's SLURM executor, as the plugin maps it (nothing is submitted)."""
    import submitit
    from submitit.slurm.slurm import SlurmExecutor
    from hydra import compose, initialize_config_dir
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    from narrastream.paths import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert params.pop("_target_").endswith("SlurmLauncher")
    params.pop("submitit_folder")
    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun on this machine
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm",
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    params["name"] = "narrastream"
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m narrastream.run", "uid")
    for line in ("#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8", "#SBATCH --time=720",
                 "#SBATCH --partition=gpu", "#SBATCH --mem=64GB", "#SBATCH --ntasks-per-node=1"):
        assert line in script


# ----------------------------------------------------------------------------- engines, end to end
@pytest.mark.slow
@needs_ray
def test_two_ray_shards_give_the_one_shard_leaderboard_bit_for_bit(one_shard, tmp_path):
    run_dir = tmp_path / "ray"
    proc = check(run(["narrastream.cli", "launch", "--engine", "ray", "--gpus", "0", "--shards", "2", "--cpus", "2",
                      *RUN, f"run.dir={run_dir}"]))
    assert (run_dir / "leaderboard.csv").read_bytes() == (one_shard / "leaderboard.csv").read_bytes()
    assert sorted(p.name for p in (run_dir / "records").glob("*.jsonl")) == ["shard-000-of-002.jsonl",
                                                                             "shard-001-of-002.jsonl"]
    states = {p.stem: json.loads(p.read_text()) for p in (run_dir / "shards").glob("*.json")}
    assert {s: v["exit_code"] for s, v in states.items()} == {"shard-000-of-002": 0, "shard-001-of-002": 0}
    assert len({v["pid"] for v in states.values()}) == 2  # one worker process per shard
    assert "complete" in proc.stdout and "leaderboard: written (up to date)" in proc.stdout


@pytest.mark.slow
@needs_submitit
def test_submitit_local_multirun_gives_the_one_shard_leaderboard(one_shard, tmp_path):
    """The documented by-hand path: a Hydra multirun through submitit's local executor, then the merge."""
    run_dir = tmp_path / "submitit"
    check(run(["narrastream.run", "-m", "hydra/launcher=submitit_local", *RUN, f"run.dir={run_dir}",
               "stage=[generate,evaluate]", "shard.count=2", "shard.index=range(2)"]))
    assert not (run_dir / "leaderboard.csv").exists()  # the shards do not race to write it
    check(run(["narrastream.run", *RUN, f"run.dir={run_dir}", "stage=leaderboard", "shard.count=2"]))
    assert (run_dir / "leaderboard.csv").read_bytes() == (one_shard / "leaderboard.csv").read_bytes()
    assert list((run_dir / ".hydra-runs").glob("multirun-*/.submitit"))  # submitit really ran the jobs


@pytest.mark.slow
def test_a_failing_shard_does_not_stop_the_others_and_the_exit_code_says_so(tmp_path):
    """Hydra's basic launcher: every shard runs; a shard whose items fail raises, the sweep exits non-zero."""
    run_dir = tmp_path / "failing"
    proc = run(["narrastream.run", "-m", *RUN, "video.expected_fps=99", f"run.dir={run_dir}",
                "stage=[generate,evaluate]", "shard.count=2", "shard.index=range(2)"])
    assert proc.returncode != 0
    states = {p.stem: json.loads(p.read_text()) for p in (run_dir / "shards").glob("*.json")}
    assert {s: v["exit_code"] for s, v in states.items()} == {"shard-000-of-002": 3, "shard-001-of-002": 3}
    assert "some items failed" in proc.stderr
