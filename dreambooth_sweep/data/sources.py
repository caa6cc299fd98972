"""Subject photos as people bring them: folders (recursive), several of them, kohya repeat folders,
captions and masks.

* Every image under ``data.instance_dir`` (and each of ``data.instance_dirs``) is taken, subfolders
  included, sorted by path relative to its folder; hidden files and folders are skipped. EXIF
  orientation, 16-bit/float/palette/CMYK pixels are handled by :mod:`dreambooth_sweep.images`;
  unreadable files (broken symlinks included) are named with the reason and skipped.
* A folder named ``N_name`` (kohya): its images appear N times per epoch and, lacking their own
  caption, are captioned ``name`` (e.g. ``10_sks dog/``); other images appear ``data.repeats`` times.
* Captions come from :mod:`.captions` (sidecar ``.txt``/``.caption``, ``metadata.jsonl``).
* Masks (with ``data.mask_loss_weight`` set): ``<stem>.mask.png`` beside the image (white = subject,
  black = background, grey in between), else the image's alpha channel.
* ``data.max_images`` keeps the first N images in that order (before repeats): dataset-size studies.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from dreambooth_sweep.data.captions import (
    CAPTION_SUFFIXES,
    METADATA_FILE,
    read_caption_file,
    read_metadata,
    with_identifier,
)
from dreambooth_sweep.errors import ConfigError
from dreambooth_sweep.images import IMAGE_SUFFIXES, open_image, unreadable_reason

__all__ = [
    "DEMO_DIRNAME",
    "MASK_SUFFIX",
    "Instance",
    "instance_folders",
    "load_images",
    "load_instance_images",
    "load_instance_set",
]

MASK_SUFFIX = ".mask.png"
DEMO_DIRNAME = "demo_toy"
_REPEAT_DIR = re.compile(r"^(\d+)_(.*)$")
# Files that describe images rather than being images: never offered to the image reader.
_SIDECAR_NAMES = {METADATA_FILE, "cache.json"}


@dataclass
class Instance:
    """One subject photo as training uses it."""

    path: Path
    image: Image.Image  # upright 8-bit RGB (transparency composited on white)
    caption: str | None = None  # identifier rule applied; None: data.instance_prompt
    repeats: int = 1
    mask: Image.Image | None = None  # mode L, the image's size; 255 = subject, 0 = background


def _visible(root: Path, path: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _walk(root: Path) -> list[Path]:
    """Every visible file under ``root``, sorted by relative path (symlinks to files included)."""
    found = [p for p in root.rglob("*") if _visible(root, p) and (p.is_file() or p.is_symlink())]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _txt_captions_in_use(files: list[Path]) -> bool:
    stems = {(p.parent, p.stem) for p in files if p.suffix.lower() in IMAGE_SUFFIXES}
    return any(p.suffix.lower() == ".txt" and (p.parent, p.stem) in stems for p in files)


def _is_sidecar(path: Path, txt_captions: bool) -> bool:
    name, suffix = path.name.lower(), path.suffix.lower()
    return (
        name in _SIDECAR_NAMES
        or name.endswith(MASK_SUFFIX)
        or suffix == ".caption"
        or (suffix == ".txt" and txt_captions)
    )


def load_images(
    folder: str | os.PathLike[str], max_images: int | None = None, *, what: str = "data.instance_dir"
) -> list[tuple[Path, Image.Image]]:
    """Read every image under ``folder`` (recursively, sorted by relative path), as RGB.

    Caption, mask and metadata files are not images and are passed over; any other file that is not a
    readable image is named with the reason in one warning.

    Raises:
        ConfigError: the folder is missing or empty, or no file in it is a readable image.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"{what}={str(root)!r} does not exist or is not a folder: point it at your subject photos"
        )
    files = _walk(root)
    txt_captions = _txt_captions_in_use(files)
    files = [p for p in files if not _is_sidecar(p, txt_captions)]
    if not files:
        raise ConfigError(
            f"{what}={str(root)!r} is empty: put 5-25 photos of the subject (jpg/png/webp) in it"
        )
    images: list[tuple[Path, Image.Image]] = []
    skipped: list[str] = []
    for path in files:
        try:
            images.append((path, open_image(path)))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            skipped.append(f"{path.relative_to(root).as_posix()} ({unreadable_reason(path, exc)})")
            continue
        if max_images is not None and len(images) >= max_images:
            break
    if not images:
        raise ConfigError(
            f"{what}={str(root)!r} has no readable image ({', '.join(skipped[:5])}"
            f"{' ...' if len(skipped) > 5 else ''}): add jpg/png/webp photos"
        )
    if skipped:
        warnings.warn(f"skipped unreadable files in {root}: {', '.join(skipped)}", stacklevel=2)
    return images


def _repeats(root: Path, path: Path, default: int) -> tuple[int, str | None]:
    """(repeats, folder caption) from the innermost ``N_name`` folder between ``root`` and ``path``."""
    for part in reversed(path.parent.relative_to(root).parts):
        match = _REPEAT_DIR.match(part)
        if match:
            count = int(match.group(1))
            if count < 1:
                raise ConfigError(
                    f"folder {path.parent} asks for {count} repeats: use 1_{match.group(2)} or more "
                    "(remove the folder to leave its images out)"
                )
            return count, match.group(2).replace("_", " ").strip() or None
    return default, None


def _captions(root: Path, files: list[Path], images: list[Path]) -> dict[Path, tuple[str, str]]:
    """{image: (raw caption, where it came from)}; checks orphans and double captions."""
    txt = _txt_captions_in_use(files)
    by_stem = {(p.parent, p.stem): p for p in files if p.suffix.lower() in IMAGE_SUFFIXES}
    found: dict[Path, tuple[str, str]] = {}

    def add(image: Path, text: str, source: str) -> None:
        if image in found:
            raise ConfigError(
                f"{image.name} has two captions ({found[image][1]} and {source}): keep one of them"
            )
        found[image] = (text, source)

    wanted = {p.resolve(): p for p in images}
    for path in files:
        suffix = path.suffix.lower()
        if suffix in CAPTION_SUFFIXES and (suffix == ".caption" or txt):
            image = by_stem.get((path.parent, path.stem))
            if image is None:
                raise ConfigError(
                    f"caption file {path} has no image {path.stem}.jpg/.png/... beside it: "
                    "rename it to match its photo or delete it"
                )
            if image.resolve() in wanted:
                add(image, read_caption_file(path), path.name)
        elif path.name == METADATA_FILE:
            for image, (text, line) in read_metadata(path).items():
                if image in wanted:
                    add(wanted[image], text, f"{path.relative_to(root).as_posix()} line {line}")
    return found


def _mask(path: Path, image: Image.Image) -> Image.Image | None:
    """The loss mask of ``path``: its ``.mask.png``, else its alpha channel, else None."""
    mask_file = path.with_name(path.stem + MASK_SUFFIX)
    if mask_file.exists():
        try:
            with Image.open(mask_file) as im:
                mask = ImageOps.exif_transpose(im).convert("L")
        except (OSError, ValueError, SyntaxError) as exc:
            raise ConfigError(
                f"mask {mask_file} is unreadable ({unreadable_reason(mask_file, exc)}): "
                "save it as a greyscale PNG"
            ) from exc
        if mask.size != image.size:
            raise ConfigError(
                f"mask {mask_file.name} is {mask.width}x{mask.height} but {path.name} is "
                f"{image.width}x{image.height}: draw the mask at the photo's size"
            )
        return mask
    with Image.open(path) as im:
        upright = ImageOps.exif_transpose(im)
        if upright.mode not in ("RGBA", "LA", "PA") and upright.info.get("transparency") is None:
            return None
        alpha = upright.convert("RGBA").getchannel("A")
    return None if alpha.getextrema() == (255, 255) else alpha


def instance_folders(data_cfg: Any) -> list[Path]:
    """``data.instance_dir`` then each of ``data.instance_dirs``, in that order."""
    return [Path(f).expanduser() for f in [data_cfg.instance_dir, *(data_cfg.get("instance_dirs") or [])]]


def _write_demo(data_cfg: Any, folder: Path) -> None:
    # The demo toy is only ever written into a missing folder named demo_toy: a mistyped path to real
    # photos must fail, never silently train on the toy.
    if folder.name != DEMO_DIRNAME:
        raise ConfigError(
            f"data.instance_dir={str(folder)!r} does not exist: for your own photos use "
            "data=subject data.instance_dir=<folder> (data=demo only generates <data_dir>/demo_toy)"
        )
    from dreambooth_sweep.demo_data import make_demo_data

    make_demo_data(folder)


def load_instance_set(data_cfg: Any) -> list[Instance]:
    """The subject photos of a run with their captions, repeats and masks (see the module docstring)."""
    folders = instance_folders(data_cfg)
    if data_cfg.get("generate_demo", False) and not folders[0].exists():
        _write_demo(data_cfg, folders[0])
    use_captions = data_cfg.get("captions", True)
    masks = data_cfg.get("mask_loss_weight") is not None
    max_images = data_cfg.get("max_images")
    instances: list[Instance] = []
    for index, root in enumerate(folders):
        what = "data.instance_dir" if index == 0 else f"data.instance_dirs[{index - 1}]"
        left = None if max_images is None else max_images - len(instances)
        if left is not None and left <= 0:
            break
        loaded = load_images(root, left, what=what)
        files = _walk(root)
        captions = _captions(root, files, [p for p, _ in loaded]) if use_captions else {}
        for path, image in loaded:
            repeats, folder_caption = _repeats(root, path, int(data_cfg.get("repeats", 1)))
            raw = captions[path][0] if path in captions else (folder_caption if use_captions else None)
            caption = (
                with_identifier(
                    raw,
                    str(data_cfg.identifier),
                    str(data_cfg.class_noun),
                    insert=data_cfg.get("insert_identifier", True),
                )
                if raw is not None
                else None
            )
            mask = _mask(path, image) if masks else None
            instances.append(Instance(path, image, caption, repeats, mask))
        if not masks and any(p.name.lower().endswith(MASK_SUFFIX) for p in files):
            warnings.warn(
                f"{root} has {MASK_SUFFIX} files but data.mask_loss_weight is null: masks are not used "
                "(set e.g. data.mask_loss_weight=0.1 to weight the background's loss)",
                stacklevel=2,
            )
    uncaptioned = [i.path.name for i in instances if i.caption is None]
    if use_captions and uncaptioned and len(uncaptioned) < len(instances):
        warnings.warn(
            f"{len(uncaptioned)} of {len(instances)} photos have no caption and use data.instance_prompt: "
            f"{', '.join(uncaptioned[:8])}{' ...' if len(uncaptioned) > 8 else ''}",
            stacklevel=2,
        )
    if not data_cfg.get("buckets", False):  # buckets: data/check.py compares each photo with its bucket
        _warn_small(instances, data_cfg.get("resolution"), folders[0])
    return instances


def _warn_small(instances: list[Instance], resolution: int | None, folder: Path) -> None:
    small = [
        f"{i.path.name} ({i.image.width}x{i.image.height})"
        for i in instances
        if resolution and min(i.image.size) < resolution
    ]
    if small:
        # Upscaled, not rejected (consistent with preprocess), but upscaled photos teach the model blur.
        warnings.warn(
            f"{len(small)} photo(s) in {folder} are smaller than data.resolution={resolution} px and are "
            f"upscaled (blurry): {', '.join(small[:10])}{' ...' if len(small) > 10 else ''}; "
            "use larger photos or a lower data.resolution",
            stacklevel=3,
        )


def load_instance_images(data_cfg: Any) -> list[Image.Image]:
    """The subject photos of a run, each once (no repeats): evaluation's reference images."""
    return [i.image for i in load_instance_set(data_cfg)]
