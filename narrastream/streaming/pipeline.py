"""The streaming generator: one causal Wan2.1 backbone, the method's policies as configuration.

Per block of ``block_frames`` latent frames (``switches.plan_switches`` says which prompt owns it):

1. at a prompt switch, the transition policy acts: ``hard`` drops the old prompt's cross-attention
   K/V; ``soft`` (IAMFlow's SPT) keeps them and blends old and new with the adaptive alpha ramp of
   :mod:`~narrastream.streaming.transition`; ``kv_recache`` (LongLive) drops them and commits the
   local window's clean latents again under the new prompt: ``recache="one_forward"`` (the release)
   in one forward in which the window's frames see each other, ``"per_block"`` block by block
   (:meth:`StreamingWanPipeline._recache`); then the memory policy sees the new prompt;
2. four denoising forwards (few-step flow matching, fresh seeded noise between steps) give the clean
   block; a fifth forward at t = 0 commits its K/V to the cache (the context pass);
3. the VAE decodes the block at once (streaming decode, causal caches carried), so 240 latent frames
   give 957 pixel frames without a second decode; then the memory policy sees the committed block and
   its pixels (IAMFlow's visual verifier scores them).

Timings follow the released profiler's "comparable metrics": end to end, the loop without output
decode, core DiT (denoise + context forwards), method overhead (loop - core DiT: switches, re-cache,
memory), output decode; CUDA is synchronised at each boundary when the model is on a GPU.

Deep Forcing runs this loop with its own self-attention cache (``cache.policy: deep_sink``,
:mod:`~narrastream.streaming.deep_sink`); Rolling Forcing replaces the loop by its rolling window
(``schedule: rolling_window``, :func:`narrastream.streaming.rolling.generate_rolling`), with the same timing
boundaries.
"""

from __future__ import annotations

import logging
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from narrastream.streaming.deep_sink import DeepSinkPolicy
from narrastream.streaming.kv_cache import CachePolicy
from narrastream.streaming.memory import COMPRESS_MODES, MemoryAgent, StreamState, build_memory
from narrastream.streaming.rolling import WINDOW_PROMPTS, RollingAnchorPolicy
from narrastream.streaming.sampler import CONTEXT_TIMESTEP, FewStepSampler, draw_noise, warp_denoising_steps
from narrastream.streaming.switches import SwitchPlan, plan_switches
from narrastream.streaming.transition import (
    RECACHE_MODES,
    KvRecachePolicy,
    SoftTransition,
    SptConfig,
    semantic_distance,
)
from narrastream.streaming.vae import to_uint8_frames
from narrastream.streaming.wan_model import CausalWanTransformer

log = logging.getLogger(__name__)
TRANSITIONS = ("hard", "soft", "kv_recache")
SCHEDULES = ("block", "rolling_window")
CACHE_POLICIES = ("sink", "rolling", "deep_sink", "rolling_anchor")
AnyCachePolicy = CachePolicy | DeepSinkPolicy | RollingAnchorPolicy


@dataclass(frozen=True)
class StreamingSpec:
    """What distinguishes Self-Forcing, LongLive, MemFlow, the IAMFlow backbone, Deep Forcing and Rolling
    Forcing: the self-attention cache, the prompt transition, the memory, the denoising schedule."""

    cache: AnyCachePolicy = field(default_factory=CachePolicy)
    transition: str = "soft"
    recache: str = "one_forward"  # kv_recache only: the release's one forward, or ours block by block
    spt: SptConfig = field(default_factory=SptConfig)
    memory: str = "none"
    bank_size: int = 0
    record_interval: int = 3
    memory_compress: str = "every_forward"  # narrative: the release's schedule, or per_frame (ours)
    block_frames: int = 3
    denoising_steps: tuple[int, ...] = (1000, 750, 500, 250)
    schedule: str = "block"  # block: a block's steps, then its context pass; rolling_window: Rolling Forcing
    window_prompt: str = "newest"  # rolling_window: which block's prompt conditions a window

    def __post_init__(self) -> None:
        if self.transition not in TRANSITIONS:
            raise ValueError(f"transition policy {self.transition!r}: expected one of {', '.join(TRANSITIONS)}")
        if self.recache not in RECACHE_MODES:
            raise ValueError(f"transition.recache={self.recache!r}: expected one of {', '.join(RECACHE_MODES)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule.policy={self.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if self.memory_compress not in COMPRESS_MODES:
            raise ValueError(f"memory.compress={self.memory_compress!r}: expected one of {', '.join(COMPRESS_MODES)}")
        if self.window_prompt not in WINDOW_PROMPTS:
            raise ValueError(f"schedule.window_prompt={self.window_prompt!r}: expected one of "
                             f"{', '.join(WINDOW_PROMPTS)}")
        special = not isinstance(self.cache, CachePolicy)
        if special and self.memory != "none":
            raise ValueError(f"cache.policy={self.cache.kind} has no memory bank: memory.policy must be none")
        if special and self.transition == "kv_recache":
            raise ValueError(f"cache.policy={self.cache.kind}: the KV re-cache rewrites a contiguous local window, "
                             "which this cache does not keep; use transition.policy hard or soft")
        if isinstance(self.cache, DeepSinkPolicy):
            self.cache.check_block_frames(self.block_frames)
        if (self.schedule == "rolling_window") != isinstance(self.cache, RollingAnchorPolicy):
            raise ValueError("schedule.policy=rolling_window and cache.policy=rolling_anchor go together "
                             "(Rolling Forcing's window attends through its anchor cache)")
        if self.schedule == "rolling_window":
            if self.transition != "hard":
                raise ValueError("Rolling Forcing's window is conditioned on one prompt per forward: "
                                 "transition.policy must be hard")
            if self.cache.anchor_frames != self.block_frames:
                raise ValueError(f"the anchor is the first block: cache.anchor_frames={self.cache.anchor_frames} "
                                 f"!= block_frames={self.block_frames}")
            self.cache.check_window(len(self.denoising_steps) * self.block_frames)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "StreamingSpec":
        """From the ``model.params`` of ``eval_configs/model/*.yaml`` (cache / transition / memory /
        schedule groups)."""
        cache = dict(cfg.get("cache") or {})
        kind = cache.pop("policy", "sink")
        block_frames = int(cfg.get("block_frames", 3))
        if kind not in CACHE_POLICIES:
            raise ValueError(f"cache.policy={kind!r}: expected one of {', '.join(CACHE_POLICIES)}")
        policy: AnyCachePolicy
        if kind == "rolling":
            policy = CachePolicy.rolling(**{k: v for k, v in cache.items() if k != "sink_size"})
        elif kind == "deep_sink":
            policy = DeepSinkPolicy(**cache)
        elif kind == "rolling_anchor":
            policy = RollingAnchorPolicy(anchor_frames=block_frames, **cache)
        else:
            policy = CachePolicy.sink(**cache)
        transition = dict(cfg.get("transition") or {})
        memory = dict(cfg.get("memory") or {})
        schedule = dict(cfg.get("schedule") or {})
        unknown = set(schedule) - {"policy", "window_prompt"}
        if unknown:
            raise ValueError(f"schedule: unknown keys {sorted(unknown)} (expected policy, window_prompt)")
        spt = {k: v for k, v in transition.items() if k not in ("policy", "recache")}
        spt.setdefault("frames_per_block", block_frames)
        return cls(cache=policy, transition=str(transition.get("policy", "soft")),
                   recache=str(transition.get("recache", "one_forward")), spt=SptConfig(**spt),
                   memory=str(memory.get("policy", "none")), bank_size=int(memory.get("bank_size", 0)),
                   record_interval=int(memory.get("record_interval", 3)),
                   memory_compress=str(memory.get("compress", "every_forward")),
                   block_frames=block_frames,
                   denoising_steps=tuple(int(s) for s in cfg.get("denoising_steps", (1000, 750, 500, 250))),
                   schedule=str(schedule.get("policy", "block")),
                   window_prompt=str(schedule.get("window_prompt", "newest")))


@dataclass
class StreamResult:
    frames: np.ndarray  # (T, H, W, 3) uint8
    plan: SwitchPlan
    timings: dict[str, float]
    peak_memory_bytes: int
    details: dict[str, Any]


class _Clock:
    """Wall-clock sections, synchronising CUDA so GPU work is attributed where it ran."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.totals: dict[str, float] = {}

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        if self.cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - started


class StreamingWanPipeline:
    """Generate one narrative video: ``text_encoder(prompts) -> [N, L, text_dim]``, the DiT, the
    streaming VAE decoder, and a :class:`StreamingSpec`."""

    def __init__(self, dit: CausalWanTransformer, text_encoder: Any, decoder: Any, spec: StreamingSpec,
                 *, memory_agent: MemoryAgent | None = None) -> None:
        self.dit = dit.eval()
        self.text_encoder = text_encoder
        self.decoder = decoder
        self.spec = spec
        self.memory_agent = memory_agent
        self.timesteps = warp_denoising_steps(spec.denoising_steps)

    @property
    def device(self) -> torch.device:
        return self.dit.patch_embedding.weight.device

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], *, seed: int, seconds_per_segment: float, fps: float,
                 height: int, width: int, memory_agent: MemoryAgent | None = None) -> StreamResult:
        """One video; ``memory_agent`` (per video, e.g. IAMFlow's agent for this script) overrides the
        pipeline's agent for the ``identity`` memory policy."""
        if self.spec.schedule == "rolling_window":
            from narrastream.streaming.rolling import generate_rolling

            return generate_rolling(self, prompts, seed=seed, seconds_per_segment=seconds_per_segment, fps=fps,
                                    height=height, width=width)
        spec, dit, device = self.spec, self.dit, self.device
        clock = _Clock(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        plan = plan_switches(len(prompts), seconds_per_segment, fps, block=spec.block_frames)
        if height % 16 or width % 16:
            raise ValueError(f"{width}x{height}: width and height must be multiples of 16 (VAE stride 8, patch 2)")
        lat_h, lat_w = height // 8, width // 8
        with clock.section("total"):
            with clock.section("text_encode"):
                contexts = self.text_encoder.encode(list(prompts)).to(device)
            cache = dit.new_cache(1, lat_h, lat_w, spec.cache)
            memory = build_memory(spec.memory, bank_size=spec.bank_size, record_interval=spec.record_interval,
                                  compress=spec.memory_compress, agent=memory_agent or self.memory_agent)
            bank = dit.new_memory_bank(memory.bank_size, 1, lat_h, lat_w) if memory.bank_size else None
            state = StreamState(cache=cache, bank=bank, prompts=list(prompts), transition=spec.transition)
            generator = torch.Generator(device="cpu").manual_seed(int(seed))
            sampler = FewStepSampler(generator, self.timesteps)
            self.decoder.reset()
            latents = torch.zeros(1, dit.cfg.in_dim, plan.num_latent_frames, lat_h, lat_w, device=device)
            pixels: list[torch.Tensor] = []
            transition: SoftTransition | None = None
            distances: list[float] = []
            prompt = -1

            def refresh_bank() -> None:  # where MemFlow's release updates its bank (NarrativeMemory)
                with clock.section("memory"):
                    _hook(memory, "refresh_bank", state)

            for block in range(plan.num_blocks):
                start = block * spec.block_frames
                frames = min(spec.block_frames, plan.num_latent_frames - start)
                with clock.section("loop"):
                    if plan.prompt_for_block(block) != prompt:
                        previous, prompt = prompt, plan.prompt_for_block(block)
                        with clock.section("switch"):
                            if previous >= 0:
                                with clock.section("memory"):
                                    _hook(memory, "before_switch", state)
                                transition = self._switch(cache, bank, contexts, previous, prompt, start, latents,
                                                          distances, clock, refresh_bank)
                            state.prompt_index = prompt
                            memory.on_prompt_start(state)
                    context = contexts[prompt:prompt + 1]
                    alpha = transition.alpha() if transition is not None and transition.active else None

                    def denoise(x_t: torch.Tensor, t: float) -> torch.Tensor:
                        with clock.section("dit"):
                            return dit(x_t, t, context, start_frame=start, cache=cache, bank=bank,
                                       transition_alpha=alpha)

                    refresh_bank()  # before the block's first denoising forward
                    noise = draw_noise((1, dit.cfg.in_dim, frames, lat_h, lat_w), generator, device=device)
                    x0 = sampler.sample(noise, denoise)
                    with clock.section("dit"):
                        dit(x0, CONTEXT_TIMESTEP, context, start_frame=start, cache=cache, bank=bank,
                            transition_alpha=alpha, commit=True)
                    latents[:, :, start:start + frames] = x0
                with clock.section("decode"):
                    pixels.append(self.decoder.decode_chunk(x0).float().cpu())
                with clock.section("loop"):
                    state.block_pixels = pixels[-1]
                    with clock.section("memory"):
                        memory.after_commit(block, start, frames, state)
                    if transition is not None:
                        transition.advance(frames)
                        if not transition.active:
                            cache.cross_attn.end_transition()
                            transition = None
            with clock.section("loop"), clock.section("memory"):
                _hook(memory, "on_video_end", state)
        video = to_uint8_frames(torch.cat(pixels, dim=2)).numpy()
        timings, peak = stream_timings(clock, len(video), device)
        details = {"prompt_distances": distances, "dit_forwards": plan.num_blocks * (len(self.timesteps) + 1),
                   "num_blocks": plan.num_blocks,
                   "residual_dtype": str(dit.residual_dtype).removeprefix("torch."), **cache.self_attn.summary()}
        if spec.transition == "kv_recache":
            details["recache"] = spec.recache
        if hasattr(memory, "summary"):
            details.update(memory.summary())
        return StreamResult(frames=video, plan=plan, timings=timings, peak_memory_bytes=peak, details=details)

    def _switch(self, cache: Any, bank: Any, contexts: torch.Tensor, previous: int, prompt: int, start: int,
                latents: torch.Tensor, distances: list[float], clock: _Clock,
                refresh_bank: Callable[[], None] | None = None) -> SoftTransition | None:
        spec = self.spec
        if spec.transition == "hard":
            cache.cross_attn.reset()
            return None
        if spec.transition == "soft":
            distance = semantic_distance(contexts[previous], contexts[prompt])
            distances.append(distance)
            cache.cross_attn.begin_transition()
            transition = SoftTransition(spec.spt)
            transition.start(distance)
            return transition
        # the release resets the cross-attention cache before and after the re-cache (zeroing its keys), and
        # updates its memory bank right before the re-cache forward, scoring it with those zero keys
        cache.cross_attn.reset()
        if refresh_bank is not None and cache.self_attn.first_frame is not None:
            refresh_bank()
        with clock.section("recache"), clock.section("dit"):
            self._recache(cache, bank, latents, contexts[prompt:prompt + 1], start)
        cache.cross_attn.reset()
        return None

    def _recache(self, cache: Any, bank: Any, latents: torch.Tensor, context: torch.Tensor, start: int) -> None:
        """LongLive's KV re-cache at a switch at latent frame ``start``: the cached frames' clean latents
        are committed again at t = 0 under the new prompt (``context``); the caller resets the
        cross-attention cache first.

        ``one_forward`` (the release, :meth:`KvRecachePolicy.recache_range` / ``rewritten_range``): the
        release's ``min(local_attn_size, s)`` frames go through ONE forward, the rewritten ones seeing the
        stored sink and all of them, later frames included; when the stream still fits in the window
        (``start <= local_attn_size``) that is every frame, the sink included. Otherwise the first
        ``sink_size`` frames are queries only (their K/V are neither attended nor written, the sink being
        protected); they count in SMA's mean query, as in the release. ``per_block``: the local frames are
        rewound and committed again block by block, each block seeing the blocks before it, as when first
        generated; the sink is kept.
        """
        kv = cache.self_attn
        if kv.first_frame is None:
            return
        if self.spec.recache == "per_block":
            local = kv.local_frames()
            if local:
                kv.rewind(local[0])
                for first in range(local[0], start, self.spec.block_frames):
                    count = min(self.spec.block_frames, start - first)
                    self.dit(latents[:, :, first:first + count], CONTEXT_TIMESTEP, context, start_frame=first,
                             cache=cache, bank=bank, commit=True)
            return
        policy = kv.policy
        first_frame = kv.first_frame
        recache = KvRecachePolicy(max_frames=policy.local_attn_size)
        first = first_frame + recache.rewritten_range(start - first_frame, policy.sink_size)[0]
        run_from = first_frame + recache.recache_range(start - first_frame)[0]
        if first == first_frame:  # the whole stream fits in the window: the sink is rewritten too
            kv.reset()
        else:
            if first != kv.local_frames()[0] or kv.sink_count != policy.sink_size:
                raise RuntimeError(f"re-cache at frame {start}: the cache holds {kv.stored_frames()}, not the sink "
                                   f"and the frames [{first}, {start}) the release rewrites")
            kv.rewind(first)
        self.dit(latents[:, :, run_from:start], CONTEXT_TIMESTEP, context, start_frame=run_from, cache=cache,
                 bank=bank, commit=True, query_frames=first - run_from)


def stream_timings(clock: _Clock, num_frames: int, device: torch.device) -> tuple[dict[str, float], int]:
    """The profiler's comparable timings from the clock's sections, and the peak memory in bytes."""
    t = clock.totals
    timings = {
        "end_to_end": t["total"], "text_encode": t.get("text_encode", 0.0), "loop": t.get("loop", 0.0),
        "core_dit": t.get("dit", 0.0) - t.get("recache", 0.0), "switch": t.get("switch", 0.0),
        "memory": t.get("memory", 0.0), "output_decode": t.get("decode", 0.0),
    }
    timings["method_overhead"] = timings["loop"] - timings["core_dit"]
    timings["pixel_fps"] = num_frames / t["total"] if t["total"] else 0.0
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return timings, int(peak)


def _hook(memory: Any, name: str, state: StreamState) -> None:
    """Call an optional memory-agent hook (``before_switch``, ``on_video_end``)."""
    hook = getattr(memory, name, None)
    if hook is not None:
        hook(state)
