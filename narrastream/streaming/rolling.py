"""Rolling Forcing: rolling-window joint denoising with an attention sink (Liu et al., arXiv 2509.25161;
the release ``TencentARC/RollingForcing`` at ``a1477d0``, ``pipeline/rolling_forcing_inference.py`` and
``wan/modules/causal_model.py``; docs/streaming.md).

**Schedule.** With S denoising steps (5: [1000, 800, 600, 400, 200], warped) a window holds up to W = S
blocks. Window w (0 <= w < blocks + W - 1) covers blocks ``max(0, w - W + 1) .. min(blocks - 1, w)``, and
block b in window w is at step ``w - b``: the newest block enters as fresh noise at the noisiest step, the
oldest leaves at the cleanest. ONE DiT forward denoises the whole window (per-frame timesteps, the
window's frames attending to each other without a mask); each block's x0 estimate is re-noised with fresh
noise to its next step, and the block that has just taken its last step is final: a context pass at
t = 0 commits its K/V, and it is decoded.

**Attention** (:class:`RollingAnchorCache`). The sink (*anchor*) is the first block. A window starting
at frame s attends to the anchor, re-placed in RoPE time right before the *working cache*, which is the
committed frames just before the window (at most ``local_attn_size - window - anchor`` frames: one block
for a full window), and to itself; windows starting at frame 0 attend only to themselves. A context pass
of a block ending at frame e attends to the committed frames in [e - ``local_attn_size``, e) at their own
positions (the anchor only while it is among them) and to itself. The cache stores the anchor and the
last ``cache_frames - anchor`` frames (24 - 3: the release's buffer), evicting first in, first out.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from narrastream.streaming.kv_cache import CachePolicy, SelfAttentionKVCache
from narrastream.streaming.sampler import CONTEXT_TIMESTEP, add_noise, draw_noise, sigma_of_timestep
from narrastream.streaming.switches import SwitchPlan, pixel_start_frames, plan_switches
from narrastream.streaming.vae import to_uint8_frames

logger = logging.getLogger(__name__)

WINDOW_PROMPTS = ("newest", "oldest")


@dataclass(frozen=True)
class RollingAnchorPolicy:
    """The release's attention geometry, in latent frames: 21 attended (``max_attention_size``), a buffer of
    24 (``kv_cache_size``), the anchor = the first block (``sink_tokens = 1 * block_length``)."""

    local_attn_size: int = 21
    cache_frames: int = 24
    anchor_frames: int = 3  # set to the block size by StreamingSpec
    kind: str = "rolling_anchor"
    sma: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.anchor_frames < self.cache_frames:
            raise ValueError(f"anchor of {self.anchor_frames} frames must be in (0, cache_frames={self.cache_frames})")
        if self.local_attn_size > self.cache_frames - self.anchor_frames:
            kept = self.cache_frames - self.anchor_frames
            raise ValueError(f"cache.local_attn_size={self.local_attn_size}: a context pass attends up to that many "
                             f"committed frames, more than the {kept} the cache keeps besides the anchor")
        if self.local_attn_size % self.anchor_frames:
            raise ValueError(f"cache.local_attn_size={self.local_attn_size} must be a multiple of the block "
                             f"({self.anchor_frames} frames), so a context pass never takes part of the anchor")

    @property
    def local_budget(self) -> int:
        return self.local_attn_size - self.anchor_frames

    def check_window(self, window_frames: int) -> None:
        """A full window, the anchor and at least nothing else must fit in the attention."""
        if window_frames + self.anchor_frames > self.local_attn_size:
            raise ValueError(f"a window of {window_frames} frames and the anchor of {self.anchor_frames} exceed "
                             f"cache.local_attn_size={self.local_attn_size}")

    def make_cache(self, *, rope: Any, **args: Any) -> "RollingAnchorCache":
        return RollingAnchorCache(self, rope=rope, **args)


class RollingAnchorCache(SelfAttentionKVCache):
    """The anchor in the sink region, the other frames in the ring (FIFO), keys after RoPE at their own
    positions; the anchor is moved in time (a copy) when a window attends to it."""

    def __init__(self, rolling: RollingAnchorPolicy, *, rope: Any, **args: Any) -> None:
        super().__init__(CachePolicy.sink(local_attn_size=rolling.cache_frames, sink_size=rolling.anchor_frames,
                                          sma=False), **args)
        self.rolling = rolling
        self.rope = rope
        self._forward: tuple[int, int, bool] | None = None
        self.anchor_shifts: list[int] = []  # time shift of the anchor per window forward (layer 0), for tests

    def reset(self) -> None:
        super().reset()
        self._forward = None
        self.anchor_shifts = []

    def begin_forward(self, start_frame: int, num_frames: int, commit: bool) -> None:
        if self.end_frame is not None and start_frame != self.end_frame:
            raise ValueError(f"window starts at latent frame {start_frame} but the cache ends at frame "
                             f"{self.end_frame}; windows start where the committed stream ends")
        if commit:
            self.check_block(start_frame, num_frames)
        else:
            self.rolling.check_window(num_frames)
        self._forward = (start_frame, num_frames, commit)

    def _range(self, buf_ring: torch.Tensor, first: int, end: int) -> torch.Tensor:
        """Stored ring frames [first, end) (absolute), oldest first."""
        assert self.end_frame is not None
        ring_first = self.end_frame - self.ring_count
        if first < ring_first or end > self.end_frame:
            raise RuntimeError(f"frames [{first}, {end}) are not in the cache (ring holds [{ring_first}, "
                               f"{self.end_frame}))")
        return self._ring_read(buf_ring, first - ring_first, end - first)

    def attended_frames(self) -> tuple[int, list[int]]:
        """(anchor time shift, committed frames attended besides the anchor) for the current forward."""
        assert self._forward is not None
        start, frames, commit = self._forward
        if self.end_frame is None:
            return 0, []
        anchor = self.rolling.anchor_frames
        if commit:
            low = start + frames - self.rolling.local_attn_size
            return 0, list(range(max(low, anchor), start))
        low = max(anchor, start - (self.rolling.local_attn_size - frames - anchor))
        return low - anchor - self.first_frame, list(range(low, start))  # type: ignore[operator]

    def attention_kv(self, layer: int, k_cur: torch.Tensor, v_cur: torch.Tensor, q: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._forward is None:
            raise RuntimeError("begin_forward() must be called before attention_kv()")
        start, frames, commit = self._forward
        if self.end_frame is None:  # windows at frame 0 and the first block's context pass: no cache
            return k_cur[:, :0], v_cur[:, :0], k_cur, v_cur
        shift, others = self.attended_frames()
        t = self.frame_tokens
        anchor_k = self.k_sink[layer][:, :self.sink_count * t]
        anchor_v = self.v_sink[layer][:, :self.sink_count * t]
        if commit:
            if start + frames - self.rolling.local_attn_size > self.first_frame:  # type: ignore[operator]
                anchor_k, anchor_v = anchor_k[:, :0], anchor_v[:, :0]  # out of the context pass's reach
        else:
            anchor_k = self.rope.shift_time(anchor_k, shift)
            if layer == 0:
                self.anchor_shifts.append(shift)
        if others:
            local_k = torch.cat([self._range(self.k_ring[layer], others[0], others[-1] + 1),
                                 k_cur], dim=1)
            local_v = torch.cat([self._range(self.v_ring[layer], others[0], others[-1] + 1),
                                 v_cur], dim=1)
        else:
            local_k, local_v = k_cur, v_cur
        return anchor_k, anchor_v, local_k, local_v


# ----- the schedule ---------------------------------------------------------------------------------------
def rolling_windows(num_blocks: int, window_blocks: int) -> list[tuple[int, int]]:
    """(first block, last block) of each window: ``num_blocks + window_blocks - 1`` windows."""
    if num_blocks < 1 or window_blocks < 1:
        raise ValueError(f"need >= 1 block and window, got {num_blocks} and {window_blocks}")
    return [(max(0, w - window_blocks + 1), min(num_blocks - 1, w)) for w in range(num_blocks + window_blocks - 1)]


def block_step(window: int, block: int) -> int:
    """Denoising step index of ``block`` in ``window`` (0: noisiest, S-1: the last)."""
    return window - block


def window_prompt(plan: SwitchPlan, first_block: int, last_block: int, rule: str) -> int:
    """The prompt one window is conditioned on: its newest block's (``newest``) or oldest block's."""
    if rule not in WINDOW_PROMPTS:
        raise ValueError(f"schedule.window_prompt={rule!r}: expected one of {', '.join(WINDOW_PROMPTS)}")
    return plan.prompt_for_block(last_block if rule == "newest" else first_block)


def effective_plan(plan: SwitchPlan, rule: str, window_blocks: int) -> tuple[SwitchPlan, list[list[int]]]:
    """The switch plan as the video shows it, and the latent ranges denoised under both prompts.

    ``newest``: a new prompt conditions every step of its first block, and the later steps of the previous
    segment's last W-1 blocks. ``oldest``: it conditions every step of a block only W-1 blocks after the
    switch, so the reported switch moves there; segments must be longer than that."""
    lag = (window_blocks - 1) * plan.block
    mixed: list[list[int]] = []
    for switch in plan.switches:
        mixed.append([max(0, switch - lag), switch] if rule == "newest" else [switch, min(switch + lag,
                                                                                           plan.num_latent_frames)])
    if rule == "newest" or not plan.switches:
        return plan, mixed
    shorts = [length for length in plan.segment_latent_lengths if length <= lag]
    if shorts:
        raise ValueError(f"schedule.window_prompt=oldest needs segments longer than {lag} latent frames "
                         f"(the window's lag); got {list(plan.segment_latent_lengths)}")
    switches = tuple(s + lag for s in plan.switches)
    return dataclasses.replace(plan, switches=switches, pixel_starts=tuple(pixel_start_frames(switches))), mixed


def generate_rolling(pipe: Any, prompts: Sequence[str], *, seed: int, seconds_per_segment: float, fps: float,
                     height: int, width: int) -> Any:
    """One video with Rolling Forcing's schedule (``StreamingWanPipeline`` with ``schedule='rolling_window'``
    calls this); the same timing boundaries as the block loop."""
    from narrastream.streaming.pipeline import StreamResult, _Clock, stream_timings

    spec, dit, device = pipe.spec, pipe.dit, pipe.device
    clock = _Clock(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    plan = plan_switches(len(prompts), seconds_per_segment, fps, block=spec.block_frames)
    if height % 16 or width % 16:
        raise ValueError(f"{width}x{height}: width and height must be multiples of 16 (VAE stride 8, patch 2)")
    steps = pipe.timesteps
    window_blocks, block = len(steps), spec.block_frames
    shown, mixed = effective_plan(plan, spec.window_prompt, window_blocks)
    lat_h, lat_w = height // 8, width // 8
    sigmas = [sigma_of_timestep(t) for t in steps]
    forwards = 0
    with clock.section("total"):
        with clock.section("text_encode"):
            contexts = pipe.text_encoder.encode(list(prompts)).to(device)
        cache = dit.new_cache(1, lat_h, lat_w, spec.cache)
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        pipe.decoder.reset()
        noisy: dict[int, torch.Tensor] = {}  # block -> its input at its next step
        pixels: list[torch.Tensor] = []
        prompt = -1
        for w, (first, last) in enumerate(rolling_windows(plan.num_blocks, window_blocks)):
            final = None
            with clock.section("loop"):
                wanted = window_prompt(plan, first, last, spec.window_prompt)
                if wanted != prompt:
                    with clock.section("switch"):
                        cache.cross_attn.reset()  # hard: the next forward computes the new prompt's K/V
                    logger.debug("window %d (blocks %d..%d): prompt %d", w, first, last, wanted)
                    prompt = wanted
                context = contexts[prompt:prompt + 1]
                inputs, times = [], []
                for b in range(first, last + 1):
                    step = block_step(w, b)
                    if step == 0:
                        inputs.append(draw_noise((1, dit.cfg.in_dim, block, lat_h, lat_w), generator, device=device))
                    else:
                        inputs.append(noisy.pop(b))
                    times += [steps[step]] * block
                x_t = torch.cat(inputs, dim=2)
                t = torch.tensor([times], dtype=torch.float32, device=device)
                with clock.section("dit"):
                    flow = dit(x_t, t, context, start_frame=first * block, cache=cache)
                forwards += 1
                for j, b in enumerate(range(first, last + 1)):
                    step = block_step(w, b)
                    part = slice(j * block, (j + 1) * block)
                    x0 = (x_t[:, :, part].double() - sigmas[step] * flow[:, :, part].double()).to(x_t.dtype)
                    if step == window_blocks - 1:
                        final = x0
                    else:
                        noise = draw_noise(x0.shape, generator, dtype=x0.dtype, device=x0.device)
                        noisy[b] = add_noise(x0, noise, sigmas[step + 1])
                if final is not None:  # the oldest block took its last step: commit its clean K/V
                    with clock.section("dit"):
                        dit(final, CONTEXT_TIMESTEP, context, start_frame=first * block, cache=cache, commit=True)
                    forwards += 1
            if final is not None:
                with clock.section("decode"):
                    pixels.append(pipe.decoder.decode_chunk(final).float().cpu())
    video = to_uint8_frames(torch.cat(pixels, dim=2)).numpy()
    timings, peak = stream_timings(clock, len(video), device)
    details = {"prompt_distances": [], "dit_forwards": forwards, "num_blocks": plan.num_blocks,
               "residual_dtype": str(dit.residual_dtype).removeprefix("torch."),
               "rolling": {"window_blocks": window_blocks, "windows": plan.num_blocks + window_blocks - 1,
                           "window_prompt": spec.window_prompt, "mixed_latent_ranges": mixed,
                           "requested_switch_latent_frames": list(plan.switches)},
               **cache.self_attn.summary()}
    return StreamResult(frames=np.asarray(video), plan=shown, timings=timings, peak_memory_bytes=peak,
                        details=details)
