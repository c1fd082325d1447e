"""The Hydra app: ``python -m narrastream.run model=NAME [stage=...] [preset=tiny] [run.dir=PATH]``.

Thin on purpose: compose the config, build a Session, run the numbered stages. Exit code 0 when
everything asked for succeeded, 2 for bad input or setup (the message names the file, line or
field), 3 when the run finished but some items failed (they are recorded and counted in the
leaderboard; rerunning the same command retries only those).
"""

from __future__ import annotations

import logging
import sys
from contextlib import nullcontext

import hydra
from omegaconf import DictConfig

from narrastream.paths import config_dir

log = logging.getLogger("narrastream.run")
EXIT_BAD_INPUT = 2
EXIT_ITEMS_FAILED = 3


def execute(cfg: dict) -> int:
    from narrastream.harness.session import STAGES, Session

    stage = cfg["stage"]
    if stage not in (*STAGES, "all"):
        raise ValueError(f"stage must be one of {', '.join(STAGES)} or all; got {stage!r}")
    stages = STAGES if stage == "all" else (stage,)
    session = Session(cfg)
    writes = "generate" in stages or "evaluate" in stages
    failed = 0
    with session.shard_lock() if writes else nullcontext():  # one process per run folder and shard
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
    if "leaderboard" in stages:
        log.info("leaderboard: %s", session.leaderboard())
    return EXIT_ITEMS_FAILED if failed else 0


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
    from narrastream.results.lock import ShardLockError
    from narrastream.results.rundir import RunDirError

    return (ScriptFileError, DataSourceError, PrecomputedVideosError, WeightsNotFoundError, ChecksumError,
            RegistryError, RunDirError, MissingMandatoryValue, AnnotationsError, JudgeConfigError, AdapterConfigError,
            ShardLockError)


@hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from narrastream.config import to_plain

    try:
        code = execute(to_plain(cfg))
    except input_errors() as exc:
        log.error("%s", exc)
        sys.exit(EXIT_BAD_INPUT)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
