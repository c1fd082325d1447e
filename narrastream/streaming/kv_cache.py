"""Caches of the block-causal Wan DiT: self-attention KV cache, cross-attention cache, memory bank.

All self-attention keys are stored AFTER RoPE (at their absolute frame position), so a stored frame can
be attended from anywhere later without re-rotation. Storage is frame-granular: ``frame_tokens`` tokens
per latent frame (1560 for 480x832).

Visibility rule for one forward over a block of F frames (spec §2.4), with S = sink frames and
``local_budget = local_attn_size - S``:

* all frames so far = committed frames followed by the current block;
* sink  = the first S frames of the stream (kept forever; the first committed block becomes the sink);
* local = the last ``local_budget`` non-sink frames, the current block included;
* attended keys = [sink ; local], or with a memory bank [sink ; bank ; local] (SMA off) or
  [top-k frame chunks of (sink ; bank) per head ; local] (SMA on).

``rolling`` (Self-Forcing) is the same rule with S = 0. The store holds ``local_attn_size`` frames
(sink + ring), like the original buffer, so the chunk about to be evicted can still be read before the
next commit (IAMFlow's eviction-time memory step).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch

logger = logging.getLogger(__name__)

LOCAL_ATTN_SIZE = 12  # frames attended per forward, current block included (LongLive / IAMFlow)
SINK_SIZE = 3  # frames of the first block kept forever
SMA_TOP_K = 3  # global frame chunks kept per (batch, head) by sparse memory activation


@dataclass(frozen=True)
class CachePolicy:
    """How much self-attention context a block sees; see the module docstring."""

    kind: Literal["rolling", "sink"] = "sink"
    local_attn_size: int = LOCAL_ATTN_SIZE
    sink_size: int = SINK_SIZE
    sma: bool = True
    sma_top_k: int = SMA_TOP_K

    def __post_init__(self) -> None:
        if self.kind not in ("rolling", "sink"):
            raise ValueError(f"unknown cache policy {self.kind!r}; expected 'rolling' or 'sink'")
        if self.kind == "rolling" and self.sink_size != 0:
            raise ValueError("the 'rolling' policy has no sink: use CachePolicy.rolling() or sink_size=0")
        if self.kind == "sink" and not 0 < self.sink_size < self.local_attn_size:
            raise ValueError(
                f"sink_size must be in (0, local_attn_size={self.local_attn_size}), got {self.sink_size}"
            )
        if self.local_attn_size <= 0 or self.sma_top_k <= 0:
            raise ValueError("local_attn_size and sma_top_k must be positive")

    @classmethod
    def rolling(cls, local_attn_size: int = LOCAL_ATTN_SIZE, **kw: object) -> "CachePolicy":
        return cls(kind="rolling", local_attn_size=local_attn_size, sink_size=0, **kw)  # type: ignore[arg-type]

    @classmethod
    def sink(cls, local_attn_size: int = LOCAL_ATTN_SIZE, sink_size: int = SINK_SIZE, **kw: object) -> "CachePolicy":
        return cls(kind="sink", local_attn_size=local_attn_size, sink_size=sink_size, **kw)  # type: ignore[arg-type]

    @property
    def local_budget(self) -> int:
        """Non-sink frames attended per forward, current block included."""
        return self.local_attn_size - self.sink_size

    def make_cache(self, **args: object) -> "SelfAttentionKVCache":
        """The self-attention cache this policy runs (``CausalWanTransformer.new_cache`` calls it; other
        policies, e.g. :class:`~narrastream.streaming.deep_sink.DeepSinkPolicy`, build their own)."""
        args.pop("rope", None)
        return SelfAttentionKVCache(self, **args)  # type: ignore[arg-type]


def _frames(x: torch.Tensor, first: int, count: int, frame_tokens: int) -> torch.Tensor:
    """Token slice of ``count`` frames starting at frame ``first`` along dim 1 (a view)."""
    return x[:, first * frame_tokens : (first + count) * frame_tokens]


class SelfAttentionKVCache:
    """Committed K/V of every layer: a sink region plus a ring of local frames, updated in place.

    Buffers are ``[num_layers, B, frames * frame_tokens, heads, head_dim]``. Pointers are shared by all
    layers: a commit writes every layer's block in ``write`` and then ``advance`` moves the pointers once.
    """

    def __init__(
        self,
        policy: CachePolicy,
        num_layers: int,
        batch_size: int,
        frame_tokens: int,
        num_heads: int,
        head_dim: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ):
        self.policy = policy
        self.num_layers = num_layers
        self.frame_tokens = frame_tokens
        self.ring_frames = policy.local_attn_size - policy.sink_size
        sink_shape = (num_layers, batch_size, policy.sink_size * frame_tokens, num_heads, head_dim)
        ring_shape = (num_layers, batch_size, self.ring_frames * frame_tokens, num_heads, head_dim)
        self.k_sink = torch.zeros(sink_shape, device=device, dtype=dtype)
        self.v_sink = torch.zeros(sink_shape, device=device, dtype=dtype)
        self.k_ring = torch.zeros(ring_shape, device=device, dtype=dtype)
        self.v_ring = torch.zeros(ring_shape, device=device, dtype=dtype)
        self.reset()

    def reset(self) -> None:
        """Forget every committed frame (buffers are not zeroed; pointers make them invisible)."""
        self.sink_count = 0  # committed sink frames
        self.ring_head = 0  # ring slot of the oldest stored local frame
        self.ring_count = 0  # stored local frames
        self.first_frame: int | None = None  # absolute index of the first committed frame
        self.end_frame: int | None = None  # absolute index one past the last committed frame

    # ----- bookkeeping -------------------------------------------------------------------------------
    @property
    def num_committed(self) -> int:
        return 0 if self.end_frame is None else self.end_frame - self.first_frame  # type: ignore[operator]

    def stored_frames(self) -> list[int]:
        """Absolute indices of the frames whose K/V are stored, oldest first."""
        if self.first_frame is None or self.end_frame is None:
            return []
        sink = list(range(self.first_frame, self.first_frame + self.sink_count))
        return sink + list(range(self.end_frame - self.ring_count, self.end_frame))

    def _split_block(self, num_frames: int) -> tuple[int, int]:
        """(frames of the current block that fall in the sink, frames that are local)."""
        into_sink = min(num_frames, self.policy.sink_size - self.sink_count)
        return into_sink, num_frames - into_sink

    def check_block(self, start_frame: int, num_frames: int) -> None:
        """A block must continue the committed stream, and its non-sink frames fit in the local window.

        Frames that fill the sink do not count: LongLive's one-forward re-cache of a stream that still
        fits in the window (up to ``local_attn_size`` frames from frame 0) is one such block."""
        if self.end_frame is not None and start_frame != self.end_frame:
            raise ValueError(
                f"block starts at latent frame {start_frame} but the cache ends at frame {self.end_frame}; "
                "blocks must be committed in order (reset() the cache to start a new stream)"
            )
        into_sink, into_ring = self._split_block(num_frames)
        if into_ring > self.policy.local_budget:
            raise ValueError(
                f"a block of {num_frames} frames ({into_sink} into the sink) exceeds the local window of "
                f"{self.policy.local_budget} frames"
            )

    def begin_forward(self, start_frame: int, num_frames: int, commit: bool) -> None:
        """Called once per DiT forward before any layer attends (caches that act per forward use it)."""
        self.check_block(start_frame, num_frames)

    def summary(self) -> dict:
        """What the cache did over a video, for the sidecar (nothing to say for the sink/rolling window)."""
        return {}

    def _ring_slots(self, first: int, count: int) -> list[tuple[int, int]]:
        """Contiguous (slot, length) runs of ``count`` ring frames starting ``first`` frames after head."""
        runs: list[tuple[int, int]] = []
        slot = (self.ring_head + first) % self.ring_frames
        while count > 0:
            run = min(count, self.ring_frames - slot)
            runs.append((slot, run))
            count -= run
            slot = 0
        return runs

    def _ring_read(self, buf: torch.Tensor, first: int, count: int) -> torch.Tensor:
        parts = [_frames(buf, slot, run, self.frame_tokens) for slot, run in self._ring_slots(first, count)]
        if not parts:
            return buf[:, :0]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    # ----- attention -----------------------------------------------------------------------------------
    def attention_kv(
        self, layer: int, k_cur: torch.Tensor, v_cur: torch.Tensor, q: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sink_k, sink_v, local_k, local_v) [B, tokens, heads, head_dim] for the current block.

        Views of the committed buffers plus the current block; nothing is written. ``q`` (the block's
        queries after RoPE) is unused here; Deep Forcing's compression scores the cache with it."""
        num_frames = k_cur.shape[1] // self.frame_tokens
        into_sink, _ = self._split_block(num_frames)
        split = into_sink * self.frame_tokens
        local_from_cache = min(self.ring_count, self.policy.local_budget - (num_frames - into_sink))
        skip = self.ring_count - local_from_cache
        out = []
        for sink_buf, ring_buf, cur in ((self.k_sink, self.k_ring, k_cur), (self.v_sink, self.v_ring, v_cur)):
            sink = _frames(sink_buf[layer], 0, self.sink_count, self.frame_tokens)
            if split:
                sink = torch.cat([sink, cur[:, :split]], dim=1)
            local = self._ring_read(ring_buf[layer], skip, local_from_cache)
            local = torch.cat([local, cur[:, split:]], dim=1) if local.shape[1] else cur[:, split:]
            out.append((sink, local))
        (sink_k, local_k), (sink_v, local_v) = out
        return sink_k, sink_v, local_k, local_v

    # ----- commit --------------------------------------------------------------------------------------
    def write(self, layer: int, k_cur: torch.Tensor, v_cur: torch.Tensor) -> None:
        """Store one layer's block K/V in place at the slots the pointers give (before ``advance``)."""
        num_frames = k_cur.shape[1] // self.frame_tokens
        into_sink, into_ring = self._split_block(num_frames)
        t = self.frame_tokens
        if into_sink:
            _frames(self.k_sink[layer], self.sink_count, into_sink, t).copy_(k_cur[:, : into_sink * t])
            _frames(self.v_sink[layer], self.sink_count, into_sink, t).copy_(v_cur[:, : into_sink * t])
        if into_ring:
            # slots after the newest stored frame; wrapping over the oldest evicts them
            src = into_sink
            for slot, run in self._ring_slots(self.ring_count, into_ring):
                _frames(self.k_ring[layer], slot, run, t).copy_(_frames(k_cur, src, run, t))
                _frames(self.v_ring[layer], slot, run, t).copy_(_frames(v_cur, src, run, t))
                src += run

    def advance(self, start_frame: int, num_frames: int) -> None:
        """Move the pointers after every layer has written the block ``[start, start + num_frames)``."""
        into_sink, into_ring = self._split_block(num_frames)
        if self.first_frame is None:
            self.first_frame = start_frame
        self.end_frame = start_frame + num_frames
        self.sink_count += into_sink
        total = self.ring_count + into_ring
        evicted = max(0, total - self.ring_frames)
        self.ring_head = (self.ring_head + evicted) % self.ring_frames
        self.ring_count = total - evicted
        if evicted:
            logger.debug("KV cache evicted %d frame(s); window now ends at frame %d", evicted, self.end_frame)

    def local_frames(self) -> list[int]:
        """Absolute indices of the stored local (non-sink) frames, oldest first."""
        if self.end_frame is None:
            return []
        return list(range(self.end_frame - self.ring_count, self.end_frame))

    def rewind(self, to_frame: int) -> None:
        """Forget the local frames from ``to_frame`` on, so they can be committed again (LongLive's KV
        re-cache under a new prompt). The sink is protected: only local frames can be rewound."""
        local = self.local_frames()
        if self.end_frame is None or to_frame == self.end_frame:
            return
        if not local or not local[0] <= to_frame <= self.end_frame:
            raise ValueError(f"cannot rewind to latent frame {to_frame}: the local window holds {local}")
        self.ring_count -= self.end_frame - to_frame
        self.end_frame = to_frame

    # ----- reads for memory agents ---------------------------------------------------------------------
    def frame_kv(self, layer: int, frame: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Committed (post-RoPE) K/V views [B, frame_tokens, heads, head_dim] of absolute ``frame``."""
        stored = self.stored_frames()
        if frame not in stored:
            raise KeyError(f"latent frame {frame} is not in the KV cache (stored: {stored})")
        assert self.first_frame is not None and self.end_frame is not None
        if frame < self.first_frame + self.sink_count:
            idx = frame - self.first_frame
            return (_frames(self.k_sink[layer], idx, 1, self.frame_tokens),
                    _frames(self.v_sink[layer], idx, 1, self.frame_tokens))
        first = frame - (self.end_frame - self.ring_count)
        (slot, _), = self._ring_slots(first, 1)
        return (_frames(self.k_ring[layer], slot, 1, self.frame_tokens),
                _frames(self.v_ring[layer], slot, 1, self.frame_tokens))


    def export_frames(self, frames: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the committed K/V of ``frames`` for every layer, [num_layers, B, n*frame_tokens, H, D]:
        the layout ``MemoryBank.write`` takes (archive them before the commit that evicts them)."""
        ks, vs = [], []
        for layer in range(self.num_layers):
            pairs = [self.frame_kv(layer, f) for f in frames]
            ks.append(torch.cat([k for k, _ in pairs], dim=1))
            vs.append(torch.cat([v for _, v in pairs], dim=1))
        return torch.stack(ks), torch.stack(vs)


class CrossAttentionCache:
    """Per-layer text K/V of the current prompt, computed once per prompt, plus the previous prompt's
    K/V for a soft prompt transition (K = (1-alpha) K_old + alpha K_new, same for V)."""

    def __init__(self) -> None:
        self.k: list[torch.Tensor] | None = None  # per layer [B, text_len, heads, head_dim]
        self.v: list[torch.Tensor] | None = None
        self.prev_k: list[torch.Tensor] | None = None
        self.prev_v: list[torch.Tensor] | None = None
        self.context: torch.Tensor | None = None  # raw text features the current K/V came from

    @property
    def is_ready(self) -> bool:
        return self.k is not None

    def set(self, context: torch.Tensor, k: list[torch.Tensor], v: list[torch.Tensor]) -> None:
        self.context, self.k, self.v = context, k, v

    def matches(self, context: torch.Tensor) -> bool:
        """Whether ``context`` is the prompt the cached K/V were computed from."""
        ref = self.context
        return ref is not None and (context is ref or (context.shape == ref.shape and torch.equal(context, ref)))

    def begin_transition(self) -> None:
        """Prompt switch (SPT): current K/V become the previous prompt's; the next forward computes the new
        prompt's K/V from its ``context``."""
        if self.k is None:
            raise RuntimeError("begin_transition() with no cached prompt: run a forward with the first prompt")
        self.prev_k, self.prev_v = self.k, self.v
        self.k = self.v = self.context = None

    def end_transition(self) -> None:
        """Drop the previous prompt's K/V once the ramp is over (alpha reached 1 / None)."""
        self.prev_k = self.prev_v = None

    def reset(self) -> None:
        """Hard switch: forget both prompts."""
        self.k = self.v = self.prev_k = self.prev_v = self.context = None

    def layer_kv(self, layer: int, alpha: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is None or self.v is None:
            raise RuntimeError("cross-attention cache is empty: pass the prompt's context")
        if alpha is None:
            return self.k[layer], self.v[layer]
        if self.prev_k is None or self.prev_v is None:
            raise RuntimeError("transition_alpha given but no previous prompt: call begin_transition() first")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"transition_alpha must be in [0, 1], got {alpha}")
        k = torch.lerp(self.prev_k[layer], self.k[layer], alpha)
        v = torch.lerp(self.prev_v[layer], self.v[layer], alpha)
        return k, v


class MemoryBank:
    """Externally written memory frames (post-RoPE committed K/V), one buffer per layer.

    ``k/v``: [num_layers, B, capacity * frame_tokens, heads, head_dim]; the first ``length`` frames are
    valid. The model only reads it; an agent (IAM, MemFlow) decides what to write."""

    def __init__(
        self,
        capacity: int,
        num_layers: int,
        batch_size: int,
        frame_tokens: int,
        num_heads: int,
        head_dim: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ):
        shape = (num_layers, batch_size, capacity * frame_tokens, num_heads, head_dim)
        self.capacity = capacity
        self.frame_tokens = frame_tokens
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # valid frames

    def write(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Replace the content with ``k/v`` [num_layers, B, n * frame_tokens, heads, head_dim]."""
        if k.shape != v.shape or k.shape[0] != self.k.shape[0] or k.shape[3:] != self.k.shape[3:]:
            raise ValueError(f"memory K/V of shape {tuple(k.shape)} do not fit the bank {tuple(self.k.shape)}")
        tokens = k.shape[2]
        if tokens % self.frame_tokens or tokens // self.frame_tokens > self.capacity:
            raise ValueError(
                f"{tokens} tokens is not a whole number of frames ({self.frame_tokens} tokens) "
                f"within the capacity of {self.capacity} frames"
            )
        self.k[:, :, :tokens].copy_(k)
        self.v[:, :, :tokens].copy_(v)
        self.length = tokens // self.frame_tokens

    def clear(self) -> None:
        self.length = 0

    def layer_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.length * self.frame_tokens
        return self.k[layer, :, :n], self.v[layer, :, :n]


def sma_select(
    q: torch.Tensor, g_k: torch.Tensor, g_v: torch.Tensor, frame_tokens: int, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse memory activation: keep the ``top_k`` frame chunks of G = [sink ; bank] per (batch, head).

    q [B, Lq, H, D] (after RoPE); g_k/g_v [B, n*frame_tokens, H, D]. Score of chunk j =
    <mean_q, mean_k(chunk j)> without scaling; the kept chunks are re-sorted by chunk index.
    Returns K/V in head-major layout [B, H, k*frame_tokens, D]."""
    batch, tokens, heads, dim = g_k.shape
    chunks = tokens // frame_tokens
    gk = g_k.view(batch, chunks, frame_tokens, heads, dim).permute(0, 3, 1, 2, 4)  # [B,H,n,T,D]
    gv = g_v.view(batch, chunks, frame_tokens, heads, dim).permute(0, 3, 1, 2, 4)
    if chunks <= top_k:
        return gk.reshape(batch, heads, tokens, dim), gv.reshape(batch, heads, tokens, dim)
    scores = sma_chunk_scores(q, g_k, frame_tokens)
    keep = scores.topk(top_k, dim=-1).indices.sort(dim=-1).values  # [B,H,k]
    index = keep[..., None, None].expand(-1, -1, -1, frame_tokens, dim)
    k_sel = torch.gather(gk, 2, index).reshape(batch, heads, top_k * frame_tokens, dim)
    v_sel = torch.gather(gv, 2, index).reshape(batch, heads, top_k * frame_tokens, dim)
    return k_sel, v_sel


def sma_chunk_scores(q: torch.Tensor, g_k: torch.Tensor, frame_tokens: int) -> torch.Tensor:
    """SMA routing scores [B, H, chunks] (exposed for inspection and tests)."""
    batch, tokens, heads, dim = g_k.shape
    phi_k = g_k.float().view(batch, tokens // frame_tokens, frame_tokens, heads, dim).mean(dim=2)
    return torch.einsum("bhd,bnhd->bhn", q.float().mean(dim=1), phi_k)


@dataclass
class StreamingCache:
    """Everything a streaming forward reads/writes besides the weights."""

    self_attn: SelfAttentionKVCache
    cross_attn: CrossAttentionCache

    @property
    def policy(self) -> CachePolicy:
        return self.self_attn.policy

    def reset(self) -> None:
        self.self_attn.reset()
        self.cross_attn.reset()
