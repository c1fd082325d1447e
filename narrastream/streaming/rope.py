"""Wan's 3-axis rotary position embedding, applied at absolute latent-frame positions.

Each attention head's ``head_dim`` real channels form ``head_dim // 2`` complex pairs. They are split
between the time, height and width axes as Wan does: height and width get ``pairs // 3`` each and time
gets the rest (22/21/21 for head_dim 128). Each axis has its own frequency ladder
``theta ** (-k / axis_pairs)``. The time index is the ABSOLUTE latent frame index (the caller passes the
block's first frame), so keys stored after RoPE keep their original temporal position wherever they are
attended from later (sink frames, memory-bank frames). :meth:`Rope3D.shift_time` moves stored keys along
the time axis afterwards (Deep Forcing's and Rolling Forcing's sinks are re-placed next to the frames
they are attended with).
"""

from __future__ import annotations

import torch

ROPE_MAX_POSITIONS = 1024  # rows of Wan's rotary table (positions per axis)
ROPE_THETA = 10000.0


def rope_axis_split(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs per axis (time, height, width) for one head, as Wan derives them."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    pairs = head_dim // 2
    spatial = pairs // 3
    return pairs - 2 * spatial, spatial, spatial


def _axis_table(positions: int, pairs: int, theta: float) -> torch.Tensor:
    """Unit complex rotations [positions, pairs] in float64 (Wan computes RoPE in double)."""
    inv_freq = 1.0 / theta ** (torch.arange(pairs, dtype=torch.float64, device="cpu") / pairs)
    angles = torch.outer(torch.arange(positions, dtype=torch.float64, device="cpu"), inv_freq)
    return torch.polar(torch.ones_like(angles), angles)


class Rope3D:
    """Rotary tables for one head size. Plain object, not a module buffer: ``model.to(bf16)`` must not
    cast the complex table (the original keeps it out of the state dict for the same reason)."""

    def __init__(self, head_dim: int, max_positions: int = ROPE_MAX_POSITIONS, theta: float = ROPE_THETA):
        self.head_dim = head_dim
        self.max_positions = max_positions
        self.split = rope_axis_split(head_dim)
        self.tables = tuple(_axis_table(max_positions, pairs, theta) for pairs in self.split)
        self._on_device: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        if device not in self._on_device:
            self._on_device[device] = tuple(t.to(device) for t in self.tables)
        return self._on_device[device]

    def rotations(self, start_frame: int, grid: tuple[int, int, int], device: torch.device) -> torch.Tensor:
        """Complex rotations [F*H*W, pairs] for tokens in (frame, row, column) order."""
        frames, height, width = grid
        for name, first, size in (("frame", start_frame, frames), ("height", 0, height), ("width", 0, width)):
            if first < 0 or first + size > self.max_positions:
                raise ValueError(
                    f"RoPE {name} positions [{first}, {first + size}) fall outside the table of "
                    f"{self.max_positions} positions"
                )
        t_tab, h_tab, w_tab = self._tables(device)
        t_part = t_tab[start_frame : start_frame + frames].view(frames, 1, 1, -1).expand(frames, height, width, -1)
        h_part = h_tab[:height].view(1, height, 1, -1).expand(frames, height, width, -1)
        w_part = w_tab[:width].view(1, 1, width, -1).expand(frames, height, width, -1)
        return torch.cat([t_part, h_part, w_part], dim=-1).reshape(frames * height * width, -1)

    def apply(self, x: torch.Tensor, start_frame: int, grid: tuple[int, int, int]) -> torch.Tensor:
        """Rotate ``x`` [B, L, heads, head_dim] (L = F*H*W tokens); returns the same dtype."""
        batch, length, heads, dim = x.shape
        if dim != self.head_dim:
            raise ValueError(f"RoPE built for head_dim {self.head_dim}, got tensor with last dim {dim}")
        if length != grid[0] * grid[1] * grid[2]:
            raise ValueError(f"{length} tokens do not match the grid {grid}")
        rot = self.rotations(start_frame, grid, x.device).view(1, length, 1, -1)
        pairs = torch.view_as_complex(x.to(torch.float64).reshape(batch, length, heads, -1, 2))
        return torch.view_as_real(pairs * rot).flatten(3).to(x.dtype)

    def shift_time(self, x: torch.Tensor, delta: int) -> torch.Tensor:
        """Keys ``x`` [B, L, heads, head_dim] already rotated at some frames, moved ``delta`` frames along the
        time axis (a new tensor in ``x``'s dtype; height/width channels untouched).

        RoPE rotations compose, so RoPE(k, p) shifted by d equals RoPE(k, p + d) up to the rounding of the
        stored keys; computed in float64 like :meth:`apply`."""
        if delta == 0:
            return x
        if abs(delta) >= self.max_positions:
            raise ValueError(f"time shift of {delta} frames outside the table of {self.max_positions} positions")
        batch, length, heads, dim = x.shape
        if dim != self.head_dim:
            raise ValueError(f"RoPE built for head_dim {self.head_dim}, got tensor with last dim {dim}")
        time_pairs = self.split[0]
        rot = self._tables(x.device)[0][abs(delta)]
        rot = rot.conj() if delta < 0 else rot
        pairs = torch.view_as_complex(x.to(torch.float64).reshape(batch, length, heads, -1, 2)).clone()
        pairs[..., :time_pairs] *= rot
        return torch.view_as_real(pairs).flatten(3).to(x.dtype)
