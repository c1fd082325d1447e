"""The Hydra app: ``python -m narrastream.run model=NAME [stage=...] [preset=tiny] [run.dir=PATH]``.

Thin on purpose: check the command line, the whole configuration and the run folder, build a Session,
run the numbered stages. Exit code 0 when everything asked for succeeded; 2 for bad input or setup, found
before any model is loaded or any video generated and reported in one line naming the key (or file, line)
and the value, with what is allowed (also a full or read-only disk met during the run: everything written
before is kept); 3 when the run finished but some items failed (they are recorded and counted in the
leaderboard; rerunning the same command retries only those).
"""

from __future__ import annotations

import logging
import sys
from contextlib import nullcontext
from typing import Any, Sequence

import hydra
from omegaconf import DictConfig

from narrastream.paths import config_dir

log = logging.getLogger("narrastream.run")
EXIT_BAD_INPUT = 2
EXIT_ITEMS_FAILED = 3


def execute(cfg: dict) -> int:
    from narrastream.config_schema import validate_config

    validate_config(cfg)  # every key, before anything is loaded, generated or written
    from narrastream.harness.session import Session

    stages = requested_stages(cfg["stage"])
    session = Session(cfg)  # the script selection (data.ids within the file) is checked here
    if "evaluate" in stages:
        check_evaluation_setup(session)
    writes = "generate" in stages or "evaluate" in stages
    failed = 0
    with session.shard_lock() if writes else nullcontext():  # one process per run folder and shard
        forget_weights()  # the manifest records what this run loads, not an earlier run of the same process
        session.write_run_files()
        log.info("run %s: model %s, %d item(s) in %s, scripts sha256 %s", session.run.root, session.model,
                 len(session.items), session.shard, session.benchmark.sha256[:12])
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


def check_evaluation_setup(session: Any) -> None:
    """What the evaluate stage needs, checked before the generate stage rather than after it: each metric
    built from its protocol constants, the backbones config, every checkpoint file located (and hashed,
    cached), a local judge's model folder. No model is loaded; the judge endpoint is not probed."""
    from narrastream.config import ConfigError
    from narrastream.metrics.backbones import WeightsNotFoundError

    try:
        metrics = session.metrics()
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"protocol.metrics: {exc}") from None
    try:
        backbones = session.backbones
    except ValueError as exc:
        raise ConfigError(f"backbones: {exc}") from None
    missing = []
    for name in dict.fromkeys(b for m in metrics.values() for b in session._backbones_of(m)):
        try:
            backbones.weights_identity(name)
        except WeightsNotFoundError as exc:
            missing.append(exc)
    if missing:  # every missing checkpoint at once
        raise WeightsNotFoundError.combine(missing)
    judge = session.cfg.get("judge") or {}
    if judge.get("backend") == "local":  # the model folder exists (loading it waits for its first question)
        from narrastream.judges.base import JudgeConfigError
        from narrastream.judges.local import _check_source

        try:
            _check_source(str(judge.get("model")))
        except ValueError as exc:
            raise JudgeConfigError(f"judge.model: {exc}") from None


def input_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input or setup: reported in one line, exit code 2, no traceback."""
    from omegaconf.errors import OmegaConfBaseException

    from narrastream.adapters.base import AdapterConfigError
    from narrastream.adapters.precomputed import PrecomputedVideosError
    from narrastream.config import ConfigError
    from narrastream.data import DataSourceError, ScriptFileError
    from narrastream.judges.base import JudgeConfigError
    from narrastream.metrics.backbones import ChecksumError, WeightsNotFoundError
    from narrastream.protocol.annotations import AnnotationsError
    from narrastream.registry import RegistryError
    from narrastream.report.bootstrap import BootstrapConfigError
    from narrastream.results.lock import ShardLockError
    from narrastream.results.rundir import RunDirError

    return (ConfigError, ScriptFileError, DataSourceError, PrecomputedVideosError, WeightsNotFoundError,
            ChecksumError, RegistryError, RunDirError, OmegaConfBaseException, AnnotationsError, JudgeConfigError,
            AdapterConfigError, ShardLockError, BootstrapConfigError)


#: Hydra's own modes (help, multirun, printing the config, another config): Hydra reports those itself
_HYDRA_FLAGS = frozenset({"-h", "--help", "--hydra-help", "--version", "-i", "--info", "-c", "--cfg", "-p",
                          "--package", "--resolve", "-sc", "--shell-completion", "-m", "--multirun", "-cp",
                          "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "--experimental-rerun"})


def preflight(argv: Sequence[str]) -> None:
    """Before Hydra starts (it writes into run.dir and reports a bad override with a multi-line message
    and exit code 1): compose the config, validate it, read the script selection and prove the run folder
    writable. A problem is one line on stderr and exit code 2. Hydra's own modes are left to Hydra;
    :func:`execute` validates again (multirun jobs, programmatic runs)."""
    from narrastream.config import ConfigError
    from narrastream.config_schema import validate_config
    from narrastream.data import DataSourceError, ScriptFileError
    from narrastream.preflight import check_data, check_run_folder, compose_checked

    if any(arg.split("=", 1)[0] in _HYDRA_FLAGS for arg in argv):
        return
    try:
        cfg = compose_checked(argv)
        validate_config(cfg)
        check_data(cfg)
        check_run_folder(cfg["run"]["dir"], cfg["model"]["name"])
    except (ConfigError, ScriptFileError, DataSourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except Exception:  # noqa: BLE001 - e.g. ${hydra:...} resolves only inside the app: Hydra and execute() judge
        log.debug("preflight could not compose the config; Hydra will", exc_info=True)


@hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    from narrastream.config import to_plain
    from narrastream.preflight import DISK_FULL, NOT_WRITABLE, disk_error_message

    plain: dict = {}
    state = None
    error = None
    try:
        plain = to_plain(cfg)
        state = _start_shard_state(plain)
        code = execute(plain)
    except input_errors() as exc:
        error = one_line(exc)
        log.error("%s", error)
        code = EXIT_BAD_INPUT
    except OSError as exc:  # a full disk or a read-only folder met during the run
        if exc.errno not in DISK_FULL | NOT_WRITABLE:
            _finish_shard_state(plain, state, 1, f"{type(exc).__name__}: {exc}")
            raise
        logging.raiseExceptions = False  # a log file on the same full disk must not print tracebacks
        error = disk_error_message(exc, cfg.run.dir)
        log.error("%s", error)
        code = EXIT_BAD_INPUT
    except BaseException as exc:  # a crash or Ctrl-C: recorded, then raised as before
        _finish_shard_state(plain, state, 1, f"{type(exc).__name__}: {exc}")
        raise
    try:
        _finish_shard_state(plain, state, code, error)
    except OSError:  # the disk that failed the run may refuse this note too; the exit code says it all
        pass
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


def one_line(exc: BaseException) -> str:
    """OmegaConf's messages add ``full_key``/``object_type`` lines: keep the key and the message."""
    from omegaconf.errors import OmegaConfBaseException

    from narrastream.preflight import _one_line

    if isinstance(exc, OmegaConfBaseException):
        key = getattr(exc, "full_key", None)
        return f"{key}: {_one_line(str(exc))}" if key else _one_line(str(exc))
    return str(exc)


def main() -> None:
    """``python -m narrastream.run OVERRIDES``: :func:`preflight`, then the Hydra app."""
    preflight(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
