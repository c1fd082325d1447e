"""IAMFlow's identity-aware memory agent, as a :class:`~narrastream.streaming.memory.MemoryAgent`.

At each prompt start it registers the prompt's characters (persistent global IDs,
:mod:`~narrastream.iamflow.registry`), clears the bank (the switch resets it) and, from the second
prompt on, retrieves archived frames covering the characters the prompt needs (greedy set cover,
:mod:`~narrastream.iamflow.id_memory`) and injects their K/V. After each committed block it scores the
block's latent frames against the prompt's entity-weighted text keys (layer 0, §3.5), archives the best
one with a host copy of its K/V, updates the ID memory (§3.6) and re-injects when the memory changed.

Departures (docs/streaming.md): candidates are the just-committed blocks (the release's archival path;
its second, eviction-time scoring of the same inputs only overwrites the same entry); no visual
verifier yet, so the fused score is the semantic score (the release's behaviour with the VLM off); the
archive is bounded (``max_archived_frames``) where the release keeps every frame (~18 GB per video).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from narrastream.iamflow.id_memory import FrameRecord, IdentityMemory, frame_id_for
from narrastream.iamflow.registry import EntityRegistry, ExtractedEntity

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


class IdentityAgent:
    """One script's IAM agent (state never crosses scripts: build one per video)."""

    def __init__(self, prompts: Sequence[str], entities: Sequence[Sequence[ExtractedEntity]], *, capacity: int = 4,
                 min_multi_entity: int = 2, max_archived_frames: int | None = 16) -> None:
        if len(entities) != len(prompts):
            raise ValueError(f"entities for {len(entities)} prompts, the script has {len(prompts)}")
        self.prompts, self.entities = list(prompts), [list(e) for e in entities]
        self.registry = EntityRegistry()
        self.memory = IdentityMemory(capacity, min_multi_entity, max_archived_frames)
        self.kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # frame id -> host K/V [L, B, N, H, D]
        self.prompt_ids: tuple[int, ...] = ()
        self.chunk = 0
        self._injected: tuple[str, ...] | None = None

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

    def after_commit(self, block_index: int, start_frame: int, num_frames: int, state: Any) -> None:
        self.chunk += 1
        if not self.prompt_ids or state.cache.cross_attn.k is None:
            return  # no characters in this prompt: no memory activity (§3.4)
        kv = state.cache.self_attn
        frames = list(range(start_frame, start_frame + num_frames))
        frame_keys = torch.stack([kv.frame_kv(0, f)[0] for f in frames])
        weights = entity_token_weights(self.prompts[state.prompt_index], self.entities[state.prompt_index],
                                       state.cache.cross_attn.k[0].shape[1])
        scores = semantic_scores(state.cache.cross_attn.k[0], weights, frame_keys)
        best = int(scores.argmax())
        frame_id = frame_id_for(state.prompt_index + 1, self.chunk, best)
        k, v = kv.export_frames([frames[best]])
        self.kv[frame_id] = (k.cpu(), v.cpu())
        record = FrameRecord(frame_id=frame_id, latent_index=frames[best], prompt_index=state.prompt_index,
                             entity_ids=self.prompt_ids, score=float(scores[best]), key=frame_id)
        for evicted in self.memory.offer(record):
            self.kv.pop(evicted.frame_id, None)
        self._inject(state, self.memory.injected())

    # ----------------------------------------------------------------------------------------------
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
        """For the sidecar: the registry and which frames were active per prompt."""
        return {"registry": self.registry.to_json(), "memory_trace": self.memory.trace.to_json(),
                "archived_frames": len(self.kv)}
