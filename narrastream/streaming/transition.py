"""Prompt-switch policies: soft prompt transition (SPT), hard switch, and LongLive's KV re-cache.

SPT (spec §4) blends the cross-attention K/V of the old and new prompt with weight alpha(n), where n
is the number of latent frames since the switch at the start of the current block:
``None`` (transition over, new prompt alone) if n >= D + W, 0 if n < D, else g(min((n - D)/W, 1)).
The adaptive wrapper picks W from the T5 distance of the two prompts. The default (delay 3, cosine)
gives alpha = 0 for the first *two* blocks, because the ramp's first point sits at t = 0.

The pipeline applies the policies; this module only holds the arithmetic and the state counter.
"""

from __future__ import annotations

import enum
import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

CURVES: tuple[str, ...] = ("linear", "cosine", "sigmoid", "step")
SIGMOID_STEEPNESS = 6.0
FRAMES_PER_BLOCK = 3
DELAY_FRAMES = 3
WINDOW_FRAMES = 9  # fixed-window default when the adaptive wrapper is off
ADAPTIVE_MIN_WINDOW = 3
ADAPTIVE_MAX_WINDOW = 15
RECACHE_MAX_FRAMES = 12  # LongLive/IAMFlow local_attn_size: the KV cache holds 12 latent frames


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def curve_value(
    curve: str,
    t: float,
    *,
    window_frames: int,
    steepness: float = SIGMOID_STEEPNESS,
    frames_per_block: int = FRAMES_PER_BLOCK,
) -> float:
    """g(t) on [0, 1] for a ramp shape; ``window_frames`` only matters for ``step``."""
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"ramp position t={t} outside [0, 1]")
    if curve == "linear":
        return float(t)
    if curve == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * t))
    if curve == "sigmoid":
        low, high = _sigmoid(-0.5 * steepness), _sigmoid(0.5 * steepness)
        return (_sigmoid(steepness * (t - 0.5)) - low) / (high - low)
    if curve == "step":
        m = max(1, window_frames // frames_per_block)
        return (min(int(t * m), m - 1) + 1) / m
    raise ValueError(f"unknown SPT curve {curve!r}; expected one of {CURVES}")


def transition_alpha(
    frames_since_switch: int,
    *,
    window_frames: int,
    delay_frames: int = DELAY_FRAMES,
    curve: str = "cosine",
    steepness: float = SIGMOID_STEEPNESS,
    frames_per_block: int = FRAMES_PER_BLOCK,
) -> float | None:
    """alpha(n): None once n >= D + W, 0 during the delay, else g(min((n - D)/W, 1))."""
    if frames_since_switch < 0:
        raise ValueError(f"frames_since_switch must be >= 0, got {frames_since_switch}")
    if window_frames < 1 or delay_frames < 0:
        raise ValueError(f"need window_frames >= 1 and delay_frames >= 0, got {window_frames}, {delay_frames}")
    if frames_since_switch >= delay_frames + window_frames:
        return None
    if frames_since_switch < delay_frames:
        return 0.0
    t = min((frames_since_switch - delay_frames) / window_frames, 1.0)
    return curve_value(curve, t, window_frames=window_frames, steepness=steepness, frames_per_block=frames_per_block)


def adaptive_window(
    distance: float,
    *,
    min_window: int = ADAPTIVE_MIN_WINDOW,
    max_window: int = ADAPTIVE_MAX_WINDOW,
    frames_per_block: int = FRAMES_PER_BLOCK,
) -> int:
    """W = max(3, 3*floor(floor(min + (max - min)*clip(d, 0, 1)) / 3)): 3/6/9/12/15 at the defaults."""
    if math.isnan(distance):
        raise ValueError("semantic distance is NaN")
    d_hat = max(0.0, min(1.0, float(distance)))
    window = int(min_window + d_hat * (max_window - min_window))
    return max(frames_per_block, (window // frames_per_block) * frames_per_block)


def semantic_distance(t5_old: torch.Tensor, t5_new: torch.Tensor) -> float:
    """1 - cos(mean T5_old, mean T5_new); means over every axis but the last (positions, batch).

    Padded positions are zero, so the mean is the direction of the summed token embeddings.
    Computed in float32 (the released code stays in bf16).
    """
    if t5_old.ndim < 1 or t5_old.shape[-1] != t5_new.shape[-1]:
        raise ValueError(f"T5 embeddings disagree in width: {tuple(t5_old.shape)} vs {tuple(t5_new.shape)}")
    old = t5_old.float().reshape(-1, t5_old.shape[-1]).mean(dim=0)
    new = t5_new.float().reshape(-1, t5_new.shape[-1]).mean(dim=0)
    return 1.0 - float(F.cosine_similarity(old.unsqueeze(0), new.unsqueeze(0), dim=1))


@dataclass(frozen=True)
class SptConfig:
    """SPT knobs; the defaults are the released IAMFlow config (adaptive, cosine, delay 3, W in 3..15)."""

    curve: str = "cosine"
    adaptive: bool = True
    window_frames: int = WINDOW_FRAMES  # used only when adaptive is False
    min_window: int = ADAPTIVE_MIN_WINDOW
    max_window: int = ADAPTIVE_MAX_WINDOW
    delay_frames: int = DELAY_FRAMES
    steepness: float = SIGMOID_STEEPNESS
    frames_per_block: int = FRAMES_PER_BLOCK

    def __post_init__(self) -> None:
        if self.curve not in CURVES:
            raise ValueError(f"SptConfig.curve={self.curve!r}; expected one of {CURVES}")
        if not 1 <= self.min_window <= self.max_window:
            raise ValueError(f"SptConfig needs 1 <= min_window <= max_window, got {self.min_window}, {self.max_window}")
        if self.window_frames < 1 or self.delay_frames < 0 or self.frames_per_block < 1:
            raise ValueError(
                "SptConfig: invalid window/delay/block "
                f"{self.window_frames}/{self.delay_frames}/{self.frames_per_block}"
            )


def block_alphas(window_frames: int, config: SptConfig = SptConfig()) -> list[float | None]:
    """Per-block alphas after a switch, block 0 first, ending with the first None (spec §4 table)."""
    alphas: list[float | None] = []
    n = 0
    while True:
        alpha = transition_alpha(
            n,
            window_frames=window_frames,
            delay_frames=config.delay_frames,
            curve=config.curve,
            steepness=config.steepness,
            frames_per_block=config.frames_per_block,
        )
        alphas.append(alpha)
        if alpha is None:
            return alphas
        n += config.frames_per_block


@dataclass
class SoftTransition:
    """Counter of frames since the last switch; ``alpha()`` is None when no transition is active.

    Use: ``start(d)`` at a switch (before the block is denoised), ``alpha()`` for every forward of
    the block (4 denoise + context), ``advance()`` after the block. A new switch mid-transition
    restarts the ramp.
    """

    config: SptConfig = field(default_factory=SptConfig)
    frames_since_switch: int | None = None
    window_frames: int = 0

    def start(self, distance: float | None = None) -> int:
        """Begin a transition; the adaptive config needs the prompts' semantic distance. Returns W."""
        if self.config.adaptive:
            if distance is None:
                raise ValueError("adaptive SPT needs the semantic distance of the two prompts")
            self.window_frames = adaptive_window(
                distance,
                min_window=self.config.min_window,
                max_window=self.config.max_window,
                frames_per_block=self.config.frames_per_block,
            )
        else:
            self.window_frames = self.config.window_frames
        self.frames_since_switch = 0
        log.info("SPT switch: distance=%s window=%d delay=%d", distance, self.window_frames, self.config.delay_frames)
        return self.window_frames

    @property
    def active(self) -> bool:
        return self.frames_since_switch is not None

    def alpha(self) -> float | None:
        if self.frames_since_switch is None:
            return None
        return transition_alpha(
            self.frames_since_switch,
            window_frames=self.window_frames,
            delay_frames=self.config.delay_frames,
            curve=self.config.curve,
            steepness=self.config.steepness,
            frames_per_block=self.config.frames_per_block,
        )

    def advance(self, frames: int | None = None) -> None:
        """Add one block's frames (3 by default); the transition ends once n >= D + W."""
        if self.frames_since_switch is None:
            return
        self.frames_since_switch += self.config.frames_per_block if frames is None else frames
        if self.frames_since_switch >= self.config.delay_frames + self.window_frames:
            self.frames_since_switch = None
            log.debug("SPT transition complete")


class TransitionPolicy(str, enum.Enum):
    """What the pipeline does at a prompt switch.

    - SOFT: SPT; keep the self-attention KV cache, blend old/new cross-attention K/V with alpha.
    - HARD: switch immediately (alpha None); keep the self-attention cache, recompute only the
      cross-attention K/V from the new prompt (released ``no_transition``).
    - KV_RECACHE: LongLive; re-run the DiT at t = 0 over the last min(12, current_start) clean latent
      frames with the new prompt, in ONE forward in which they all see each other and the sink, to
      rewrite the local window's K/V (the sink is protected unless that range starts at frame 0;
      pointers are not advanced), resetting the cross-attention cache before and after
      (:meth:`KvRecachePolicy.rewritten_range`).
    """

    SOFT = "soft_prompt_transition"
    HARD = "hard"
    KV_RECACHE = "kv_recache"


_POLICY_ALIASES = {
    "soft_prompt_transition": TransitionPolicy.SOFT,
    "soft": TransitionPolicy.SOFT,
    "spt": TransitionPolicy.SOFT,
    "hard": TransitionPolicy.HARD,
    "no_transition": TransitionPolicy.HARD,
    "none": TransitionPolicy.HARD,
    "kv_recache": TransitionPolicy.KV_RECACHE,
    "recache": TransitionPolicy.KV_RECACHE,
}


def parse_transition_policy(name: str) -> TransitionPolicy:
    """Accept the released strategy names and their aliases (soft/spt, no_transition/none, recache)."""
    key = str(name).strip().lower()
    if key not in _POLICY_ALIASES:
        raise ValueError(f"unknown transition policy {name!r}; expected one of {sorted(_POLICY_ALIASES)}")
    return _POLICY_ALIASES[key]


RECACHE_MODES: tuple[str, ...] = ("one_forward", "per_block")


@dataclass(frozen=True)
class KvRecachePolicy:
    """Frames-to-recache arithmetic of LongLive's switch. ``max_frames=None`` means global attention.

    Facts of the release (NVlabs/LongLive ``InteractiveCausalInferencePipeline._recache_after_switch``
    and ``CausalWanSelfAttention``, ``global_sink: true``, ``context_noise: 0``): the clean latents of
    :meth:`recache_range` go through the DiT in one forward at t = 0 under the new prompt, whose
    cross-attention cache is reset before and after. The KV-cached attention has no mask, so each of
    these frames attends to the stored sink and to the new K/V of every rewritten frame, later ones
    included. The forward counts as a recompute (the sink is protected: its first ``sink_size`` frames
    are queries whose K/V are dropped) only when the range does not start at frame 0; from frame 0
    every frame, the sink included, is rewritten. :meth:`rewritten_range` gives the frames written.
    """

    max_frames: int | None = RECACHE_MAX_FRAMES
    global_sink: bool = True  # keep (do not zero) the cache before the recompute, so the sink survives

    def frames_to_recache(self, current_start: int) -> int:
        """min(max_frames, current_start); 0 at the very start (nothing to recache)."""
        if current_start < 0:
            raise ValueError(f"current_start must be >= 0, got {current_start}")
        return current_start if self.max_frames is None else min(self.max_frames, current_start)

    def recache_range(self, current_start: int) -> tuple[int, int]:
        """Latent frame range [start, end) of clean frames to re-run at t = 0."""
        return current_start - self.frames_to_recache(current_start), current_start

    def rewritten_range(self, current_start: int, sink_size: int) -> tuple[int, int]:
        """Frames [start, end) whose K/V the one-forward re-cache rewrites: the whole range when it starts
        at frame 0 (sink included), else the range less its first ``sink_size`` frames (sink protected).

        The dropped frames are queries only (no frame attends to their new K/V), so running the
        rewritten frames alone gives the same K/V: [27, 39) at a switch at 39 rewrites [30, 39)."""
        start, end = self.recache_range(current_start)
        return (start, end) if start == 0 else (min(start + sink_size, end), end)


@dataclass(frozen=True)
class SwitchPolicy:
    """The whole prompt-switch configuration the pipeline reads."""

    kind: TransitionPolicy = TransitionPolicy.SOFT
    spt: SptConfig = field(default_factory=SptConfig)
    recache: KvRecachePolicy = field(default_factory=KvRecachePolicy)

    def new_transition(self) -> SoftTransition | None:
        """A fresh SPT state for SOFT, None for the other policies (their alpha is always None)."""
        return SoftTransition(self.spt) if self.kind is TransitionPolicy.SOFT else None
