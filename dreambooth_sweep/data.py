"""Subject photos, class images and the training dataset (PIL + numpy transforms, no torchvision).

* :func:`load_images` reads a folder: EXIF orientation honoured, RGBA/CMYK/greyscale/16-bit converted
  to RGB; unreadable files (empty, not an image, corrupt/truncated, over Pillow's decompression-bomb
  pixel limit) are named with the reason and skipped while at least one good image remains. Photos
  smaller than ``data.resolution`` are upscaled with a warning naming them (never rejected).
* :func:`ensure_class_images` keeps one shared cache of class images per (model, prompt, resolution,
  seed); image *i* always comes from seed ``seed + i``, so asking for more images extends the set and
  asking for fewer reuses a prefix. A file lock makes concurrent workers generate each set once.
* :class:`DreamBoothDataset` pairs instance and class examples; its augmentation randomness is a pure
  function of (seed, epoch, index), so a resumed run sees exactly the same pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from dreambooth_sweep.config import ConfigError
from dreambooth_sweep.files import file_lock
from dreambooth_sweep.images import IMAGE_SUFFIXES, open_image, unreadable_reason

__all__ = [
    "IMAGE_SUFFIXES",
    "DreamBoothDataset",
    "EpochSampler",
    "collate",
    "ensure_class_images",
    "load_images",
    "load_instance_images",
    "preprocess",
]


def load_images(
    folder: str | os.PathLike[str], max_images: int | None = None, *, what: str = "data.instance_dir"
) -> list[tuple[Path, Image.Image]]:
    """Read every image in ``folder`` (sorted by name), RGB.

    Raises:
        ConfigError: the folder is missing or empty, or no file in it is a readable image.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"{what}={str(folder)!r} does not exist or is not a folder: point it at your subject photos"
        )
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ConfigError(
            f"{what}={str(folder)!r} is empty: put 5-25 photos of the subject (jpg/png/webp) in it"
        )
    images: list[tuple[Path, Image.Image]] = []
    skipped: list[str] = []
    for path in files:
        try:
            images.append((path, open_image(path)))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            skipped.append(f"{path.name} ({unreadable_reason(path, exc)})")
            continue
        if max_images is not None and len(images) >= max_images:
            break
    if not images:
        raise ConfigError(
            f"{what}={str(folder)!r} has no readable image ({', '.join(skipped[:5])}"
            f"{' ...' if len(skipped) > 5 else ''}): add jpg/png/webp photos"
        )
    if skipped:
        warnings.warn(f"skipped unreadable files in {folder}: {', '.join(skipped)}", stacklevel=2)
    return images


DEMO_DIRNAME = "demo_toy"


def load_instance_images(data_cfg: Any) -> list[Image.Image]:
    """The subject photos of a run, writing the synthetic demo subject first when asked to.

    The demo toy is only ever written into a missing folder named ``demo_toy``: a mistyped path to
    real photos must fail, never silently train on the toy.
    """
    folder = Path(data_cfg.instance_dir).expanduser()
    if data_cfg.get("generate_demo", False) and not folder.exists():
        if folder.name != DEMO_DIRNAME:
            raise ConfigError(
                f"data.instance_dir={str(folder)!r} does not exist: for your own photos use "
                "data=subject data.instance_dir=<folder> (data=demo only generates <data_dir>/demo_toy)"
            )
        from dreambooth_sweep.demo_data import make_demo_data

        make_demo_data(folder)
    images = load_images(folder, data_cfg.max_images)
    resolution = data_cfg.get("resolution")
    small = [
        f"{p.name} ({im.width}x{im.height})" for p, im in images if resolution and min(im.size) < resolution
    ]
    if small:
        # Upscaled, not rejected (consistent with preprocess), but upscaled photos teach the model blur.
        warnings.warn(
            f"{len(small)} photo(s) in {folder} are smaller than data.resolution={resolution} px and are "
            f"upscaled (blurry): {', '.join(small[:10])}{' ...' if len(small) > 10 else ''}; "
            "use larger photos or a lower data.resolution",
            stacklevel=2,
        )
    return [im for _, im in images]


def crop_box(
    size: tuple[int, int],
    resolution: int,
    *,
    center_crop: bool = True,
    rng: np.random.Generator | None = None,
) -> tuple[int, int, int, int]:
    """(resized width, resized height, left, top) of the square crop :func:`preprocess` takes from an
    image of ``size`` (w, h): the short side resized to ``resolution``, then a center or random crop."""
    w, h = size
    scale = resolution / min(w, h)
    new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    if center_crop or rng is None:
        left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    else:
        left = int(rng.integers(0, new_w - resolution + 1))
        top = int(rng.integers(0, new_h - resolution + 1))
    return new_w, new_h, left, top


def preprocess(
    image: Image.Image,
    resolution: int,
    *,
    center_crop: bool = True,
    flip: bool = False,
    rng: np.random.Generator | None = None,
    box: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """Resize the short side to ``resolution``, crop a square, optionally flip; CHW float in [-1, 1].

    ``box`` is the :func:`crop_box` already drawn for this image (else drawn here with ``rng``)."""
    new_w, new_h, left, top = box or crop_box(image.size, resolution, center_crop=center_crop, rng=rng)
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=None)
    image = image.crop((left, top, left + resolution, top + resolution))
    if flip:
        image = ImageOps.mirror(image)
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


View = tuple[int, int, bool]  # (0 instance | 1 class, image index, flipped): what a center crop can show


@dataclass
class Example:
    pixel_values: torch.Tensor
    input_ids: torch.Tensor


class DreamBoothDataset(torch.utils.data.Dataset):
    """Instance examples, each paired with a class example when prior preservation is on.

    Length is the larger of the two sets (as in the DreamBooth reference script), cycling the smaller.
    Prompts are tokenized by ``tokenize(prompt) -> ids`` when given (a model family: every tokenizer's
    ids in one row), else by ``tokenizer`` (one HF tokenizer, padded to its max length).
    Each example carries its *geometry* ``(original height, original width, crop top, crop left)`` in
    pixels (SDXL's micro-conditioning) and names its *view* — ``(stream, image, flipped)``, or None when the crop is random —
    so the trainer can cache the VAE latents of views augmentation cannot change; views listed in
    ``cached_views`` come without pixels (no preprocessing for work already done).
    """

    def __init__(
        self,
        instance_images: Sequence[Image.Image],
        instance_prompt: str,
        tokenizer: Any,
        resolution: int,
        *,
        class_images: Sequence[Image.Image] = (),
        class_prompt: str | None = None,
        center_crop: bool = True,
        random_flip: bool = False,
        seed: int = 0,
        tokenize: Callable[[str], torch.Tensor] | None = None,
    ) -> None:
        self.instance_images = list(instance_images)
        self.class_images = list(class_images)
        self.resolution = resolution
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.seed = seed
        self.epoch = 0
        self.cached_views: Container[View] = frozenset()  # the trainer's latent cache keys
        self.instance_ids = self._tokenize(tokenizer, instance_prompt, tokenize)
        self.class_ids = self._tokenize(tokenizer, class_prompt, tokenize) if self.class_images else None

    @staticmethod
    def _tokenize(tokenizer: Any, prompt: str | None, tokenize: Callable | None) -> torch.Tensor:
        if tokenize is not None:
            return tokenize(prompt)
        return tokenizer(
            prompt,
            padding="max_length",
            truncation=True,
            max_length=tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids[0]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(len(self.instance_images), len(self.class_images))

    def _view(
        self, images: list[Image.Image], index: int, stream: int
    ) -> tuple[View | None, torch.Tensor | None, torch.Tensor]:
        # Randomness depends only on (seed, epoch, index, stream): identical after a resume.
        rng = np.random.default_rng([self.seed, self.epoch, index, stream])
        flip = bool(self.random_flip and rng.random() < 0.5)
        view = (
            (stream, index % len(images), flip) if self.center_crop else None
        )  # random crops: no fixed view
        image = images[index % len(images)]
        box = crop_box(image.size, self.resolution, center_crop=self.center_crop, rng=rng)
        geometry = torch.tensor([image.height, image.width, box[3], box[2]])
        if view is not None and view in self.cached_views:
            return view, None, geometry
        pixels = preprocess(image, self.resolution, center_crop=self.center_crop, flip=flip, box=box)
        return view, pixels, geometry

    def __getitem__(self, index: int) -> dict[str, Any]:
        view, pixels, geometry = self._view(self.instance_images, index, 0)
        item = {
            "instance_pixels": pixels,
            "instance_view": view,
            "instance_ids": self.instance_ids,
            "instance_geometry": geometry,
        }
        if self.class_ids is not None:
            view, pixels, geometry = self._view(self.class_images, index, 1)
            item.update(
                class_pixels=pixels, class_view=view, class_ids=self.class_ids, class_geometry=geometry
            )
        return item


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Instance examples first, then class examples: one forward pass, split again for the two losses.

    ``pixel_values`` stacks the pixels when every example has them (else None); ``pixels`` and ``views``
    are per-example lists (a cached view has None for pixels).
    """
    classes = [it for it in items if "class_ids" in it]
    pixels = [it["instance_pixels"] for it in items] + [it["class_pixels"] for it in classes]
    views = [it.get("instance_view") for it in items] + [it.get("class_view") for it in classes]
    ids = [it["instance_ids"] for it in items] + [it["class_ids"] for it in classes]
    stacked = torch.stack(pixels).float() if all(p is not None for p in pixels) else None
    batch = {"pixel_values": stacked, "pixels": pixels, "views": views, "input_ids": torch.stack(ids)}
    if all("instance_geometry" in it for it in items):
        geometry = [it["instance_geometry"] for it in items] + [it["class_geometry"] for it in classes]
        batch["geometry"] = torch.stack(geometry)  # (B, 4): original h, w, crop top, left
    return batch


class EpochSampler(torch.utils.data.Sampler[int]):
    """Shuffled indices whose order is a pure function of (seed, epoch), sharded across processes.

    With it a run resumed at step k replays batch k exactly, without relying on RNG snapshots.
    """

    def __init__(self, length: int, seed: int, *, num_replicas: int = 1, rank: int = 0) -> None:
        self.length, self.seed, self.num_replicas, self.rank = length, seed, num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.length, generator=g).tolist()
        # Pad so every process gets the same number of indices.
        per_rank = -(-self.length // self.num_replicas)
        order = (order * self.num_replicas)[: per_rank * self.num_replicas]
        return iter(order[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return -(-self.length // self.num_replicas)


# ----------------------------------------------------------------------------- class-image cache


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


def _class_image_name(index: int) -> str:
    return f"{index:05d}.png"


def ensure_class_images(
    folder: str | os.PathLike[str],
    count: int,
    generate: Callable[[list[int]], list[Image.Image]],
    *,
    batch_size: int = 4,
    progress: bool = True,
    metadata: dict | None = None,
) -> list[Path]:
    """Make sure ``folder`` holds class images ``00000.png`` … for indices ``0..count-1``.

    Args:
        folder: the cache folder (from :func:`class_cache_dir`) or a user's ``prior.class_dir``.
        count: how many images are needed.
        generate: makes the images for a list of indices (image i must come from seed ``seed + i``).
        batch_size: indices per ``generate`` call.
        progress: show a progress bar while generating.
        metadata: written to ``cache.json`` beside the images (what the set was made from).

    Returns:
        The paths of the ``count`` images. Only missing indices are generated, under a file lock, and
        each file is written atomically, so concurrent workers and crashes never leave a partial set.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / _class_image_name(i) for i in range(count)]
    if all(p.exists() for p in paths):
        return paths
    with file_lock(folder.with_name(folder.name + ".lock")):
        missing = [i for i, p in enumerate(paths) if not p.exists()]  # another worker may have made them
        if not missing:
            return paths
        if metadata is not None:
            (folder / "cache.json").write_text(json.dumps(metadata, indent=2, sort_keys=True))
        from tqdm.auto import tqdm

        bar = tqdm(total=len(missing), desc="class images", unit="img", disable=not progress)
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            for index, image in zip(chunk, generate(chunk), strict=True):
                tmp = folder / f".{_class_image_name(index)}.tmp"
                image.save(tmp, format="PNG")
                os.replace(tmp, paths[index])
            bar.update(len(chunk))
        bar.close()
    return paths
