"""A deterministic synthetic subject so the whole loop runs with no photos.

The "toy" is one distinctive object — a red body with a yellow zig-zag band, a teal hat and two
white-and-black eyes — drawn with PIL in varied poses (rotation, scale, position, mirroring) over
varied backgrounds (flat, gradient, checker, stripes, speckle). Same seed → same bytes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["make_demo_data"]

_BACKGROUNDS = ("flat", "gradient", "checker", "stripes", "speckle")


def _background(rng: np.random.Generator, size: int, kind: str) -> Image.Image:
    c1 = tuple(int(v) for v in rng.integers(60, 230, 3))
    c2 = tuple(int(v) for v in rng.integers(60, 230, 3))
    if kind == "flat":
        return Image.new("RGB", (size, size), c1)
    if kind == "gradient":
        t = np.linspace(0.0, 1.0, size)[:, None, None]
        arr = (1 - t) * np.array(c1) + t * np.array(c2)
        return Image.fromarray(np.broadcast_to(arr, (size, size, 3)).astype(np.uint8))
    if kind == "checker":
        cell = int(rng.integers(size // 10, size // 4))
        yy, xx = np.mgrid[0:size, 0:size] // cell
        mask = ((yy + xx) % 2).astype(bool)[..., None]
        return Image.fromarray(np.where(mask, np.array(c1), np.array(c2)).astype(np.uint8))
    if kind == "stripes":
        width = int(rng.integers(size // 16, size // 6))
        xx = np.arange(size)[None, :, None] // width
        arr = np.where(xx % 2 == 0, np.array(c1), np.array(c2))
        return Image.fromarray(np.broadcast_to(arr, (size, size, 3)).astype(np.uint8))
    noise = rng.normal(0, 25, (size, size, 3)) + np.array(c1)
    return Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.5))


def _draw_toy(size: int) -> Image.Image:
    """The subject on a transparent canvas, upright and centred."""
    toy = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(toy)
    s = size / 100.0
    # body: rounded red block
    d.rounded_rectangle(
        [22 * s, 35 * s, 78 * s, 92 * s],
        radius=12 * s,
        fill=(210, 30, 40, 255),
        outline=(90, 10, 15, 255),
        width=max(1, int(2 * s)),
    )
    # yellow zig-zag band across the body
    pts = [(22 * s + i * 7 * s, (62 if i % 2 == 0 else 70) * s) for i in range(9)]
    d.line(pts, fill=(250, 210, 20, 255), width=max(2, int(5 * s)))
    # teal hat: brim and crown
    d.rectangle([18 * s, 30 * s, 82 * s, 36 * s], fill=(20, 150, 150, 255))
    d.polygon(
        [(32 * s, 30 * s), (68 * s, 30 * s), (60 * s, 8 * s), (40 * s, 8 * s)], fill=(20, 170, 170, 255)
    )
    # eyes
    for cx in (38, 62):
        d.ellipse([(cx - 8) * s, 42 * s, (cx + 8) * s, 56 * s], fill=(255, 255, 255, 255))
        d.ellipse([(cx - 3) * s, 46 * s, (cx + 3) * s, 53 * s], fill=(10, 10, 10, 255))
    # feet
    d.rectangle([28 * s, 92 * s, 42 * s, 98 * s], fill=(60, 60, 60, 255))
    d.rectangle([58 * s, 92 * s, 72 * s, 98 * s], fill=(60, 60, 60, 255))
    return toy


def make_demo_data(
    directory: str | os.PathLike[str], num_images: int = 12, size: int = 256, seed: int = 1234
) -> list[Path]:
    """Write ``num_images`` (5–25) JPEGs of the synthetic toy into ``directory``.

    Returns:
        The written paths, sorted.
    """
    if not 5 <= num_images <= 25:
        raise ValueError(f"num_images={num_images} must be between 5 and 25 (DreamBooth uses 5-25 photos)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = _draw_toy(size)
    paths = []
    for i in range(num_images):
        canvas = _background(rng, size, _BACKGROUNDS[i % len(_BACKGROUNDS)])
        scale = float(rng.uniform(0.45, 0.85))
        toy = base.resize((max(8, int(size * scale)),) * 2, Image.Resampling.LANCZOS)
        if rng.random() < 0.5:
            toy = toy.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        toy = toy.rotate(float(rng.uniform(-30, 30)), resample=Image.Resampling.BICUBIC, expand=True)
        slack_x, slack_y = max(0, size - toy.width), max(0, size - toy.height)
        # keep the subject roughly centred, as the LoRA walk-through advises for real photos
        x = int(slack_x / 2 + rng.uniform(-0.35, 0.35) * slack_x)
        y = int(slack_y / 2 + rng.uniform(-0.35, 0.35) * slack_y)
        canvas.paste(toy, (x, y), toy)
        # a soft shadow-free light variation so no two images share exact pixel statistics
        gain = 0.85 + 0.3 * (0.5 + 0.5 * math.sin(i))
        arr = np.clip(np.asarray(canvas, dtype=np.float32) * gain, 0, 255).astype(np.uint8)
        path = directory / f"toy_{i:02d}.jpg"
        Image.fromarray(arr).save(path, quality=92)
        paths.append(path)
    return sorted(paths)
