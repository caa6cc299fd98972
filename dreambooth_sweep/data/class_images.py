"""Class images for prior preservation: one shared on-disk cache per (model, prompt, resolution, seed,
sampler settings), or a user's ``prior.class_dir``.

Image *i* always comes from seed ``seed + i``, so asking for more images extends the set and asking
for fewer reuses a prefix. A file lock makes concurrent workers generate each set once. What a set was
made from goes to ``<folder>.cache.json`` *beside* the folder, never into it: the folder holds only
the images (diffusers' script, pointed at it, would count anything else as an image).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from dreambooth_sweep.files import atomic_write, file_lock

log = logging.getLogger(__name__)

__all__ = ["class_cache_dir", "ensure_class_images", "metadata_path"]


def class_cache_dir(
    cache_dir: str | os.PathLike[str], model_key: str, prompt: str, resolution: int, seed: int, extra: dict
) -> Path:
    """The shared folder for one (model, prompt, resolution, seed, sampler settings) class-image set."""
    key = json.dumps(
        {"model": model_key, "prompt": prompt, "resolution": resolution, "seed": seed, **extra},
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    slug = "".join(c if c.isalnum() else "-" for c in prompt.lower())[:40].strip("-")
    return Path(cache_dir) / "class_images" / f"{slug}-{resolution}px-{digest}"


def metadata_path(folder: str | os.PathLike[str]) -> Path:
    """Where the description of a class-image set goes: ``<folder>.cache.json`` beside the folder."""
    folder = Path(folder)
    return folder.with_name(folder.name + ".cache.json")


def _class_image_name(index: int) -> str:
    return f"{index:05d}.png"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def ensure_class_images(
    folder: str | os.PathLike[str],
    count: int,
    generate: Callable[[list[int]], list[Image.Image]],
    *,
    batch_size: int = 4,
    progress: bool = True,
    metadata: dict | None = None,
    source: str = "the base model",
) -> list[Path]:
    """Make sure ``folder`` holds class images ``00000.png`` … for indices ``0..count-1``.

    Args:
        folder: the cache folder (from :func:`class_cache_dir`) or a user's ``prior.class_dir``.
        count: how many images are needed.
        generate: makes the images for a list of indices (image i must come from seed ``seed + i``).
        batch_size: indices per ``generate`` call.
        progress: show a progress bar while generating.
        metadata: written to :func:`metadata_path` (what the set was made from).
        source: the model generating them, named in the progress message.

    Returns:
        The paths of the ``count`` images. Only missing indices are generated, under a file lock, and
        each file is written atomically, so concurrent workers and crashes never leave a partial set.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    legacy = folder / "cache.json"  # where earlier versions wrote it: among the images
    if legacy.exists():
        with contextlib.suppress(FileNotFoundError):  # another worker moved it first
            os.replace(legacy, metadata_path(folder))
    paths = [folder / _class_image_name(i) for i in range(count)]
    if all(p.exists() for p in paths):
        return paths
    with file_lock(folder.with_name(folder.name + ".lock")):
        missing = [i for i, p in enumerate(paths) if not p.exists()]  # another worker may have made them
        if not missing:
            return paths
        if metadata is not None:
            with atomic_write(metadata_path(folder)) as tmp:
                Path(tmp).write_text(json.dumps(metadata, indent=2, sort_keys=True))
        from tqdm.auto import tqdm

        bar = tqdm(total=len(missing), desc="class images", unit="img", disable=not progress)
        started = time.perf_counter()
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            for index, image in zip(chunk, generate(chunk), strict=True):
                tmp = folder / f".{_class_image_name(index)}.tmp"
                image.save(tmp, format="PNG")
                os.replace(tmp, paths[index])
            bar.update(len(chunk))
            if start == 0:  # the first batch gives the rate (it includes loading the sampling pipeline)
                total = (time.perf_counter() - started) / len(chunk) * len(missing)
                log.info(
                    "generating %d class images with %s (~%s in all; prior.num_class_images sets the count)",
                    len(missing),
                    source,
                    _duration(total),
                )
        bar.close()
    return paths
