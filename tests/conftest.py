"""Shared fixtures: the official script copy (never committed) and small helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_COPY = REPO.parent / "shared" / "narrastream" / "streambench_324.jsonl"

# Tests and CI have no internet, while a run downloads missing weights by default: the suite runs offline
# (huggingface_hub, transformers and narrastream refuse every download), set before any of them is imported.
# The download tests unset it and fetch from a local HTTP server they start.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Tests and CI read the official scripts from $NARRASTREAM_DATA, else ../shared/narrastream/.
if not os.environ.get("NARRASTREAM_DATA") and SHARED_COPY.is_file():
    os.environ["NARRASTREAM_DATA"] = str(SHARED_COPY)


@pytest.fixture(scope="session")
def official_path() -> Path:
    path = os.environ.get("NARRASTREAM_DATA")
    if not path or not Path(path).is_file():
        pytest.fail("the official scripts are needed: set NARRASTREAM_DATA or provide ../shared/narrastream/")
    return Path(path)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never read or write the user's ~/.cache/narrastream from tests."""
    monkeypatch.setenv("NARRASTREAM_CACHE", str(tmp_path_factory.mktemp("cache")))


def run_module_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]
