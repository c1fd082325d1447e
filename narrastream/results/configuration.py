"""Configurations: what produced a record, and the short id that keeps leaderboard rows apart.

Every record carries ``configuration``, the settings its evaluation ran under, and ``config_id``,
8 hex digits of the sha256 of that configuration in canonical JSON::

    {"protocol":    {"version": "narrastream-1.0", "segment_seconds": 10, "segmentation": "time",
                     "constants": "<16 hex: metric constants and segmentation rule>"},
     "annotations": {"mode": "frozen", "version": "narrastream-324.v1", "sha256": "<64 hex>"},
     "backbones":   {"dino_vitb16": "sha256:<64 hex>", "vtss_koala": "random(seed=0,size=tiny)", ...},
     "precision":   {"clip_vitb32": "fp16", "dino_vitb16": "fp32", ...}  (as run on this device),
     "judge":       null | {"vlm": {"backend", "model" (as the endpoint reports it), "host", "stand_in"},
                            "planner": {...}},
     "generator":   null | {"adapter": "synthetic", "method": ..., (the generator's identity: weights
                            hashes, flags such as "oracle"), "output": {"fps", "seconds_per_segment",
                            "width", "height"}}}

Nothing in it depends on where files lie (checkpoints and annotations by content, the judge by the
model its endpoint reports), so a moved run folder keeps its ids. A leaderboard row is one
(model, configuration): records under different configurations are never averaged together.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Mapping

#: labels of rows that measure the plumbing, not a model: never ranked beside published rows
SMOKE_RANDOM_WEIGHTS = "random weights"
SMOKE_STAND_IN_JUDGE = "stand-in judge"


def config_id(configuration: Mapping[str, Any] | None) -> str | None:
    """8 hex digits of the sha256 of ``configuration`` in canonical JSON (None for None).

    >>> config_id({"protocol": {"version": "narrastream-1.0"}})
    '15cbf8cf'
    """
    if configuration is None:
        return None
    text = json.dumps(configuration, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def flatten(configuration: Mapping[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaf values: ``{"backbones": {"dino": "x"}}`` -> ``{"backbones.dino": "x"}``.

    >>> flatten({"judge": None, "backbones": {"dino": "x"}, "generator": {"faults": [1]}})
    {'judge': None, 'backbones.dino': 'x', 'generator.faults': '[1]'}
    """
    out: dict[str, Any] = {}
    for key, value in (configuration or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, prefix=f"{name}."))
        elif isinstance(value, (list, tuple, Mapping)):
            out[name] = json.dumps(value, sort_keys=True, default=str)
        else:
            out[name] = value
    return out


def differences(configurations: Mapping[str, Mapping[str, Any] | None]) -> dict[str, dict[str, Any]]:
    """The fields whose values differ between configurations: ``{field: {config_id: value}}``.

    >>> differences({"a": {"backbones": {"dino": "s0", "clip": "c"}}, "b": {"backbones": {"dino": "s1", "clip": "c"}}})
    {'backbones.dino': {'a': 's0', 'b': 's1'}}
    """
    flat = {cid: flatten(c) for cid, c in configurations.items()}
    fields = sorted({f for values in flat.values() for f in values})
    out = {}
    for field in fields:
        values = {cid: values.get(field) for cid, values in flat.items()}
        if len({json.dumps(v, default=str) for v in values.values()}) > 1:
            out[field] = values
    return out


def smoke_reasons(configuration: Mapping[str, Any] | None) -> list[str]:
    """Why a configuration measures the plumbing, not a model: random backbone weights, a stand-in judge."""
    if not configuration:
        return []
    reasons = []
    if any(str(w).startswith("random(") for w in (configuration.get("backbones") or {}).values()):
        reasons.append(SMOKE_RANDOM_WEIGHTS)
    judge = configuration.get("judge") or {}
    if any(isinstance(j, Mapping) and j.get("stand_in") for j in judge.values()):
        reasons.append(SMOKE_STAND_IN_JUDGE)
    return reasons


def oracle_reasons(configuration: Mapping[str, Any] | None) -> list[str]:
    """Why a configuration's generator saw what the evaluator scores (its identity's ``oracle`` flag)."""
    generator = (configuration or {}).get("generator") or {}
    oracle = generator.get("oracle") if isinstance(generator, Mapping) else None
    if not oracle:
        return []
    return [oracle if isinstance(oracle, str) else "generator read the evaluation annotations"]


def short(value: Any, width: int = 12) -> str:
    """A digest shortened for tables: ``sha256:0123456789abcdef...`` -> ``sha256:0123456789ab``."""
    text = "–" if value is None else str(value)
    if text.startswith("sha256:") and len(text) > 7 + width:
        return text[: 7 + width]
    if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
        return text[:width]
    return text


def describe_differences(configurations: Mapping[str, Mapping[str, Any] | None], limit: int = 6) -> str:
    """One line naming the differing fields and their values per configuration id; fields that differ
    the same way are named together (``backbones.{amt_s, dino_vitb16} (a: random(seed=0,...) | b: ...)``).

    >>> describe_differences({"a": {"backbones": {"x": "s0", "y": "s0"}}, "b": {"backbones": {"x": "s1", "y": "s1"}}})
    'backbones.{x, y} (a: s0 | b: s1)'
    """
    diff = differences(configurations)
    if not diff:
        return "no field differs (records from an older narrastream carry no configuration)"
    groups: dict[str, list[str]] = {}
    for field, values in diff.items():
        groups.setdefault(json.dumps(values, sort_keys=True, default=str), []).append(field)
    parts = []
    for fields in list(groups.values())[:limit]:
        values = diff[fields[0]]
        parents = {f.rpartition(".")[0] for f in fields}
        if len(fields) > 1 and len(parents) == 1 and "" not in parents:
            name = f"{parents.pop()}.{{{', '.join(f.rpartition('.')[2] for f in fields)}}}"
        else:
            name = ", ".join(fields)
        parts.append(f"{name} (" + " | ".join(f"{cid or '–'}: {short(v)}" for cid, v in values.items()) + ")")
    more = f"; and {len(groups) - limit} more" if len(groups) > limit else ""
    return "; ".join(parts) + more


def unique(values: Iterable[str | None]) -> list[str | None]:
    """Distinct values in first-seen order."""
    return list(dict.fromkeys(values))
