"""Judges: the (multimodal) LLMs the protocol asks questions, behind one interface.

``build_judges(cfg)`` turns the ``judge`` config group (``eval_configs/judge/``) into a
:class:`JudgeSet`: the planner (text-only planning questions) and the VLM (questions with frames;
it also answers the official "MLLM" text questions, as the official setting uses the same model).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from narrastream.judges.base import (
    ImagePart,
    Judge,
    JudgeConfigError,
    JudgeAnswerError,
    JudgeError,
    JudgeStats,
    JudgeUnavailable,
    Message,
    extract_json,
)

# one INFO line per HTTP request drowns the run's own progress; warnings and errors still show
for _name in ("httpx", "httpx2", "openai"):
    logging.getLogger(_name).setLevel(logging.WARNING)

__all__ = ["ImagePart", "Judge", "JudgeAnswerError", "JudgeConfigError", "JudgeError", "JudgeSet", "JudgeStats", "JudgeUnavailable",
           "Message", "build_judges", "extract_json"]


@dataclass
class JudgeSet:
    planner: Judge
    vlm: Judge

    @property
    def mllm(self) -> Judge:
        return self.vlm

    def identity(self) -> dict[str, Any]:
        """Models and endpoints, for manifests (never keys)."""
        return {"planner": self.planner.identity(), "vlm": self.vlm.identity()}

    def models(self) -> dict[str, str]:
        """The requested model names (as the config names them)."""
        return {"planner": self.planner.model, "vlm": self.vlm.model}

    def config_identity(self) -> dict[str, Any]:
        """What a judge-dependent score depends on, as the endpoint reports it (see :mod:`narrastream.judges.identity`):
        ``{"vlm": {backend, model, requested_model, host, stand_in}, "planner": {...}}``."""
        return {"vlm": self.vlm.model_identity(), "planner": self.planner.model_identity()}

    @property
    def stand_in(self) -> bool:
        return self.vlm.stand_in or self.planner.stand_in

    def stats(self) -> dict[str, int]:
        judges = [self.planner] if self.planner is self.vlm else [self.planner, self.vlm]
        total: dict[str, int] = {}
        for judge in judges:
            for key, value in judge.stats.as_dict().items():
                total[key] = total.get(key, 0) + value
        return total

    def close(self) -> None:
        self.planner.close()
        if self.vlm is not self.planner:
            self.vlm.close()


def build_judges(cfg: Mapping[str, Any] | None, cache_dir: Path | None = None) -> JudgeSet | None:
    """The judges of a ``judge`` config, or None for ``backend: none``."""
    if not cfg or cfg.get("backend", "none") == "none":
        return None
    backend = cfg["backend"]
    cache = None
    if cfg.get("cache", True):
        from narrastream.judges.cache import AnswerCache
        from narrastream.paths import cache_dir as default_cache_dir

        cache = AnswerCache(Path(cfg.get("cache_dir") or (cache_dir or default_cache_dir()) / "judge"))
    common = {"cache": cache, "concurrency": int(cfg.get("concurrency", 4)), "reask": int(cfg.get("reask", 2)),
              "max_tokens": int(cfg.get("max_tokens", 256)), "temperature": float(cfg.get("temperature", 0.0)),
              "breaker_threshold": int(cfg.get("breaker_threshold", 3)),
              "breaker_cooldown_s": float(cfg.get("breaker_cooldown_s", 60.0))}
    model = str(cfg["model"])
    planner_model = str(cfg.get("planner_model") or model)
    if backend == "openai":
        from narrastream.judges.openai_backend import OpenAIJudge

        transport = {"base_url": str(cfg["base_url"]), "api_key_env": cfg.get("api_key_env"),
                     "timeout_s": float(cfg.get("timeout_s", 120)), "max_retries": int(cfg.get("max_retries", 6))}
        vlm = OpenAIJudge(model, extra_body=_plain(cfg.get("vlm_extra_body")), **transport, **common)
        planner = vlm if planner_model == model and not cfg.get("planner_extra_body") else OpenAIJudge(
            planner_model, extra_body=_plain(cfg.get("planner_extra_body")), **transport, **common)
        return JudgeSet(planner=planner, vlm=vlm)
    if backend == "local":
        from narrastream.judges.local import load_local_judge

        try:
            vlm = load_local_judge(model, device=str(cfg.get("device", "auto")), dtype=str(cfg.get("dtype", "auto")),
                                local_files_only=bool(cfg.get("local_files_only", True)), **common)
        except ValueError as exc:
            raise JudgeConfigError(str(exc)) from exc
        return JudgeSet(planner=vlm, vlm=vlm)
    raise JudgeConfigError(f"judge.backend={backend!r}: expected none, openai or local")


def _plain(value: Any) -> Any:
    if value is None:
        return None
    return {str(k): v for k, v in dict(value).items()}
