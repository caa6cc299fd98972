"""Reading photos: the one image loader that training, evaluation and rescoring all use.

A subject photo reaches the model as 8-bit RGB, upright (EXIF rotation applied), transparency
composited on white, 16-bit and float pixels scaled (never clipped) — the same pixels whether the
trainer, the evaluator or ``dreambooth-sweep score`` reads the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["IMAGE_SUFFIXES", "open_image", "to_rgb", "unreadable_reason"]

# The files taken as images (case-insensitive); anything else in a subject folder is skipped by name.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _scaled_to_8bit(image: Image.Image) -> Image.Image:
    """A single-band 16-bit, 32-bit integer or float image as 8-bit greyscale, scaled to its range."""
    arr = np.asarray(image, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{image.mode} image has NaN or infinite pixels")
    if image.mode == "F":
        # Float images are either 0..1 (most tools) or 0..255; anything else has no agreed scale.
        top = float(arr.max(initial=0.0))
        if arr.min(initial=0.0) < 0 or top > 255:
            raise ValueError(
                f"float image with pixel values {arr.min():.3g}..{top:.3g}: save it as 8-bit PNG/JPEG"
            )
        peak = 1.0 if top <= 1.0 else 255.0
    else:
        peak = 65535.0 if image.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
    return Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode → upright 8-bit RGB.

    EXIF orientation is applied; transparency (alpha, palette transparency) is composited on white;
    16-bit, 32-bit and float greyscale are scaled to 8 bits, not clipped.

    Raises:
        ValueError: a mode with no faithful conversion (e.g. float pixels outside 0..255).
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in _INT_MODES or image.mode == "F":
        image = _scaled_to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or image.info.get("transparency") is not None:
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise ValueError(f"pixel mode {image.mode} cannot be converted to RGB: save it as 8-bit RGB") from exc


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Read ``path`` fully and return it as upright 8-bit RGB (see :func:`to_rgb`).

    Raises:
        OSError, ValueError, SyntaxError, Image.DecompressionBombError: not a readable image;
            :func:`unreadable_reason` says why in a few words.
    """
    with Image.open(path) as im:
        im.load()
        return to_rgb(im)


def unreadable_reason(path: Path, exc: BaseException) -> str:
    """Why ``path`` could not be read as an image, in a few words."""
    try:
        if path.is_symlink() and not path.exists():
            return f"broken symlink to {os.readlink(path)}"
        if path.stat().st_size == 0:
            return "empty file"
    except OSError as err:
        return f"cannot open: {err.strerror or err}"
    if isinstance(exc, Image.DecompressionBombError):
        return "too many pixels: over Pillow's decompression-bomb limit"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, ValueError):
        return " ".join(str(exc).split())[:120]
    return f"corrupt or truncated: {' '.join(str(exc).split())[:80] or type(exc).__name__}"
