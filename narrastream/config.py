"""Compose the Hydra config tree of eval_configs/ from Python (tests, notebooks, the CLI)."""

from __future__ import annotations

import difflib
from typing import Any, Iterable, Sequence

from narrastream.paths import config_dir


class ConfigError(ValueError):
    """Bad configuration: each problem names the key, the value and what is allowed (one line in all).

    ``python -m narrastream.run`` reports it in one line and exits with code 2, before any work."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


def did_you_mean(value: Any, known: Iterable[str], *, quote: bool = True) -> str:
    """`` Did you mean 'x'?`` (with a leading space) for the close names of ``known``, else ``""``."""
    close = difflib.get_close_matches(str(value), [str(k) for k in known], n=3, cutoff=0.6)
    if not close:
        return ""
    names = ", ".join(repr(c) if quote else c for c in close)
    return f" Did you mean {names}?"


def compose_config(overrides: list[str] | None = None, config_name: str = "config") -> dict[str, Any]:
    """The resolved config as plain dicts, exactly as ``python -m narrastream.run`` would see it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides or []))
    return to_plain(cfg)


def to_plain(cfg: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    container.pop("hydra", None)
    return container  # type: ignore[return-value]
