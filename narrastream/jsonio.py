"""Atomic JSON files: the one writer of sidecars, manifests and contract files.

Its own module so that every layer can use it (``results/`` writes the manifest, ``adapters/`` the
sidecars) without a lower layer importing a higher one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; sidecars are meant to be shared
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:  # a full disk, a kill: no half-written temporary file is left behind
        Path(tmp).unlink(missing_ok=True)
        raise
