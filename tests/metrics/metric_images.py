"""Test images and tiny-backbone folders shared by the metrics tests (not a test module)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from dreambooth_sweep.tiny import ensure_tiny

ATOL = 1e-5


def noise(seed: int, size: tuple[int, int] = (48, 64), mode: str = "RGB") -> Image.Image:
    """Random image of (height, width)."""
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode)


def pattern(seed: int, size: int = 40) -> Image.Image:
    """Structured image (stripes and a colour gradient), further from the noise images than noise is."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    freq, phase = rng.uniform(0.1, 0.6), rng.uniform(0, math.pi)
    stripes = (np.sin(freq * (x + y) + phase) > 0).astype(np.float32)
    colour = rng.uniform(0, 255, 3)
    pixels = stripes[..., None] * colour + (1 - stripes[..., None]) * (x[..., None] * 255 / size)
    return Image.fromarray(pixels.astype(np.uint8))


def tiny_folder(kind: str, cache_dir: Path) -> str:
    """The saved tiny ``kind`` model's folder (built once per cache), as a local-dir model name."""
    return str(ensure_tiny(kind, cache_dir))


def write_images(folder: Path, images: dict[str, Image.Image]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        image.save(folder / name)
    return folder
