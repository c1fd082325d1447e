"""``command``: run any external generator program through a JSON file contract.

For each video the harness writes a request file and runs the program with it (see
runners/README.md for the contract). The program writes the mp4 at ``output_path`` and may write a
sidecar JSON at ``sidecar_path`` (switch frames, timings, peak memory, device), read and checked by
:mod:`narrastream.adapters.command_sidecar` (a bad value is a failure naming the field). Its stdout and
stderr go to a log file; the exit code, duration and log path are kept in the video's sidecar, or
in the failure record when it fails.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from narrastream.adapters.base import (
    Capabilities,
    GeneratedVideo,
    GenerationError,
    GenerationRequest,
    Generator,
    PromptSwitching,
    sidecar_path,
    write_json_atomic,
)
from narrastream.adapters.command_sidecar import ProgramSidecar, read_program_sidecar

REQUEST_PLACEHOLDER = "{request}"
#: sidecar fields a program may report (checked: :mod:`narrastream.adapters.command_sidecar`); anything
#: else it writes is kept under ``extra``
REPORTED_FIELDS = ("switch_frames", "timings", "peak_memory_bytes", "device", "device_count")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class CommandGenerator(Generator):
    """Runs ``command`` once per video; ``{request}`` in it is replaced by the request file path
    (appended as the last argument when absent)."""

    capabilities = Capabilities(switching=PromptSwitching.NATIVE)

    def __init__(self, command: str | Sequence[str], timeout_s: float = 3600.0,
                 env: Mapping[str, str] | None = None, cwd: str | None = None,
                 switching: str = "native") -> None:
        argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
        if not argv:
            raise ValueError("command: model.params.command is empty")
        self.argv = argv
        self.timeout_s = float(timeout_s)
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        self.cwd = cwd
        self.capabilities = Capabilities(switching=PromptSwitching(switching))

    def identity(self) -> dict[str, Any]:
        """The command line run (its environment values are left out: they may hold secrets)."""
        return {"method": "command", "command": shlex.join(self.argv)}

    def _argv_for(self, request_file: Path) -> list[str]:
        if any(REQUEST_PLACEHOLDER in a for a in self.argv):
            return [a.replace(REQUEST_PLACEHOLDER, str(request_file)) for a in self.argv]
        return [*self.argv, str(request_file)]

    def generate(self, request: GenerationRequest) -> GeneratedVideo:
        from narrastream.video.decode import VideoDecodeError, probe_video

        out = Path(request.output_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        request_file = out.with_suffix(".request.json")
        log_file = out.with_suffix(".log")
        sidecar = sidecar_path(out)
        for stale in (out, sidecar):
            stale.unlink(missing_ok=True)
        write_json_atomic(request_file, request.to_json())
        argv = self._argv_for(request_file)
        started = time.perf_counter()
        exit_code = self._run(argv, log_file)
        elapsed = time.perf_counter() - started
        facts: dict[str, Any] = {"argv": argv, "exit_code": exit_code, "log": str(log_file),
                                 "elapsed_s": round(elapsed, 3)}
        if exit_code is None:
            raise GenerationError(
                f"command timed out after {self.timeout_s:.0f} s (script {request.script.id}); log: {log_file}",
                **facts)
        if exit_code != 0:
            raise GenerationError(
                f"command exited with code {exit_code} (script {request.script.id}); log: {log_file}\n"
                f"{_tail(log_file)}", **facts)
        if not out.is_file():
            raise GenerationError(
                f"command exited 0 but wrote no video at {out} (script {request.script.id}); log: {log_file}",
                **facts)
        try:
            info = probe_video(out)
        except VideoDecodeError as exc:
            raise GenerationError(f"command wrote an unreadable video: {exc}", **facts) from exc
        try:
            reported = read_program_sidecar(sidecar, num_segments=len(request.script.prompts)) or ProgramSidecar()
        except GenerationError as exc:
            raise GenerationError(str(exc), **facts) from None
        return GeneratedVideo(
            path=out, script_id=request.script.id, seed=request.seed, fps=info.fps,
            num_frames=info.num_frames, width=info.width, height=info.height,
            switch_frames=reported.switch_frames, timings={"end_to_end": elapsed, **(reported.timings or {})},
            peak_memory_bytes=reported.peak_memory_bytes, device=reported.device,
            device_count=reported.device_count, extra={**reported.extra(), "command": facts},
        )

    def _run(self, argv: list[str], log_file: Path) -> int | None:
        """Run the program in its own process group; None when it timed out (the group is killed)."""
        env = {**os.environ, **self.env}
        with open(log_file, "wb") as log:
            try:
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, cwd=self.cwd, start_new_session=True)
            except OSError as exc:
                raise GenerationError(f"command could not start: {argv[0]}: {exc}", argv=argv) from exc
            try:
                return proc.wait(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return None
