"""Memory policies: what the DiT's memory bank holds while a video streams.

* ``none`` -- no bank (Self-Forcing, LongLive, the IAMFlow backbone without its agents).
* ``narrative`` -- MemFlow's narrative adaptive memory (NAM): every ``record_interval`` blocks the
  committed K/V of the block's first latent frame becomes a candidate; when the bank is full, each
  layer keeps the ``bank_size - 1`` frames whose keys are most relevant to the current prompt's text
  keys (mean over text tokens, heads and frame tokens of ``k_text . k_frame / sqrt(d)``), in their
  original order, and appends the new one. Layers decide independently.
* ``identity`` -- the hook IAMFlow's identity-aware agents fill (a :class:`MemoryAgent` given by the
  caller); it cannot run without one.

A policy is a :class:`MemoryAgent`: the pipeline calls ``on_prompt_start`` at each prompt (after the
switch is handled) and ``after_commit`` after each block's context pass and decode (``state.block_pixels``
holds the block's decoded frames then). An agent may also define ``before_switch`` (called before a
prompt switch touches the caches) and ``on_video_end``; both are optional.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from narrastream.streaming.kv_cache import MemoryBank, StreamingCache


@dataclass
class StreamState:
    """What a memory agent may read and write during generation."""

    cache: "StreamingCache"
    bank: "MemoryBank | None"
    prompts: list[str]
    prompt_index: int = 0
    block_pixels: "torch.Tensor | None" = None  # the last block's decoded frames, [1, 3, T, H, W] in [-1, 1]
    transition: str = "soft"  # the transition policy: kv_recache rewrites the cached K/V at a switch


class MemoryAgent(Protocol):
    def on_prompt_start(self, state: StreamState) -> None: ...

    def after_commit(self, block_index: int, start_frame: int, num_frames: int, state: StreamState) -> None: ...


class NoMemory:
    """No bank."""

    bank_size = 0

    def on_prompt_start(self, state: StreamState) -> None:
        return None

    def after_commit(self, block_index: int, start_frame: int, num_frames: int, state: StreamState) -> None:
        return None


def text_relevance(text_keys: torch.Tensor, frame_keys: torch.Tensor) -> torch.Tensor:
    """MemFlow's relevance of memory frames to a prompt, for one layer.

    ``text_keys`` [B, T, H, D] (the prompt's cross-attention keys), ``frame_keys`` [n, B, N, H, D] (n
    frames of N tokens) -> [n]: the mean over text tokens, heads, batch and frame tokens of
    ``k_text . k_frame / sqrt(D)``, which factorises into a product of means.

    >>> t = torch.ones(1, 2, 1, 4); f = torch.stack([torch.ones(1, 3, 1, 4), -torch.ones(1, 3, 1, 4)])
    >>> text_relevance(t, f).tolist()
    [2.0, -2.0]
    """
    text_mean = text_keys.float().mean(dim=1)  # [B, H, D]
    frame_mean = frame_keys.float().mean(dim=2)  # [n, B, H, D]
    return (frame_mean * text_mean.unsqueeze(0)).sum(-1).mean(dim=(1, 2)) / math.sqrt(text_keys.shape[-1])


@dataclass
class NarrativeMemory:
    """MemFlow's NAM bank (see the module docstring)."""

    bank_size: int = 3
    record_interval: int = 3
    _k: list[list[torch.Tensor]] = field(default_factory=list, repr=False)  # per layer, per frame [B, N, H, D]
    _v: list[list[torch.Tensor]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.bank_size < 1 or self.record_interval < 1:
            raise ValueError("narrative memory needs bank_size >= 1 and record_interval >= 1")

    def on_prompt_start(self, state: StreamState) -> None:
        return None  # MemFlow keeps its bank across prompts; relevance is re-judged at the next insertion

    def after_commit(self, block_index: int, start_frame: int, num_frames: int, state: StreamState) -> None:
        if block_index % self.record_interval or state.bank is None:
            return
        k_new, v_new = state.cache.self_attn.export_frames([start_frame])  # [L, B, N, H, D] copies
        layers = k_new.shape[0]
        if not self._k:
            self._k, self._v = [[] for _ in range(layers)], [[] for _ in range(layers)]
        for layer in range(layers):
            ks, vs = self._k[layer], self._v[layer]
            if len(ks) >= self.bank_size:
                text_keys = state.cache.cross_attn.k[layer] if state.cache.cross_attn.k is not None else None
                if text_keys is None:
                    keep = list(range(len(ks) - self.bank_size + 1, len(ks)))
                else:
                    scores = text_relevance(text_keys, torch.stack(ks))
                    keep = sorted(scores.topk(self.bank_size - 1).indices.tolist())
                self._k[layer], self._v[layer] = [ks[i] for i in keep], [vs[i] for i in keep]
            self._k[layer].append(k_new[layer])
            self._v[layer].append(v_new[layer])
        state.bank.write(torch.stack([torch.cat(ks, dim=1) for ks in self._k]),
                         torch.stack([torch.cat(vs, dim=1) for vs in self._v]))


class IdentityMemory:
    """The hook for IAMFlow's identity-aware agents: delegates to ``agent`` (a :class:`MemoryAgent`)."""

    def __init__(self, agent: MemoryAgent | None, bank_size: int = 6) -> None:
        if agent is None:
            raise ValueError("memory policy 'identity' needs an identity-aware memory agent (IAMFlow's agents); "
                             "use memory.policy=none for the backbone alone")
        self.agent = agent
        self.bank_size = bank_size

    def on_prompt_start(self, state: StreamState) -> None:
        self.agent.on_prompt_start(state)

    def after_commit(self, block_index: int, start_frame: int, num_frames: int, state: StreamState) -> None:
        self.agent.after_commit(block_index, start_frame, num_frames, state)

    def before_switch(self, state: StreamState) -> None:
        hook = getattr(self.agent, "before_switch", None)
        if hook is not None:
            hook(state)

    def on_video_end(self, state: StreamState) -> None:
        hook = getattr(self.agent, "on_video_end", None)
        if hook is not None:
            hook(state)


def build_memory(policy: str, *, bank_size: int = 0, record_interval: int = 3,
                 agent: MemoryAgent | None = None) -> NoMemory | NarrativeMemory | IdentityMemory:
    if policy == "none":
        return NoMemory()
    if policy == "narrative":
        return NarrativeMemory(bank_size=bank_size or 3, record_interval=record_interval)
    if policy == "identity":
        return IdentityMemory(agent, bank_size=bank_size or 6)
    raise ValueError(f"memory policy {policy!r}: expected none, narrative or identity")
