"""Aspect-ratio buckets: geometry, batches that never mix buckets, the latent cache per bucket view,
the crop record SDXL needs, and a mid-epoch resume that replays the same batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dreambooth_sweep import caches, data
from dreambooth_sweep import train as train_mod
from dreambooth_sweep.train import train

BUCKETS = ("data.buckets=true", "data.bucket_step=16")  # model=tiny: 64 px, so 16-px steps


class _Tok:
    model_max_length = 4

    def __call__(self, prompt, **kw):
        class Out:
            input_ids = torch.zeros(1, 4, dtype=torch.long)

        return Out()


@pytest.fixture
def mixed_dir(tmp_path: Path) -> Path:
    """Three landscape, three portrait and two square photos, each a different colour."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    sizes = [(96, 48), (120, 64), (100, 60), (48, 96), (64, 120), (60, 100), (64, 64), (80, 80)]
    for i, size in enumerate(sizes):
        image = Image.new("RGB", size, (30 * i, 255 - 30 * i, 90))
        image.paste((255, 255, 255), (0, 0, size[0] // 4, size[1] // 4))  # a corner to find after a flip
        image.save(folder / f"{i}.png")
    return folder


def test_bucket_geometry() -> None:
    for resolution, step in ((512, 64), (1024, 64), (64, 16)):
        buckets = data.make_buckets(resolution, step, 4.0)
        assert (resolution, resolution) in buckets
        for w, h in buckets:
            assert w % step == 0 and h % step == 0 and w * h <= resolution**2
            assert max(w / h, h / w) <= 4.0 and (h, w) in buckets
    sd = data.make_buckets(512, 64, 4.0)
    assert sd == [(256, 1024), (320, 768), (384, 640), (448, 576), (512, 512), (576, 448), (640, 384), (768, 320), (1024, 256)]  # fmt: skip
    assert data.nearest_bucket((1920, 1080), sd) == (640, 384)  # 16:9 → 5:3
    assert data.nearest_bucket((1080, 1920), sd) == (384, 640)
    assert data.nearest_bucket((500, 490), sd) == (512, 512)
    assert data.make_buckets(512, 64, 1.5) == [(448, 576), (512, 512), (576, 448)]


def test_batches_never_mix_buckets_and_record_the_crop(mixed_dir: Path) -> None:
    images = [im for _, im in data.load_images(mixed_dir)]
    buckets = data.make_buckets(64, 16, 4.0)
    ds = data.DreamBoothDataset(images, "p", _Tok(), 64, buckets=buckets, random_flip=True, seed=1)
    assert ds.image_buckets[:3] == [(80, 48)] * 3 and ds.image_buckets[3:6] == [(48, 80)] * 3
    assert ds.image_buckets[6:] == [(64, 64)] * 2
    sampler = data.batch_sampler(ds, 2, seed=1)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=data.collate)
    seen = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        ds.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(sampler) == 5  # 2 + 2 + 1: the same count every epoch
        for batch in batches:
            w, h = batch["bucket"]
            assert batch["pixel_values"].shape[1:] == (3, h, w)
            assert all(v[3] == (w, h) for v in batch["views"])
        seen.append([tuple(v[1] for v in b["views"]) for b in batches])
    assert len({tuple(s) for s in seen}) > 1  # reshuffled per epoch
    assert sorted(i for b in seen[0] for i in b) == list(range(8))

    # original size (h, w) and crop top-left (top, left) in the resized photo, as SDXL's time ids want
    item = data.DreamBoothDataset(images, "p", _Tok(), 64, buckets=buckets)[1]  # 120x64 → (80, 48)
    assert item["instance_original_size"] == (64, 120) and item["bucket"] == (80, 48)
    # scale 0.75 → 90x48, centered 80-wide crop from left 5
    assert item["instance_crop_top_left"] == (0, 5)
    with pytest.raises(ValueError, match="mixes buckets"):
        data.collate([ds[0], ds[3]])


def test_bucket_sampler_is_deterministic_resumable_and_shards() -> None:
    buckets = ["a"] * 5 + ["b"] * 3 + ["c"] * 4
    s = data.BucketBatchSampler(buckets, 2, seed=7)
    s.set_epoch(3)
    epoch3 = list(s)
    again = data.BucketBatchSampler(buckets, 2, seed=7)
    again.set_epoch(3)
    assert list(again) == epoch3  # a resumed run: same epoch → same batches, so skipping k replays k+1...
    assert all(len({buckets[i] for i in b}) == 1 for b in epoch3)
    assert len(epoch3) == len(s) == 3 + 2 + 2
    shards = []
    for rank in range(2):
        r = data.BucketBatchSampler(buckets, 2, seed=7, num_replicas=2, rank=rank)
        r.set_epoch(3)
        shards.append(list(r))
    assert [len(x) for x in shards] == [4, 4]  # 7 batches padded to 8
    assert set(sum(shards[0] + shards[1], [])) == set(range(12))
    assert {tuple(b) for b in shards[0] + shards[1]} == {tuple(b) for b in epoch3}


def _final(cfg) -> dict[str, torch.Tensor]:
    (file,) = (Path(cfg.paths.output_dir) / "model" / "unet").glob("*.safetensors")
    return load_file(file)


def test_latents_are_cached_per_bucket_view_with_identical_weights(
    make_cfg, mixed_dir: Path, monkeypatch
) -> None:
    rows: list[int] = []
    real = caches.encode_moments

    def counting(vae, pixels):
        rows.append(pixels.shape[0])
        return real(vae, pixels)

    monkeypatch.setattr(caches, "encode_moments", counting)
    monkeypatch.setattr(train_mod, "encode_moments", counting)
    common = (*BUCKETS, f"data.instance_dir={mixed_dir}", "train.batch_size=2", "train.max_steps=10")
    train(off := make_cfg(*common, "train.cache_latents=false", run="off"))
    assert sum(rows) == 8 * 2  # two epochs of 5 batches (4 of 2, 1 of 2): every image twice
    rows.clear()
    train(on := make_cfg(*common, "train.cache_latents=true", run="on"))
    assert sum(rows) == 8  # each (image, bucket) view once
    off_w, on_w = _final(off), _final(on)
    assert all(torch.equal(off_w[k], on_w[k]) for k in off_w)


@pytest.mark.slow  # three training runs; the unbucketed resume test runs by default
def test_resume_mid_epoch_with_buckets_matches_an_uninterrupted_run(make_cfg, mixed_dir: Path) -> None:
    common = (
        *BUCKETS,
        f"data.instance_dir={mixed_dir}",
        "data.random_flip=true",
        "train.batch_size=2",
        "train.checkpoint_every_n_steps=3",
    )  # 5 batches an epoch: step 3 is mid-epoch
    train(straight := make_cfg(*common, "train.max_steps=6", run="straight"))
    train(make_cfg(*common, "train.max_steps=3", run="resumed"))
    train(resumed := make_cfg(*common, "train.max_steps=6", "train.resume_from=latest", run="resumed"))
    a, b = _final(straight), _final(resumed)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
