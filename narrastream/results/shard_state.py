"""What each shard's last invocation did: ``runs/<run>/shards/shard-III-of-NNN.json``.

A shard writes its file when it starts (host, pid, stages, start time) and again when it ends (exit
code, error line). Launchers and ``narrastream status`` read them to tell a shard that is running
from one that finished, failed on bad input, or was killed (started, never finished, process gone)
without parsing logs. Records and sidecars stay the truth about items; this file is about processes.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_DIR = "shards"


@dataclass
class ShardState:
    shard: str
    stages: list[str]
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    started: float = field(default_factory=time.time)
    finished: float | None = None
    exit_code: int | None = None
    error: str | None = None

    @property
    def running_here(self) -> bool:
        """Started, not finished, and its process is alive on this host."""
        return self.finished is None and self.host == socket.gethostname() and _pid_alive(self.pid)

    @property
    def phase(self) -> str:
        """``running``, ``exited N``, ``killed`` (its process is gone), or ``running?`` (another host)."""
        if self.finished is not None:
            return f"exited {self.exit_code}"
        if self.host != socket.gethostname():
            return "running?"
        return "running" if _pid_alive(self.pid) else "killed"


def state_path(run_root: Path | str, shard: str) -> Path:
    return Path(run_root) / STATE_DIR / f"{shard}.json"


def write_state(run_root: Path | str, state: ShardState) -> None:
    path = state_path(run_root, state.shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(asdict(state), indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError:  # e.g. the disk that stopped the run is full: leave no half-written file behind
        tmp.unlink(missing_ok=True)
        raise


def read_states(run_root: Path | str) -> dict[str, ShardState]:
    """Every shard's last state, by shard name (unreadable files are skipped)."""
    folder = Path(run_root) / STATE_DIR
    states: dict[str, ShardState] = {}
    for path in sorted(folder.glob("shard-*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
            known = ShardState.__dataclass_fields__
            state = ShardState(**{k: v for k, v in data.items() if k in known})
        except (json.JSONDecodeError, TypeError):
            continue
        states[state.shard] = state
    return states


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
