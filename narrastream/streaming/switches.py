"""Seconds -> latent frames -> blocks -> pixel frames, and where each prompt really starts (spec §1.2).

Conventions of the released code:
- Every internal index is a *latent* frame. The Wan VAE has temporal stride 4 and decodes T latent
  frames to 1 + 4(T - 1) pixel frames: latent 0 is pixel 0, latent f >= 1 covers pixels 4f-3 .. 4f.
- The frame budget is pixels/4: 60 s at 16 fps = 960 pixel frames -> 240 latent frames (the config
  fixes 240) -> 80 blocks of 3 -> 957 pixel frames (59.8 s), 3 short of 960.
- A requested switch (i * 10 s * 16 fps / 4 = 40, 80, ...) is floored to a block multiple
  (39, 78, 120, 159, 198), since a prompt can only change at a block start.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

VAE_TEMPORAL_STRIDE = 4
FRAMES_PER_BLOCK = 3
FPS = 16


def _pixel_count(seconds: float, fps: float) -> int:
    pixels = seconds * fps
    if seconds < 0 or fps <= 0 or abs(pixels - round(pixels)) > 1e-6:
        raise ValueError(f"{seconds} s at {fps} fps is not a whole, non-negative number of pixel frames")
    return int(round(pixels))


def latent_frames_for(
    seconds_total: float, fps: float = FPS, *, stride: int = VAE_TEMPORAL_STRIDE, block: int = FRAMES_PER_BLOCK
) -> int:
    """Latent frames for a duration: floor(seconds*fps / stride), floored to a block multiple.

    60 s @ 16 fps -> 960 // 4 = 240 (already a multiple of 3), the released ``num_output_frames``.
    """
    latent = _pixel_count(seconds_total, fps) // stride
    aligned = (latent // block) * block
    if aligned < block:
        raise ValueError(f"{seconds_total} s at {fps} fps gives {latent} latent frames, less than one block of {block}")
    if aligned != latent:
        log.warning("latent frame count %d floored to %d (a multiple of the block size %d)", latent, aligned, block)
    return aligned


def align_to_blocks(indices: Sequence[int], block: int = FRAMES_PER_BLOCK) -> list[int]:
    """Floor each latent index to a block multiple, as the released ``_align_switch_indices`` does."""
    if block < 1:
        raise ValueError(f"block size must be >= 1, got {block}")
    aligned = [(int(i) // block) * block for i in indices]
    if aligned != [int(i) for i in indices]:
        log.warning("switch indices %s floored to block multiples %s", list(indices), aligned)
    return aligned


def requested_switch_indices(
    num_prompts: int, seconds_per_segment: float, fps: float = FPS, *, stride: int = VAE_TEMPORAL_STRIDE
) -> list[int]:
    """Latent index where prompt i (i >= 1) is asked to start: floor(i * seconds * fps / stride)."""
    if num_prompts < 1:
        raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
    return [_pixel_count(i * seconds_per_segment, fps) // stride for i in range(1, num_prompts)]


def switch_latent_indices(
    num_prompts: int,
    seconds_per_segment: float,
    fps: float = FPS,
    block: int = FRAMES_PER_BLOCK,
    *,
    stride: int = VAE_TEMPORAL_STRIDE,
) -> list[int]:
    """Block-aligned latent switch indices (num_prompts - 1 of them): [39, 78, 120, 159, 198] for 6 x 10 s."""
    switches = align_to_blocks(requested_switch_indices(num_prompts, seconds_per_segment, fps, stride=stride), block)
    starts = [0, *switches]
    if any(b <= a for a, b in zip(starts, starts[1:])):
        raise ValueError(f"segments of {seconds_per_segment} s at {fps} fps collapse after block alignment: {switches}")
    return switches


def latent_to_first_pixel(latent_index: int, stride: int = VAE_TEMPORAL_STRIDE) -> int:
    """First pixel frame decoded from a latent frame: 0 for latent 0, stride*f - (stride-1) after."""
    if latent_index < 0:
        raise ValueError(f"latent index must be >= 0, got {latent_index}")
    return 0 if latent_index == 0 else stride * latent_index - (stride - 1)


def pixel_start_frames(switches: Sequence[int], stride: int = VAE_TEMPORAL_STRIDE) -> list[int]:
    """Pixel frame where each prompt starts, the first prompt included: [0, 153, 309, 477, 633, 789]."""
    return [0, *(latent_to_first_pixel(int(s), stride) for s in switches)]


def pixel_frames(num_latent: int, stride: int = VAE_TEMPORAL_STRIDE) -> int:
    """Decoded length 1 + stride*(T - 1): 240 latent -> 957 pixel frames."""
    if num_latent < 1:
        raise ValueError(f"need at least one latent frame, got {num_latent}")
    return 1 + stride * (num_latent - 1)


def block_prompt_index(block_idx: int, switches: Sequence[int], block: int = FRAMES_PER_BLOCK) -> int:
    """Prompt in force for a block: the number of switches s with block_idx*block >= s."""
    if block_idx < 0:
        raise ValueError(f"block index must be >= 0, got {block_idx}")
    start = block_idx * block
    return sum(1 for s in switches if start >= s)


@dataclass(frozen=True)
class SwitchPlan:
    """Everything the pipeline and harness need about the time axis of one narrative."""

    num_prompts: int
    num_latent_frames: int
    block: int
    switches: tuple[int, ...]  # latent, block-aligned
    pixel_starts: tuple[int, ...]  # one per prompt
    num_pixel_frames: int
    fps: float

    @property
    def num_blocks(self) -> int:
        return self.num_latent_frames // self.block

    @property
    def segment_latent_lengths(self) -> tuple[int, ...]:
        bounds = (0, *self.switches, self.num_latent_frames)
        return tuple(b - a for a, b in zip(bounds, bounds[1:]))

    def prompt_for_block(self, block_idx: int) -> int:
        if not 0 <= block_idx < self.num_blocks:
            raise ValueError(f"block {block_idx} outside [0, {self.num_blocks})")
        return block_prompt_index(block_idx, self.switches, self.block)


def plan_switches(
    num_prompts: int,
    seconds_per_segment: float,
    fps: float = FPS,
    block: int = FRAMES_PER_BLOCK,
    *,
    stride: int = VAE_TEMPORAL_STRIDE,
) -> SwitchPlan:
    """The time plan of ``num_prompts`` segments of ``seconds_per_segment`` each (6 x 10 s @ 16 fps default)."""
    num_latent = latent_frames_for(num_prompts * seconds_per_segment, fps, stride=stride, block=block)
    switches = switch_latent_indices(num_prompts, seconds_per_segment, fps, block, stride=stride)
    if switches and switches[-1] >= num_latent:
        raise ValueError(f"last switch {switches[-1]} is not inside the {num_latent} latent frames")
    return SwitchPlan(
        num_prompts=num_prompts,
        num_latent_frames=num_latent,
        block=block,
        switches=tuple(switches),
        pixel_starts=tuple(pixel_start_frames(switches, stride)),
        num_pixel_frames=pixel_frames(num_latent, stride),
        fps=fps,
    )
