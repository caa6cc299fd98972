"""Image loading, transforms, the dataset and the class-image cache."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config
from PIL import Image

from dreambooth_sweep import data
from dreambooth_sweep.config import ConfigError
from dreambooth_sweep.demo_data import make_demo_data


def _save(path: Path, image: Image.Image, **kw) -> Path:
    image.save(path, **kw)
    return path


def test_demo_data_is_deterministic_and_varied(tmp_path: Path) -> None:
    a, b = make_demo_data(tmp_path / "a", num_images=6), make_demo_data(tmp_path / "b", num_images=6)
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in a]
    assert digest == [hashlib.sha256(p.read_bytes()).hexdigest() for p in b]
    assert len(set(digest)) == 6
    with pytest.raises(ValueError, match="between 5 and 25"):
        make_demo_data(tmp_path / "c", num_images=3)


def test_modes_are_converted_not_rejected(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))  # fully transparent red → white
    _save(tmp_path / "a_rgba.png", rgba)
    _save(tmp_path / "b_cmyk.jpg", Image.new("CMYK", (40, 30), (0, 255, 255, 0)))
    _save(tmp_path / "c_grey.png", Image.new("L", (40, 30), 128))
    sixteen = Image.fromarray(np.full((30, 40), 65535, dtype=np.uint16))
    _save(tmp_path / "d_16bit.png", sixteen)
    _save(tmp_path / "e_palette.png", Image.new("P", (40, 30), 3))
    images = data.load_images(tmp_path)
    assert [p.name for p, _ in images] == [
        "a_rgba.png",
        "b_cmyk.jpg",
        "c_grey.png",
        "d_16bit.png",
        "e_palette.png",
    ]
    assert all(im.mode == "RGB" and im.size == (40, 30) for _, im in images)
    assert images[0][1].getpixel((0, 0)) == (255, 255, 255)
    assert images[3][1].getpixel((0, 0)) == (255, 255, 255)  # 16-bit white stays white


def test_exif_orientation_is_honoured(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), "red")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    _save(tmp_path / "rot.jpg", image, exif=exif)
    ((_, loaded),) = data.load_images(tmp_path)
    assert loaded.size == (20, 40)


def test_unreadable_files_are_named_and_skipped(tmp_path: Path) -> None:
    _save(tmp_path / "good.png", Image.new("RGB", (32, 32), "blue"))
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"garbage" * 10)
    with pytest.warns(UserWarning, match="empty.jpg") as record:
        images = data.load_images(tmp_path)
    assert [p.name for p, _ in images] == ["good.png"]
    assert "notes.txt" in str(record[0].message) and "broken.jpg" in str(record[0].message)


@pytest.mark.parametrize("setup", ["missing", "empty", "unreadable"])
def test_bad_instance_dirs_fail_with_one_line(tmp_path: Path, setup: str) -> None:
    folder = tmp_path / "photos"
    if setup != "missing":
        folder.mkdir()
    if setup == "unreadable":
        (folder / "a.jpg").write_bytes(b"")
        (folder / "b.txt").write_text("x")
    with pytest.raises(ConfigError, match="data.instance_dir") as info:
        data.load_images(folder)
    assert "\n" not in str(info.value)


def test_max_images_takes_the_first_sorted(tmp_path: Path) -> None:
    for i in range(5):
        _save(tmp_path / f"{i}.png", Image.new("RGB", (16, 16), (i * 40, 0, 0)))
    assert [p.name for p, _ in data.load_images(tmp_path, max_images=3)] == ["0.png", "1.png", "2.png"]


def test_preprocess_resizes_crops_and_normalises() -> None:
    image = Image.new("RGB", (200, 100), "white")
    image.paste((0, 0, 0), (0, 0, 30, 100))  # black strip on the left
    x = data.preprocess(image, 64, center_crop=True)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert x.max() <= 1.0 and x.min() >= -1.0
    assert torch.allclose(x[:, :, 0], torch.ones(3, 64))  # center crop cut the black strip away
    flipped = data.preprocess(image, 64, center_crop=True, flip=True)
    assert torch.equal(flipped, x.flip(-1))
    small = data.preprocess(Image.new("RGB", (20, 30), "red"), 64)  # upscaled, never an error
    assert small.shape == (3, 64, 64)


def test_random_crop_and_flip_are_a_function_of_seed_epoch_index(demo_dir: Path) -> None:
    images = [im for _, im in data.load_images(demo_dir)]

    class Tok:
        model_max_length = 8

        def __call__(self, prompt, **kw):
            class Out:
                input_ids = torch.zeros(1, 8, dtype=torch.long)

            return Out()

    make = lambda: data.DreamBoothDataset(images, "p", Tok(), 32, center_crop=False, random_flip=True, seed=3)  # noqa: E731
    a, b = make(), make()
    assert torch.equal(a[2]["instance_pixels"], b[2]["instance_pixels"])
    b.set_epoch(1)
    assert any(not torch.equal(a[i]["instance_pixels"], b[i]["instance_pixels"]) for i in range(len(a)))


def test_collate_puts_instance_examples_first() -> None:
    items = [
        {
            "instance_pixels": torch.full((3, 4, 4), float(i)),
            "instance_ids": torch.tensor([i]),
            "class_pixels": torch.full((3, 4, 4), 10.0 + i),
            "class_ids": torch.tensor([10 + i]),
        }
        for i in range(2)
    ]
    batch = data.collate(items)
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [0.0, 1.0, 10.0, 11.0]
    assert batch["input_ids"].squeeze(1).tolist() == [0, 1, 10, 11]


def test_epoch_sampler_is_deterministic_and_shards() -> None:
    s = data.EpochSampler(10, seed=1)
    first = list(s)
    assert sorted(first) == list(range(10)) and first == list(data.EpochSampler(10, seed=1))
    s.set_epoch(1)
    assert list(s) != first
    shards = [list(data.EpochSampler(10, seed=1, num_replicas=3, rank=r)) for r in range(3)]
    assert all(len(x) == 4 for x in shards) and set(sum(shards, [])) == set(range(10))


def test_class_image_cache_generates_only_missing_indices(tmp_path: Path) -> None:
    calls: list[list[int]] = []

    def generate(indices: list[int]) -> list[Image.Image]:
        calls.append(indices)
        return [Image.new("RGB", (8, 8), (i, 0, 0)) for i in indices]

    folder = data.class_cache_dir(tmp_path, "m", "a photo of dog", 64, 0, {})
    paths = data.ensure_class_images(folder, 5, generate, batch_size=2, progress=False)
    assert calls == [[0, 1], [2, 3], [4]] and all(p.exists() for p in paths)
    calls.clear()
    data.ensure_class_images(folder, 5, generate, progress=False)
    assert calls == []  # second run generates nothing
    data.ensure_class_images(folder, 7, generate, batch_size=4, progress=False)
    assert calls == [[5, 6]]  # more images extend the set; the first five are reused
    assert not list(folder.glob(".*.tmp"))
    other = data.class_cache_dir(tmp_path, "m", "a photo of cat", 64, 0, {})
    assert other != folder and data.class_cache_dir(tmp_path, "m", "a photo of dog", 64, 1, {}) != folder


def test_class_image_generation_says_how_many_with_what_and_how_long(tmp_path: Path, caplog) -> None:
    """A long generation is announced after its first batch: count, model and an estimate."""

    def generate(indices: list[int]) -> list[Image.Image]:
        time.sleep(0.05 * len(indices))
        return [Image.new("RGB", (8, 8)) for _ in indices]

    folder = tmp_path / "class"
    with caplog.at_level(logging.INFO, logger="dreambooth_sweep.data"):
        data.ensure_class_images(folder, 6, generate, batch_size=2, progress=False, source="tiny")
    [message] = [r.getMessage() for r in caplog.records if "class images" in r.getMessage()]
    assert re.fullmatch(
        r"generating 6 class images with tiny \(~\d+ s in all; .*num_class_images.*\)", message
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dreambooth_sweep.data"):
        data.ensure_class_images(folder, 6, generate, progress=False, source="tiny")
    assert not caplog.records  # nothing to generate, nothing announced


@pytest.mark.parametrize("model", ["tiny", "sd15"])
def test_cpu_smoke_with_prior_generates_few_class_images(model: str) -> None:
    cfg = compose_config([f"model={model}", "prior=on", "smoke=cpu"])
    assert cfg.prior.num_class_images <= 8 and cfg.prior.gen_num_inference_steps <= 8


def test_demo_subject_is_generated_only_into_its_own_folder(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {"instance_dir": str(tmp_path / "demo_toy"), "generate_demo": True, "max_images": None}
    )
    assert len(data.load_instance_images(cfg)) == 12
    typo = OmegaConf.create(
        {"instance_dir": str(tmp_path / "photoz"), "generate_demo": True, "max_images": None}
    )
    with pytest.raises(ConfigError, match="data=subject"):
        data.load_instance_images(typo)
    assert not (tmp_path / "photoz").exists()


def test_float_images_convert_and_broken_symlinks_are_named(tmp_path: Path) -> None:
    grey = Image.fromarray(np.full((20, 30), 0.5, dtype=np.float32), mode="F")
    grey.save(tmp_path / "a_float.tif")
    _save(tmp_path / "b.png", Image.new("RGB", (30, 20), "blue"))
    (tmp_path / "c_link.png").symlink_to(tmp_path / "gone.png")
    with pytest.warns(UserWarning, match=r"c_link\.png \(broken symlink to .*gone\.png\)"):
        images = data.load_images(tmp_path)
    assert [p.name for p, _ in images] == ["a_float.tif", "b.png"]
    assert images[0][1].getpixel((0, 0)) == (128, 128, 128)  # 0.5 of 0..1 is mid-grey, not black


def test_images_in_subfolders_are_taken(tmp_path: Path) -> None:
    _save(tmp_path / "top.png", Image.new("RGB", (16, 16)))
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    for name in ("sub/a.png", "sub/deeper/b.png", "sub/c.png"):
        _save(tmp_path / name, Image.new("RGB", (16, 16)))
    names = [p.relative_to(tmp_path).as_posix() for p, _ in data.load_images(tmp_path)]
    assert names == ["sub/a.png", "sub/c.png", "sub/deeper/b.png", "top.png"]


def test_class_image_metadata_stays_out_of_the_image_folder(tmp_path: Path) -> None:
    folder = tmp_path / "my_classes"
    folder.mkdir()
    (folder / "cache.json").write_text("{}")  # where earlier versions wrote it
    generate = lambda idx: [Image.new("RGB", (8, 8)) for _ in idx]  # noqa: E731
    data.ensure_class_images(folder, 2, generate, progress=False, metadata={"prompt": "a photo of dog"})
    assert sorted(p.name for p in folder.iterdir()) == ["00000.png", "00001.png"]  # only images
    assert data.metadata_path(folder) == tmp_path / "my_classes.cache.json"
    assert '"a photo of dog"' in data.metadata_path(folder).read_text()
