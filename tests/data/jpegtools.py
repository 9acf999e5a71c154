"""JPEG bytes of a smooth random picture: what the fast-decoder tests and the decoding benchmark's test feed in."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def picture(w: int = 32, h: int = 32, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((np.cumsum(rng.integers(-20, 21, (h, w, 3)), axis=0) % 256).astype(np.uint8))
