"""Pixels as training sees them: resize to cover the target size, crop, flip — the mask with them.

PIL + numpy only (no torchvision). The target is the square ``data.resolution`` by default, or an
image's aspect-ratio bucket (:mod:`.buckets`). What SDXL's ``add_time_ids`` need is recorded:
the original size ``(height, width)`` and the crop's top-left corner ``(top, left)`` in the resized
image, counted in the image as trained (after a flip, from the flipped side).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = ["Placed", "crop_box", "place", "preprocess", "to_tensor"]


@dataclass
class Placed:
    pixels: Image.Image  # RGB, exactly the target size
    mask: Image.Image | None  # L, same geometry as pixels
    original_size: tuple[int, int]  # (height, width) of the source photo
    crop_top_left: tuple[int, int]  # (top, left) in the resized photo


def crop_box(
    source: tuple[int, int],
    size: tuple[int, int],
    *,
    center_crop: bool = True,
    rng: np.random.Generator | None = None,
) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """The resized size and crop box (left, top, right, bottom) that make ``source`` cover ``size``."""
    width, height = size
    w, h = source
    scale = max(width / w, height / h)
    new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
    if center_crop or rng is None:
        left, top = (new_w - width) // 2, (new_h - height) // 2
    else:
        left = int(rng.integers(0, new_w - width + 1))
        top = int(rng.integers(0, new_h - height + 1))
    return (new_w, new_h), (left, top, left + width, top + height)


def place(
    image: Image.Image,
    size: tuple[int, int],
    *,
    mask: Image.Image | None = None,
    center_crop: bool = True,
    flip: bool = False,
    rng: np.random.Generator | None = None,
) -> Placed:
    """Resize ``image`` (and ``mask``) to cover ``size`` = (width, height), keep the aspect, crop, flip.

    The crop is centered, or drawn from ``rng`` (left, then top) when ``center_crop`` is false.
    """
    (new_w, new_h), box = crop_box(image.size, size, center_crop=center_crop, rng=rng)
    left, top = box[0], box[1]
    width = size[0]
    w, h = image.size

    def fit(im: Image.Image) -> Image.Image:
        im = im.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=None).crop(box)
        return ImageOps.mirror(im) if flip else im

    return Placed(
        pixels=fit(image),
        mask=fit(mask) if mask is not None else None,
        original_size=(h, w),
        crop_top_left=(top, new_w - width - left if flip else left),
    )


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB → CHW float in [-1, 1]."""
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def preprocess(
    image: Image.Image,
    resolution: int,
    *,
    center_crop: bool = True,
    flip: bool = False,
    rng: np.random.Generator | None = None,
) -> torch.Tensor:
    """Resize the short side to ``resolution``, crop a square, optionally flip; CHW float in [-1, 1]."""
    placed = place(image, (resolution, resolution), center_crop=center_crop, flip=flip, rng=rng)
    return to_tensor(placed.pixels)
