"""Narrative annotations asked live from the judges, as the official evaluator does.

Per script: segment weights and per-segment entities from the planner, continuity flags and entity
groups from the MLLM (text only). The answers depend on the prompts only, so the judge cache shares
them between every model evaluated. A question that fails leaves its field empty (the metrics that
need it then record a fallback or fail) and is reported; it is asked again on the next run, and the
fallbacks it caused are marked (``details.fallback_cause = "annotations_failed"``) and computed again.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

from tqdm.auto import tqdm

from narrastream.judges import JudgeError, JudgeSet
from narrastream.protocol.annotations import NarrativeAnnotations, ScriptAnnotations, prompts_sha256
from narrastream.protocol.questions import (
    ask_continuity,
    ask_entity_groups,
    ask_segment_entities,
    ask_segment_weights,
)

log = logging.getLogger(__name__)


def annotate_script(judges: JudgeSet, script_id: int, prompts: list[str]) -> tuple[ScriptAnnotations, list[str]]:
    """One script's annotations and the list of questions that failed (with reasons)."""
    errors: list[str] = []

    def ask(what: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except JudgeError as exc:
            errors.append(f"{what}: {exc.reason}")
            return None

    weights = ask("segment weights", ask_segment_weights, judges.planner, prompts)
    continuity = ask("continuity", ask_continuity, judges.mllm, prompts)
    groups = ask("entity groups", ask_entity_groups, judges.mllm, prompts)
    entities = [ask(f"entities of segment {k}", ask_segment_entities, judges.planner, p) for k, p in enumerate(prompts)]
    return ScriptAnnotations(
        script_id=script_id, segment_weights=weights, continuity=continuity, entity_groups=groups,
        segment_entities=None if any(e is None for e in entities) else tuple(entities),
        prompts_sha256=prompts_sha256(prompts),
    ), errors


def annotate_scripts(judges: JudgeSet, scripts: Iterable[Any], workers: int = 4,
                     progress: bool = True) -> tuple[NarrativeAnnotations, dict[int, list[str]]]:
    """Annotations for ``scripts`` (objects with ``id`` and ``prompts``), asked concurrently."""
    scripts = list(scripts)
    results: dict[int, ScriptAnnotations] = {}
    failures: dict[int, list[str]] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="annotate") as pool:
        futures = {s.id: pool.submit(annotate_script, judges, s.id, list(s.prompts)) for s in scripts}
        for sid, future in tqdm(futures.items(), desc="annotate (live)", unit="script", disable=not progress):
            ann, errors = future.result()
            results[sid] = ann
            if errors:
                failures[sid] = errors
                log.warning("live annotations of script %d: %d question(s) failed: %s", sid, len(errors), errors[0])
    models = judges.models()
    source = f"live:{models['planner']}|{models['vlm']}"
    return NarrativeAnnotations(scripts=results, source=source), failures


#: the question of :func:`annotate_script` (its error prefix) -> how a metric's fallback names the missing field
_FALLBACK_OF_QUESTION = {
    "segment weights": ("segment_weights:",),
    "continuity": ("continuity:",),
    "entity groups": ("entity_groups:",),
    "entities of segment": ("no segment entities", "segment entities for"),
}


def caused_by_failed_questions(errors: Iterable[str], fallbacks: Iterable[str]) -> bool:
    """Whether one of ``fallbacks`` (a metric result's) stands in for a live annotation whose question
    failed (``errors`` as :func:`annotate_script` lists them): such a fallback heals on the next run.

    >>> caused_by_failed_questions(["segment weights: HTTP 503"], ["segment_weights: uniform (no narrative annotations)"])
    True
    >>> caused_by_failed_questions(["continuity: HTTP 503"], ["segment 2: 1 sampled frame, local score 1.0 by convention"])
    False
    """
    prefixes = tuple(p for error in errors for question, ps in _FALLBACK_OF_QUESTION.items()
                     if error.startswith(question) for p in ps)
    return bool(prefixes) and any(f.startswith(prefixes) for f in fallbacks)


def to_jsonl_line(ann: ScriptAnnotations) -> str:
    """One line of the annotations file format (fields that failed are left out)."""
    import json

    obj: dict[str, Any] = {"script_id": ann.script_id, "prompts_sha256": ann.prompts_sha256}
    if ann.segment_weights is not None:
        obj["segment_weights"] = list(ann.segment_weights)
    if ann.continuity is not None:
        obj["continuity"] = list(ann.continuity)
    if ann.entity_groups is not None:
        obj["entity_groups"] = {k: list(v) for k, v in ann.entity_groups.items()}
    if ann.segment_entities is not None:
        obj["segment_entities"] = [[{"name": e.name, "attributes": list(e.attributes)} for e in seg]
                                   for seg in ann.segment_entities]
    return json.dumps(obj, ensure_ascii=False)
