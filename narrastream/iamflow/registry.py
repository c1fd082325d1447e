"""Per-script registry of characters with persistent global IDs (IAMFlow reference §3.2).

One :class:`EntityRegistry` per script. It is never carried across scripts. ⚠ Release quirk (§3.1,
§9.1): with a multi-line JSONL the release keeps the first sample's precomputed entities and IDs
for every later sample. We do not reproduce this; make a new registry for each script.

ID rules. Released rules first, then where we differ:

* IDs are integers from 1; ``next_id = max(next_id, max(existing) + 1)``.  Same here.
* Prompt 1: every entity gets a fresh ID.  Same here (the registry is empty, so nothing matches).
* Prompts >= 2: a name containing ``another/other/new/different/second/third`` gets a new ID.
  ⚠ The release tests a plain *substring*, so "mother", "brother", "newcomer" always get new IDs.
  **We differ**: the marker must be a whole word of the normalised name.
* Release: otherwise one LLM matching call decides (greedy Qwen3-4B) from names *and*
  attributes. **We differ**: matching is deterministic. (1) the normalised name (lower case,
  whitespace collapsed) equals an entry's canonical name; else (2) it equals one of an entry's
  aliases (every surface name seen, plus aliases given with the entity or via :meth:`add_alias`);
  else (3) a new ID. Attributes never match, so look-alike characters with different names get
  distinct IDs. The optional ``disambiguate`` callback (e.g. an LLM) is consulted **only** when a
  name is ambiguous: it matches more than one ID, or it is a generic role word ("he", "the woman",
  "protagonist"...) while the registry is not empty. It receives the entity and the candidate
  entries and returns an ID among them, or None for a new ID. Without a callback an ambiguous
  name gets a new ID (a conservative choice: never merge two people by guessing).
* Release: matching is against the registry as it was *before* the prompt, so two entities of one
  prompt are never matched to each other, yet two of them *can* receive the same existing ID.
  Same snapshot rule here, but **we differ**: an ID is given to at most one entity per prompt
  (a second claimant gets a new ID), except that an exact repeat of a name inside one prompt is
  the same entity (attributes merged).
* On a re-match the new surface name and attributes are appended (deduplicated) and the prompt
  is recorded. IDs are never merged after assignment. Same here. The release's cosmetic type
  label (``woman_k``/``man_k``/``person_k``) is not reproduced.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

NEW_PERSON_MARKERS = frozenset({"another", "other", "new", "different", "second", "third"})
GENERIC_ROLE_WORDS = frozenset({
    "he", "she", "him", "her", "they", "man", "woman", "boy", "girl", "person", "guy", "lady",
    "protagonist", "main character", "hero", "heroine", "character", "the man", "the woman",
    "the boy", "the girl", "the person", "the protagonist", "the main character", "the hero",
    "the heroine", "the character",
})


def normalize_name(name: str) -> str:
    """Case- and whitespace-insensitive form of a name: lower case, runs of whitespace collapsed."""
    return " ".join(str(name).lower().split())


def has_new_person_marker(name: str) -> bool:
    """True when a whole word of the name is a new-person marker (release: any substring)."""
    return any(word in NEW_PERSON_MARKERS for word in re.findall(r"[a-z]+", normalize_name(name)))


@dataclass(frozen=True)
class ExtractedEntity:
    """One character from the LLM extraction of one prompt (name, visible attributes, aliases)."""

    name: str
    attributes: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()


@dataclass
class RegistryEntry:
    global_id: int
    name: str  # first surface name seen
    aliases: list[str] = field(default_factory=list)  # other surface names / given aliases
    attributes: list[str] = field(default_factory=list)
    prompts: list[int] = field(default_factory=list)

    def names(self) -> set[str]:
        return {normalize_name(n) for n in [self.name, *self.aliases]}

    def to_json(self) -> dict[str, Any]:
        return {"id": self.global_id, "name": self.name, "aliases": list(self.aliases),
                "attributes": list(self.attributes), "prompts": list(self.prompts)}


#: ``disambiguate(entity, candidates) -> chosen global ID or None`` (None = a new character)
Disambiguator = Callable[[ExtractedEntity, Sequence[RegistryEntry]], "int | None"]


def _as_entity(item: Any) -> ExtractedEntity:
    if isinstance(item, ExtractedEntity):
        return item
    if isinstance(item, (tuple, list)):
        name, *rest = item
        attrs = tuple(rest[0]) if rest else ()
        aliases = tuple(rest[1]) if len(rest) > 1 else ()
        return ExtractedEntity(str(name), attrs, aliases)
    # narrastream.protocol.annotations.Entity or anything with name/attributes
    return ExtractedEntity(str(item.name), tuple(getattr(item, "attributes", ()) or ()),
                           tuple(getattr(item, "aliases", ()) or ()))


def _append_unique(target: list[str], values: Iterable[str], key=lambda s: s) -> None:
    seen = {key(v) for v in target}
    for v in values:
        if key(v) not in seen:
            target.append(v)
            seen.add(key(v))


class EntityRegistry:
    """Characters of ONE script, with global IDs persistent across that script's prompts."""

    def __init__(self, disambiguate: Disambiguator | None = None):
        self._entries: dict[int, RegistryEntry] = {}
        self._prompt_ids: dict[int, tuple[int, ...]] = {}
        self._next_id = 1
        self._disambiguate = disambiguate
        #: (prompt_index, name, rule) per assignment; rule in exact/alias/new/marker/ambiguous/...
        self.decisions: list[tuple[int, str, str]] = []

    # -- queries --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, global_id: int) -> RegistryEntry:
        return self._entries[global_id]

    def ids_for_prompt(self, prompt_index: int) -> tuple[int, ...]:
        """Global IDs of the prompt's entities, in extraction order (empty if none/unregistered)."""
        return self._prompt_ids.get(prompt_index, ())

    def to_json(self) -> dict[str, Any]:
        """Sidecar form: every entry (ID, name, aliases, attributes, prompts) and IDs per prompt."""
        return {"entities": [e.to_json() for e in self._entries.values()],
                "prompt_ids": {str(p): list(ids) for p, ids in sorted(self._prompt_ids.items())}}

    # -- updates --------------------------------------------------------------------------------
    def add_alias(self, global_id: int, alias: str) -> None:
        _append_unique(self._entries[global_id].aliases, [alias], normalize_name)

    def _new_id(self) -> int:
        gid = max(self._next_id, max(self._entries, default=0) + 1)
        self._next_id = gid + 1
        return gid

    def _candidates(self, entity: ExtractedEntity, snapshot: Mapping[int, set[str]]) -> tuple[list[int], str]:
        key = normalize_name(entity.name)
        exact = [gid for gid, e in self._entries.items()
                 if gid in snapshot and normalize_name(e.name) == key]
        if exact:
            return exact, "exact"
        keys = {key, *(normalize_name(a) for a in entity.aliases)}
        alias = [gid for gid, names in snapshot.items() if names & keys]
        return alias, "alias"

    def register(self, prompt_index: int, entities: Iterable[Any]) -> tuple[int, ...]:
        """Assign global IDs to the entities of ``prompt_index`` and record them; returns the IDs.

        ``entities``: :class:`ExtractedEntity`, ``annotations.Entity`` or ``(name, attributes[,
        aliases])`` tuples. Prompts must be registered once each, in increasing order.
        """
        if prompt_index in self._prompt_ids:
            raise ValueError(f"prompt {prompt_index} already registered")
        if self._prompt_ids and prompt_index < max(self._prompt_ids):
            raise ValueError(f"prompt {prompt_index} registered after prompt {max(self._prompt_ids)}")
        items = [_as_entity(e) for e in entities]
        # match against the registry as it was before this prompt (release rule)
        snapshot = {gid: e.names() for gid, e in self._entries.items()}
        taken: dict[int, str] = {}  # global id -> normalised name that claimed it in this prompt
        by_name: dict[str, int] = {}
        assigned: list[tuple[int, ExtractedEntity]] = []
        for ent in items:
            key = normalize_name(ent.name)
            if key in by_name:  # the same entity listed twice in one prompt
                assigned.append((by_name[key], ent))
                continue
            gid, rule = self._assign(prompt_index, ent, snapshot, taken)
            taken[gid] = key
            by_name[key] = gid
            assigned.append((gid, ent))
            self.decisions.append((prompt_index, ent.name, rule))
        ids: list[int] = []
        for gid, ent in assigned:
            entry = self._entries.get(gid)
            if entry is None:
                entry = self._entries[gid] = RegistryEntry(gid, ent.name)
            elif normalize_name(ent.name) not in entry.names():
                entry.aliases.append(ent.name)
            _append_unique(entry.aliases, [a for a in ent.aliases
                                           if normalize_name(a) != normalize_name(entry.name)], normalize_name)
            _append_unique(entry.attributes, ent.attributes, normalize_name)
            if not entry.prompts or entry.prompts[-1] != prompt_index:
                entry.prompts.append(prompt_index)
            if gid not in ids:
                ids.append(gid)
        self._prompt_ids[prompt_index] = tuple(ids)
        return tuple(ids)

    def _assign(self, prompt_index: int, ent: ExtractedEntity, snapshot: Mapping[int, set[str]],
                taken: Mapping[int, str]) -> tuple[int, str]:
        if not snapshot:
            return self._new_id(), "new"
        if has_new_person_marker(ent.name):
            return self._new_id(), "marker"
        cands, rule = self._candidates(ent, snapshot)
        cands = [g for g in cands if g not in taken]
        generic = normalize_name(ent.name) in GENERIC_ROLE_WORDS
        if len(cands) == 1 and not generic:
            return cands[0], rule
        if len(cands) > 1 or generic:
            if self._disambiguate is None:
                return self._new_id(), "ambiguous-new"
            pool = cands if cands else [g for g in snapshot if g not in taken]
            if not pool:  # every known ID is already someone else in this prompt: nothing to ask
                return self._new_id(), "new"
            chosen = self._disambiguate(ent, [self._entries[g] for g in pool])
            if chosen is not None and chosen in pool:
                return int(chosen), "disambiguated"
            return self._new_id(), "disambiguated-new"
        return self._new_id(), "new"
