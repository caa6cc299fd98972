"""Masked loss: ``<photo>.mask.png`` or the alpha channel weights the loss, the background by
``data.mask_loss_weight``; masks follow every crop, flip and bucket resize."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dreambooth_sweep import data
from dreambooth_sweep.config import ConfigError
from dreambooth_sweep.train import train


class _Tok:
    model_max_length = 4

    def __call__(self, prompt, **kw):
        class Out:
            input_ids = torch.zeros(1, 4, dtype=torch.long)

        return Out()


def _subject(folder: Path, name: str, size=(120, 80), box=(10, 20, 50, 70), background=(0, 0, 255)) -> Path:
    """A red subject in ``box`` on ``background``, and its mask file."""
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, background)
    image.paste((255, 0, 0), box)
    image.save(folder / f"{name}.png")
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    mask.save(folder / f"{name}.mask.png")
    return folder / f"{name}.png"


def _cfg(folder: Path, **kw):
    from omegaconf import OmegaConf

    base = {"instance_dir": str(folder), "identifier": "sks", "class_noun": "toy", "resolution": 64}
    return OmegaConf.create({**base, "mask_loss_weight": 0.1, **kw})


@pytest.mark.parametrize("buckets", [False, True], ids=["square", "buckets"])
def test_masks_follow_crop_flip_and_bucket_resize(tmp_path: Path, buckets: bool) -> None:
    _subject(tmp_path / "p", "a")
    instances = data.load_instance_set(_cfg(tmp_path / "p"))
    assert instances[0].mask is not None and instances[0].mask.size == (120, 80)
    ds = data.DreamBoothDataset(
        instances,
        "p",
        _Tok(),
        64,
        random_flip=True,
        center_crop=not buckets,
        buckets=data.make_buckets(64, 16, 4.0) if buckets else None,
        mask_loss_weight=0.1,
        seed=0,
    )
    flips = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        item = ds[0]
        red = (item["instance_pixels"][0] + 1) / 2  # the subject is the only red
        weights = item["instance_mask"][0]
        assert weights.shape == red.shape == ((48, 80) if buckets else (64, 64))  # (h, w)
        # Pixels and mask went through the same resize, crop and flip: weight = 0.1 + 0.9 · redness.
        assert torch.allclose(weights, 0.1 + 0.9 * red, atol=1.5 / 255)
        flips.add(bool(red[:, : red.shape[1] // 2].sum() < red[:, red.shape[1] // 2 :].sum()))
    assert flips == {False, True}  # both orientations were seen, and the mask followed


def test_alpha_channel_is_the_mask_and_an_opaque_one_is_none(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (40, 40), (0, 255, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 20, 40))
    rgba.save(tmp_path / "a.png")
    Image.new("RGBA", (40, 40), (9, 9, 9, 255)).save(tmp_path / "b.png")
    a, b = data.load_instance_set(_cfg(tmp_path))
    assert np.asarray(a.mask)[:, :20].min() == 255 and np.asarray(a.mask)[:, 20:].max() == 0
    assert a.image.getpixel((30, 5)) == (255, 255, 255)  # the photo itself: transparency on white
    assert b.mask is None
    off = data.load_instance_set(_cfg(tmp_path, mask_loss_weight=None))
    assert all(i.mask is None for i in off)


def test_bad_masks_are_one_line_errors(tmp_path: Path) -> None:
    _subject(tmp_path, "a")
    Image.new("L", (32, 32)).save(tmp_path / "a.mask.png")
    with pytest.raises(
        ConfigError, match=r"mask a\.mask\.png is 32x32 but a\.png is 120x80: draw the mask"
    ) as info:
        data.load_instance_set(_cfg(tmp_path))
    assert "\n" not in str(info.value)
    (tmp_path / "a.mask.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match=r"mask .*a\.mask\.png is unreadable \(not an image\)"):
        data.load_instance_set(_cfg(tmp_path))


def test_mask_files_without_mask_loss_weight_are_named_not_silently_ignored(tmp_path: Path) -> None:
    _subject(tmp_path, "a")
    with pytest.warns(UserWarning, match=r"\.mask\.png files but data\.mask_loss_weight is null"):
        (only,) = data.load_instance_set(_cfg(tmp_path, mask_loss_weight=None))
    assert only.mask is None and only.path.name == "a.png"  # the mask file is not an image


def test_background_weight_scales_only_the_background_loss() -> None:
    """Two predictions that differ only outside the mask: the weighted loss of the difference."""
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :32, :] = 1.0  # subject: the top half
    target = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    near, far = target.clone(), target.clone()
    far[..., 4:, :] += 3.0  # latent rows 4.. lie entirely in the background
    for weight in (0.0, 0.1, 1.0):
        w = data.latent_weights(weight + (1 - weight) * mask, (8, 8), torch.device("cpu"))
        loss = [(F.mse_loss(p, target, reduction="none") * w).mean() for p in (near, far)]
        assert torch.allclose(loss[1] - loss[0], torch.tensor(weight * 9.0 * 0.5), atol=1e-6)


def test_training_weights_the_background_loss_as_configured(make_cfg, tmp_path: Path) -> None:
    """A photo that is all background: its loss is exactly weight × the unmasked loss (same step)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.new("RGBA", (64, 64), (40 * i, 200, 30, 0)).save(photos / f"{i}.png")  # fully transparent
    losses = {}
    for weight in ("0.0", "0.25", "1.0"):
        cfg = make_cfg(
            f"data.instance_dir={photos}",
            f"data.mask_loss_weight={weight}",
            "train.max_steps=1",
            "train.save_final=false",
            run=f"w{weight}",
        )
        losses[weight] = train(cfg)["train/loss"]
        assert (Path(cfg.paths.output_dir) / "data_check.png").exists()  # the start-of-run data check
    assert losses["0.0"] == 0.0 and losses["1.0"] > 0
    assert losses["0.25"] == pytest.approx(0.25 * losses["1.0"], rel=1e-6)
