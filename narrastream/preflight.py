"""Checks that run before any work: the command line composes, the config validates, the run folder is writable.

``python -m narrastream.run`` runs :func:`preflight` before handing over to Hydra, because Hydra itself
reports a bad override (``model=NAME`` unknown, ``foo=1``) with a multi-line message and exit code 1, and
creates its log folder inside ``run.dir`` before our code runs. Every problem found here is one
:class:`~narrastream.config.ConfigError` line; the caller prints it and exits with code 2.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from narrastream.config import ConfigError, compose_config, did_you_mean
from narrastream.paths import config_dir

#: OSError numbers that mean the environment, not narrastream, is wrong: reported in one line, exit code 2
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def compose_checked(overrides: Sequence[str]) -> dict[str, Any]:
    """``compose_config(overrides)``, with every composition error turned into one ConfigError line."""
    from hydra.errors import (
        ConfigCompositionException,
        HydraException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        MissingMandatoryValue,
        OmegaConfBaseException,
    )

    try:
        return compose_config(list(overrides))
    except MissingConfigException as exc:
        raise ConfigError(_missing_option(exc, overrides)) from None
    except OverrideParseException as exc:
        raise ConfigError(f"{exc.override}: cannot parse this override ({_one_line(exc.message)}); "
                          "see https://hydra.cc/docs/advanced/override_grammar/basic/") from None
    except ConfigCompositionException as exc:
        cause = exc.__cause__
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and getattr(cause, "full_key", None):
            raise ConfigError(_unknown_key(str(cause.full_key), overrides)) from None
        raise ConfigError(_one_line(str(exc))) from None
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise ConfigError(f"{key}: missing mandatory value (??? in the config): set it, e.g. {key}=VALUE") from None
    except (HydraException, OmegaConfBaseException) as exc:
        if "HydraConfig was not set" in str(exc):
            raise  # ${hydra:...} resolves only inside the Hydra app: let it judge
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"{key}: {_one_line(str(exc))}" if key else _one_line(str(exc))) from None


def _missing_option(exc: Any, overrides: Sequence[str]) -> str:
    """``model=syntetic`` and friends: the group's options with a did-you-mean."""
    missing = str(getattr(exc, "missing_cfg_file", "") or "")
    group, _, name = missing.rpartition("/")
    options = sorted(getattr(exc, "options", None) or [])
    if not group or not options:
        return _one_line(str(exc))
    given = next((o for o in overrides if o.lstrip("+~").split("=", 1)[0] == group), f"{group}={name}")
    return (f"{given}: no config eval_configs/{group}/{name}.yaml.{did_you_mean(name, options)} "
            f"Available: {', '.join(options)}")


def _unknown_key(full_key: str, overrides: Sequence[str]) -> str:
    """``foo=1`` or ``data.limt=3``: the key is not in the config; name the close keys."""
    parent, _, leaf = full_key.rpartition(".")
    groups = {p.name for p in config_dir().iterdir() if p.is_dir()}
    base = [o for o in overrides if "=" in o and o.lstrip("+~").split("=", 1)[0] in groups]
    try:
        node: Any = compose_config(base)
        for part in parent.split(".") if parent else []:
            node = node[part]
        known = [f"{parent}.{k}" if parent else str(k) for k in node]
    except Exception:  # noqa: BLE001 - the hint is a nicety; the error is reported without it
        known = []
    given = next((o for o in overrides if o.lstrip("+~").split("=", 1)[0] == full_key), full_key)
    where = f"in {parent}" if parent else "at the top level"
    hint = did_you_mean(full_key, known, quote=False)
    listing = f" Known: {', '.join(known)}." if known else ""
    return f"{given}: no key {leaf!r} {where}.{hint}{listing} (To add a new key on purpose, write +{given.lstrip('+')})"


def _one_line(text: str) -> str:
    """Hydra and OmegaConf messages span lines (full_key, object_type, search path): keep the message."""
    keep = []
    for line in str(text).splitlines():
        line = line.strip()
        if not line or line.startswith(("full_key:", "object_type", "reference_type", "Config search path",
                                        "provider=", "See https://hydra.cc")):
            continue
        keep.append(line.rstrip("."))
    return "; ".join(keep) or str(text).strip()


def check_run_folder(run_dir: Path | str, model: str | None = None) -> None:
    """Create ``run_dir`` and prove it (and its records/ and videos/<model>/ folders, when present) writable.

    Raises ConfigError naming the folder when it is read-only, not ours to write, or on a full disk."""
    run_dir = Path(run_dir)
    folders = [run_dir, run_dir / "records"] + ([run_dir / "videos" / model] if model else [])
    folder = run_dir
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        for folder in folders:
            if folder.is_dir():
                _probe(folder)
    except OSError as exc:
        if exc.errno in DISK_FULL | NOT_WRITABLE:
            where = OSError(exc.errno, exc.strerror, exc.filename if folder == run_dir and not run_dir.is_dir()
                            else str(folder))  # the folder, not the probe file
            raise ConfigError(f"run.dir={str(run_dir)!r}: the run folder is unusable: "
                              + disk_error_message(where, folder)) from None
        raise


def _probe(folder: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".narrastream-probe-")
    try:
        if os.write(fd, b"\n" * 512) != 512:  # a short write here means the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(tmp)


def disk_error_message(exc: OSError, fallback: Path | str) -> str:
    """One line for an OSError of the environment (full disk, read-only or forbidden folder)."""
    path = exc.filename or fallback
    if exc.errno in DISK_FULL:
        why = "" if exc.errno == errno.ENOSPC else f" ({os.strerror(exc.errno)})"
        return (f"{path}: no space left on device{why}. Everything already written "
                "(videos, sidecars, records) is kept: free some space and rerun the same command to resume")
    if exc.errno == errno.EROFS:
        return f"{path}: read-only file system; choose a writable run.dir"
    return f"{path}: permission denied ({os.strerror(exc.errno or 0)}); fix its permissions or choose another run.dir"


def check_data(cfg: dict[str, Any]) -> None:
    """Load the script file and apply the selection (``data.ids`` within the file, ...): a ScriptFileError,
    DataSourceError or ConfigError names the file, line or key. Cheap: no model, a small text file."""
    from narrastream.data import load_benchmark

    data = cfg["data"]
    load_benchmark(data.get("path"), official=data.get("official", "auto"), ids=data.get("ids"),
                   dimensions=data.get("dimensions"), limit=data.get("limit"))


def environment_oserror(exc: BaseException) -> OSError | None:
    """The full-disk or read-only OSError behind ``exc`` (itself, or its cause or context), else None.

    A generator that wraps such an error (``GenerationError`` from ``OSError(ENOSPC)``) would fail every
    later video the same way: the run stops instead of recording one failure per video."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL | {errno.EROFS}:
            return exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None
