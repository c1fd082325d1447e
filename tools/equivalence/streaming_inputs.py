"""Shared by the streaming fixtures' tool and tests: the tiny Wan DiT, the stream geometry, the seeded
text features and the seeded noise sequence.

Both sides must feed the two implementations the very same numbers, drawn in the same order. Nothing here
is random in the torch sense: every tensor comes from :func:`seeded.uniform`, a function of
``(seed, name, shape)``, so the tool (running the authors' loop) and the test (running narrastream's) get
bit-identical inputs on any CPU.

* **Text features** play the umT5 output: ``[1, text_len, text_dim]`` uniforms in [-1, 1] whose last
  ``CONTEXT_PADDING`` positions are zero (the encoders zero the padding of a prompt).
* **Noise** plays ``randn``: uniforms on [-sqrt 3, sqrt 3] (mean 0, variance 1). Block ``b``'s starting
  noise is ``noise/block{b}``; the ``step``-th re-noising of block ``b`` (1-based, 3 per block with 4
  denoising steps) is ``renoise/{b}/{step}``. Both are drawn in narrastream's layout ``[B, C, F, H, W]``;
  the authors' loops hold ``[B, F, C, H, W]`` and get the same values permuted.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

try:  # the tool imports this file as a sibling module, the tests through equivalence_support
    import seeded  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - loaded by file path from the tests
    import narrastream_equivalence_seeded as seeded  # type: ignore[no-redef]

#: a scaled-down Wan2.1-T2V DiT (the authors' CausalWanModel constructor arguments). head_dim 32 splits
#: RoPE into 6 (time) / 5 (height) / 5 (width) complex pairs, so a wrong axis split shows; text_len 16
#: with 5 zero positions exercises Wan's context padding.
TINY_WAN: dict[str, Any] = {
    "dim": 64, "ffn_dim": 128, "freq_dim": 32, "text_dim": 24, "text_len": 16, "in_dim": 4, "out_dim": 4,
    "num_heads": 2, "num_layers": 2, "patch_size": [1, 2, 2], "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6,
}
#: latent frame 4 x 6 -> a 2 x 3 token grid (6 tokens per frame; non-square, so height/width mix-ups show)
LATENT_HW = (4, 6)
FRAME_TOKENS = 6
BLOCK_FRAMES = 3
CONTEXT_PADDING = 5
NOISE_BOUND = math.sqrt(3.0)
DENOISING_STEPS = [1000, 750, 500, 250]
#: narrastream's pipeline reads the geometry in pixels (the VAE's stride 8)
PIXEL_HEIGHT, PIXEL_WIDTH = 8 * LATENT_HW[0], 8 * LATENT_HW[1]


def context(seed: int, index: int) -> np.ndarray:
    """Text features of prompt ``index``: ``[1, text_len, text_dim]``, zero padding at the end."""
    shape = (1, TINY_WAN["text_len"], TINY_WAN["text_dim"])
    x = seeded.uniform(seed, f"stream/context{index}", shape, -1.0, 1.0)
    x[:, shape[1] - CONTEXT_PADDING:] = 0.0
    return x


def block_noise(seed: int, block: int, frames: int = BLOCK_FRAMES) -> np.ndarray:
    """Starting noise of block ``block`` in ``[B, C, F, H, W]``."""
    shape = (1, TINY_WAN["in_dim"], frames, *LATENT_HW)
    return seeded.uniform(seed, f"stream/noise/block{block}", shape, -NOISE_BOUND, NOISE_BOUND)


def renoise(seed: int, block: int, step: int, frames: int = BLOCK_FRAMES) -> np.ndarray:
    """The ``step``-th re-noising draw (1-based) of block ``block`` in ``[B, C, F, H, W]``."""
    shape = (1, TINY_WAN["in_dim"], frames, *LATENT_HW)
    return seeded.uniform(seed, f"stream/renoise/{block}/{step}", shape, -NOISE_BOUND, NOISE_BOUND)


class NoiseSequence:
    """Hands out the re-noising draws in the order a block loop asks for them (``steps`` per block)."""

    def __init__(self, seed: int, steps_per_block: int = len(DENOISING_STEPS) - 1) -> None:
        self.seed, self.steps, self.calls = seed, steps_per_block, 0

    def next(self) -> np.ndarray:
        block, step = divmod(self.calls, self.steps)
        self.calls += 1
        return renoise(self.seed, block, step + 1)


def to_tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def stream_contexts(seed: int, num_prompts: int, mix: dict | None = None) -> list[np.ndarray]:
    """The text features of a stream's prompts. ``mix`` maps a prompt index (as a string, as JSON keeps it)
    to ``[base, weight]``: that prompt's features are ``weight * base's + (1 - weight) * its own`` (in
    float32), so that its distance to ``base`` is small (the adaptive SPT window then differs)."""
    contexts = [context(seed, i) for i in range(num_prompts)]
    for index, (base, weight) in (mix or {}).items():
        i = int(index)
        contexts[i] = np.asarray(np.float32(weight) * contexts[int(base)] + np.float32(1.0 - weight) * contexts[i],
                                 dtype=np.float32)
    return contexts
