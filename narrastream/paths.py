"""Where the project's top-level folders (benchmark_data/, eval_configs/, reports/) live.

They sit beside the package in a source checkout (``pip install -e .``). ``NARRASTREAM_HOME`` points
elsewhere when the package is installed without its checkout.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    env = os.environ.get("NARRASTREAM_HOME")
    root = Path(env) if env else Path(__file__).resolve().parents[1]
    if not (root / "benchmark_data").is_dir():
        raise FileNotFoundError(
            f"narrastream's data folders were not found under {root}: install from a checkout "
            "(pip install -e .) or set NARRASTREAM_HOME to the checkout root"
        )
    return root


def benchmark_data_dir() -> Path:
    return project_root() / "benchmark_data"


def config_dir() -> Path:
    return project_root() / "eval_configs"


def reports_dir() -> Path:
    return project_root() / "reports"


def cache_dir() -> Path:
    """User cache (downloaded scripts, weights): ``$NARRASTREAM_CACHE`` or ``~/.cache/narrastream``."""
    env = os.environ.get("NARRASTREAM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "narrastream"
