"""The layout of ``runs/<run>/``: config, manifest, videos, records, leaderboard."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from narrastream import __version__
from narrastream.jsonio import write_json_atomic


class RunDirError(RuntimeError):
    """The run folder belongs to another configuration (e.g. another script file)."""


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def run_id(self) -> str:
        return self.root.resolve().name

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def records_dir(self) -> Path:
        return self.root / "records"

    def lock_path(self, shard: str) -> Path:
        """``locks/<shard>.lock``: held by the process generating or evaluating that shard
        (:class:`narrastream.results.lock.ShardLock`)."""
        return self.root / "locks" / f"{shard}.lock"

    def videos_dir(self, model: str) -> Path:
        return self.root / "videos" / model

    def video_path(self, model: str, script_id: int, seed: int) -> Path:
        """``videos/<model>/<script_id>-s<seed>.mp4`` (its sidecar is the same name in .json)."""
        return self.videos_dir(model) / f"{script_id}-s{seed}.mp4"

    def failure_path(self, model: str, script_id: int, seed: int) -> Path:
        return self.videos_dir(model) / f"{script_id}-s{seed}.failed.json"

    def log_path(self, model: str, script_id: int, seed: int) -> Path:
        return self.videos_dir(model) / "logs" / f"{script_id}-s{seed}.log"

    def leaderboard_path(self, suffix: str = "csv") -> Path:
        return self.root / f"leaderboard.{suffix}"

    def read_manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.is_file():
            return None
        return json.loads(self.manifest_path.read_text())

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write the manifest; refuse to mix script files with different content in one run."""
        previous = self.read_manifest()
        old_sha = (previous or {}).get("data", {}).get("sha256")
        new_sha = manifest.get("data", {}).get("sha256")
        if old_sha and new_sha and old_sha != new_sha:
            raise RunDirError(
                f"{self.manifest_path}: this run used scripts with sha256 {old_sha}, but the current file "
                f"has {new_sha}. Use another run.dir, or delete the old run."
            )
        write_json_atomic(self.manifest_path, manifest)

    def add_to_manifest(self, section: str, entries: dict[str, Any]) -> None:
        """Merge ``entries`` into the manifest's ``section`` (e.g. the weights a stage loaded, known only
        once it ran); entries of earlier stages or shards under other names stay."""
        manifest = self.read_manifest() or {}
        merged = dict(manifest.get(section) or {})
        merged.update(entries)
        manifest[section] = merged
        write_json_atomic(self.manifest_path, manifest)


def environment_info() -> dict[str, Any]:
    """Package, git and interpreter versions for the run manifest."""
    info: dict[str, Any] = {
        "narrastream": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_sha": git_sha(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for module in ("torch", "torchvision", "open_clip", "av", "numpy"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is just not reported
            continue
    return info


def git_sha() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
