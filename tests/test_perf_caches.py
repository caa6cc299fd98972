"""Work done once, not per step or per trial — and never at the cost of a different result.

Every cache is checked two ways: it is used (counted), and a run with it ends at bit-identical weights
to a run without it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from dreambooth_sweep import caches
from dreambooth_sweep import train as train_mod
from dreambooth_sweep.caches import BASE_MODELS, BaseModelCache
from dreambooth_sweep.train import train

PRIOR = ("prior=on", "prior.num_class_images=3", "prior.gen_num_inference_steps=2")
# Evaluation at steps 0 and 2 with two prompts × two seeds, one sampler step: the path, not the numbers.
EVALS = (
    "eval.enabled=true", "eval.every_n_steps=2", "eval.num_inference_steps=1", "train.max_steps=2",
    "eval.prompts=custom", "eval.custom_prompts=['a {V} {C}','a {V} {C} on the beach']",
)  # fmt: skip


def _final(cfg, part: str = "unet") -> dict[str, torch.Tensor]:
    (file,) = (Path(cfg.paths.output_dir) / "model" / part).glob("*.safetensors")
    return load_file(file)


def _identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def encoded_rows(monkeypatch) -> list[int]:
    """Counts the images the VAE encodes during training (cached or not, all go through encode_moments)."""
    rows: list[int] = []
    real = caches.encode_moments

    def counting(vae, pixels):
        rows.append(pixels.shape[0])
        return real(vae, pixels)

    monkeypatch.setattr(caches, "encode_moments", counting)
    monkeypatch.setattr(train_mod, "encode_moments", counting)
    return rows


# ----------------------------------------------------------------------------- class images

_WORKER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from PIL import Image
    from dreambooth_sweep.data import ensure_class_images

    folder, log, barrier, me, n = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    (barrier / me).touch()
    while len(list(barrier.iterdir())) < n:  # start together, so the two really race for the lock
        time.sleep(0.01)

    def generate(indices):
        with open(log, "a") as f:
            f.write(f"{me} {' '.join(map(str, indices))}\\n")
        time.sleep(0.3)  # slow enough for the other worker to arrive while this one holds the lock
        return [Image.new("RGB", (8, 8), (7 * i % 256, 13 * i % 256, 99)) for i in indices]

    ensure_class_images(folder, 6, generate, batch_size=2, progress=False)
    """
)


def test_concurrent_workers_generate_each_class_image_exactly_once(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    shared, log = tmp_path / "shared", tmp_path / "generated.log"
    procs = [
        subprocess.Popen([sys.executable, str(script), str(shared), str(log), str(barrier), name, "2"])
        for name in ("a", "b")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    generated = [int(i) for line in log.read_text().splitlines() for i in line.split()[1:]]
    assert sorted(generated) == list(range(6))  # every image once, by whichever worker got the lock

    # Same bytes as one worker alone writes: the cache changes who generates, never what.
    alone, barrier_alone = tmp_path / "alone", tmp_path / "barrier_alone"
    barrier_alone.mkdir()
    cmd = [sys.executable, str(script), str(alone), str(tmp_path / "alone.log"), str(barrier_alone), "c", "1"]
    subprocess.run(cmd, check=True, timeout=120)
    names = sorted(p.name for p in alone.glob("*.png"))
    assert names == sorted(p.name for p in shared.glob("*.png")) and len(names) == 6
    assert all((shared / n).read_bytes() == (alone / n).read_bytes() for n in names)


def test_training_on_cached_class_images_matches_freshly_generated(make_cfg, tmp_path: Path) -> None:
    classes = f"prior.class_dir={tmp_path / 'classes'}"
    fresh = make_cfg(*PRIOR, classes, run="fresh")
    train(fresh)  # generates the class images into an empty folder, then trains on them
    cached = make_cfg(*PRIOR, classes, run="cached")
    built = []
    real_build = train_mod.build_pipeline
    train_mod.build_pipeline = lambda *a, **k: built.append(1) or real_build(*a, **k)
    try:
        train(cached)
    finally:
        train_mod.build_pipeline = real_build
    assert built == []  # the second run generated nothing
    assert _identical(_final(fresh), _final(cached))


# ----------------------------------------------------------------------------- latents


@pytest.mark.parametrize("flip", [False, True], ids=["center-crop", "center-crop+flip"])
def test_latent_cache_gives_identical_weights(make_cfg, encoded_rows: list[int], flip: bool) -> None:
    common = (*PRIOR, "train.batch_size=2", "train.max_steps=6", f"data.random_flip={flip}")
    train(off := make_cfg(*common, "train.cache_latents=false", run="off"))
    uncached = sum(encoded_rows)
    encoded_rows.clear()
    train(on := make_cfg(*common, "train.cache_latents=true", run="on"))
    assert uncached == 6 * (2 + 2)  # every step encodes its 2 instance + 2 class images
    # 6 photos + 3 class images, each at most once per flip state
    assert sum(encoded_rows) <= (6 + 3) * (2 if flip else 1) < uncached
    assert _identical(_final(off), _final(on))


def test_random_crops_are_encoded_every_step(make_cfg, encoded_rows: list[int]) -> None:
    train(
        make_cfg(
            "data.center_crop=false", "train.batch_size=2", "train.max_steps=3", "train.save_final=false"
        )
    )
    assert sum(encoded_rows) == 3 * 2


# ----------------------------------------------------------------------------- text embeddings


@pytest.mark.parametrize(
    "setting",
    [
        ("train.train_text_encoder=false",),
        # the text encoder trains 2 steps, then freezes: states cached must be those of the trained encoder
        ("train.train_text_encoder=true", "train.text_encoder_steps=2"),
        # textual inversion moves the embedding, then DreamBooth trains on the frozen result
        ("method=ti_dreambooth", "method.ti_steps=2", "data.identifier='<sks>'"),
    ],
    ids=["frozen", "text-encoder-steps", "ti-then-dreambooth"],
)
def test_text_embedding_cache_gives_identical_weights(
    make_cfg, monkeypatch, setting: tuple[str, ...]
) -> None:
    common = (*setting, "train.batch_size=2", "train.max_steps=4")
    train(off := make_cfg(*common, "train.cache_text_embeddings=false", run="off"))
    made: list[caches.TextEmbeddingCache] = []
    real_init = caches.TextEmbeddingCache.__init__
    monkeypatch.setattr(
        caches.TextEmbeddingCache, "__init__", lambda self: made.append(self) or real_init(self)
    )
    train(on := make_cfg(*common, "train.cache_text_embeddings=true", run="on"))
    (cache,) = made
    # The frozen steps encode the one instance prompt once (per frozen stretch), then reuse it.
    assert cache.misses == 1 and cache.hits >= 1 and len(cache) == 1
    for part in ("unet", "text_encoder"):
        assert _identical(_final(off, part), _final(on, part)), part


# ----------------------------------------------------------------------------- base model


def test_trials_in_one_process_load_the_base_model_once_and_start_pristine(
    make_cfg, cache_dir: Path, monkeypatch
) -> None:
    from diffusers import DiffusionPipeline

    from dreambooth_sweep import metrics
    from dreambooth_sweep.tiny import ensure_tiny

    base = ensure_tiny("sd", cache_dir)
    BASE_MODELS.clear()
    loads_before = BASE_MODELS.loads
    pipelines = []
    monkeypatch.setattr(
        DiffusionPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: pipelines.append(a) or 1 / 0)
    )
    metrics.clear_model_cache()
    built = []
    from dreambooth_sweep.metrics import backbones

    real_build = backbones._build
    monkeypatch.setattr(backbones, "_build", lambda slot, *a: built.append(slot) or real_build(slot, *a))

    from dreambooth_sweep.evaluate import Evaluator

    seen = {}
    real_call = Evaluator.__call__

    def snapshot(self, ctx):  # the modules each trial starts from (step 0)
        if ctx.step == 0:
            seen["unet"] = {k: v.clone() for k, v in ctx.unet.state_dict().items()}
            seen["text_encoder"] = {k: v.clone() for k, v in ctx.text_encoder.state_dict().items()}
            seen["tokens"] = len(ctx.components.tokenizer)
        return real_call(self, ctx)

    monkeypatch.setattr(Evaluator, "__call__", snapshot)
    evals = EVALS

    # Trial 1 changes everything it can: a new token, its embedding, the text encoder and the UNet.
    first = make_cfg(
        *evals,
        "method=ti_dreambooth",
        "method.ti_steps=1",
        "data.identifier='<sks>'",
        "train.train_text_encoder=true",
        run="first",
    )
    train(first)
    base_unet = load_file(base / "unet" / "diffusion_pytorch_model.safetensors")
    assert not _identical(_final(first), base_unet) and seen["tokens"] > 0
    train(make_cfg(*evals, run="second"))  # a plain DreamBooth trial after it, in the same process

    assert BASE_MODELS.loads - loads_before == 1 and BASE_MODELS.hits >= 1
    assert pipelines == []  # sampling at checkpoints wraps the live modules: no pipeline is ever loaded
    assert sorted(built) == ["clip", "dino"]  # metric models: once per process, not per trial
    from transformers import CLIPTokenizer

    assert seen["tokens"] == len(CLIPTokenizer.from_pretrained(base, subfolder="tokenizer"))  # no <sks> left
    assert _identical(seen["unet"], base_unet)
    assert _identical(seen["text_encoder"], load_file(base / "text_encoder" / "model.safetensors"))


def test_base_model_cache_refuses_a_copy_whose_weights_moved() -> None:
    def components() -> SimpleNamespace:
        torch.manual_seed(0)
        return SimpleNamespace(
            tokenizer=["a", "b"],
            text_encoder=torch.nn.Linear(2, 2),
            vae=torch.nn.Linear(2, 2),
            unet=torch.nn.Linear(3, 3),
        )

    cache = BaseModelCache()
    first = cache.get("m", components)
    with torch.no_grad():
        first.unet.weight.add_(1.0)  # a trial trains its copy ...
    second = cache.get("m", components, device=torch.device("cpu"))  # module by module onto the device
    assert torch.equal(second.unet.weight, components().unet.weight)  # ... the next one starts pristine
    pristine = cache._entry[1].components
    for name in ("unet", "vae", "text_encoder", "tokenizer"):  # every part is the trial's own
        assert getattr(second, name) is not getattr(pristine, name) is not getattr(first, name)
    assert (cache.loads, cache.hits) == (1, 1)

    cache._entry[1].components.unet.weight.data[0, 0] += 1e-3  # a bug that let the pristine copy change
    with pytest.raises(RuntimeError, match="no longer matches"):
        cache.get("m", components)
    assert cache.get("m", components) is not None and cache.loads == 2  # dropped, then loaded afresh


def test_step0_samples_are_generated_once_per_process(make_cfg, monkeypatch) -> None:
    import json

    from dreambooth_sweep.caches import BASE_SAMPLES
    from dreambooth_sweep.evaluate import Evaluator

    BASE_SAMPLES.clear()
    sampled = []  # the step of every checkpoint that actually ran the sampler
    real = Evaluator._generate
    monkeypatch.setattr(
        Evaluator, "_generate", lambda self, ctx, jobs: sampled.append(ctx.step) or real(self, ctx, jobs)
    )
    evals = EVALS
    runs = [
        make_cfg(*evals, run="first"),
        make_cfg(*evals, "train.lr=5e-5", run="second"),  # another trial, same base model: step 0 reused
        make_cfg(*evals, "method=lora", run="lora"),  # adapters change the step-0 weights: sampled anew
        make_cfg(*evals, "eval.reuse_base_samples=false", run="off"),
    ]
    for cfg in runs:
        train(cfg)
    assert sampled == [0, 2, 2, 0, 2, 0, 2]

    def step0(cfg) -> dict[str, float]:
        first = (Path(cfg.paths.output_dir) / "eval_history.jsonl").read_text().splitlines()[0]
        return {k: v for k, v in json.loads(first).items() if k != "eval/seconds"}

    assert step0(runs[0]) == step0(runs[1]) == step0(runs[3])  # reused samples score exactly the same


def test_release_process_caches_drops_what_trials_kept() -> None:
    """At the end of a sweep (before its report) the pristine base model and step-0 samples go."""
    from PIL import Image

    from dreambooth_sweep.caches import BASE_SAMPLES, release_process_caches

    def components() -> SimpleNamespace:
        return SimpleNamespace(
            tokenizer=["a"],
            text_encoder=torch.nn.Linear(2, 2),
            vae=torch.nn.Linear(2, 2),
            unet=torch.nn.Linear(2, 2),
        )

    BASE_MODELS.get("release-test", components)
    BASE_SAMPLES.put("release-test", [Image.new("RGB", (4, 4))])
    release_process_caches()
    loads = BASE_MODELS.loads
    BASE_MODELS.get("release-test", components)
    assert BASE_MODELS.loads == loads + 1 and BASE_SAMPLES.get("release-test") is None
    BASE_MODELS.clear()


def test_captions_buckets_and_dropout_give_identical_weights_with_or_without_caches(
    make_cfg, tmp_path: Path, monkeypatch
) -> None:
    from PIL import Image

    photos = tmp_path / "photos"
    (photos / "3_sks toy").mkdir(parents=True)
    for i, size in enumerate([(96, 48), (100, 60), (48, 96), (64, 64)]):
        Image.new("RGB", size, (60 * i, 200 - 40 * i, 90)).save(photos / f"{i}.png")
        if i < 2:
            (photos / f"{i}.txt").write_text(f"a toy, picture {i}")
    Image.new("RGB", (80, 80), "gray").save(photos / "3_sks toy" / "r.png")  # 3 repeats, folder caption
    common = (
        *PRIOR,
        f"data.instance_dir={photos}",
        "data.buckets=true",
        "data.bucket_step=16",
        "data.caption_dropout=0.3",
        "data.random_flip=true",
        "train.batch_size=2",
        "train.max_steps=6",
    )
    off = make_cfg(*common, "train.cache_latents=false", "train.cache_text_embeddings=false", run="off")
    train(off)
    made: list[caches.TextEmbeddingCache] = []
    real_init = caches.TextEmbeddingCache.__init__
    monkeypatch.setattr(
        caches.TextEmbeddingCache, "__init__", lambda self: made.append(self) or real_init(self)
    )
    train(on := make_cfg(*common, run="on"))
    assert _identical(_final(off), _final(on))
    (cache,) = made
    # one entry per distinct prompt: captions, instance prompt, folder caption, "" (dropout), class prompt
    assert 4 <= cache.misses == len(cache) <= 6 and cache.hits > 0
