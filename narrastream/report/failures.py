"""Every record that is not a plain ``ok`` -- failed, skipped, or scored with a fallback -- with its
reason, and every video that failed to generate; summarised, then listed one by one."""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping, Sequence

from narrastream.report.sources import Source
from narrastream.results.records import Record

RowKey = tuple[str, str]
SHOWN_FALLBACKS = 3


def _reason(rec: Record) -> str:
    if rec.status == "fallback":
        shown = "; ".join(rec.fallbacks[:SHOWN_FALLBACKS])
        more = f"; and {len(rec.fallbacks) - SHOWN_FALLBACKS} more" if len(rec.fallbacks) > SHOWN_FALLBACKS else ""
        return (shown + more) or "(no fallback named)"
    return rec.reason or "(no reason recorded)"


def _kind(text: str) -> str:
    """A reason without its numbers and segment indices, to count alike reasons together."""
    return "".join("#" if ch.isdigit() else ch for ch in text.split(";")[0])[:160]


def failure_tables(latest: Sequence[Record], names: Mapping[RowKey, str],
                   sources: Sequence[Source]) -> dict[str, Any]:
    """``summary`` (row, metric, status, reason kind, count), ``records`` (one per record), ``generation``."""
    listed = []
    summary: Counter = Counter()
    for rec in sorted(latest, key=lambda r: (r.model, r.config_id or "", r.metric, r.script_id, r.seed)):
        key = (rec.model, rec.config_id or "")
        if rec.status == "ok" or key not in names:
            continue
        reason = _reason(rec)
        listed.append({"row": names[key], "script_id": rec.script_id, "seed": rec.seed, "metric": rec.metric,
                       "status": rec.status, "reason": reason, "fallbacks": len(rec.fallbacks)})
        summary[(names[key], rec.metric, rec.status, _kind(reason))] += 1
    generation = [{"source": s.name, **{k: f.get(k) for k in ("model", "script_id", "seed", "reason")}}
                  for s in sources for f in s.generation_failures]
    return {
        "summary": [{"row": r, "metric": m, "status": st, "reason": k, "count": n}
                    for (r, m, st, k), n in sorted(summary.items())],
        "records": listed,
        "generation": generation,
    }
