"""Aspect-ratio buckets (``data.buckets=true``): training sizes of about ``resolution²`` pixels.

As kohya sd-scripts, OneTrainer and diffusers' SDXL scripts do, sides step by ``data.bucket_step``
(64 px: 8 latent pixels of SD's VAE); for each width below the square's side the height is the
largest step multiple keeping ``width × height`` at most ``resolution²``, while the long side is at
most ``data.bucket_max_aspect`` times the short one; landscape buckets are their transposes. Every photo goes to the bucket whose aspect ratio is nearest its own (in log
space, so 2:1 and 1:2 are equally far from square); it is then resized to cover the bucket and
cropped (:func:`dreambooth_sweep.data.transforms.place`), so a bucket crops far less than a square.
"""

from __future__ import annotations

import math

__all__ = ["Bucket", "make_buckets", "nearest_bucket"]

Bucket = tuple[int, int]  # (width, height) in pixels


def make_buckets(resolution: int, step: int = 64, max_aspect: float = 4.0) -> list[Bucket]:
    """Every bucket for ``resolution``, sorted by aspect ratio (portrait first); the square included."""
    area = resolution * resolution
    side = max(step, resolution // step * step)
    buckets = {(side, side)}
    # Portrait buckets, one per width below the square (the tallest that fits), and their transposes.
    for width in range(step, side, step):
        height = area // width // step * step
        if height / width <= max_aspect:
            buckets.add((width, height))
            buckets.add((height, width))
    return sorted(buckets, key=lambda b: (b[0] / b[1], b[0]))


def nearest_bucket(size: tuple[int, int], buckets: list[Bucket]) -> Bucket:
    """The bucket whose aspect ratio is nearest that of ``size`` = (width, height); ties: the larger."""
    ratio = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))
