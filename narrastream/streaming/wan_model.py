"""Block-causal, KV-cached Wan2.1-T2V DiT for streaming generation (Self-Forcing / LongLive / MemFlow /
IAMFlow style), with parameter names of the ORIGINAL Wan checkpoints.

Streaming contract
------------------
A video is generated one block of F latent frames at a time (F = 3 in the shipped methods). For a block
starting at absolute latent frame ``start_frame``:

1. Denoising passes: ``model(x_t, t, context, start_frame=s, cache=cache)`` with ``commit=False``. The
   block's tokens attend to the committed cache (sink + local window, see ``kv_cache``) plus themselves
   (all frames of the block see each other; no causal mask inside a block). Nothing is written.
2. Context pass: ``model(x0, 0, context, start_frame=s, cache=cache, commit=True)`` on the clean block.
   The same attention is computed, and every layer's post-RoPE K/V of exactly this block are written
   into the cache in place (evicting the oldest local frames when the window is full). Its output is
   returned too but the pipelines discard it.
3. The next block must start at ``s + F``: a block can only follow the committed stream.

``context`` is the RAW text-encoder output ``[B, L <= text_len, text_dim]`` (umT5 features, padding
zeroed); the model zero-pads it to ``text_len`` and applies ``text_embedding`` itself. The per-layer
cross-attention K/V are computed at the first forward after a reset / prompt switch and reused: passing
a different ``context`` without ``cache.cross_attn.begin_transition()`` or ``reset()`` is an error.
``transition_alpha`` blends the previous prompt's cross K/V with the new one's (soft prompt transition).
A ``MemoryBank`` with frames adds them to the self-attention context of every layer, routed by SMA when
the cache policy enables it.

``forward_full`` recomputes a whole sequence of blocks in one pass with a block-causal mask giving every
block the same sink/window visibility; it is the reference the streaming path is tested against.
Timestep ``t`` is in [0, 1000]; the output is the flow prediction (epsilon - x0), returned in float32.
Inference only: cache writes are in place and not tracked by autograd.

Precision (``WanConfig.residual_dtype``)
----------------------------------------
The released causal models (Self-Forcing's and LongLive's ``causal_model.py``, with MemFlow and
IAMFlow built on them) run without autocast: their ``amp.autocast(float32)`` regions are commented out
and the whole model is cast to bf16, so the residual stream, the modulation, the time embedding and the
head run in the weights' dtype; only the q/k RMS norms (float32, then cast back), RoPE (float64) and the
sinusoid (float64) run wider. ``residual_dtype=None`` (the default) does the same: activations follow the
weights. ``residual_dtype="float32"`` keeps the residual stream, norms, modulation, time embedding and head
input in float32 with the linears in the weights' dtype, as original Wan2.1 runs under its autocast
(docs/streaming.md gives the measured difference). With float32 weights both are the same computation.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from narrastream.checkpoints import compare_state

from .kv_cache import (
    CachePolicy,
    CrossAttentionCache,
    MemoryBank,
    StreamingCache,
    sma_select,
)
from .rope import Rope3D

logger = logging.getLogger(__name__)

SINUSOID_BASE = 10000.0  # Wan's sinusoidal timestep embedding base
RESIDUAL_DTYPES = (None, "float32")


@dataclass(frozen=True)
class WanConfig:
    """Architecture of Wan2.1-T2V-1.3B (the defaults) or a scaled-down copy for tests."""

    dim: int = 1536
    num_layers: int = 30
    num_heads: int = 12
    ffn_dim: int = 8960
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    in_dim: int = 16
    out_dim: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    residual_dtype: str | None = None  # None: the weights' dtype (the released causal models); "float32"

    def __post_init__(self) -> None:
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ValueError(f"dim {self.dim} must split into {self.num_heads} heads of even size")
        if self.residual_dtype not in RESIDUAL_DTYPES:
            raise ValueError(f"residual_dtype={self.residual_dtype!r}: expected null (the weights' dtype, as the "
                             "released causal models) or 'float32' (Wan2.1's autocast regions)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @classmethod
    def tiny(cls) -> "WanConfig":
        """Same architecture, small enough for CPU tests (head_dim 16 -> RoPE split 4/2/2 pairs)."""
        return cls(dim=32, num_layers=2, num_heads=2, ffn_dim=64, freq_dim=16, text_dim=24, text_len=8,
                   in_dim=4, out_dim=4)


# ----- building blocks (parameter names follow the Wan checkpoints) --------------------------------------
def _linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run a linear in its compute dtype, whatever the residual stream's dtype.

    An FP8 linear (:class:`narrastream.streaming.fp8.FP8Linear`) stores float8 weights but computes in
    its ``compute_dtype`` (bf16); a plain ``nn.Linear`` computes in its weight dtype."""
    return layer(x.to(getattr(layer, "compute_dtype", layer.weight.dtype)))


def _linear_as(layer: nn.Linear, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A linear computed in ``dtype``: the time-embedding MLPs run in the residual dtype (bf16 in the
    releases, float32 under Wan's autocast)."""
    return F.linear(x.to(dtype), layer.weight.to(dtype), layer.bias.to(dtype))


class WanRMSNorm(nn.Module):
    """RMS norm over the full width with a learned scale (q/k norms)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32; affine only where Wan has it (norm3)."""

    def __init__(self, dim: int, eps: float, elementwise_affine: bool = False):
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps)


class WanAttention(nn.Module):
    """q/k/v/o projections with optional q/k RMS norms; shared by self- and cross-attention."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim))

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return self._heads(self.norm_q(_linear(self.q, x)))

    def key_value(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._heads(self.norm_k(_linear(self.k, x))), self._heads(_linear(self.v, x))

    def out(self, y: torch.Tensor) -> torch.Tensor:
        return _linear(self.o, y.flatten(2))


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of q [B, Lq, H, D] over head-major k/v [B, H, Lk, D]; returns [B, Lq, H, D]."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask)
    return out.transpose(1, 2)


class WanAttentionBlock(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm1 = WanLayerNorm(cfg.dim, cfg.eps)
        self.self_attn = WanAttention(cfg.dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm3 = WanLayerNorm(cfg.dim, cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = WanAttention(cfg.dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm2 = WanLayerNorm(cfg.dim, cfg.eps)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, cfg.dim))
        # shift/scale/gate for self-attention, then for the FFN
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        e0: torch.Tensor,
        rope: Callable[[torch.Tensor], torch.Tensor],
        attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],  # (q, k, v) after RoPE
        cross_kv: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """x [B, F*T, dim] in the residual dtype; e0 [B, F, 6, dim] per-frame modulation (same dtype).

        Norms compute in float32 and return the residual dtype; modulation, gates and residual adds
        run in the residual dtype (bf16 in the releases: their autocast is commented out)."""
        frames, dtype = e0.shape[1], x.dtype
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation.to(dtype).unsqueeze(1) + e0).unbind(2)

        def modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            h = h.to(dtype).unflatten(1, (frames, -1))
            return (h * (1 + scale.unsqueeze(2)) + shift.unsqueeze(2)).flatten(1, 2)

        def gated(y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
            return (y.to(dtype).unflatten(1, (frames, -1)) * gate.unsqueeze(2)).flatten(1, 2)

        h = modulate(self.norm1(x), shift1, scale1)
        q = rope(self.self_attn.query(h))
        k, v = self.self_attn.key_value(h)
        y = attend(q, rope(k), v)
        x = x + gated(self.self_attn.out(y), gate1)

        q = self.cross_attn.query(self.norm3(x).to(dtype))
        x = x + self.cross_attn.out(_sdpa(q, cross_kv[0].transpose(1, 2), cross_kv[1].transpose(1, 2))).to(dtype)

        h = modulate(self.norm2(x), shift2, scale2)
        y = _linear(self.ffn[2], self.ffn[1](_linear(self.ffn[0], h)))
        return x + gated(y, gate2)


class WanHead(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm = WanLayerNorm(cfg.dim, cfg.eps)
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)  # shift, scale

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x [B, F*T, dim]; e [B, F, dim] (time embedding, before the projection), both in the residual dtype."""
        shift, scale = (self.modulation.to(x.dtype).unsqueeze(1) + e.unsqueeze(2)).unbind(2)
        h = self.norm(x).to(x.dtype).unflatten(1, (e.shape[1], -1))
        h = (h * (1 + scale.unsqueeze(2)) + shift.unsqueeze(2)).flatten(1, 2)
        return _linear(self.head, h).float()


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding: [cos(t w_k), sin(t w_k)], w_k = 10000^(-k/half), in float64."""
    half = dim // 2
    t = t.to(torch.float64)
    freqs = torch.pow(SINUSOID_BASE, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(t, freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


# ----- the model ---------------------------------------------------------------------------------------
class CausalWanTransformer(nn.Module):
    """Wan2.1 T2V DiT with block-causal streaming attention; see the module docstring for the contract."""

    def __init__(self, cfg: WanConfig | None = None):
        super().__init__()
        cfg = cfg or WanConfig()
        self.cfg = cfg
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList(WanAttentionBlock(cfg) for _ in range(cfg.num_layers))
        self.head = WanHead(cfg)
        self.rope = Rope3D(cfg.head_dim)

    @property
    def residual_dtype(self) -> torch.dtype:
        """dtype of the residual stream, modulation and time embedding (see the module docstring)."""
        return torch.float32 if self.cfg.residual_dtype == "float32" else self.patch_embedding.weight.dtype

    # ----- caches ------------------------------------------------------------------------------------
    def frame_tokens(self, latent_height: int, latent_width: int) -> int:
        _, ph, pw = self.cfg.patch_size
        if latent_height % ph or latent_width % pw:
            raise ValueError(f"latent size {latent_height}x{latent_width} is not divisible by the patch {ph}x{pw}")
        return (latent_height // ph) * (latent_width // pw)

    def _cache_args(self, batch_size: int, latent_height: int, latent_width: int,
                    device: torch.device | str | None, dtype: torch.dtype | None) -> dict:
        weight = self.patch_embedding.weight
        return dict(num_layers=self.cfg.num_layers, batch_size=batch_size,
                    frame_tokens=self.frame_tokens(latent_height, latent_width), num_heads=self.cfg.num_heads,
                    head_dim=self.cfg.head_dim, device=device or weight.device, dtype=dtype or weight.dtype)

    def new_cache(self, batch_size: int, latent_height: int, latent_width: int, policy: CachePolicy | None = None,
                  *, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> StreamingCache:
        """Empty self-attention KV cache (per ``policy``) and cross-attention cache for one stream."""
        kv = (policy or CachePolicy()).make_cache(rope=self.rope, **self._cache_args(batch_size, latent_height,
                                                                                   latent_width, device, dtype))
        return StreamingCache(self_attn=kv, cross_attn=CrossAttentionCache())

    def new_memory_bank(self, capacity: int, batch_size: int, latent_height: int, latent_width: int, *,
                        device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> MemoryBank:
        return MemoryBank(capacity, **self._cache_args(batch_size, latent_height, latent_width, device, dtype))

    # ----- embeddings --------------------------------------------------------------------------------
    def _patchify(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        if x.dim() != 5 or x.shape[1] != self.cfg.in_dim:
            raise ValueError(f"expected latents [B, {self.cfg.in_dim}, F, H, W], got {tuple(x.shape)}")
        for size, p in zip(x.shape[2:], self.cfg.patch_size):
            if size % p:
                raise ValueError(f"latent shape {tuple(x.shape)} is not divisible by the patch {self.cfg.patch_size}")
        h = self.patch_embedding(x.to(self.patch_embedding.weight.dtype))
        grid = (h.shape[2], h.shape[3], h.shape[4])
        return h.flatten(2).transpose(1, 2).to(self.residual_dtype), grid

    def _unpatchify(self, out: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        (f, h, w), (pt, ph, pw), c = grid, self.cfg.patch_size, self.cfg.out_dim
        out = out.view(out.shape[0], f, h, w, pt, ph, pw, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(out.shape[0], c, f * pt, h * ph, w * pw)

    def _time(self, t: torch.Tensor | float, batch: int, frames: int, device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(e [B, F, dim], e0 [B, F, 6, dim]) in the residual dtype from t: scalar, [B] or [B, F].

        The sinusoid is computed in float64 and cast, then the MLPs run in the residual dtype."""
        t = torch.as_tensor(t, device=device, dtype=torch.float64)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() == 1:
            t = t[:, None].expand(batch, frames)
        if tuple(t.shape) != (batch, frames):
            raise ValueError(f"timestep of shape {tuple(t.shape)}; expected a scalar, [B] or [B, F]=({batch}, {frames})")
        dtype = self.residual_dtype
        emb = sinusoidal_embedding(self.cfg.freq_dim, t.reshape(-1)).to(dtype)
        e = _linear_as(self.time_embedding[2], F.silu(_linear_as(self.time_embedding[0], emb, dtype)), dtype)
        e0 = _linear_as(self.time_projection[1], F.silu(e), dtype)
        return e.view(batch, frames, -1), e0.view(batch, frames, 6, -1)

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """Raw text features [B, L <= text_len, text_dim] -> [B, text_len, dim] (zero-padded like Wan)."""
        if context.dim() != 3 or context.shape[2] != self.cfg.text_dim or context.shape[1] > self.cfg.text_len:
            raise ValueError(f"context must be [B, <= {self.cfg.text_len}, {self.cfg.text_dim}], "
                             f"got {tuple(context.shape)}")
        context = F.pad(context, (0, 0, 0, self.cfg.text_len - context.shape[1]))
        h = _linear(self.text_embedding[0], context)
        return _linear(self.text_embedding[2], self.text_embedding[1](h))

    def cross_kv(self, context: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-layer cross-attention K/V [B, text_len, heads, head_dim] of one prompt."""
        emb = self.embed_text(context)
        pairs = [blk.cross_attn.key_value(emb) for blk in self.blocks]
        return [k for k, _ in pairs], [v for _, v in pairs]

    def _prepare_cross(self, cross: CrossAttentionCache, context: torch.Tensor | None) -> None:
        if cross.is_ready:
            if context is not None and not cross.matches(context):
                raise ValueError("context differs from the prompt cached in cache.cross_attn; call "
                                 "cache.cross_attn.begin_transition() (soft switch) or reset() first")
            return
        if context is None:
            raise ValueError("the cross-attention cache is empty: pass the prompt's context")
        cross.set(context, *self.cross_kv(context))

    # ----- streaming forward -------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        context: torch.Tensor | None = None,
        *,
        start_frame: int,
        cache: StreamingCache,
        commit: bool = False,
        bank: MemoryBank | None = None,
        transition_alpha: float | None = None,
        query_frames: int = 0,
    ) -> torch.Tensor:
        """One block [B, C, F, H, W] at absolute latent frame ``start_frame`` -> flow prediction (returned
        in float32; computed in the residual dtype).

        ``commit=True`` writes this block's K/V into ``cache`` (the clean context pass).
        ``query_frames``: the block's first frames are queries only (the release's sink-protected frames of a
        one-forward KV re-cache): they go through every layer at their own positions and count in SMA's mean
        query, but their K/V are neither attended nor written; the cache sees the block from
        ``start_frame + query_frames`` on."""
        kv = cache.self_attn
        tokens, grid = self._patchify(x)
        if grid[1] * grid[2] != kv.frame_tokens:
            raise ValueError(f"block has {grid[1] * grid[2]} tokens per frame, the cache {kv.frame_tokens}")
        if not 0 <= query_frames < grid[0]:
            raise ValueError(f"query_frames={query_frames} must leave at least one of the {grid[0]} frames")
        if query_frames and not isinstance(kv.policy, CachePolicy):
            raise ValueError(f"query-only frames need a sink or rolling cache, not {type(kv.policy).__name__}")
        kept_from = query_frames * kv.frame_tokens
        kv.begin_forward(start_frame + query_frames, grid[0] - query_frames, commit)
        self._prepare_cross(cache.cross_attn, context)
        use_bank = bank is not None and bank.length > 0
        policy = kv.policy

        def rope(a: torch.Tensor) -> torch.Tensor:
            return self.rope.apply(a, start_frame, grid)

        e, e0 = self._time(t, x.shape[0], grid[0], x.device)
        for i, block in enumerate(self.blocks):
            def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: int = i) -> torch.Tensor:
                k, v = k[:, kept_from:], v[:, kept_from:]  # query-only frames give no keys
                sink_k, sink_v, local_k, local_v = kv.attention_kv(i, k, v, q[:, kept_from:])
                if use_bank:
                    assert bank is not None
                    bank_k, bank_v = bank.layer_kv(i)
                    if policy.sma:
                        g_k, g_v = sma_select(q, torch.cat([sink_k, bank_k], 1), torch.cat([sink_v, bank_v], 1),
                                              kv.frame_tokens, policy.sma_top_k)
                        keys = torch.cat([g_k, local_k.transpose(1, 2)], dim=2)
                        values = torch.cat([g_v, local_v.transpose(1, 2)], dim=2)
                        out = _sdpa(q, keys, values)
                    else:
                        out = _sdpa(q, torch.cat([sink_k, bank_k, local_k], 1).transpose(1, 2),
                                    torch.cat([sink_v, bank_v, local_v], 1).transpose(1, 2))
                else:
                    out = _sdpa(q, torch.cat([sink_k, local_k], 1).transpose(1, 2),
                                torch.cat([sink_v, local_v], 1).transpose(1, 2))
                if commit:
                    kv.write(i, k, v)
                return out

            tokens = block(tokens, e0, rope, attend, cache.cross_attn.layer_kv(i, transition_alpha))
        if commit:
            kv.advance(start_frame + query_frames, grid[0] - query_frames)
        return self._unpatchify(self.head(tokens, e), grid)

    # ----- reference path ----------------------------------------------------------------------------
    def forward_full(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        context: torch.Tensor,
        *,
        block_frames: int,
        policy: CachePolicy | None = None,
        start_frame: int = 0,
    ) -> torch.Tensor:
        """Recompute a sequence of blocks [B, C, n*block_frames, H, W] at once with the block-causal mask
        that reproduces the streaming sink/window visibility. ``t``: scalar, [B] or per frame [B, F]."""
        policy = policy or CachePolicy()
        tokens, grid = self._patchify(x)
        frames, frame_tokens = grid[0], grid[1] * grid[2]
        if frames % block_frames:
            raise ValueError(f"{frames} frames is not a whole number of {block_frames}-frame blocks")
        if block_frames > policy.local_budget:
            raise ValueError(f"a block of {block_frames} frames exceeds the local window of {policy.local_budget}")
        mask = block_causal_mask(frames, block_frames, policy, x.device).repeat_interleave(frame_tokens, 0)
        mask = mask.repeat_interleave(frame_tokens, 1)
        cross_k, cross_v = self.cross_kv(context)

        def rope(a: torch.Tensor) -> torch.Tensor:
            return self.rope.apply(a, start_frame, grid)

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return _sdpa(q, k.transpose(1, 2), v.transpose(1, 2), mask)

        e, e0 = self._time(t, x.shape[0], frames, x.device)
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, e0, rope, attend, (cross_k[i], cross_v[i]))
        return self._unpatchify(self.head(tokens, e), grid)


def block_causal_mask(frames: int, block_frames: int, policy: CachePolicy, device: torch.device | str = "cpu"
                      ) -> torch.Tensor:
    """Frame-level visibility [query frame, key frame] (True = attend) of the streaming cache rule."""
    q = torch.arange(frames, device=device)[:, None]
    k = torch.arange(frames, device=device)[None, :]
    end = (q // block_frames + 1) * block_frames  # one past the query's block
    sink = policy.sink_size
    local_start = torch.clamp(end - policy.local_budget, min=sink)
    return (k < end) & ((k < sink) | (k >= local_start))


# ----- checkpoints -------------------------------------------------------------------------------------
def load_wan_state_dict(
    model: CausalWanTransformer,
    source: str | Path | Mapping[str, torch.Tensor],
    *,
    key: str | None = None,
    strip_prefix: str | None = None,
    drop_key_parts: Sequence[str] = (),
) -> None:
    """Load an original-Wan-named state dict (``.safetensors``, ``.pt``/``.pth`` or a mapping) strictly.

    ``key`` selects a nested dict (e.g. ``"generator_ema"`` in a Self-Forcing ``.pt``); ``drop_key_parts``
    removes substrings wherever they occur (e.g. ``"_fsdp_wrapped_module."``, which Rolling Forcing's
    ``inference.py`` removes from its EMA weights); then ``strip_prefix`` removes a prefix (e.g.
    ``"model."``) that every key must carry. Raises ``ValueError`` listing missing, unexpected and
    mis-shaped keys."""
    name = "<state dict>"
    if isinstance(source, (str, Path)):
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"Wan checkpoint not found: {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Mapping[str, torch.Tensor] = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        state = source
    if key is not None:
        if key not in state:
            raise KeyError(f"{name} has no entry {key!r} (top-level keys: {sorted(state)[:10]})")
        state = state[key]  # type: ignore[assignment]
    for part in drop_key_parts:
        renamed = {k.replace(part, ""): v for k, v in state.items()}
        if len(renamed) != len(state):
            raise ValueError(f"{name}: removing {part!r} from the keys makes two keys equal")
        state = renamed
    if strip_prefix is not None:
        bad = [k for k in state if not k.startswith(strip_prefix)]
        if bad:
            raise ValueError(f"{name}: {len(bad)} keys lack the prefix {strip_prefix!r}, e.g. {bad[:5]}")
        state = {k[len(strip_prefix):]: v for k, v in state.items()}
    diff = compare_state(model.state_dict(), state)
    missing, unexpected = diff.missing, diff.unexpected
    mis_shaped = [f"{k}: checkpoint {got} vs model {want}" for k, got, want in diff.shapes]
    if diff:
        def show(items: Sequence[str]) -> str:
            return ", ".join(items[:20]) + (f", ... ({len(items)} in all)" if len(items) > 20 else "")

        raise ValueError(
            f"{name} does not match CausalWanTransformer({model.cfg}): "
            f"missing keys [{show(missing)}]; unexpected keys [{show(unexpected)}]; "
            f"shape mismatches [{show(mis_shaped)}]"
        )
    model.load_state_dict(state, strict=True)
    logger.info("loaded %d tensors from %s", len(state), name)


def count_parameters(cfg: WanConfig) -> int:
    """Parameter count of the architecture, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = CausalWanTransformer(cfg)
    return sum(p.numel() for p in model.parameters())
