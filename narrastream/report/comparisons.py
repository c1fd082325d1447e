"""Paired comparisons between leaderboard rows: which differences are real at this number of scripts.

Two rows are compared only when the same evaluator scored them: the same protocol, annotations,
backbone weights, precision and judge (their configurations may differ only in the generator).
Otherwise a difference would mix the generators with the evaluators, and the pair is listed with the
fields that differ instead. Published rows have no per-script scores and are never paired.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any, Mapping, Sequence

import numpy as np

from narrastream.report.bootstrap import BootstrapSettings, PairedDifference, ScriptScores, paired
from narrastream.results.configuration import describe_differences

RowKey = tuple[str, str]
EVALUATOR_FIELDS = ("protocol", "annotations", "backbones", "precision", "judge")


def evaluator(configuration: Mapping[str, Any] | None) -> dict[str, Any]:
    """The part of a configuration that says how scores were computed (not what was generated)."""
    return {k: (configuration or {}).get(k) for k in EVALUATOR_FIELDS}


@dataclass
class Pair:
    a: RowKey
    b: RowKey
    result: PairedDifference | None
    not_compared: str = ""  # why, when result is None

    @property
    def shared(self) -> int:
        return 0 if self.result is None else int(np.nanmax(self.result.scripts, initial=0))


def compare_rows(order: Sequence[RowKey], scores: Mapping[RowKey, ScriptScores],
                 configurations: Mapping[RowKey, Mapping[str, Any] | None],
                 dimensions: Mapping[str, Sequence[str]], settings: BootstrapSettings) -> list[Pair]:
    """Every pair of rows in ``order`` (a before b, so ``a - b`` reads as "the higher row minus the lower")."""
    pairs = []
    for a, b in combinations([k for k in order if k in scores], 2):
        ea, eb = evaluator(configurations.get(a)), evaluator(configurations.get(b))
        if ea != eb:
            why = describe_differences({a[1] or "–": ea, b[1] or "–": eb})
            pairs.append(Pair(a, b, None, f"scored by different evaluators: {why}"))
            continue
        shared = set(map(int, scores[a].scripts)) & set(map(int, scores[b].scripts))
        if not shared:
            pairs.append(Pair(a, b, None, "no script in common"))
            continue
        pairs.append(Pair(a, b, paired(scores[a], scores[b], dimensions, settings)))
    return pairs


def resolvable(pairs: Sequence[Pair], columns: Sequence[str]) -> list[dict[str, Any]]:
    """Per column, over the compared pairs: scripts shared, the median half-width of the paired interval
    (smaller differences cannot be told from zero) and the median 80 %-power detectable difference, x100."""
    out = []
    for j, column in enumerate(columns):
        widths = [p.result.half_width[j] for p in pairs if p.result is not None and np.isfinite(p.result.half_width[j])]
        mdes = [p.result.mde[j] for p in pairs if p.result is not None and np.isfinite(p.result.mde[j])]
        scripts = [p.result.scripts[j] for p in pairs if p.result is not None and np.isfinite(p.result.half_width[j])]
        out.append({"column": column, "pairs": len(widths),
                    "scripts": int(np.median(scripts)) if scripts else None,
                    "half_width": 100 * float(np.median(widths)) if widths else None,
                    "mde": 100 * float(np.median(mdes)) if mdes else None})
    return out
