"""Deep Forcing's self-attention cache: a deep attention sink re-placed in time, and Participative
Compression (Yi et al., arXiv 2512.05081; the authors' release ``cvlab-kaist/DeepForcing`` at
``ea9961a``, ``wan/modules/causal_model.py`` and ``causal_model_DS.py``; docs/streaming.md).

Training-free, on Self-Forcing's weights. The cache holds at most ``local_attn_size`` (21) latent frames of
tokens, the current block included, and every forward attends to all of them:

* **Deep sink**: the first ``sink_size`` (10) frames of the stream are never evicted. Whenever the cache
  overflows (the first forward of a block that does not fit), the sink's keys are rotated along the time
  axis of RoPE so the sink sits right before the cache's other frames: its first frame moves to
  ``start - tail_frames - sink_frames``, where ``start`` is the new block's first frame and
  ``tail_frames`` the frames after the sink once the block is in. The rotation is applied in place to the
  stored keys (values are not positional), cumulatively, as the release does.
* **Participative Compression** (``compression: participative``): at an overflow the cache keeps
  ``budget`` (16) frames' worth of tokens: the sink, the last ``recent`` (4) frames of tokens (the new
  block included) and the top-C tokens of the rest, C = budget - sink - recent frames of tokens. A token's
  score is the sum, over the last ``recent`` frames of queries seen by this layer (every forward's
  queries, the current block's included) and over heads, of q . k / (sqrt(d) * heads). Tokens already
  chosen ``max_reuse`` (7) times are no longer candidates. Kept tokens stay in their original order and
  keep their RoPE positions. Each layer selects on its own.
* ``compression: none`` is the release's Deep-Sink-only model (``--is_ds_only``): an overflow evicts the
  oldest non-sink frames, first in first out.

Batch size 1 (narrastream streams one video at a time): the number of tokens kept may differ between
batch items, and between layers when the candidates run short.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

COMPRESSIONS = ("participative", "none")


@dataclass(frozen=True)
class DeepSinkPolicy:
    """Deep Forcing's cache geometry, in latent frames (the release's ``self_forcing_dmd_sink10.yaml`` with
    ``--Budget 16 --Recent 4``)."""

    local_attn_size: int = 21
    sink_size: int = 10
    compression: str = "participative"
    budget: int = 16
    recent: int = 4
    max_reuse: int = 7  # 0: no limit
    kind: str = "deep_sink"
    sma: bool = False  # no memory bank: the DiT's bank routing never runs with this cache

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"cache.compression={self.compression!r}: expected one of {', '.join(COMPRESSIONS)}")
        if not 0 < self.sink_size < self.local_attn_size:
            raise ValueError(f"cache.sink_size={self.sink_size} must be in (0, local_attn_size={self.local_attn_size})")
        if self.compression == "participative":
            if self.recent < 1 or self.max_reuse < 0:
                raise ValueError(f"cache.recent={self.recent} must be >= 1 and cache.max_reuse={self.max_reuse} >= 0")
            if not self.sink_size + self.recent <= self.budget <= self.local_attn_size:
                raise ValueError(f"cache.budget={self.budget} must be between sink_size + recent "
                                 f"({self.sink_size + self.recent}) and local_attn_size ({self.local_attn_size})")

    @property
    def local_budget(self) -> int:
        """Non-sink frames attended per forward at most, current block included."""
        return self.local_attn_size - self.sink_size

    def check_block_frames(self, block_frames: int) -> None:
        """A block must fit next to the sink, and (with compression) inside the recent window, whose
        tokens are always kept: the release's selection would otherwise treat part of the new block as
        a candidate."""
        if block_frames > self.local_budget:
            raise ValueError(f"a block of {block_frames} frames does not fit next to a sink of {self.sink_size} "
                             f"in {self.local_attn_size} frames")
        if self.compression == "participative" and block_frames > self.recent:
            raise ValueError(f"cache.recent={self.recent} frames must hold a whole block ({block_frames} frames)")

    def make_cache(self, *, rope: Any, num_layers: int, batch_size: int, frame_tokens: int, num_heads: int,
                   head_dim: int, device: torch.device | str, dtype: torch.dtype) -> "DeepSinkCache":
        return DeepSinkCache(self, rope=rope, num_layers=num_layers, batch_size=batch_size,
                             frame_tokens=frame_tokens, num_heads=num_heads, head_dim=head_dim, device=device,
                             dtype=dtype)


def participative_keep(scores: torch.Tensor, total: int, sink: int, recent: int, top_c: int,
                       counts: torch.Tensor | None, max_reuse: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token indices to keep out of ``total`` (sorted) and the top-C ones among them (sorted).

    ``scores`` [total]: importance of each token; ``sink`` first tokens and ``recent`` last tokens are
    always kept; the top ``top_c`` of the tokens in between are chosen, leaving out those whose
    ``counts`` (times already chosen) reached ``max_reuse`` (0: no limit)."""
    device = scores.device
    old_end = max(0, total - recent)
    start = min(sink, old_end)
    always = torch.cat([torch.arange(0, sink, device=device), torch.arange(old_end, total, device=device)])
    candidates = torch.arange(start, old_end, device=device)
    if candidates.numel() == 0 or top_c <= 0:
        return torch.unique(always, sorted=True), candidates[:0]
    cand_scores = scores[start:old_end]
    if counts is not None and max_reuse > 0:
        allowed = counts[start:old_end] < max_reuse
        candidates, cand_scores = candidates[allowed], cand_scores[allowed]
    chosen_count = min(int(top_c), candidates.numel())
    chosen = candidates[cand_scores.topk(chosen_count).indices] if chosen_count else candidates[:0]
    chosen = torch.sort(chosen).values
    return torch.unique(torch.cat([always, chosen]), sorted=True), chosen


def sink_time_start(start_frame: int, cache_tokens: int, sink_tokens: int, attn_tokens: int,
                    frame_tokens: int) -> int:
    """Where the sink's first frame is placed (RoPE time position) at an overflow: right before the
    ``tail`` of the cache, the tokens after the sink up to the new block's end (``cache_tokens`` counts the
    new block), as if the tail were contiguous frames ending at ``start_frame``."""
    sink_len = min(cache_tokens, sink_tokens)
    tail_start = max(sink_tokens, cache_tokens - attn_tokens + sink_tokens)
    tail_frames = (cache_tokens - tail_start) // frame_tokens
    return start_frame - tail_frames - sink_len // frame_tokens


class DeepSinkCache:
    """Per-layer token buffers [B=1, local_attn_size * frame_tokens, heads, head_dim] (keys after RoPE),
    with per-layer lengths, choice counts, recent queries and sink time positions.

    The DiT calls :meth:`begin_forward` once per forward, then per layer :meth:`attention_kv` (which
    compresses or evicts that layer when the new block overflows it, then re-places the sink) and, on the
    commit forward, :meth:`write`; :meth:`advance` closes the commit."""

    def __init__(self, policy: DeepSinkPolicy, *, rope: Any, num_layers: int, batch_size: int, frame_tokens: int,
                 num_heads: int, head_dim: int, device: torch.device | str, dtype: torch.dtype) -> None:
        if batch_size != 1:
            raise ValueError(f"Deep Forcing's cache streams one video at a time (batch size 1, got {batch_size})")
        self.policy = policy
        self.rope = rope
        self.num_layers = num_layers
        self.frame_tokens = frame_tokens
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.capacity = policy.local_attn_size * frame_tokens
        self.sink_tokens = policy.sink_size * frame_tokens
        shape = (num_layers, batch_size, self.capacity, num_heads, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.counts = torch.zeros((num_layers, self.capacity), device=device, dtype=torch.long)
        self.reset()

    def reset(self) -> None:
        self.lengths = [0] * self.num_layers  # committed tokens per layer
        self.sink_start: list[int | None] = [None] * self.num_layers  # RoPE time position of the sink's first frame
        self.recent_q: list[torch.Tensor | None] = [None] * self.num_layers
        self.first_frame: int | None = None
        self.end_frame: int | None = None
        self.compressions = 0  # overflows handled (layer 0), for the sidecar
        self.chosen_tokens = 0  # top-C tokens chosen at the last compression (layer 0)
        self._forward: tuple[int, int, bool] | None = None

    # ----- the DiT's side ------------------------------------------------------------------------------
    def begin_forward(self, start_frame: int, num_frames: int, commit: bool) -> None:
        if self.end_frame is not None and start_frame != self.end_frame:
            raise ValueError(f"block starts at latent frame {start_frame} but the cache ends at frame "
                             f"{self.end_frame}; blocks must be committed in order")
        self.policy.check_block_frames(num_frames)
        self._forward = (start_frame, num_frames, commit)

    def attention_kv(self, layer: int, k_cur: torch.Tensor, v_cur: torch.Tensor, q: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cache_k, cache_v, current_k, current_v) for this layer, after the overflow step if this block
        overflows the layer's cache; every cached token is attended."""
        if self._forward is None:
            raise RuntimeError("begin_forward() must be called before attention_kv()")
        start, _, _ = self._forward
        if self.policy.compression == "participative":
            if q is None:
                raise ValueError("Participative Compression scores the cache with the queries: pass q")
            self._remember_queries(layer, q)
        new = k_cur.shape[1]
        if self.lengths[layer] + new > self.capacity:
            if self.policy.compression == "participative":
                self._compress(layer, k_cur)
            else:
                self._evict(layer, new)
            self._place_sink(layer, start, self.lengths[layer] + new)
            if layer == 0:
                self.compressions += 1
        n = self.lengths[layer]
        return self.k[layer, :, :n], self.v[layer, :, :n], k_cur, v_cur

    def write(self, layer: int, k_cur: torch.Tensor, v_cur: torch.Tensor) -> None:
        """Append the committed block's K/V (its choice counts start at 0)."""
        n, new = self.lengths[layer], k_cur.shape[1]
        if n + new > self.capacity:
            raise RuntimeError(f"layer {layer}: {n} + {new} tokens exceed the cache of {self.capacity}")
        self.k[layer, :, n:n + new] = k_cur
        self.v[layer, :, n:n + new] = v_cur
        self.counts[layer, n:n + new] = 0
        self.lengths[layer] = n + new

    def advance(self, start_frame: int, num_frames: int) -> None:
        if self.first_frame is None:
            self.first_frame = start_frame
        self.end_frame = start_frame + num_frames

    def summary(self) -> dict[str, Any]:
        return {"deep_sink": {"overflows": self.compressions, "sink_time_start": self.sink_start[0],
                              "cached_tokens": self.lengths[0], "last_top_c_tokens": self.chosen_tokens}}

    # ----- the method ----------------------------------------------------------------------------------
    def _remember_queries(self, layer: int, q: torch.Tensor) -> None:
        """Keep the last ``recent`` frames of this layer's queries, whatever forward they came from."""
        keep = self.policy.recent * self.frame_tokens
        q = q.detach()
        previous = self.recent_q[layer]
        joined = q if previous is None else torch.cat([previous, q], dim=1)
        self.recent_q[layer] = joined[:, -keep:]

    def token_scores(self, layer: int, keys: torch.Tensor) -> torch.Tensor:
        """Importance of each key [T] for this layer: the recent queries summed, dotted with each key over
        all heads, over sqrt(d) * heads (float32)."""
        recent = self.recent_q[layer]
        if recent is None:
            raise RuntimeError(f"layer {layer} has seen no queries")
        count = min(recent.shape[1], keys.shape[1])
        q_sum = recent[:, -count:].float().sum(dim=1).flatten(1)  # [1, heads * d]
        scores = torch.einsum("bc,btc->bt", q_sum, keys.float().flatten(2))
        return scores[0] / (math.sqrt(self.head_dim) * self.num_heads)

    def _compress(self, layer: int, k_cur: torch.Tensor) -> None:
        """Participative Compression of this layer's committed tokens plus the new block (whose tokens are
        always among the recent ones, so only committed tokens move)."""
        n, new = self.lengths[layer], k_cur.shape[1]
        total = n + new
        keys = torch.cat([self.k[layer, :, :n], k_cur], dim=1)
        recent_q = self.recent_q[layer]
        recent = min(0 if recent_q is None else recent_q.shape[1], total)
        sink = min(self.sink_tokens, total)
        kept_total = min(max(min(self.policy.budget * self.frame_tokens, self.capacity), sink + recent), total)
        top_c = max(0, kept_total - sink - recent)
        counts = torch.cat([self.counts[layer, :n], self.counts.new_zeros(new)])
        keep, chosen = participative_keep(self.token_scores(layer, keys), total, sink, recent, top_c, counts,
                                          self.policy.max_reuse)
        if self.policy.max_reuse > 0 and chosen.numel():
            counts[chosen] += 1
        committed = keep[keep < n]
        if keep.numel() - committed.numel() != new:
            raise RuntimeError("the recent window lost part of the new block")  # excluded by check_block_frames
        kept = committed.numel()
        self.k[layer, :, :kept] = self.k[layer, :, committed]
        self.v[layer, :, :kept] = self.v[layer, :, committed]
        self.counts[layer, :kept] = counts[committed]
        self.lengths[layer] = kept
        if layer == 0:
            self.chosen_tokens = int(chosen.numel())
            logger.debug("Participative Compression: %d cached + %d new tokens -> %d kept (top-C %d)", n, new,
                         kept + new, chosen.numel())

    def _evict(self, layer: int, new: int) -> None:
        """Deep Sink only: drop the oldest non-sink tokens so the new block fits."""
        n = self.lengths[layer]
        evicted = n + new - self.capacity
        kept = n - evicted - self.sink_tokens
        if kept < 0:
            raise RuntimeError(f"layer {layer}: a block of {new} tokens cannot fit next to the sink")
        s = self.sink_tokens
        self.k[layer, :, s:s + kept] = self.k[layer, :, s + evicted:s + evicted + kept].clone()
        self.v[layer, :, s:s + kept] = self.v[layer, :, s + evicted:s + evicted + kept].clone()
        self.lengths[layer] = s + kept

    def _place_sink(self, layer: int, start: int, cache_tokens: int) -> None:
        """Rotate the sink's keys (in place, cumulatively) so its first frame sits at
        :func:`sink_time_start`; the stream's first frame is where it starts."""
        assert self.first_frame is not None  # an overflow needs committed frames
        target = sink_time_start(start, cache_tokens, self.sink_tokens, self.capacity, self.frame_tokens)
        current = self.first_frame if self.sink_start[layer] is None else self.sink_start[layer]
        sink = min(self.lengths[layer], self.sink_tokens)
        if target != current and sink:
            self.k[layer, :, :sink] = self.rope.shift_time(self.k[layer, :, :sink], target - current)
        self.sink_start[layer] = target
