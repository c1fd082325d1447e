"""Who actually answers: the judge's identity as the endpoint reports it, never as the config claims it.

A config names the model it wants (``judge.model``), but an OpenAI-compatible endpoint may serve
something else: another checkpoint behind the same name, or ``narrastream serve-judge --stand-in``,
whose answers are fake. Records and leaderboard rows must say which. So the endpoint is asked once
(``GET /v1/models``) what it serves: the reported model name, the base URL's host (never a key or a
path), and whether it is the stand-in (which marks itself, see :data:`STAND_IN_MODEL`). Responses are
checked too (:func:`is_stand_in_response`), so a stand-in started after the probe is still caught.

:func:`judge_config_identity` gives this identity from the ``judge`` config without building a judge
(a local judge would load its model), for cache keys and configuration ids.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Mapping
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

#: the model id the stand-in server reports (it never echoes a requested name)
STAND_IN_MODEL = "narrastream-stand-in"
#: the flag the stand-in puts on its ``/v1/models`` entries and in each response's ``system_fingerprint``
STAND_IN_FLAG = "narrastream_stand_in"
PROBE_TIMEOUT_S = 5.0

_probes: dict[tuple[str, str], dict[str, Any]] = {}
_lock = threading.Lock()


def endpoint_host(base_url: str | None) -> str | None:
    """``https://user:key@api.example.com:8443/v1`` -> ``api.example.com``: the host, never credentials.

    The port is left out: the model an endpoint reports tells two local servers apart, and a server
    moved to another port serves the same model.
    """
    if not base_url:
        return None
    return urlsplit(base_url).hostname or None


def endpoint_label(base_url: str | None) -> str:
    """``https://user:key@api.example.com:8443/v1?key=x`` -> ``https://api.example.com:8443/v1``: the
    endpoint as error messages and identities show it (credentials, query and fragment left out).

    >>> endpoint_label("https://user:sk-1@api.example.com:8443/v1?key=sk-2")
    'https://api.example.com:8443/v1'
    """
    if not base_url:
        return ""
    try:
        parts = urlsplit(base_url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # an unparsable URL (bad port): show nothing that could hold a secret
        return "<unparsable judge URL>"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else f"{host}{port}{parts.path}"


def probe_endpoint(base_url: str, requested_model: str, api_key_env: str | None = None,
                   timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Ask ``base_url`` once per process what it serves: ``{reported_model, stand_in, reachable}``.

    ``reported_model`` is ``requested_model`` when the endpoint lists it; the one model listed when
    the endpoint serves a single other model (it would answer under its own name); else None
    (unknown, e.g. unreachable). ``stand_in`` is true when a listed entry carries the stand-in flag.
    """
    key = (base_url, requested_model)
    with _lock:
        if key in _probes:
            return dict(_probes[key])
    result: dict[str, Any] = {"reported_model": None, "stand_in": False, "reachable": False}
    try:
        import openai

        client = openai.OpenAI(base_url=base_url, api_key=(os.environ.get(api_key_env) if api_key_env else None)
                               or "EMPTY", timeout=timeout_s, max_retries=0)
        try:
            entries = [e.model_dump() if hasattr(e, "model_dump") else dict(e) for e in client.models.list().data]
        finally:
            client.close()
        result["reachable"] = True
        ids = [str(e.get("id")) for e in entries if e.get("id")]
        result["stand_in"] = any(e.get(STAND_IN_FLAG) is True or e.get("id") == STAND_IN_MODEL for e in entries)
        if requested_model in ids:
            result["reported_model"] = requested_model
        elif len(ids) == 1:
            result["reported_model"] = ids[0]
            log.warning("judge endpoint %s serves %r, not the requested %r; records name %r",
                        endpoint_host(base_url), ids[0], requested_model, ids[0])
        if result["stand_in"]:
            log.warning("judge endpoint %s is the narrastream STAND-IN (fake answers): its rows are labelled "
                        "smoke and never ranked", endpoint_host(base_url))
    except Exception as exc:  # noqa: BLE001 - an unreachable judge fails its metrics later, with the reason
        log.debug("judge endpoint %s: /models probe failed (%s)", endpoint_host(base_url), exc)
    with _lock:
        _probes[key] = dict(result)
    return result


def is_stand_in_response(model: str | None, system_fingerprint: str | None) -> bool:
    """Whether a chat-completions response came from the stand-in server."""
    return model == STAND_IN_MODEL or (system_fingerprint or "") == STAND_IN_MODEL


def model_identity(backend: str, requested: str, *, base_url: str | None = None, stand_in: bool = False,
                   reported: str | None = None) -> dict[str, Any]:
    """The identity of one judge model: ``{backend, model, requested_model, host, stand_in}``.

    ``model`` is the name the endpoint reports, else the requested one (an unreachable endpoint
    cannot say; its metrics fail anyway).
    """
    return {"backend": backend, "model": reported or requested, "requested_model": requested,
            "host": endpoint_host(base_url), "stand_in": bool(stand_in)}


def judge_config_identity(cfg: Mapping[str, Any] | None, *, probe: bool = True) -> dict[str, Any] | None:
    """``{"vlm": model identity, "planner": model identity}`` of a ``judge`` config, or None for none.

    The ``openai`` backend's endpoint is probed (once per process); a ``local`` judge is named by its
    model folder or hub id, without loading it.
    """
    if not cfg or cfg.get("backend", "none") == "none":
        return None
    backend = str(cfg["backend"])
    vlm = str(cfg["model"])
    planner = str(cfg.get("planner_model") or vlm)
    out = {}
    for role, requested in (("vlm", vlm), ("planner", planner)):
        if backend == "openai":
            base_url = str(cfg.get("base_url") or "")
            found = probe_endpoint(base_url, requested, cfg.get("api_key_env")) if probe and base_url else {}
            out[role] = model_identity(backend, requested, base_url=base_url, stand_in=found.get("stand_in", False),
                                       reported=found.get("reported_model"))
        else:
            out[role] = model_identity(backend, requested)
    return out


def forget_probes() -> None:
    """Forget the probe results of this process (tests that restart a server on the same port)."""
    with _lock:
        _probes.clear()
