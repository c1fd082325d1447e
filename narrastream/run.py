"""The Hydra app: ``python -m narrastream.run model=NAME [stage=...] [preset=tiny] [run.dir=PATH]``.

Thin on purpose: compose the config, build a Session, run the numbered stages. Exit code 0 when
everything asked for succeeded, 2 for bad input or setup (the message names the file, line or
field), 3 when the run finished but some items failed (they are recorded and counted in the
leaderboard; rerunning the same command retries only those).
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from narrastream.paths import config_dir

log = logging.getLogger("narrastream.run")
EXIT_BAD_INPUT = 2
EXIT_ITEMS_FAILED = 3


def execute(cfg: dict) -> int:
    from narrastream.harness.session import Session

    stages = requested_stages(cfg["stage"])
    session = Session(cfg)
    forget_weights()  # the manifest records what this run loads, not an earlier run of the same process
    session.write_run_files()
    log.info("run %s: model %s, %d item(s) in %s, scripts sha256 %s", session.run.root, session.model,
             len(session.items), session.shard, session.benchmark.sha256[:12])
    failed = 0
    # 1. generate  2. evaluate  3. leaderboard
    if "generate" in stages:
        summary = session.generate()
        log.info("%s", summary)
        failed += summary.failed
    if "evaluate" in stages:
        summary = session.evaluate()
        log.info("%s", summary)
        failed += summary.failed
        for line in summary.failures[:20]:
            log.warning("failed: %s", line)
    record_weights(session.run)
    if "leaderboard" in stages:
        csv_path = session.leaderboard()
        print(session.run.leaderboard_path("md").read_text())  # results on stdout, labels included
        log.info("leaderboard: %s", csv_path)
    return EXIT_ITEMS_FAILED if failed else 0


def forget_weights() -> None:
    from narrastream.metrics.backbones.weights import forget_resolved

    forget_resolved()


def record_weights(run) -> None:
    """Add the weights this process loaded (path, size, sha256, pin, source) to the run manifest."""
    from narrastream.metrics.backbones.weights import resolved_weights

    loaded = resolved_weights()
    if loaded and run.manifest_path.is_file():
        run.add_to_manifest("weights", loaded)


def requested_stages(stage: str | list[str]) -> tuple[str, ...]:
    """``all``, one stage, or a list of stages (``stage=[generate,evaluate]``: a shard of a launch)."""
    from narrastream.harness.session import STAGES

    names = list(stage) if isinstance(stage, (list, tuple)) else [stage]
    if "all" in names:
        return STAGES
    unknown = [n for n in names if n not in STAGES]
    if unknown or not names:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, all, or a list of them; got {stage!r}")
    return tuple(s for s in STAGES if s in names)


class ShardFailed(RuntimeError):
    """A shard of a multirun ended with a non-zero exit code; Hydra records the job as failed."""

    def __init__(self, shard: str, code: int) -> None:
        why = "bad input or setup" if code == EXIT_BAD_INPUT else "some items failed"
        super().__init__(f"{shard} ended with exit code {code} ({why}; see the log above)")
        self.code = code


def input_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input or setup: reported in one line, exit code 2, no traceback."""
    from omegaconf.errors import MissingMandatoryValue

    from narrastream.adapters.base import AdapterConfigError
    from narrastream.adapters.precomputed import PrecomputedVideosError
    from narrastream.data import DataSourceError, ScriptFileError
    from narrastream.judges.base import JudgeConfigError
    from narrastream.metrics.backbones import ChecksumError, WeightsNotFoundError
    from narrastream.protocol.annotations import AnnotationsError
    from narrastream.registry import RegistryError
    from narrastream.results.rundir import RunDirError

    return (ScriptFileError, DataSourceError, PrecomputedVideosError, WeightsNotFoundError, ChecksumError,
            RegistryError, RunDirError, MissingMandatoryValue, AnnotationsError, JudgeConfigError, AdapterConfigError)


@hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from narrastream.config import to_plain

    plain: dict = {}
    state = None
    error = None
    try:
        plain = to_plain(cfg)
        state = _start_shard_state(plain)
        code = execute(plain)
    except input_errors() as exc:
        log.error("%s", exc)
        code, error = EXIT_BAD_INPUT, str(exc)
    except BaseException as exc:  # a crash or Ctrl-C: recorded, then raised as before
        _finish_shard_state(plain, state, 1, f"{type(exc).__name__}: {exc}")
        raise
    _finish_shard_state(plain, state, code, error)
    if code:
        if _in_multirun():  # one shard's failure must not stop the others: Hydra marks this job failed
            raise ShardFailed(state.shard if state else "shard", code)
        sys.exit(code)


def _start_shard_state(cfg: dict):
    """Write ``shards/<shard>.json`` for an invocation that generates or evaluates (not a leaderboard alone)."""
    from pathlib import Path

    from narrastream.harness.sharding import shard_name
    from narrastream.results.shard_state import ShardState, write_state

    try:
        stages = requested_stages(cfg["stage"])
        shard = shard_name(int(cfg["shard"]["index"]), int(cfg["shard"]["count"]))
    except (ValueError, KeyError, TypeError):
        return None  # reported by execute() as bad input
    if not {"generate", "evaluate"} & set(stages):
        return None
    state = ShardState(shard=shard, stages=list(stages))
    write_state(Path(cfg["run"]["dir"]), state)
    return state


def _finish_shard_state(cfg: dict, state, code: int, error: str | None) -> None:
    import time
    from pathlib import Path

    from narrastream.results.shard_state import write_state

    if state is None:
        return
    first_line = error.strip().splitlines()[0][:500] if error and error.strip() else None
    state.finished, state.exit_code, state.error = time.time(), int(code), first_line
    write_state(Path(cfg["run"]["dir"]), state)


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


if __name__ == "__main__":
    main()
