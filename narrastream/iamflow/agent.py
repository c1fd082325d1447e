"""IAMFlow's identity-aware memory agent, as a :class:`~narrastream.streaming.memory.MemoryAgent`.

At each prompt start it registers the prompt's characters (persistent global IDs,
:mod:`~narrastream.iamflow.registry`), clears the bank (the switch resets it) and, from the second
prompt on, retrieves archived frames covering the characters the prompt needs (greedy set cover,
:mod:`~narrastream.iamflow.id_memory`) and injects their K/V. After each committed block it scores the
block's latent frames against the prompt's entity-weighted text keys (layer 0, §3.5), archives the best
one with a host copy of its K/V, updates the ID memory (§3.6) and re-injects when the memory changed.

With a visual verifier (:mod:`~narrastream.iamflow.verifier`) each block's frames also go to the VLM
and the frame is chosen by the fused score 0.7 * minmax(semantic) + 0.3 * visual (§3.5 step 5). In
``async`` mode the choice for block b is made ``lag_blocks`` blocks later (default 1), so the VLM runs
while the DiT denoises the next block, also across a prompt switch (the soft transition keeps the cached
K/V; a ``kv_recache`` switch rewrites them, so pending choices are settled before it); the rest are
settled at the end of the video. A choice settled after its prompt ended is archived (retrieval at later
prompts can use it) but does not enter the ID memory, which already serves the next prompt. The verdict
on each prompt's first block may carry attribute corrections, which replace the registry's attributes
of those IDs (§3.10; as released, they change the registry only).

Departures (docs/iamflow.md): candidates are the just-committed blocks (the release's archival path;
its second, eviction-time scoring of the same inputs only overwrites the same entry); the archive is
bounded (``max_archived_frames``) where the release keeps every frame (~18 GB per video).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

from narrastream.iamflow.id_memory import FrameRecord, IdentityMemory, frame_id_for
from narrastream.iamflow.registry import Disambiguator, EntityRegistry, ExtractedEntity

if TYPE_CHECKING:
    from narrastream.iamflow.verifier import VisualVerifier

VISUAL_WEIGHT = 0.3  # vlm_score_weight: fused = (1 - w) * minmax(semantic) + w * visual
UPWEIGHT = 2.5
MARGIN = 0.02
HEAD_FRACTION, HEAD_WEIGHT = 0.08, 0.7
TAIL_FRACTION, TAIL_WEIGHT = 0.92, 0.5
FALLBACK_SPAN, FALLBACK_WEIGHT = (0.1, 0.85), 1.5  # tokens [51, 435) of 512


def entity_token_weights(prompt: str, entities: Sequence[ExtractedEntity], length: int = 512) -> torch.Tensor:
    """§3.5 step 1: weights over the text-token axis from where names and attributes sit in the prompt.

    Character spans are mapped onto the whole ``length``-slot axis as the release does (so they mostly
    land on padding for short prompts; reproduced on purpose).

    >>> w = entity_token_weights("Noah reads", [ExtractedEntity("Noah", ())], 100)
    >>> float(w[0]), float(w[50]), float(w[95])
    (2.5, 1.0, 0.5)
    """
    w = torch.ones(length)
    text = prompt.lower()
    found = False
    for entity in entities:
        for phrase in (entity.name, *entity.attributes):
            at = text.find(phrase.lower()) if phrase else -1
            if at < 0 or not text:
                continue
            found = True
            s, e = at / len(text), (at + len(phrase)) / len(text)
            lo, hi = max(0, math.floor((s - MARGIN) * length)), min(length, math.floor((e + MARGIN) * length))
            w[lo:hi] = torch.clamp(w[lo:hi], min=UPWEIGHT)
    if not found:
        w[math.floor(FALLBACK_SPAN[0] * length):math.floor(FALLBACK_SPAN[1] * length)] = FALLBACK_WEIGHT
        return w
    head, tail = math.floor(HEAD_FRACTION * length), math.floor(TAIL_FRACTION * length)
    w[:head] = torch.where(w[:head] == 1.0, torch.tensor(HEAD_WEIGHT), w[:head])
    w[tail:] = torch.where(w[tail:] == 1.0, torch.tensor(TAIL_WEIGHT), w[tail:])
    return w


def semantic_scores(text_keys: torch.Tensor, weights: torch.Tensor, frame_keys: torch.Tensor) -> torch.Tensor:
    """§3.5 steps 2–4 for one layer: ``text_keys`` [B, T, H, D], ``weights`` [T], ``frame_keys`` [n, B, N, H, D]
    -> [n] = mean over (b, h) of <sum_s w_s K_s / sum w, mean_tokens k_f> / sqrt(D)."""
    w = (weights / weights.sum()).to(text_keys.device, torch.float32)
    q = torch.einsum("s,bshd->bhd", w, text_keys.float())
    k = frame_keys.float().mean(dim=2)  # [n, B, H, D]
    return (k * q.unsqueeze(0)).sum(-1).mean(dim=(1, 2)) / math.sqrt(text_keys.shape[-1])


def fuse_scores(semantic: torch.Tensor, visual: Sequence[float] | None, weight: float = VISUAL_WEIGHT) -> torch.Tensor:
    """§3.5 step 5: without visual scores the semantic scores themselves; with them
    ``(1 - weight) * minmax(semantic) + weight * visual`` (0.5 per candidate when the semantic range is
    below 1e-8).

    >>> fuse_scores(torch.tensor([1.0, 3.0, 2.0]), [0.0, 0.0, 1.0]).tolist()
    [0.0, 0.699999988079071, 0.6499999761581421]
    """
    if visual is None:
        return semantic.float()
    e = semantic.float()
    spread = float(e.max() - e.min())
    normalised = (e - e.min()) / spread if spread >= 1e-8 else torch.full_like(e, 0.5)
    v = torch.tensor(list(visual)[: len(e)] + [0.5] * max(0, len(e) - len(visual)), dtype=torch.float32)
    return (1.0 - weight) * normalised + weight * v


@dataclass
class _Candidate:
    """One committed block awaiting its archive decision (the verifier's answer)."""

    key: str  # p{prompt}_c{chunk}, 1-based
    prompt_index: int
    chunk: int
    block_index: int
    frames: list[int]  # absolute latent indices
    semantic: torch.Tensor  # [len(frames)]
    entity_ids: tuple[int, ...]


class IdentityAgent:
    """One script's IAM agent (state never crosses scripts: build one per video).

    ``verifier``: a :class:`~narrastream.iamflow.verifier.VisualVerifier` (or None: semantic score only);
    ``lag_blocks``: how many blocks later an async verifier's answer is collected; ``disambiguate``: the
    registry's hook for ambiguous names (an LLM, :func:`~narrastream.iamflow.questions.match_identity`).
    """

    def __init__(self, prompts: Sequence[str], entities: Sequence[Sequence[ExtractedEntity]], *, capacity: int = 4,
                 min_multi_entity: int = 2, max_archived_frames: int | None = 16, retention: str = "entity_score",
                 verifier: "VisualVerifier | None" = None, lag_blocks: int = 1, visual_weight: float = VISUAL_WEIGHT,
                 disambiguate: Disambiguator | None = None) -> None:
        if len(entities) != len(prompts):
            raise ValueError(f"entities for {len(entities)} prompts, the script has {len(prompts)}")
        if lag_blocks < 0:
            raise ValueError("iam.verifier.lag_blocks must be >= 0")
        self.prompts, self.entities = list(prompts), [list(e) for e in entities]
        self.registry = EntityRegistry(disambiguate)
        self.memory = IdentityMemory(capacity, min_multi_entity, max_archived_frames, retention)
        self.verifier = verifier
        self.lag_blocks = int(lag_blocks) if verifier is not None and verifier.mode == "async" else 0
        self.visual_weight = float(visual_weight)
        self.kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # frame id -> host K/V [L, B, N, H, D]
        self.prompt_ids: tuple[int, ...] = ()
        self.chunk = 0
        self._injected: tuple[str, ...] | None = None
        self._pending: list[_Candidate] = []
        self.decisions: list[dict[str, Any]] = []  # per block: the verdict and the frame chosen

    # MemoryAgent ---------------------------------------------------------------------------------
    def on_prompt_start(self, state: Any) -> None:
        p = state.prompt_index
        self.prompt_ids = self.registry.register(p, self.entities[p])
        self.chunk = 0
        if state.bank is not None:
            state.bank.clear()  # the switch resets the bank (§2.6); retrieval refills it
        self._injected = None
        frames = self.memory.start_prompt(p, self.prompt_ids, first=(p == 0))
        self._inject(state, frames)

    def before_switch(self, state: Any) -> None:
        """A re-cache switch rewrites the cached K/V: settle pending choices while they are intact."""
        if getattr(state, "transition", "soft") == "kv_recache":
            self._settle(state)

    def on_video_end(self, state: Any) -> None:
        self._settle(state)

    def after_commit(self, block_index: int, start_frame: int, num_frames: int, state: Any) -> None:
        self.chunk += 1
        if not self.prompt_ids or state.cache.cross_attn.k is None:
            return  # no characters in this prompt: no memory activity (§3.4)
        kv = state.cache.self_attn
        frames = list(range(start_frame, start_frame + num_frames))
        frame_keys = torch.stack([kv.frame_kv(0, f)[0] for f in frames])
        p = state.prompt_index
        weights = entity_token_weights(self.prompts[p], self.entities[p], state.cache.cross_attn.k[0].shape[1])
        candidate = _Candidate(key=f"p{p + 1}_c{self.chunk}", prompt_index=p, chunk=self.chunk,
                               block_index=block_index, frames=frames,
                               semantic=semantic_scores(state.cache.cross_attn.k[0], weights, frame_keys).cpu(),
                               entity_ids=self.prompt_ids)
        if self.verifier is not None:
            self._submit(candidate, state)
        self._pending.append(candidate)
        self._settle(state, before_block=block_index - self.lag_blocks + 1)

    # ----------------------------------------------------------------------------------------------
    def _submit(self, candidate: _Candidate, state: Any) -> None:
        from narrastream.streaming.vae import to_uint8_frames

        if state.block_pixels is None:
            raise RuntimeError("the visual verifier needs the block's decoded frames (state.block_pixels)")
        registry = None
        if candidate.chunk == 1:  # a prompt's first block: the registry's attributes, for corrections
            registry = {e["id"]: (e["name"], tuple(e["attributes"])) for e in self.registry.to_json()["entities"]}
        names = [e.name for e in self.entities[candidate.prompt_index]]
        self.verifier.submit(candidate.key, to_uint8_frames(state.block_pixels).numpy(),
                             self.prompts[candidate.prompt_index], names, registry, count=len(candidate.frames))

    def _settle(self, state: Any, before_block: int | None = None) -> None:
        """Decide every pending block (those older than ``before_block`` when given), oldest first."""
        while self._pending and (before_block is None or self._pending[0].block_index < before_block):
            self._decide(self._pending.pop(0), state)

    def _decide(self, candidate: _Candidate, state: Any) -> None:
        verdict = self.verifier.result(candidate.key) if self.verifier is not None else None
        visual = verdict.scores if verdict is not None and verdict.status == "ok" else None
        fused = fuse_scores(candidate.semantic, visual, self.visual_weight)
        best = int(fused.argmax())
        frame_id = frame_id_for(candidate.prompt_index + 1, candidate.chunk, best)
        decision: dict[str, Any] = {"block": candidate.key, "frame": frame_id,
                                    "semantic": [round(float(x), 6) for x in candidate.semantic]}
        if verdict is not None:
            decision.update(verifier=verdict.status, visual=visual, waited_s=round(verdict.waited_s, 4))
            if verdict.reason:
                decision["reason"] = verdict.reason
            if verdict.corrections and candidate.chunk == 1:
                decision["corrections"] = self._apply_corrections(verdict.corrections)
        try:
            k, v = state.cache.self_attn.export_frames([candidate.frames[best]])
        except KeyError as exc:  # the frame left the cache before the decision (lag too long)
            decision["archived"] = False
            decision["archive_problem"] = str(exc)
            self.decisions.append(decision)
            return
        self.decisions.append(decision)
        self.kv[frame_id] = (k.cpu(), v.cpu())
        record = FrameRecord(frame_id=frame_id, latent_index=candidate.frames[best],
                             prompt_index=candidate.prompt_index, entity_ids=candidate.entity_ids,
                             score=float(fused[best]), entity_score=float(candidate.semantic[best]), key=frame_id,
                             visual_score=None if visual is None else float(visual[best]))
        current = candidate.prompt_index == state.prompt_index  # an earlier prompt's choice is archived only
        for evicted in self.memory.offer(record, update_memory=current):
            self.kv.pop(evicted.frame_id, None)
        if current:
            self._inject(state, self.memory.injected())

    def _apply_corrections(self, corrections: dict[int, list[str]]) -> dict[str, list[str]]:
        """§3.10: corrected attributes replace a known ID's attributes wholesale (unknown IDs ignored)."""
        applied = {}
        for gid, attrs in corrections.items():
            try:
                entry = self.registry.entry(gid)
            except KeyError:
                continue
            entry.attributes = list(attrs)
            applied[str(gid)] = list(attrs)
        return applied

    def _inject(self, state: Any, frames: Sequence[FrameRecord]) -> None:
        key = tuple(sorted(f.frame_id for f in frames))
        if state.bank is None or key == self._injected:
            return
        self._injected = key
        if not frames:
            state.bank.clear()
            return
        frames = frames[: state.bank.capacity]
        device = state.bank.k.device
        k = torch.cat([self.kv[f.frame_id][0] for f in frames], dim=2).to(device, state.bank.k.dtype)
        v = torch.cat([self.kv[f.frame_id][1] for f in frames], dim=2).to(device, state.bank.v.dtype)
        state.bank.write(k, v)

    def to_json(self) -> dict[str, Any]:
        """For the sidecar: the registry, which frames were active per prompt, and the verifier's record."""
        out = {"registry": self.registry.to_json(), "memory_trace": self.memory.trace.to_json(),
               "archived_frames": len(self.kv), "decisions": self.decisions}
        if self.verifier is not None:
            out["verifier"] = self.verifier.stats()
        return out
