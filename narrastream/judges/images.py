"""Frames as JPEG images for judges (the bytes a request carries; cache keys use their sha256)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from narrastream.judges.base import ImagePart


def encode_jpeg(frame: np.ndarray, *, quality: int = 95, max_side: int | None = None,
                size: tuple[int, int] | None = None) -> ImagePart:
    """One RGB uint8 frame as a JPEG.

    ``max_side``: downscaled (aspect kept, bicubic) when the longer side exceeds it, as the protocol's key
    frames. ``size``: resized to exactly ``(width, height)`` (bilinear, aspect not kept), as IAMFlow's
    verifier frames (256x256).
    """
    image = Image.fromarray(np.ascontiguousarray(frame))
    if size is not None:
        image = image.resize((int(size[0]), int(size[1])), Image.Resampling.BILINEAR)
    elif max_side and max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(quality))
    return ImagePart(buffer.getvalue())
