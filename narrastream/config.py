"""Compose the Hydra config tree of eval_configs/ from Python (tests, notebooks, the CLI)."""

from __future__ import annotations

from typing import Any

from narrastream.paths import config_dir


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
