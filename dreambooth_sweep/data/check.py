"""What to look at before spending GPU hours: ``dreambooth-sweep check-data DIR``, and the same check
at the start of every training run (warnings only: nothing is dropped or changed because of it).

Checked: the number of photos against the documents' advice (5-25; the LoRA walk-through compared
5, 15 and 25), photos smaller than what they are trained at (upscaled: blurry), EXIF-rotated files
(trained upright; worth a look), near-duplicates (a 64-bit difference hash, named pairs), aspect
ratios a square crop cuts hard (or beyond the buckets), unreadable files. A contact sheet shows every
photo as training sees it — after the crop or bucket resize, with its caption.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from dreambooth_sweep.data.buckets import make_buckets, nearest_bucket
from dreambooth_sweep.data.sources import Instance, load_instance_set
from dreambooth_sweep.data.transforms import place
from dreambooth_sweep.files import atomic_write

__all__ = ["DataCheck", "check_instances", "check_run_data", "contact_sheet", "dhash", "run_check"]

SHEET_NAME = "data_check.png"

ADVISED = (5, 25)  # photos: the documents' range
DUPLICATE_BITS = 6  # dHash Hamming distance (of 64) at or below which two photos are near-duplicates
SQUARE_CUT = 0.3  # warn when a square crop cuts more than this fraction of a photo


@dataclass
class DataCheck:
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per photo: name, size, target, caption
    warnings: list[str] = field(default_factory=list)
    flagged: set[str] = field(default_factory=set)  # photo names some warning is about

    def table(self) -> str:
        """A one-screen summary: the photos (first 20), then every warning."""
        lines = [f"{'photo':<28} {'size':>9} {'trained at':>10} {'x':>3}  caption"]
        for row in self.rows[:20]:
            mark = "!" if row["name"] in self.flagged else " "
            lines.append(
                f"{mark}{row['name'][:27]:<27} {row['size']:>9} {row['target']:>10} {row['repeats']:>3}  "
                f"{(row['caption'] or '(instance prompt)')[:40]}"
            )
        if len(self.rows) > 20:
            lines.append(f" ... and {len(self.rows) - 20} more")
        lines.append(f"{len(self.rows)} photos; {len(self.warnings) or 'no'} warning(s)")
        lines += [f"  - {w}" for w in self.warnings]
        return "\n".join(lines)


def dhash(image: Image.Image) -> int:
    """A 64-bit difference hash: each bit says whether a pixel of a 9×8 greyscale thumbnail is brighter
    than its right neighbour. Survives resizing, recompression and small edits."""
    small = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def _exif_rotation(path: Path) -> int | None:
    try:
        with Image.open(path) as im:
            orientation = im.getexif().get(0x0112)
    except (OSError, ValueError, SyntaxError):
        return None
    return orientation if orientation not in (None, 1) else None


def _targets(instances: list[Instance], data_cfg: Any) -> list[tuple[int, int]]:
    r = int(data_cfg.resolution)
    if not data_cfg.get("buckets", False):
        return [(r, r)] * len(instances)
    buckets = make_buckets(r, data_cfg.get("bucket_step", 64), data_cfg.get("bucket_max_aspect", 4.0))
    return [nearest_bucket(i.image.size, buckets) for i in instances]


def check_instances(instances: list[Instance], data_cfg: Any) -> DataCheck:
    """The findings for photos already loaded (:func:`load_instance_set`)."""
    check = DataCheck()
    targets = _targets(instances, data_cfg)
    names = [i.path.name for i in instances]
    for inst, target in zip(instances, targets, strict=True):
        check.rows.append(
            {
                "name": inst.path.name,
                "size": f"{inst.image.width}x{inst.image.height}",
                "target": f"{target[0]}x{target[1]}",
                "repeats": inst.repeats,
                "caption": inst.caption,
            }
        )

    def warn(message: str, *flagged: str) -> None:
        check.warnings.append(message)
        check.flagged.update(flagged)

    low, high = ADVISED
    if len(instances) < low:
        warn(
            f"{len(instances)} photos: the documents advise {low}-{high} (the LoRA walk-through compared 5/15/25)"
        )
    elif len(instances) > high:
        warn(
            f"{len(instances)} photos: more than the {low}-{high} the documents tested; fine, but check variety"
        )
    # Square crops: load_instance_set already names photos below data.resolution.
    small = (
        []
        if not data_cfg.get("buckets", False)
        else [
            f"{n} ({i.image.width}x{i.image.height} < {t[0]}x{t[1]})"
            for n, i, t in zip(names, instances, targets, strict=True)
            if i.image.width < t[0] or i.image.height < t[1]
        ]
    )
    if small:
        warn(
            f"{len(small)} photo(s) are upscaled (blurry): {', '.join(small[:6])}",
            *[s.split(" (")[0] for s in small],
        )
    rotated = [(i.path.name, o) for i in instances if (o := _exif_rotation(i.path))]
    if rotated:
        listed = ", ".join(f"{n} (orientation {o})" for n, o in rotated[:6])
        warn(
            f"{len(rotated)} photo(s) are rotated by EXIF and trained upright: {listed}; check the sheet",
            *[n for n, _ in rotated],
        )
    hashes = [dhash(i.image) for i in instances]
    pairs = [
        (names[a], names[b], bin(hashes[a] ^ hashes[b]).count("1"))
        for a in range(len(hashes))
        for b in range(a + 1, len(hashes))
        if bin(hashes[a] ^ hashes[b]).count("1") <= DUPLICATE_BITS and instances[a].path != instances[b].path
    ]
    if pairs:
        listed = ", ".join(f"{a} ~ {b}" for a, b, _ in pairs[:6])
        warn(
            f"{len(pairs)} near-duplicate pair(s) (they weigh double, add no variety): {listed}",
            *[n for p in pairs for n in p[:2]],
        )
    cut = []
    for inst, target in zip(instances, targets, strict=True):
        w, h = inst.image.size
        kept = min(target[0] / w, target[1] / h) / max(target[0] / w, target[1] / h)
        if 1 - kept > SQUARE_CUT:
            cut.append(f"{inst.path.name} ({w}x{h}: {100 * (1 - kept):.0f}% cut)")
    if cut:
        fix = (
            "use data.buckets=true or crop them yourself"
            if not data_cfg.get("buckets")
            else "crop them yourself"
        )
        warn(
            f"{len(cut)} photo(s) lose much of the frame to the crop: {', '.join(cut[:6])}; {fix}",
            *[c.split(" (")[0] for c in cut],
        )
    return check


def contact_sheet(
    instances: list[Instance], data_cfg: Any, check: DataCheck | None = None, *, thumb: int = 160
) -> Image.Image:
    """Every photo as training sees it (center crop or bucket, no flip), captioned; flagged ones framed red."""
    targets = _targets(instances, data_cfg)
    cols = min(6, max(1, len(instances)))
    rows = math.ceil(len(instances) / cols)
    label_h = 34
    sheet = Image.new("RGB", (cols * (thumb + 8) + 8, rows * (thumb + label_h + 8) + 8), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    for n, (inst, target) in enumerate(zip(instances, targets, strict=True)):
        seen = place(inst.image, target, mask=inst.mask).pixels
        scale = thumb / max(seen.size)
        tile = seen.resize((max(1, round(seen.width * scale)), max(1, round(seen.height * scale))))
        x, y = 8 + (n % cols) * (thumb + 8), 8 + (n // cols) * (thumb + label_h + 8)
        ox, oy = x + (thumb - tile.width) // 2, y + (thumb - tile.height) // 2
        sheet.paste(tile, (ox, oy))
        if check is not None and inst.path.name in check.flagged:
            draw.rectangle(
                (ox - 3, oy - 3, ox + tile.width + 2, oy + tile.height + 2), outline=(230, 40, 40), width=3
            )
        caption = inst.caption or "(instance prompt)"
        draw.text((x, y + thumb + 3), f"{inst.path.name[:22]}  {target[0]}x{target[1]}", fill=(240, 240, 240))
        draw.text((x, y + thumb + 17), caption[:26], fill=(170, 170, 170))
    return sheet


def run_check(data_cfg: Any, sheet_path: Path | None = None) -> tuple[list[Instance], DataCheck]:
    """Load the photos as training does, check them, and write the contact sheet (when asked).

    Warnings from loading (unreadable files, missing captions, ...) become findings too.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        instances = load_instance_set(data_cfg)
    check = check_instances(instances, data_cfg)
    check.warnings[:0] = [str(w.message) for w in caught]
    if sheet_path is not None:  # atomically: every process of a multi-GPU run writes the same sheet
        with atomic_write(sheet_path) as tmp:
            contact_sheet(instances, data_cfg, check).save(tmp, format="PNG")
    return instances, check


def check_run_data(data_cfg: Any, run_dir: Path) -> list[Instance]:
    """The check at the start of a training run: each finding a warning, the table in the log, the
    contact sheet in ``<run>/data_check.png``. Returns the photos, unchanged by the check."""
    import logging

    run_dir.mkdir(parents=True, exist_ok=True)
    instances, check = run_check(data_cfg, run_dir / SHEET_NAME)
    for message in check.warnings:
        warnings.warn(message, UserWarning, stacklevel=2)
    logging.getLogger("dreambooth_sweep.data").info(
        "data check (contact sheet %s):\n%s", run_dir / SHEET_NAME, check.table()
    )
    return instances
