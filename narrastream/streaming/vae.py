"""Streaming decode of Wan latents with diffusers' ``AutoencoderKLWan``.

The DiT emits 3 latent frames per block; decoding each block as it arrives, instead of the whole 240-frame
latent at the end, is how the reference pipelines show pixels while generating (spec §2.3 step 5, §3.9).
The Wan decoder is causal in time: ``AutoencoderKLWan._decode`` feeds it one latent frame at a time and each
causal conv keeps its last input frames in a per-conv cache list. ``StreamingWanDecoder`` keeps that cache
list alive *between* calls, so chunked decoding is the same computation as one whole decode:
1 + 4·(T−1) pixel frames in total (240 latent frames -> 957 pixel frames), with no second decode.

diffusers is imported lazily: it is only needed when a VAE is actually built.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from diffusers import AutoencoderKLWan

log = logging.getLogger(__name__)

TEMPORAL_STRIDE = 4  # Wan VAE: one latent frame after the first covers 4 pixel frames
SPATIAL_STRIDE = 8


def pixel_frame_count(latent_frames: int) -> int:
    """Pixel frames a causal Wan decode yields for ``latent_frames`` latents: 1 + 4·(T−1)."""
    if latent_frames < 1:
        raise ValueError(f"latent_frames must be >= 1, got {latent_frames}")
    return 1 + TEMPORAL_STRIDE * (latent_frames - 1)


def _import_diffusers_wan() -> Any:
    from narrastream._compat import ensure_torchvision

    ensure_torchvision()  # diffusers may import torchvision; see narrastream._compat
    try:
        from diffusers.models.autoencoders import autoencoder_kl_wan
    except ImportError as err:
        raise ImportError("the Wan VAE needs diffusers>=0.35 (pip install diffusers)") from err
    return autoencoder_kl_wan


class StreamingWanDecoder:
    """Chunk-by-chunk Wan VAE decoding with causal-conv caches carried across chunks.

    Latents are in the DiT's normalised space, ``[B, z_dim, f, H, W]``; they are mapped back with the VAE
    config's ``latents_mean``/``latents_std`` (``z * std + mean``, as diffusers' ``WanPipeline`` does)
    before decoding. Call ``reset()`` before each new video.
    """

    def __init__(self, vae: AutoencoderKLWan):
        wan = _import_diffusers_wan()
        if vae.use_tiling:
            raise ValueError("StreamingWanDecoder does not support a VAE with tiling enabled (disable_tiling())")
        cfg = vae.config
        for name in ("latents_mean", "latents_std"):
            if len(getattr(cfg, name)) != cfg.z_dim:
                raise ValueError(f"VAE config {name} has {len(getattr(cfg, name))} values, z_dim is {cfg.z_dim}")
        self.vae = vae.eval().requires_grad_(False)
        self._unpatchify = wan.unpatchify
        # One cache slot per causal conv is an upper bound (1x1x1 shortcut convs never use theirs), as in diffusers.
        self._num_causal_convs = sum(isinstance(m, wan.WanCausalConv3d) for m in vae.decoder.modules())
        self._feat_cache: list[Any] = []
        self.latent_frames_decoded = 0
        self.reset()

    @property
    def z_dim(self) -> int:
        return int(self.vae.config.z_dim)

    def reset(self) -> None:
        """Forget the previous video: empty every causal-conv cache; the next frame is a first frame."""
        self._feat_cache = [None] * self._num_causal_convs
        self.latent_frames_decoded = 0

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """DiT-space latents -> VAE-space latents, in the VAE dtype (same arithmetic as ``WanPipeline``)."""
        latents = latents.to(self.vae.device, self.vae.dtype)
        shape = (1, self.z_dim, 1, 1, 1)
        mean = torch.tensor(self.vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
        inv_std = (1.0 / torch.tensor(self.vae.config.latents_std).view(shape)).to(latents.device, latents.dtype)
        return latents / inv_std + mean

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode the next ``f`` latent frames ``[B, z_dim, f, H, W]`` -> pixels ``[B, 3, F, 8H, 8W]`` in [-1, 1].

        F = 1 + 4·(f−1) for the first chunk of a video and 4·f afterwards.
        """
        if latents.ndim != 5 or latents.shape[1] != self.z_dim or latents.shape[2] < 1:
            raise ValueError(f"latents must be [B, {self.z_dim}, f>=1, H, W], got {tuple(latents.shape)}")
        x = self.vae.post_quant_conv(self.denormalize(latents))  # 1x1x1 conv: no temporal context needed
        outs = []
        for i in range(x.shape[2]):
            outs.append(
                self.vae.decoder(
                    x[:, :, i : i + 1],
                    feat_cache=self._feat_cache,
                    feat_idx=[0],  # the decoder walks its causal convs in order, from slot 0, per frame
                    first_chunk=self.latent_frames_decoded == 0,
                )
            )
            self.latent_frames_decoded += 1
        out = torch.cat(outs, dim=2)
        if self.vae.config.patch_size is not None:
            out = self._unpatchify(out, patch_size=self.vae.config.patch_size)
        return out.clamp(-1.0, 1.0)

    @torch.no_grad()
    def decode_video(self, latents: torch.Tensor, chunk_frames: int = 3) -> torch.Tensor:
        """Reset, then stream a whole latent video through ``decode_chunk`` in ``chunk_frames`` pieces."""
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        self.reset()
        chunks = [self.decode_chunk(part) for part in latents.split(chunk_frames, dim=2)]
        return torch.cat(chunks, dim=2)

    @classmethod
    def from_diffusers_layout(
        cls, root: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> StreamingWanDecoder:
        """Load ``root/vae`` (Wan-AI/Wan2.1-T2V-1.3B-Diffusers layout)."""
        vae_dir = Path(root) / "vae"
        if not (vae_dir / "config.json").is_file():
            raise FileNotFoundError(f"Wan VAE not found: {vae_dir / 'config.json'} (expected the Diffusers layout)")
        wan = _import_diffusers_wan()
        log.info("loading Wan VAE from %s", vae_dir)
        vae = wan.AutoencoderKLWan.from_pretrained(vae_dir, torch_dtype=dtype).to(device)
        return cls(vae)


def to_uint8_frames(pixels: torch.Tensor) -> torch.Tensor:
    """``[1, 3, T, H, W]`` or ``[3, T, H, W]`` pixels in [-1, 1] -> ``[T, H, W, 3]`` uint8 on the CPU.

    Same rounding as diffusers' video post-processing: ``round(clamp((x + 1) / 2, 0, 1) * 255)``.
    """
    if pixels.ndim == 5:
        if pixels.shape[0] != 1:
            raise ValueError(f"to_uint8_frames takes one video, got batch {pixels.shape[0]}")
        pixels = pixels[0]
    if pixels.ndim != 4 or pixels.shape[0] != 3:
        raise ValueError(f"pixels must be [3, T, H, W] or [1, 3, T, H, W], got {tuple(pixels.shape)}")
    frames = ((pixels.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).contiguous().cpu()
