"""Memory policies: what the DiT's memory bank holds while a video streams.

* ``none`` -- no bank (Self-Forcing, LongLive, the IAMFlow backbone without its agents).
* ``narrative`` -- MemFlow's narrative adaptive memory (NAM): every ``record_interval`` blocks the
  committed K/V of the block's first latent frame becomes a candidate; when the bank is over budget,
  each layer keeps the ``bank_size - 1`` frames whose keys are most relevant to the text keys (mean over
  text tokens, heads and frame tokens of ``k_text . k_frame / sqrt(d)``) and appends the latest recorded
  frame. Layers decide independently. When it compresses (``compress``):

  - ``every_forward`` (the release, KlingTeam/MemFlow ``7ed5147`` ``causal_model.py``
    ``_apply_cache_updates_before`` / ``compress_kv_bank``): the recorded frame is staged and the bank is
    updated before every forward where the release updates it (each block's first denoising forward, and
    a KV re-cache's forward; :meth:`NarrativeMemory.refresh_bank`). Up to ``bank_size`` recorded frames it
    is written into its slot; beyond, EVERY such update compresses the current bank again: the kept frames
    in ``torch.topk`` order, then the latest recorded frame again (so a frame can appear twice), scored
    with the cross-attention keys present at that moment -- none right after a prompt switch (the release
    zeroes them), when every score is 0 and ``torch.topk``'s tie order decides;
  - ``per_frame`` (narrastream's earlier choice): one compression when a frame is recorded, scored with
    the committing prompt's text keys, the kept frames in their original order (no duplicates).
* ``identity`` -- the hook IAMFlow's identity-aware agents fill (a :class:`MemoryAgent` given by the
  caller); it cannot run without one.

A policy is a :class:`MemoryAgent`: the pipeline calls ``on_prompt_start`` at each prompt (after the
switch is handled) and ``after_commit`` after each block's context pass and decode (``state.block_pixels``
holds the block's decoded frames then). An agent may also define ``before_switch`` (called before a
prompt switch touches the caches), ``refresh_bank`` (called before each block's first denoising forward
and before a KV re-cache's forward, the points where MemFlow's release updates its bank) and
``on_video_end``; all three are optional.
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


COMPRESS_MODES = ("every_forward", "per_frame")


def keep_most_relevant(scores: torch.Tensor, count: int) -> list[int]:
    """Indices of the ``count`` highest ``scores`` [n] in ``torch.topk`` order (highest first), computed as
    the release does (a [1, n] row, ``dim=1``), so that equal scores -- all 0 when the text keys are zero --
    are ordered by the same kernel."""
    return scores.unsqueeze(0).topk(count, dim=1).indices[0].tolist()


@dataclass
class NarrativeMemory:
    """MemFlow's NAM bank (see the module docstring)."""

    bank_size: int = 3
    record_interval: int = 3
    compress: str = "every_forward"
    _k: list[list[torch.Tensor]] = field(default_factory=list, repr=False)  # per layer, per frame [B, N, H, D]
    _v: list[list[torch.Tensor]] = field(default_factory=list, repr=False)
    _staged: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)  # [L, B, N, H, D]
    recorded: int = 0  # frames recorded so far (the release's bank ``local_end_index``, in frames)
    compressions: int = 0  # bank compressions (every layer at once), for the sidecar

    def __post_init__(self) -> None:
        if self.bank_size < 1 or self.record_interval < 1:
            raise ValueError("narrative memory needs bank_size >= 1 and record_interval >= 1")
        if self.compress not in COMPRESS_MODES:
            raise ValueError(f"memory.compress={self.compress!r}: expected one of {', '.join(COMPRESS_MODES)}")

    def on_prompt_start(self, state: StreamState) -> None:
        return None  # MemFlow keeps its bank across prompts; relevance is re-judged at the next compression

    def _text_keys(self, state: StreamState, layer: int) -> torch.Tensor | None:
        keys = state.cache.cross_attn.k
        return None if keys is None else keys[layer]

    def refresh_bank(self, state: StreamState) -> None:
        """``every_forward``: the release's bank update before a forward (``_apply_cache_updates_before``):
        the latest recorded frame into its slot while the bank has room, else a compression of the current
        bank plus that frame, scored with the cross-attention keys present now (zeros when there are none)."""
        if self.compress != "every_forward" or self._staged is None or state.bank is None:
            return
        k_new, v_new = self._staged
        layers = k_new.shape[0]
        if not self._k:
            self._k, self._v = [[] for _ in range(layers)], [[] for _ in range(layers)]
        over = self.recorded > self.bank_size
        for layer in range(layers):
            ks, vs = self._k[layer], self._v[layer]
            if not over:
                slot = self.recorded - 1  # rewritten with the same frame until the next one is recorded
                if slot == len(ks):
                    ks.append(k_new[layer])
                    vs.append(v_new[layer])
                else:
                    ks[slot], vs[slot] = k_new[layer], v_new[layer]
                continue
            text_keys = self._text_keys(state, layer)
            frames = torch.stack(ks)
            scores = (torch.zeros(len(ks), device=frames.device) if text_keys is None
                      else text_relevance(text_keys, frames))
            keep = keep_most_relevant(scores, self.bank_size - 1)
            self._k[layer] = [ks[i] for i in keep] + [k_new[layer]]
            self._v[layer] = [vs[i] for i in keep] + [v_new[layer]]
        if over:
            self.compressions += 1
        self._write(state)

    def summary(self) -> dict:
        """What the bank did over a video, for the sidecar (``extra.memory``)."""
        return {"memory": {"compress": self.compress, "recorded_frames": self.recorded,
                           "compressions": self.compressions}}

    def _write(self, state: StreamState) -> None:
        assert state.bank is not None
        state.bank.write(torch.stack([torch.cat(ks, dim=1) for ks in self._k]),
                         torch.stack([torch.cat(vs, dim=1) for vs in self._v]))

    def after_commit(self, block_index: int, start_frame: int, num_frames: int, state: StreamState) -> None:
        if block_index % self.record_interval or state.bank is None:
            return
        k_new, v_new = state.cache.self_attn.export_frames([start_frame])  # [L, B, N, H, D] copies
        self.recorded += 1
        if self.compress == "every_forward":  # written at the next refresh_bank, as the release does
            self._staged = (k_new, v_new)
            return
        layers = k_new.shape[0]
        if not self._k:
            self._k, self._v = [[] for _ in range(layers)], [[] for _ in range(layers)]
        if self.recorded > self.bank_size:
            self.compressions += 1
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
        self._write(state)


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


def build_memory(policy: str, *, bank_size: int = 0, record_interval: int = 3, compress: str = "every_forward",
                 agent: MemoryAgent | None = None) -> NoMemory | NarrativeMemory | IdentityMemory:
    if policy == "none":
        return NoMemory()
    if policy == "narrative":
        return NarrativeMemory(bank_size=bank_size or 3, record_interval=record_interval, compress=compress)
    if policy == "identity":
        return IdentityMemory(agent, bank_size=bank_size or 6)
    raise ValueError(f"memory policy {policy!r}: expected none, narrative or identity")
