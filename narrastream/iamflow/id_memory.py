"""Archived frames, the ID memory and identity retrieval (IAMFlow reference §3.3, §3.6-§3.8).

Pure Python: a :class:`FrameRecord` carries an opaque ``key`` (the caller's handle to the frame's
per-layer K/V); this module never touches tensors.

* :class:`FrameArchive` — every archived frame, in insertion order. Re-archiving a ``frame_id``
  overwrites the record in place (keeps its insertion position; the release re-scores chunks 1-3
  of prompts >= 2 at eviction, §3.4). ⚠ The release never evicts (§9.12: ~287 MB of host RAM per
  frame, ~18 GB for 60 s). **We differ**: ``max_frames`` (config; ``None`` = release behaviour)
  bounds it. When over the bound, drop the lowest-retention-score frame among the *unprotected*
  frames whose every entity ID still has another archived frame (ties: oldest first). Only when
  no such frame exists is the lowest-score unprotected frame dropped anyway (the bound is
  strict). Frames in the active ID memory are protected. Evicted records are returned so the
  caller can free their K/V.
* ID memory (§3.6), capacity ``capacity`` = 4 (⚠ §9.3: the release's ``max_memory_frames=3`` has
  no effect; the hard-coded 4 is what counts, so we take 4 as the default). ``offer``: fewer than
  4 held and the frame new -> append; otherwise replace, in place, the held frame with the lowest
  retention score (first such in list order) when the new frame's score is strictly higher.
  ⚠ §9.7 reproduced by default: the retention score is the raw semantic ``entity_score``, not
  the fused ``score`` (``retention="score"`` switches). ⚠ §3.6 corner case **fixed**: the
  release can insert a frame already held a second time; we never hold a frame twice.
* Retrieval at a prompt start (§3.7), over the IDs R the prompt needs:
  greedy set cover over *all* archived frames; each step picks the frame covering the most
  still-uncovered IDs of R; ties -> higher ``entity_score`` (always, as released, whatever the
  retention setting), then earlier archive insertion. Stop when R is covered, when no frame
  covers anything new, or at ``capacity`` picks. Budget = number of picks; if |R| >= 2 and the
  archive holds >= 2 frames, budget = max(budget, ``min_multi_entity`` = 2); capped at capacity.
  Selection = the same greedy cover, then the remaining budget slots filled with the
  highest-``entity_score`` archived frames not yet chosen (ties: earlier insertion), whatever
  their entities. The selection *replaces* the ID memory. A prompt with no entities skips
  retrieval: the previous list survives but nothing is injected for that prompt (release).
* Injection (§3.8): active frames sorted chronologically by ``(prompt_index, latent_index)``;
  :meth:`IdentityMemory.injection_key` lets the caller skip re-injecting an unchanged set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

DEFAULT_CAPACITY = 4
DEFAULT_MIN_MULTI_ENTITY = 2
DEFAULT_MAX_ARCHIVED_FRAMES = 16  # ~4.6 GB of host K/V at ~287 MB per frame


@dataclass(frozen=True, eq=False)
class FrameRecord:
    """One archived latent frame: identity, tags, scores and an opaque handle to its K/V."""

    frame_id: str
    latent_index: int
    prompt_index: int
    entity_ids: frozenset[int]
    score: float  # fused score (§3.5)
    entity_score: float | None = None  # raw semantic score; defaults to ``score``
    key: Any = None
    visual_score: float | None = None  # the verifier's score of this frame, when it answered

    def __post_init__(self):
        object.__setattr__(self, "entity_ids", frozenset(int(i) for i in self.entity_ids))
        if self.entity_score is None:
            object.__setattr__(self, "entity_score", float(self.score))

    def retention(self, mode: str) -> float:
        return float(self.entity_score if mode == "entity_score" else self.score)


def frame_id_for(prompt: int, chunk: int, k: int) -> str:
    """Release frame id ``p{prompt}_c{chunk}_f{k}`` (prompt and chunk 1-based, k in 0..2)."""
    return f"p{prompt}_c{chunk}_f{k}"


class FrameArchive:
    """All archived frames in insertion order, optionally bounded (see module docstring)."""

    def __init__(self, max_frames: int | None = DEFAULT_MAX_ARCHIVED_FRAMES, retention: str = "entity_score"):
        if max_frames is not None and max_frames < 1:
            raise ValueError("max_frames must be >= 1 or None")
        self.max_frames = max_frames
        self.retention = retention
        self._frames: dict[str, FrameRecord] = {}
        self.evicted: list[str] = []

    def __len__(self) -> int:
        return len(self._frames)

    def __contains__(self, frame_id: str) -> bool:
        return frame_id in self._frames

    def __getitem__(self, frame_id: str) -> FrameRecord:
        return self._frames[frame_id]

    def records(self) -> list[FrameRecord]:
        return list(self._frames.values())

    def add(self, record: FrameRecord) -> None:
        self._frames[record.frame_id] = record  # overwrite keeps the insertion position

    def enforce_bound(self, protected: Iterable[str] = ()) -> list[FrameRecord]:
        """Evict until within ``max_frames``; returns the evicted records (caller frees K/V)."""
        out: list[FrameRecord] = []
        protected = set(protected)
        while self.max_frames is not None and len(self._frames) > self.max_frames:
            order = list(self._frames.values())
            free = [r for r in order if r.frame_id not in protected]
            if not free:
                break  # everything protected: cannot go below the active memory
            counts: dict[int, int] = {}
            for r in order:
                for e in r.entity_ids:
                    counts[e] = counts.get(e, 0) + 1
            redundant = [r for r in free if all(counts[e] >= 2 for e in r.entity_ids)]
            pool = redundant or free
            victim = min(pool, key=lambda r: r.retention(self.retention))  # min: first = oldest
            del self._frames[victim.frame_id]
            self.evicted.append(victim.frame_id)
            out.append(victim)
        return out


def greedy_cover(records: Sequence[FrameRecord], required: Iterable[int], limit: int) -> list[FrameRecord]:
    """Greedy set cover of ``required`` by ``records`` (in insertion order), at most ``limit`` picks.

    Each step: most still-uncovered IDs; ties -> higher ``entity_score``, then earlier record.
    Stops when covered, when nothing covers anything new, or at ``limit``.
    """
    uncovered = set(required)
    chosen: list[FrameRecord] = []
    while uncovered and len(chosen) < limit:
        best, best_key = None, None
        taken = {c.frame_id for c in chosen}
        for r in records:
            if r.frame_id in taken:
                continue
            gain = len(r.entity_ids & uncovered)
            if gain == 0:
                continue
            k = (gain, r.entity_score)
            if best_key is None or k > best_key:  # strict: earlier record wins exact ties
                best, best_key = r, k
        if best is None:
            break
        chosen.append(best)
        uncovered -= best.entity_ids
    return chosen


@dataclass
class MemoryTrace:
    """Which frames were active per prompt, for the sidecar: an event log plus a per-prompt union."""

    events: list[dict[str, Any]] = field(default_factory=list)

    def record(self, prompt_index: int, event: str, frame_ids: Sequence[str]) -> None:
        self.events.append({"prompt": prompt_index, "event": event, "frames": list(frame_ids)})

    def active_per_prompt(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for ev in self.events:
            seen = out.setdefault(ev["prompt"], [])
            seen.extend(f for f in ev["frames"] if f not in seen)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"events": [dict(e) for e in self.events],
                "active_per_prompt": {str(p): f for p, f in self.active_per_prompt().items()}}


class IdentityMemory:
    """Archive + ID memory + trace for ONE script."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, min_multi_entity: int = DEFAULT_MIN_MULTI_ENTITY,
                 max_archived_frames: int | None = DEFAULT_MAX_ARCHIVED_FRAMES, retention: str = "entity_score"):
        if retention not in ("entity_score", "score"):
            raise ValueError("retention must be 'entity_score' or 'score'")
        self.capacity = capacity
        self.min_multi_entity = min_multi_entity
        self.retention = retention
        self.archive = FrameArchive(max_archived_frames, retention)
        self.id_memory: list[str] = []
        self.bank_enabled = False
        self.current_prompt: int | None = None
        self.trace = MemoryTrace()

    # -- prompt start (§3.7) ----------------------------------------------------------------------
    def start_prompt(self, prompt_index: int, required_ids: Iterable[int], first: bool = False) -> list[FrameRecord]:
        """Retrieval at a prompt start; returns the frames to inject (chronological)."""
        self.current_prompt = prompt_index
        required = set(required_ids)
        if not required:  # no entities: skip retrieval; list survives, nothing injected
            self.bank_enabled = False
            self.trace.record(prompt_index, "no-entities", [])
            return []
        if first:  # prompt 1: no retrieval; memory refills from its own chunks
            self.bank_enabled = bool(self.id_memory)
            return self.injected()
        records = self.archive.records()
        budget = len(greedy_cover(records, required, self.capacity))
        if len(required) >= 2 and len(records) >= 2:
            budget = max(budget, self.min_multi_entity)
        budget = min(budget, self.capacity)
        chosen = greedy_cover(records, required, budget)
        taken = {r.frame_id for r in chosen}
        rest = sorted((r for r in records if r.frame_id not in taken), key=lambda r: -r.entity_score)  # stable
        chosen += rest[: budget - len(chosen)]
        self.id_memory = [r.frame_id for r in chosen]
        self.bank_enabled = bool(self.id_memory)
        self.trace.record(prompt_index, "retrieve", self.id_memory)
        return self.injected()

    # -- per chunk (§3.6) -------------------------------------------------------------------------
    def offer(self, record: FrameRecord, update_memory: bool = True) -> list[FrameRecord]:
        """Archive a chunk's chosen frame and update the ID memory; returns evicted archive records.

        ``update_memory=False`` archives only (a choice settled after its prompt ended, when the ID memory
        already serves the next prompt)."""
        self.archive.add(record)
        fid = record.frame_id
        if not update_memory:
            evicted = self.archive.enforce_bound(protected=self.id_memory)
            self.trace.record(record.prompt_index, "archive", [fid])
            return evicted
        if fid not in self.id_memory:  # fix: never hold the same frame twice
            if len(self.id_memory) < self.capacity:
                self.id_memory.append(fid)
            elif self.id_memory:
                held = [self.archive[f] for f in self.id_memory]
                low = min(range(len(held)), key=lambda i: held[i].retention(self.retention))
                if record.retention(self.retention) > held[low].retention(self.retention):
                    self.id_memory[low] = fid
        self.bank_enabled = bool(self.id_memory)
        evicted = self.archive.enforce_bound(protected=self.id_memory)
        self.trace.record(record.prompt_index if self.current_prompt is None else self.current_prompt,
                          "update", self.id_memory)
        return evicted

    # -- injection (§3.8) -------------------------------------------------------------------------
    def injected(self) -> list[FrameRecord]:
        """Active frames to inject, sorted chronologically; empty while the bank is off."""
        if not self.bank_enabled:
            return []
        return sorted((self.archive[f] for f in self.id_memory), key=lambda r: (r.prompt_index, r.latent_index))

    def injection_key(self) -> tuple[str, ...]:
        """Sorted frame-ID tuple; re-inject only when it changes (§3.8 step 4)."""
        return tuple(sorted(r.frame_id for r in self.injected()))
