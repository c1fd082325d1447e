"""One process per run folder and shard: the lock file, its takeover rule, and exit code 2 naming the holder."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from narrastream.results.lock import LockHolder, ShardLock, ShardLockError, pid_alive

HOLD = textwrap.dedent("""
    import sys, time
    from narrastream.results.lock import ShardLock
    lock = ShardLock(sys.argv[1], "shard-000-of-001")
    lock.acquire()
    print("locked", flush=True)
    time.sleep(600)
""")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not pid_alive(proc.pid)
    return proc.pid


def hold_in_another_process(path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_holder_in_the_same_process_is_refused_and_the_file_names_the_first(tmp_path):
    path = tmp_path / "locks" / "shard-000-of-001.lock"
    with ShardLock(path, "shard-000-of-001"):
        holder = LockHolder.parse(path.read_text())
        assert holder.pid == os.getpid() and holder.host == socket.gethostname() and holder.since
        with pytest.raises(ShardLockError, match=f"in use by pid {os.getpid()} on host"):
            ShardLock(path, "shard-000-of-001").acquire()
    assert not path.exists()  # released: nothing left behind
    with ShardLock(path, "shard-000-of-001"):  # and free again
        pass


def test_a_lock_of_a_live_process_is_refused_with_its_pid_and_host(tmp_path):
    path = tmp_path / "shard.lock"
    holder = hold_in_another_process(path)
    try:
        with pytest.raises(ShardLockError) as info:
            ShardLock(path, "shard-000-of-001").acquire()
        assert f"pid {holder.pid} on host {socket.gethostname()} since" in str(info.value)
    finally:
        holder.kill()
        holder.wait()
    with ShardLock(path, "shard-000-of-001"):  # killed -9: the kernel released it, the file is taken over
        assert LockHolder.parse(path.read_text()).pid == os.getpid()


def test_a_stale_lock_file_of_a_dead_process_is_taken_over(tmp_path, caplog):
    path = tmp_path / "shard.lock"
    gone = dead_pid()
    path.write_text(LockHolder(gone, socket.gethostname(), "2020-01-01T00:00:00", "shard-000-of-001").to_json())
    with ShardLock(path, "shard-000-of-001"):
        assert LockHolder.parse(path.read_text()).pid == os.getpid()
    assert f"pid {gone}" in caplog.text and "taking over" in caplog.text


@pytest.fixture
def no_flock(monkeypatch):
    def refuse(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)


def test_without_flock_the_file_is_the_lock(tmp_path, no_flock):
    path = tmp_path / "shard.lock"
    with ShardLock(path, "s"):
        assert LockHolder.parse(path.read_text()).pid == os.getpid()
        with pytest.raises(ShardLockError, match=f"pid {os.getpid()}"):
            ShardLock(path, "s").acquire()
    assert not path.exists()


def test_without_flock_a_dead_local_pid_is_taken_over_but_another_host_is_not(tmp_path, no_flock):
    path = tmp_path / "shard.lock"
    path.write_text(LockHolder(dead_pid(), socket.gethostname(), "2020-01-01T00:00:00").to_json())
    with ShardLock(path, "s"):
        assert LockHolder.parse(path.read_text()).pid == os.getpid()
    path.write_text(LockHolder(dead_pid(), "elsewhere.example", "2020-01-01T00:00:00").to_json())
    with pytest.raises(ShardLockError, match="on host elsewhere.example"):
        ShardLock(path, "s").acquire()
    path.write_text("")  # a crash between creating and writing the file
    with pytest.raises(ShardLockError):
        ShardLock(path, "s").acquire()  # too recent to call it stale
    old = time.time() - 3600
    os.utime(path, (old, old))
    with ShardLock(path, "s"):
        pass


# ---------------------------------------------------------------- through python -m narrastream.run
def run_cmd(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "narrastream.run", "preset=tiny", *overrides]


@pytest.mark.slow
def test_a_second_run_on_the_same_shard_exits_2_naming_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    lock_file = run_dir / "locks" / "shard-000-of-001.lock"
    holder = hold_in_another_process(lock_file)
    try:
        proc = subprocess.run(run_cmd("data.ids=[2]", f"run.dir={run_dir}"), capture_output=True, text=True,
                              timeout=600)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert proc.returncode == 2, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert f"in use by pid {holder.pid} on host {socket.gethostname()}" in out and str(lock_file) in out
    assert "Traceback" not in out
    assert not (run_dir / "videos").exists() and not (run_dir / "records").exists()  # no work done
    assert not (run_dir / "config.yaml").exists()  # nor the holder's run files overwritten
    # the holder was killed -9: its lock file (naming a dead pid) is left, and the next run takes it over
    assert LockHolder.parse(lock_file.read_text()).pid == holder.pid
    proc = subprocess.run(run_cmd("data.ids=[2]", f"run.dir={run_dir}", "stage=generate"), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "taking over the lock" in proc.stdout + proc.stderr and f"pid {holder.pid}" in proc.stdout + proc.stderr
    assert (run_dir / "videos" / "synthetic" / "2-s0.json").is_file()
    assert not lock_file.exists()  # a finished run leaves no lock


@pytest.mark.slow
def test_another_shard_is_not_blocked(tmp_path):
    run_dir = tmp_path / "run"
    holder = hold_in_another_process(run_dir / "locks" / "shard-000-of-002.lock")
    try:
        other = subprocess.run(run_cmd("data.ids=[2,3]", f"run.dir={run_dir}", "shard.count=2", "shard.index=1",
                                       "stage=generate"), capture_output=True, text=True, timeout=600)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert other.returncode == 0, other.stderr[-2000:]
    assert json.loads((run_dir / "videos" / "synthetic" / "3-s0.json").read_text())["script_id"] == 3
