"""``dreambooth-sweep check-data``: duplicates, tiny, rotated, cut and unreadable photos are named; the
contact sheet shows what training sees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreambooth_sweep.cli import main
from dreambooth_sweep.data import check


def _photo(path: Path, seed: int, size=(128, 128)) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize(
        size, Image.Resampling.BICUBIC
    )
    image.save(path)
    return image


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):
        _photo(folder / f"p{i}.png", seed=i)
    original = Image.open(folder / "p0.png").convert("RGB")
    original.resize((120, 120)).save(folder / "p0_copy.jpg", quality=85)  # a near-duplicate
    _photo(folder / "small.png", seed=10, size=(40, 40))
    _photo(folder / "wide.png", seed=11, size=(256, 64))
    rotated = _photo(folder / "turned.jpg", seed=12, size=(128, 96))
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(folder / "turned.jpg", exif=exif)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    return folder


def test_check_data_names_every_problem_and_draws_the_sheet(messy: Path, tmp_path: Path, capsys) -> None:
    sheet = tmp_path / "sheet.png"
    assert (
        main(["check-data", str(messy), "--resolution", "64", "--class-noun", "dog", "--sheet", str(sheet)])
        == 0
    )
    out = capsys.readouterr().out
    assert "p0.png ~ p0_copy.jpg" in out and "1 near-duplicate pair(s)" in out
    assert "small.png (40x40)" in out and "upscaled" in out
    assert "turned.jpg (orientation 6)" in out
    assert "wide.png (256x64: 75% cut)" in out and "data.buckets=true" in out
    assert "broken.jpg (" in out
    assert "9 photos" in out  # broken.jpg is skipped, everything else is kept (a check never drops)
    assert len(out.splitlines()) < 40  # one screen
    image = Image.open(sheet)
    assert image.width > 6 * 100 and image.height > 2 * 100  # 9 tiles: 6 columns, 2 rows


def test_check_data_with_buckets_trusts_the_bucket(messy: Path, tmp_path: Path, capsys) -> None:
    args = ["check-data", str(messy), "--resolution", "64", "--buckets", "--bucket-step", "16"]
    assert main([*args, "--sheet", str(tmp_path / "s.png")]) == 0
    out = capsys.readouterr().out
    assert "wide.png" in out and "75% cut" not in out  # a 4:1 photo fits a 4:1 bucket
    assert "small.png (40x40 < 64x64)" in out


def test_dhash_finds_resized_copies_not_different_photos(tmp_path: Path) -> None:
    a = _photo(tmp_path / "a.png", seed=1)
    b = _photo(tmp_path / "b.png", seed=2)
    distance = lambda x, y: bin(check.dhash(x) ^ check.dhash(y)).count("1")  # noqa: E731
    assert distance(a, a.resize((50, 50))) <= check.DUPLICATE_BITS < distance(a, b)


def test_check_data_on_a_bad_folder_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["check-data", str(tmp_path / "nope"), "--sheet", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data.instance_dir=") and "\n" not in err
