"""Few-step flow-matching sampler of the causal Wan2.1 student (spec §2.2, §1.3).

The student is distilled for 4 denoising steps at the *warped* timesteps [1000, 937.5, 833.3, 625]:
the released code (Self-Forcing, LongLive, MemFlow, IAMFlow) builds the 1000-entry shifted training
schedule of ``FlowMatchScheduler(shift=5, sigma_min=0, extra_one_step=True)``, appends a 0 and reads
it at ``1000 - step`` for each nominal step [1000, 750, 500, 250]. We derive the list the same way
instead of hard-coding it, so a different shift or step list stays consistent.

Per block the pipeline runs **5 DiT forwards**: the 4 denoising steps done by :class:`FewStepSampler`
(the KV cache is read, never written) plus 1 *context pass* at ``CONTEXT_TIMESTEP = 0`` over the clean
x0, which commits the block's K/V to the cache. The context pass is the caller's job; 80 blocks give
400 forwards per 60 s video.

The model predicts the flow ``v = eps - x0``; with ``x_t = (1 - sigma) x0 + sigma eps`` this gives
``x0 = x_t - sigma v``. Between steps the x0 estimate is re-noised to the next sigma with fresh noise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import overload

import torch

log = logging.getLogger(__name__)

NUM_TRAIN_TIMESTEPS = 1000
TIMESTEP_SHIFT = 5.0
DENOISING_STEP_LIST: tuple[int, ...] = (1000, 750, 500, 250)  # nominal, before warping
CONTEXT_TIMESTEP = 0.0  # `context_noise`: timestep of the cache-committing pass
DIT_FORWARDS_PER_BLOCK = len(DENOISING_STEP_LIST) + 1  # 4 denoise + 1 context

DenoiseFn = Callable[[torch.Tensor, float], torch.Tensor]


@overload
def shift_sigma(sigma: float, shift: float = TIMESTEP_SHIFT) -> float: ...
@overload
def shift_sigma(sigma: torch.Tensor, shift: float = TIMESTEP_SHIFT) -> torch.Tensor: ...
def shift_sigma(sigma, shift=TIMESTEP_SHIFT):
    """sigma' = shift*sigma / (1 + (shift-1)*sigma): spends more steps at high noise."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def shifted_timestep_table(
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, shift: float = TIMESTEP_SHIFT
) -> torch.Tensor:
    """The training schedule t_i = 1000*sigma'(1 - i/N), i = 0..N-1 (float64, descending).

    ``extra_one_step``: N+1 linearly spaced sigmas from 1 to 0, the final 0 dropped, so the table
    starts at t = 1000 and never contains 0.
    """
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    sigmas = torch.linspace(1.0, 0.0, num_train_timesteps + 1, dtype=torch.float64)[:-1]
    return shift_sigma(sigmas, shift) * num_train_timesteps


def warp_denoising_steps(
    step_list: Sequence[int] = DENOISING_STEP_LIST,
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
    shift: float = TIMESTEP_SHIFT,
) -> list[float]:
    """Map nominal steps onto the shifted schedule: ``cat(table, [0])[N - step]``.

    [1000, 750, 500, 250] -> [1000.0, 937.5, 833.33.., 625.0] for shift 5.
    """
    table = torch.cat((shifted_timestep_table(num_train_timesteps, shift), torch.zeros(1, dtype=torch.float64)))
    warped = []
    for step in step_list:
        if int(step) != step or not 0 <= step <= num_train_timesteps:
            raise ValueError(f"denoising step {step!r} must be an integer in [0, {num_train_timesteps}]")
        warped.append(float(table[num_train_timesteps - int(step)]))
    return warped


def sigma_of_timestep(t: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> float:
    """sigma = t / N. On the table's entries this equals the released argmin lookup of sigma."""
    if not 0 <= t <= num_train_timesteps:
        raise ValueError(f"timestep {t} outside [0, {num_train_timesteps}]")
    return float(t) / num_train_timesteps


def timestep_tensor(t: float, batch: int, frames: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The DiT's timestep input: one value shared by every frame of the block, shape [B, F]."""
    return torch.full((batch, frames), float(t), dtype=torch.float32, device=device)


def flow_to_x0(x_t: torch.Tensor, flow: torch.Tensor, sigma: float) -> torch.Tensor:
    """x0 = x_t - sigma*v, computed in float64 like the released code, returned in x_t's dtype."""
    if x_t.shape != flow.shape:
        raise ValueError(f"flow prediction shape {tuple(flow.shape)} != x_t shape {tuple(x_t.shape)}")
    return (x_t.double() - sigma * flow.double()).to(x_t.dtype)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """x_t = (1 - sigma)*x0 + sigma*eps (float32 arithmetic, returned in x0's dtype)."""
    if x0.shape != noise.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
    return ((1.0 - sigma) * x0.float() + sigma * noise.float()).to(x0.dtype)


def draw_noise(
    shape: Sequence[int],
    generator: torch.Generator,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """N(0, 1) noise drawn in float32 on the generator's device, then moved/cast.

    Drawing on the generator's device makes a CPU generator give the same noise whatever device the
    latents live on (the released code instead uses the global CUDA RNG via ``randn_like``).
    """
    eps = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32)
    return eps.to(device=device if device is not None else generator.device, dtype=dtype)


def renoise(x0: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Re-noise an x0 estimate to the next step's sigma with fresh seeded noise."""
    return add_noise(x0, draw_noise(x0.shape, generator, dtype=x0.dtype, device=x0.device), sigma)


class FewStepSampler:
    """Runs the few denoising steps of one block; returns the final x0 (no cache commit).

    ``denoise(x_t, t)`` must return the flow prediction v for the noisy block at timestep ``t``
    (a float; build the [B, F] tensor with :func:`timestep_tensor`). The caller then runs the
    context pass at ``CONTEXT_TIMESTEP`` on the returned x0.
    """

    def __init__(
        self,
        generator: torch.Generator,
        timesteps: Sequence[float] | None = None,
        num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
    ) -> None:
        if timesteps is None:
            timesteps = warp_denoising_steps(num_train_timesteps=num_train_timesteps)
        steps = list(timesteps)
        if not steps:
            raise ValueError("FewStepSampler needs at least one timestep")
        if any(b >= a for a, b in zip(steps, steps[1:])):
            raise ValueError(f"timesteps must be strictly decreasing, got {steps}")
        self.generator = generator
        self.timesteps: tuple[float, ...] = tuple(float(t) for t in steps)
        self.sigmas: tuple[float, ...] = tuple(sigma_of_timestep(t, num_train_timesteps) for t in steps)

    @property
    def forwards_per_block(self) -> int:
        """DiT forwards per block including the caller's context pass."""
        return len(self.timesteps) + 1

    def sample(self, noisy: torch.Tensor, denoise: DenoiseFn) -> torch.Tensor:
        """Denoise one block from pure noise at timesteps[0]; returns x0 of the last step."""
        x_t = noisy
        x0 = noisy
        last = len(self.timesteps) - 1
        for i, (t, sigma) in enumerate(zip(self.timesteps, self.sigmas)):
            flow = denoise(x_t, t)
            x0 = flow_to_x0(x_t, flow, sigma)
            if i < last:
                x_t = renoise(x0, self.sigmas[i + 1], self.generator)
        log.debug("block sampled at timesteps %s", self.timesteps)
        return x0
