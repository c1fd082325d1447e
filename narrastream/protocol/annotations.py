"""Narrative annotations: what the official planner and MLLM derive from a script's prompts.

Per script: segment importance weights (integers 1..100), a continuity flag per adjacent prompt pair
(should the two segments look continuous?), entity groups (entity -> the segments it appears in,
in the order given: the first index is the anchor) and the entities of each segment with their
visible attributes. They depend on the prompts only, so one file serves every model evaluated.

File format (JSONL, one object per script, keyed by ``script_id``)::

    {"script_id": 0, "segment_weights": [40, 55, 70, 60, 50, 35],
     "continuity": [true, true, true, true, true],
     "entity_groups": {"Noah": [0, 1, 2, 3, 4, 5]},
     "segment_entities": [[{"name": "Noah", "attributes": ["shaved head"]}], ...]}

Every field but ``script_id`` is optional; a metric that needs a missing field falls back and says
so in its record (status ``fallback``); other fields (``overrides``) are kept out of the metrics.
Blank lines and lines starting with ``#`` are comments, except two header lines that the loader
reads: ``# version: NAME`` (else the version is the file name without ``.jsonl``) and
``# rules: {json}`` (which rule produced each field).

The shipped files live in ``benchmark_data/annotations/<version>.jsonl``: ``narrastream-324.v2``
(the default, rebuilt from the prompts by ``tools/build_annotations.py``) and ``narrastream-324.v1``
(kept for old runs). See docs/protocol.md, "Narrative annotations".
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from narrastream.hashing import sha256_file
from narrastream.paths import benchmark_data_dir

MAX_ENTITIES_PER_SEGMENT = 4
MAX_ATTRIBUTES_PER_ENTITY = 5


def prompts_sha256(prompts: Iterable[str]) -> str:
    """The identity of a script's prompts: annotations made for other prompts are never applied."""
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode("utf-8")).hexdigest()


class AnnotationsError(ValueError):
    """A malformed annotations file; the message names the file, line and field."""


@dataclass(frozen=True)
class Entity:
    name: str
    attributes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScriptAnnotations:
    """The annotations of one script; any field may be None (not annotated)."""

    script_id: int
    segment_weights: tuple[int, ...] | None = None
    continuity: tuple[bool, ...] | None = None
    entity_groups: dict[str, tuple[int, ...]] | None = None
    segment_entities: tuple[tuple[Entity, ...], ...] | None = None
    #: sha256 of the prompts annotated (:func:`prompts_sha256`); None = not tied to prompts
    prompts_sha256: str | None = None

    def fingerprint(self) -> str:
        """A stable text form, part of each record's cache key: new annotations recompute scores."""
        return json.dumps(_jsonable(self), sort_keys=True)

    def check_segments(self, num_segments: int) -> list[str]:
        """Problems of this annotation for a script of ``num_segments`` segments (empty when it fits)."""
        problems = []
        if self.segment_weights is not None and len(self.segment_weights) != num_segments:
            problems.append(f"{len(self.segment_weights)} segment weights for {num_segments} segments")
        if self.continuity is not None and len(self.continuity) != num_segments - 1:
            problems.append(f"{len(self.continuity)} continuity flags for {num_segments - 1} transitions")
        if self.segment_entities is not None and len(self.segment_entities) != num_segments:
            problems.append(f"entities for {len(self.segment_entities)} segments, script has {num_segments}")
        for entity, indices in (self.entity_groups or {}).items():
            bad = [i for i in indices if not 0 <= i < num_segments]
            if bad:
                problems.append(f"entity {entity!r}: segment indices {bad} out of range 0..{num_segments - 1}")
        return problems


@dataclass
class NarrativeAnnotations:
    """All scripts' annotations from one source, with the identity of that source."""

    scripts: dict[int, ScriptAnnotations] = field(default_factory=dict)
    source: str = "none"
    path: Path | None = None
    sha256: str | None = None
    #: the file's ``# version:`` header, else its name without ``.jsonl``; None when not from a file
    version: str | None = None
    #: the file's ``# rules:`` header: field -> the rule that produced it (docs/protocol.md)
    rules: dict[str, str] | None = None

    def get(self, script_id: int) -> ScriptAnnotations | None:
        return self.scripts.get(script_id)

    def for_script(self, script_id: int, prompts: Iterable[str]) -> tuple[ScriptAnnotations | None, str | None]:
        """The annotations of a script if they were made for these prompts, else None and why."""
        ann = self.scripts.get(script_id)
        if ann is None:
            return None, None if self.source == "none" else f"script {script_id} has no annotations in {self.source}"
        if ann.prompts_sha256 is not None and ann.prompts_sha256 != prompts_sha256(prompts):
            return None, (f"the annotations of script {script_id} in {self.source} were made for other prompts "
                          "(prompts_sha256 differs); not applied")
        return ann, None

    def identity(self) -> dict[str, Any]:
        """What the run manifest and each record name: records of different versions never merge."""
        return {"source": self.source, "version": self.version, "path": str(self.path) if self.path else None,
                "sha256": self.sha256, "scripts": len(self.scripts)}

    @classmethod
    def load(cls, path: Path | str, source: str | None = None) -> "NarrativeAnnotations":
        path = Path(path)
        if not path.is_file():
            raise AnnotationsError(f"{path}: annotations file not found")
        scripts: dict[int, ScriptAnnotations] = {}
        version, rules = None, None
        for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if raw.startswith("# version:"):
                version = raw.split(":", 1)[1].strip() or None
            elif raw.startswith("# rules:"):
                try:
                    rules = json.loads(raw.split(":", 1)[1])
                except json.JSONDecodeError as exc:
                    raise AnnotationsError(f"{path}:{number}: the '# rules:' header is not valid JSON ({exc.msg})") \
                        from None
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise AnnotationsError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            ann = parse_script_annotations(obj, where=f"{path}:{number}")
            if ann.script_id in scripts:
                raise AnnotationsError(f"{path}:{number}: script_id {ann.script_id} is annotated twice")
            scripts[ann.script_id] = ann
        return cls(scripts=scripts, source=source or f"file:{path.name}", path=path, sha256=sha256_file(path),
                   version=version or path.name.removesuffix(".jsonl"), rules=rules)


def parse_script_annotations(obj: Any, where: str = "annotations") -> ScriptAnnotations:
    """Validate one JSON object into :class:`ScriptAnnotations`; errors name ``where`` and the field."""
    if not isinstance(obj, dict):
        raise AnnotationsError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    sid = obj.get("script_id")
    if not isinstance(sid, int) or isinstance(sid, bool) or sid < 0:
        raise AnnotationsError(f"{where}: 'script_id' must be a non-negative integer, got {sid!r}")
    return ScriptAnnotations(
        script_id=sid,
        segment_weights=_weights(obj.get("segment_weights"), where),
        continuity=_flags(obj.get("continuity"), where),
        entity_groups=_groups(obj.get("entity_groups"), where),
        segment_entities=_segment_entities(obj.get("segment_entities"), where),
        prompts_sha256=_sha(obj.get("prompts_sha256"), where),
    )


def _sha(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 64:
        raise AnnotationsError(f"{where}: 'prompts_sha256' must be a 64-character hex digest")
    return value


def _weights(value: Any, where: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise AnnotationsError(f"{where}: 'segment_weights' must be a non-empty list of integers 1..100")
    for k, w in enumerate(value):
        if not isinstance(w, int) or isinstance(w, bool) or not 1 <= w <= 100:
            raise AnnotationsError(f"{where}: segment_weights[{k}] = {w!r}, expected an integer 1..100")
    return tuple(value)


def _flags(value: Any, where: str) -> tuple[bool, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, bool) for v in value):
        raise AnnotationsError(f"{where}: 'continuity' must be a list of true/false, one per adjacent pair")
    return tuple(value)


def _groups(value: Any, where: str) -> dict[str, tuple[int, ...]] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise AnnotationsError(f"{where}: 'entity_groups' must be an object: entity -> [segment indices]")
    groups = {}
    for name, indices in value.items():
        if not isinstance(indices, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
            raise AnnotationsError(f"{where}: entity_groups[{name!r}] must be a list of segment indices")
        groups[str(name)] = tuple(indices)  # order kept: the first listed index is the anchor
    return groups


def _segment_entities(value: Any, where: str) -> tuple[tuple[Entity, ...], ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise AnnotationsError(f"{where}: 'segment_entities' must be a list (one list of entities per segment)")
    segments = []
    for k, entities in enumerate(value):
        if not isinstance(entities, list) or len(entities) > MAX_ENTITIES_PER_SEGMENT:
            raise AnnotationsError(
                f"{where}: segment_entities[{k}] must be a list of at most {MAX_ENTITIES_PER_SEGMENT} entities")
        parsed = []
        for e in entities:
            name, attributes = (e.get("name"), e.get("attributes", [])) if isinstance(e, dict) else (None, None)
            if not isinstance(name, str) or not name.strip():
                raise AnnotationsError(f"{where}: segment_entities[{k}]: every entity needs a non-empty 'name'")
            if (not isinstance(attributes, list) or len(attributes) > MAX_ATTRIBUTES_PER_ENTITY
                    or not all(isinstance(a, str) for a in attributes)):
                raise AnnotationsError(f"{where}: segment_entities[{k}] {name!r}: 'attributes' must be at most "
                                       f"{MAX_ATTRIBUTES_PER_ENTITY} strings")
            parsed.append(Entity(name=name, attributes=tuple(attributes)))
        segments.append(tuple(parsed))
    return tuple(segments)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (ScriptAnnotations, Entity)):
        return {k: _jsonable(v) for k, v in value.__dict__.items()}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def annotations_for(items: Iterable[ScriptAnnotations]) -> NarrativeAnnotations:
    """Build an in-memory annotation set (tests, the live LLM path)."""
    return NarrativeAnnotations(scripts={a.script_id: a for a in items}, source="memory")


#: the annotations version a run uses unless ``annotations.version`` / ``annotations.path`` say otherwise
DEFAULT_VERSION = "narrastream-324.v2"
SHIPPED_VERSIONS = ("narrastream-324.v1", "narrastream-324.v2")
SHIPPED_ANNOTATIONS = f"annotations/{DEFAULT_VERSION}.jsonl"


def shipped_annotations_path(version: str = DEFAULT_VERSION) -> Path:
    """The shipped file of an annotations version (``benchmark_data/annotations/<version>.jsonl``)."""
    path = benchmark_data_dir() / "annotations" / f"{version}.jsonl"
    if not path.is_file():
        raise AnnotationsError(f"annotations version {version!r} is not shipped (no {path}); shipped: "
                               f"{', '.join(SHIPPED_VERSIONS)}; or set annotations.path to a file")
    return path


def load_annotations(cfg: Mapping[str, Any], mode: str = "frozen") -> NarrativeAnnotations:
    """Frozen annotations: ``annotations.path`` if set, else the shipped file of ``annotations.version``
    (default :data:`DEFAULT_VERSION`); ``mode: none`` uses none (metrics then fall back, recorded)."""
    if mode == "none":
        return NarrativeAnnotations()
    if mode != "frozen":
        raise AnnotationsError(f"protocol.annotations={mode!r}: expected frozen, live or none")
    path = cfg.get("path") or shipped_annotations_path(cfg.get("version") or DEFAULT_VERSION)
    return NarrativeAnnotations.load(path, source=f"frozen:{Path(path).name}")
