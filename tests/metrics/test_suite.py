"""Metrics on tiny random CLIP and DINO models (built offline once per session, CPU)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from dreambooth_sweep import metrics as M
from dreambooth_sweep.config import ConfigError, EvalConfig, ObjectiveConfig
from dreambooth_sweep.tiny import ensure_tiny

REPO_ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-5

# The legacy preprocessor_config.json files of the real default models, as published on the hub.
HUB_CLIP_CONFIG = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}
HUB_DINO_CONFIG = {
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ViTFeatureExtractor",
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "resample": 2,
    "size": 224,
}


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def metric_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Cache dir holding the tiny CLIP and DINO, built once for the whole session."""
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    cache = tmp_path_factory.mktemp("metric-models")
    ensure_tiny("clip", cache)
    ensure_tiny("dino", cache)
    return cache


@pytest.fixture(scope="session")
def dino(metric_cache: Path) -> M.DinoEncoder:
    return M.load_dino("tiny", cache_dir=metric_cache)


@pytest.fixture(scope="session")
def clip(metric_cache: Path) -> M.ClipEncoder:
    return M.load_clip("tiny", cache_dir=metric_cache)


def noise(seed: int, size: tuple[int, int] = (48, 64), mode: str = "RGB") -> Image.Image:
    """Random image of (height, width)."""
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode)


def pattern(seed: int, size: int = 40) -> Image.Image:
    """Structured image (stripes and a colour gradient), further from the noise images than noise is."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    freq, phase = rng.uniform(0.1, 0.6), rng.uniform(0, math.pi)
    stripes = (np.sin(freq * (x + y) + phase) > 0).astype(np.float32)
    colour = rng.uniform(0, 255, 3)
    pixels = stripes[..., None] * colour + (1 - stripes[..., None]) * (x[..., None] * 255 / size)
    return Image.fromarray(pixels.astype(np.uint8))


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


# ------------------------------------------------------------------------------------ preprocessing


@pytest.mark.parametrize(
    "kind, processor_class",
    [("clip", "CLIPImageProcessorPil"), ("dino", "ViTImageProcessorPil")],
)
@pytest.mark.parametrize("use_hub_config", [False, True], ids=["tiny-config", "hub-config"])
def test_preprocessing_matches_transformers(
    kind: str, processor_class: str, use_hub_config: bool, metric_cache: Path, tmp_path: Path
) -> None:
    import transformers

    if use_hub_config:  # the real models' (legacy, bare-int) configs, at 224 px
        folder = tmp_path
        config = HUB_CLIP_CONFIG if kind == "clip" else HUB_DINO_CONFIG
        (folder / "preprocessor_config.json").write_text(json.dumps(config))
    else:
        folder = ensure_tiny(kind, metric_cache)
    reference = getattr(transformers, processor_class).from_pretrained(folder)
    config = json.loads((folder / "preprocessor_config.json").read_text())
    ours = M.ImagePreprocessor.from_config(config)
    images = [
        noise(0, (48, 64)),
        noise(1, (64, 48)),
        noise(2, (20, 90)),
        noise(3, (300, 250), "RGBA"),
        noise(4, mode="L"),
    ]
    if not config.get("do_convert_rgb"):
        # Without do_convert_rgb transformers feeds RGBA/L channels through as they are (and fails on
        # them); we always convert to RGB, so compare on RGB input there.
        images = [image for image in images if image.mode == "RGB"]
    expected = reference(images=images, return_tensors="pt")["pixel_values"]
    got = ours(images)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected.float(), atol=ATOL, rtol=0)


def test_preprocessing_reads_sizes() -> None:
    clip = M.ImagePreprocessor.from_config(HUB_CLIP_CONFIG)
    assert (clip.size, clip.crop_size, clip.resample) == (224, (224, 224), Image.Resampling.BICUBIC)
    dino = M.ImagePreprocessor.from_config(HUB_DINO_CONFIG)
    assert (dino.size, dino.crop_size, dino.resample) == ((224, 224), None, Image.Resampling.BILINEAR)
    assert (
        M.ImagePreprocessor.from_config({"size": {"shortest_edge": 256}, "default_to_square": False}).size
        == 256
    )
    assert M.ImagePreprocessor(size=(32, 32))([noise(0)]).shape == (1, 3, 32, 32)
    with pytest.raises(ConfigError, match="unsupported size"):
        M.ImagePreprocessor.from_config({"size": {"max_height": 3}})


# ------------------------------------------------------------------------------------------- models


def test_models_load_once_per_process(metric_cache: Path, dino: M.DinoEncoder, clip: M.ClipEncoder) -> None:
    assert M.load_dino("tiny", cache_dir=metric_cache) is dino
    assert M.load_clip("tiny", cache_dir=metric_cache) is clip
    # A local dir and "tiny" naming the same folder share the entry.
    assert M.load_dino(str(ensure_tiny("dino", metric_cache)), cache_dir=metric_cache) is dino
    assert not dino.model.training and not any(p.requires_grad for p in dino.model.parameters())
    assert getattr(dino.model, "pooler", None) is None  # the CLS token is read from last_hidden_state


def test_dino_embedding_is_normalised_cls_token(dino: M.DinoEncoder) -> None:
    images = [noise(0), noise(1), noise(2)]
    got = dino.embed_images(images, batch_size=2)  # two batches
    with torch.no_grad():
        hidden = dino.model(pixel_values=dino.preprocess(images)).last_hidden_state
    torch.testing.assert_close(got, torch.nn.functional.normalize(hidden[:, 0], dim=-1), atol=ATOL, rtol=0)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(3), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["/no/such/model/dir", "no-such-org/no-such-model"])
def test_bad_model_id_is_one_line_config_error(
    name: str, metric_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never wait on the network in tests
    with pytest.raises(ConfigError) as info:
        M.load_clip(name, cache_dir=metric_cache)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"cannot load CLIP model {name!r}:")
    assert message.endswith("pass a hub id, a local dir, or 'tiny'")


def test_hub_id_loads_from_the_hf_cache_offline(
    metric_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub id already in the Hugging Face cache loads through from_pretrained with no network."""
    import shutil

    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-clip"
    shutil.copytree(ensure_tiny("clip", metric_cache), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = M.load_clip("acme/tiny-clip", cache_dir=metric_cache)
    try:
        assert encoder.name == "acme/tiny-clip"
        assert encoder.preprocess == M.load_clip("tiny", cache_dir=metric_cache).preprocess
        assert encoder.embed_texts(["a dog"]).shape == (1, 32)
    finally:
        M._MODELS.pop(("clip", "acme/tiny-clip", "cpu"), None)


def test_checkpoint_of_another_architecture_is_config_error(metric_cache: Path) -> None:
    # transformers would load a CLIP checkpoint into ViTModel with random weights and a warning.
    with pytest.raises(ConfigError, match="not a ViT \\(DINO\\) checkpoint") as info:
        M.load_dino(str(ensure_tiny("clip", metric_cache)), cache_dir=metric_cache)
    assert "\n" not in str(info.value)


def test_folder_that_is_not_a_model_is_config_error(tmp_path: Path, metric_cache: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load DINO model") as info:
        M.load_dino(str(tmp_path), cache_dir=metric_cache)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------ image metrics


def test_identical_sets_score_one_and_different_sets_less(dino: M.DinoEncoder, clip: M.ClipEncoder) -> None:
    same = [noise(7)] * 3
    assert M.dino_score(same, same[:2], model=dino) == pytest.approx(1.0, abs=ATOL)
    assert M.clip_i_score(same, same[:2], model=clip) == pytest.approx(1.0, abs=ATOL)
    generated, real = [noise(1), noise(2)], [pattern(3), pattern(4)]
    assert M.dino_score(generated, real, model=dino) < 1 - 1e-4
    assert M.clip_i_score(generated, real, model=clip) < 1 - 1e-4


def test_clip_t_prompt_removes_identifier() -> None:
    assert M.clip_t_prompt("a sks dog in the jungle", "sks") == "a dog in the jungle"
    assert M.clip_t_prompt("sks dog", "sks") == "dog"
    assert M.clip_t_prompt("a photo of  aawxbc  figurine ", "aawxbc") == "a photo of figurine"
    assert M.clip_t_prompt("a <cat-toy> on the beach", "<cat-toy>") == "a on the beach"
    assert M.clip_t_prompt("a SKS dog, wet", "sks") == "a dog, wet"
    assert M.clip_t_prompt("a sksdog", "sks") == "a sksdog"  # whole words only
    assert M.clip_t_prompt("a dog", None) == "a dog"


def test_clip_t_matches_transformers_reference(clip: M.ClipEncoder) -> None:
    from transformers import CLIPProcessor

    images = [noise(0), noise(1, (64, 48)), pattern(2)]
    prompts = ["a sks dog in the jungle", "a red sks dog", "a sks dog on the beach"]
    processor = CLIPProcessor.from_pretrained(clip.name)  # transformers' tokenizer + PIL image processor
    scored = [p.replace("sks ", "") for p in prompts]
    inputs = processor(text=scored, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        image_emb = M._features(clip.model.get_image_features(pixel_values=inputs["pixel_values"]))
        text_emb = M._features(
            clip.model.get_text_features(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
            )
        )
    expected = float(cosine(image_emb, text_emb).mean())
    assert M.clip_t_score(images, prompts, identifier="sks", model=clip) == pytest.approx(expected, abs=ATOL)
    # One prompt for all images.
    one = float(cosine(image_emb, text_emb[:1]).mean())
    assert M.clip_t_score(images, prompts[0], identifier="sks", model=clip) == pytest.approx(one, abs=ATOL)


class _TensorFeatures(torch.nn.Module):
    """torchmetrics 1.9 expects tensors from ``get_*_features``, transformers 5 returns output objects
    (Lightning-AI/torchmetrics#3407, fixed after 1.9.0): unwrap them, change nothing else."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner = model
        self.config = model.config

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return M._features(self.inner.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return M._features(self.inner.get_text_features(*args, **kwargs))


def test_clip_t_agrees_with_torchmetrics_clipscore(clip: M.ClipEncoder) -> None:
    clip_score = pytest.importorskip("torchmetrics.functional.multimodal.clip_score")
    from transformers import CLIPProcessor

    processor = CLIPProcessor.from_pretrained(clip.name)
    model = _TensorFeatures(clip.model)
    # CLIPScore clamps its mean at 0: keep (image, prompt) pairs with a positive cosine so the comparison
    # is not trivially 0 == 0.
    # The tiny random CLIP scores most pairs negative; a small grid holds a few positive ones.
    images = [noise(i) for i in range(4)] + [pattern(i) for i in range(6)]
    texts = ["a red dog", "a wet toy", "a photo of a dog", "a shiny cube shaped toy"]
    candidates = [(img, text) for img in images for text in texts]
    pairs = [(img, text) for img, text in candidates if M.clip_t_score([img], text, model=clip) > 0]
    assert pairs, "no pair with a positive cosine among the candidates"
    images = [img for img, _ in pairs]
    texts = [text for _, text in pairs]
    as_tensors = [torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous() for img in images]
    reference = clip_score.clip_score(as_tensors, texts, model_name_or_path=lambda: (model, processor))
    ours = M.clip_t_score(images, texts, model=clip)
    assert float(reference) > 0
    assert 100 * ours == pytest.approx(float(reference), abs=1e-3)


def test_pres_div_and_memorisation_on_constructed_cases(dino: M.DinoEncoder) -> None:
    a, b, c = noise(1), pattern(2), pattern(3)
    # PRES: class images identical to the subject photo → 1; it is DINO between class and real images.
    assert M.pres_score([a, a], [a], model=dino) == pytest.approx(1.0, abs=ATOL)
    assert M.pres_score([b, c], [a], model=dino) == pytest.approx(
        M.dino_score([b, c], [a], model=dino), abs=1e-7
    )
    # DIV: one image repeated → 0; pairs across prompts do not count, so two prompts of repeated
    # (but different) images still give 0; different images within a prompt → above 0.
    assert M.div_dino_score({"p": [a, a, a]}, model=dino) == pytest.approx(0.0, abs=ATOL)
    assert M.div_dino_score({"p": [a, a], "q": [b, b]}, model=dino) == pytest.approx(0.0, abs=ATOL)
    assert M.div_dino_score([[a, b, c]], model=dino) > 1e-4
    # Averaged over prompts, each prompt once.
    emb = dino.embed_images([a, b, c])
    expected = 1 - (float(emb[0] @ emb[1]) + float(emb[1] @ emb[2])) / 2
    assert M.div_dino_score({"p": [a, b], "q": [b, c], "single": [a]}, model=dino) == pytest.approx(
        expected, abs=ATOL
    )
    with pytest.raises(ValueError, match="at least two images"):
        M.div_dino_score({"p": [a]}, model=dino)
    # Memorisation: a sample equal to a training image → max 1; ceiling = real-vs-nearest-other-real.
    mem = M.memorisation([a, b], [a, c, b], model=dino)
    assert mem["mem_max"] == pytest.approx(1.0, abs=ATOL)
    assert mem["mem_mean"] == pytest.approx(1.0, abs=ATOL)
    real = dino.embed_images([a, c, b])
    sims = real @ real.T
    ceiling = float(np.mean([max(float(sims[i, j]) for j in range(3) if j != i) for i in range(3)]))
    assert mem["mem_ceiling"] == pytest.approx(ceiling, abs=ATOL)
    assert M.memorisation([b], [a, a], model=dino)["mem_ceiling"] == pytest.approx(1.0, abs=ATOL)
    assert "mem_ceiling" not in M.memorisation([b], [a], model=dino)  # undefined with one training image


def test_embedding_helpers() -> None:
    x = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    assert M.mean_cosine(x[:1], x[:1]) == pytest.approx(1.0)
    assert M.mean_pairwise_cosine(x[:2]) == pytest.approx(0.0)
    assert M.mean_pairwise_cosine(x[:1]) is None
    torch.testing.assert_close(M.nearest_cosine(x[:2], x, exclude_self=False), torch.ones(2))
    torch.testing.assert_close(
        M.nearest_cosine(x, x, exclude_self=True), torch.tensor([0.7071, 0.7071, 0.7071]), atol=1e-4, rtol=0
    )


# -------------------------------------------------------------------------------------- MetricSuite


def test_suite_computes_all_metrics_like_the_functions(
    metric_cache: Path, dino: M.DinoEncoder, clip: M.ClipEncoder
) -> None:
    real = [pattern(10), pattern(11), pattern(12)]
    config = EvalConfig(clip_model="tiny", dino_model="tiny")  # the real schema, all six metrics
    suite = M.MetricSuite(config, real, cache_dir=metric_cache)
    assert suite.dino is dino and suite.clip is clip
    samples = {"a sks dog in the jungle": [noise(1), noise(2)], "a red sks dog": [pattern(10), noise(3)]}
    class_samples = [noise(5), noise(6)]
    out = suite.compute(samples, class_samples, identifier="sks")
    assert list(out) == [
        "eval/dino",
        "eval/clip_i",
        "eval/clip_t",
        "eval/pres",
        "eval/div_dino",
        "eval/mem_mean",
        "eval/mem_max",
        "eval/mem_ceiling",
    ]
    assert all(isinstance(v, float) for v in out.values())
    flat = [img for images in samples.values() for img in images]
    prompts = [p for p, images in samples.items() for _ in images]
    assert out["eval/dino"] == pytest.approx(M.dino_score(flat, real, model=dino), abs=ATOL)
    assert out["eval/clip_i"] == pytest.approx(M.clip_i_score(flat, real, model=clip), abs=ATOL)
    assert out["eval/clip_t"] == pytest.approx(
        M.clip_t_score(flat, prompts, identifier="sks", model=clip), abs=ATOL
    )
    assert out["eval/pres"] == pytest.approx(M.pres_score(class_samples, real, model=dino), abs=ATOL)
    assert out["eval/div_dino"] == pytest.approx(M.div_dino_score(samples, model=dino), abs=ATOL)
    mem = M.memorisation(flat, real, model=dino)
    assert out["eval/mem_max"] == pytest.approx(1.0, abs=ATOL)  # pattern(10) is a training image
    for key in ("mem_mean", "mem_max", "mem_ceiling"):
        assert out[f"eval/{key}"] == pytest.approx(mem[key], abs=ATOL)
    # No class samples: PRES is skipped, the rest stays.
    assert "eval/pres" not in suite.compute(samples, [], identifier="sks")


def test_suite_loads_only_what_it_needs_and_embeds_real_images_once(
    metric_cache: Path, dino: M.DinoEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    embedded: list[int] = []
    original = dino.embed_images

    def counting(images, batch_size=32):
        embedded.append(len(images))
        return original(images, batch_size)

    monkeypatch.setattr(dino, "embed_images", counting)
    real = [pattern(1), pattern(2)]
    suite = M.MetricSuite(
        SimpleNamespace(metrics=["dino"], clip_model="not-loaded/at-all", dino_model="tiny"),
        real,
        cache_dir=metric_cache,
    )
    assert suite.clip is None  # CLIP is never loaded for DINO-only metrics
    assert embedded == [2]
    out1 = suite.compute({"p": [noise(1)]})
    out2 = suite.compute({"p": [noise(1)]})
    assert embedded == [2, 1, 1]  # the real photos were embedded once, at construction
    assert list(out1) == ["eval/dino"] and out1 == out2


def test_suite_rejects_bad_setups(metric_cache: Path) -> None:
    with pytest.raises(ConfigError, match="unknown metric 'lpips'"):
        M.MetricSuite(
            SimpleNamespace(metrics=["dino", "lpips"], clip_model="tiny", dino_model="tiny"), [noise(0)]
        )
    with pytest.raises(ConfigError, match="need the subject's real images"):
        M.MetricSuite(
            SimpleNamespace(metrics=["dino"], clip_model="tiny", dino_model="tiny"),
            [],
            cache_dir=metric_cache,
        )
    # DIV and CLIP-T need no real photos.
    suite = M.MetricSuite(
        SimpleNamespace(metrics=["div", "clip_t"], clip_model="tiny", dino_model="tiny"),
        [],
        cache_dir=metric_cache,
    )
    assert set(suite.compute({"a sks dog": [noise(0), noise(1)]}, identifier="sks")) == {
        "eval/clip_t",
        "eval/div_dino",
    }


# ---------------------------------------------------------------------------------------- objective


def test_sweet_spot_score_arithmetic() -> None:
    objective = ObjectiveConfig(metric="eval/dino", prompt_metric="eval/clip_t", penalty=2.0, tolerance=0.01)
    baseline = {"eval/dino": 0.30, "eval/clip_t": 0.32}
    # CLIP-T dropped by 0.005 < tolerance: no penalty.
    assert M.sweet_spot_score(
        {"eval/dino": 0.60, "eval/clip_t": 0.315}, baseline, objective
    ) == pytest.approx(0.60)
    # Dropped by 0.07: penalty 2 * (0.07 - 0.01) = 0.12.
    assert M.sweet_spot_score({"eval/dino": 0.70, "eval/clip_t": 0.25}, baseline, objective) == pytest.approx(
        0.58
    )
    # CLIP-T rose: never a bonus.
    assert M.sweet_spot_score({"eval/dino": 0.50, "eval/clip_t": 0.40}, baseline, objective) == pytest.approx(
        0.50
    )
    # At step 0 the score is the base model's fidelity.
    assert M.sweet_spot_score(baseline, baseline, objective) == pytest.approx(0.30)
    custom = SimpleNamespace(metric="eval/clip_i", prompt_metric="eval/clip_t", penalty=10.0, tolerance=0.0)
    assert M.sweet_spot_score(
        {"eval/clip_i": 0.8, "eval/clip_t": 0.3}, {"eval/clip_t": 0.31}, custom
    ) == pytest.approx(0.7)
    with pytest.raises(ConfigError, match="'eval/dino'"):
        M.sweet_spot_score({"eval/clip_t": 0.3}, baseline, objective)


# ---------------------------------------------------------------------------------------------- CLI


def _write_images(folder: Path, images: dict[str, Image.Image]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        image.save(folder / name)
    return folder


def test_cli_prints_json_metrics(tmp_path: Path, metric_cache: Path) -> None:
    generated = _write_images(
        tmp_path / "gen", {"0.png": noise(1), "1.png": noise(2), "2.png": pattern(3), "3.jpg": pattern(4)}
    )
    (generated / "prompts.json").write_text(
        json.dumps(
            {
                "0.png": "a sks dog",
                "1.png": "a sks dog",
                "2.png": "a sks dog in the snow",
                "3.jpg": "a sks dog in the snow",
            }
        )
    )
    real = _write_images(tmp_path / "real", {"a.png": pattern(3), "b.png": pattern(5)})
    klass = _write_images(tmp_path / "class", {"c.png": noise(9)})
    command = [
        sys.executable,
        "-m",
        "dreambooth_sweep.metrics",
        "--generated",
        str(generated),
        "--real",
        str(real),
    ]
    command += [
        "--class-images",
        str(klass),
        "--clip-model",
        "tiny",
        "--dino-model",
        "tiny",
        "--cache-dir",
        str(metric_cache),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    expected = {"dino", "clip_i", "clip_t", "pres", "div_dino", "mem_mean", "mem_max", "mem_ceiling"}
    assert set(out) == {f"eval/{k}" for k in expected}
    assert out["eval/mem_max"] == pytest.approx(1.0, abs=ATOL)

    # Bad folder: one line on stderr, non-zero exit, before any model is loaded.
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "dreambooth_sweep.metrics",
            "--generated",
            str(tmp_path / "nope"),
            "--real",
            str(real),
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: image folder")


def test_cli_in_process_single_prompt_and_errors(
    tmp_path: Path, metric_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generated = _write_images(tmp_path / "gen", {"0.png": noise(1), "1.png": noise(2)})
    real = _write_images(tmp_path / "real", {"a.png": pattern(3)})
    base = [
        "--generated",
        str(generated),
        "--real",
        str(real),
        "--clip-model",
        "tiny",
        "--dino-model",
        "tiny",
    ]
    base += ["--cache-dir", str(metric_cache)]

    assert M.main([*base, "--prompt", "a sks dog"]) == 0
    out = json.loads(capsys.readouterr().out)
    # No class images: no PRES; one real photo: no memorisation ceiling.
    assert set(out) == {
        "eval/dino",
        "eval/clip_i",
        "eval/clip_t",
        "eval/div_dino",
        "eval/mem_mean",
        "eval/mem_max",
    }

    assert M.main(base) == 0  # no prompt at all: the prompt-free metrics only
    assert set(json.loads(capsys.readouterr().out)) == {
        "eval/dino",
        "eval/clip_i",
        "eval/mem_mean",
        "eval/mem_max",
    }

    assert M.main([*base, "--metrics", "clip_t"]) == 2
    assert "cannot compute clip_t" in capsys.readouterr().err

    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"0.png": "a sks dog"}))
    assert M.main([*base, "--prompts-file", str(prompts)]) == 2
    assert "no prompt for '1.png'" in capsys.readouterr().err
    assert (
        M.main([*base, "--prompts-file", str(prompts), "--prompt", "a sks toy", "--metrics", "clip_t,dino"])
        == 0
    )
    assert set(json.loads(capsys.readouterr().out)) == {"eval/dino", "eval/clip_t"}


def test_load_image_folder(tmp_path: Path) -> None:
    folder = _write_images(
        tmp_path / "imgs", {"b.png": noise(1, mode="RGBA"), "a.jpg": noise(2), "c.webp": noise(3, mode="L")}
    )
    (folder / "notes.txt").write_text("not an image")
    images = M.load_image_folder(folder)
    assert list(images) == ["a.jpg", "b.png", "c.webp"]
    assert all(im.mode == "RGB" for im in images.values())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no images"):
        M.load_image_folder(tmp_path / "empty")
