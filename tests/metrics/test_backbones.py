"""Backbones: each family's features equal a direct transformers computation with the model's own
processor; DINO's two preprocessing protocols; loading once, offline, with one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from metric_images import ATOL, noise, pattern, tiny_folder

from dreambooth_sweep import metrics as M
from dreambooth_sweep.config import ConfigError
from dreambooth_sweep.metrics.backbones import _MODELS

# The preprocessor_config.json files the default hub models ship (legacy feature-extractor format).
# openai/clip-vit-base-patch32: CLIP's own preprocessing (short side 224 bicubic, crop 224, CLIP stats).
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
# facebook/dino-vits16: written by transformers' DINO conversion script, which saves a default
# ViTFeatureExtractor — a 224x224 bilinear squash (no crop, aspect ratio lost) and mean = std = 0.5,
# i.e. *not* DINO's ImageNet statistics. That is why eval.dino_preprocess defaults to dino_eval.
HUB_DINO_CONFIG = {
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ViTFeatureExtractor",
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 2,
    "size": 224,
}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
IMAGES = [noise(0), noise(1, (64, 48)), noise(2, (20, 90)), noise(3, (300, 250)), pattern(4)]
KINDS = {"dino": "ViTModel", "dinov2": "Dinov2Model", "clip": "CLIPModel", "siglip": "SiglipModel"}
SLOT = {"dino": "dino", "dinov2": "dino", "clip": "clip", "siglip": "clip"}


def _direct_image_features(kind: str, folder: str, images) -> torch.Tensor:
    """transformers alone: the folder's own image processor and model class, CLS or projected features."""
    import transformers

    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    extra = {"add_pooling_layer": False} if kind == "dino" else {}
    model = getattr(transformers, KINDS[kind]).from_pretrained(folder, **extra).eval()
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        if SLOT[kind] == "dino":
            features = model(pixel_values=pixels).last_hidden_state[:, 0]
        else:
            features = model.get_image_features(pixel_values=pixels).pooler_output
    return torch.nn.functional.normalize(features, dim=-1)


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_backbone_matches_transformers_with_its_own_processor(kind: str, cache_dir: Path) -> None:
    folder = tiny_folder(kind, cache_dir)
    encoder = M.load_encoder(SLOT[kind], folder, preprocess="model_config", cache_dir=cache_dir)
    assert encoder.family.model_class == KINDS[kind]
    assert type(encoder.processor).__name__.endswith("Pil")  # PIL backend, no torchvision
    got = encoder.embed_images(IMAGES, batch_size=2)  # several batches
    torch.testing.assert_close(got, _direct_image_features(kind, folder, IMAGES), atol=ATOL, rtol=0)
    assert not encoder.model.training and not any(p.requires_grad for p in encoder.model.parameters())


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_text_towers_match_transformers(kind: str, cache_dir: Path) -> None:
    import transformers

    folder = tiny_folder(kind, cache_dir)
    encoder = M.load_encoder("clip", folder, cache_dir=cache_dir)
    texts = ["a red dog", "a photo of a shiny cube shaped toy on the beach", "a"]
    model = getattr(transformers, KINDS[kind]).from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    # CLIP pads to the longest prompt with a mask; SigLIP was trained on prompts padded to full length.
    padding = "longest" if kind == "clip" else "max_length"
    length = model.config.text_config.max_position_embeddings
    tokens = tokenizer(texts, padding=padding, max_length=length, truncation=True, return_tensors="pt")
    with torch.no_grad():
        expected = model.get_text_features(**tokens).pooler_output
    expected = torch.nn.functional.normalize(expected, dim=-1)
    torch.testing.assert_close(encoder.embed_texts(texts, batch_size=2), expected, atol=ATOL, rtol=0)
    if kind == "siglip":
        assert encoder.text_inputs(["a dog"])["input_ids"].shape == (1, length)


def test_dino_cls_token_is_taken_after_the_final_layer_norm(cache_dir: Path) -> None:
    v1 = M.load_encoder("dino", "tiny", cache_dir=cache_dir)
    assert getattr(v1.model, "pooler", None) is None  # DINO v1: last_hidden_state, never a pooler
    v2 = M.load_encoder("dino", tiny_folder("dinov2", cache_dir), cache_dir=cache_dir)
    inputs = v2.pixel_inputs(IMAGES[:2])
    with torch.no_grad():
        out = v2.model(**inputs, output_hidden_states=True)
        cls = v2.model.layernorm(out.hidden_states[-1])[:, 0]  # the last block's output, normed
    torch.testing.assert_close(out.last_hidden_state[:, 0], cls, atol=ATOL, rtol=0)
    assert not torch.allclose(out.hidden_states[-1][:, 0], cls, atol=1e-3)  # the norm did something
    torch.testing.assert_close(
        v2.embed_images(IMAGES[:2]), torch.nn.functional.normalize(cls, dim=-1), atol=ATOL, rtol=0
    )


def _dino_eval_reference(image, crop: int = 224, resize: int = 256) -> np.ndarray:
    """DINO's eval transform by hand: short side to ``resize`` bicubic, center crop, ImageNet stats."""
    from PIL import Image

    w, h = image.size
    nw, nh = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    resized = image.resize((nw, nh), Image.Resampling.BICUBIC)
    top, left = (nh - crop) // 2, (nw - crop) // 2
    pixels = np.asarray(resized.crop((left, top, left + crop, top + crop)), np.float32) / 255
    return ((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def test_dino_eval_protocol_is_dinos_eval_transform(cache_dir: Path) -> None:
    images = [noise(0, (300, 400)), noise(1, (500, 257)), noise(2, (224, 224)), noise(3, (90, 60))]
    got = M.dino_eval_processor()(images=images, return_tensors="pt")["pixel_values"]
    expected = torch.from_numpy(np.stack([_dino_eval_reference(im) for im in images]))
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    # A tiny backbone keeps the 256:224 ratio at its own input size.
    small = M.dino_eval_processor(32)(images=images, return_tensors="pt")["pixel_values"]
    assert small.shape == (4, 3, 32, 32)
    # DINOv2's own processor *is* that transform (the tiny build scales it down), so both protocols agree.
    folder = tiny_folder("dinov2", cache_dir)
    own = M.load_encoder("dino", folder, preprocess="model_config", cache_dir=cache_dir)
    dino_eval = M.load_encoder("dino", folder, preprocess="dino_eval", cache_dir=cache_dir)
    assert own is not dino_eval
    torch.testing.assert_close(own.embed_images(IMAGES), dino_eval.embed_images(IMAGES), atol=ATOL, rtol=0)


def test_the_hub_files_mean_what_their_fixtures_say(tmp_path: Path) -> None:
    """The default models' legacy configs load through AutoImageProcessor to the settings described."""
    from PIL import Image

    for name, config in (("clip", HUB_CLIP_CONFIG), ("dino", HUB_DINO_CONFIG)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "preprocessor_config.json").write_text(json.dumps(config))
    clip = M.load_image_processor(str(tmp_path / "clip"))
    assert type(clip).__name__ == "CLIPImageProcessorPil"
    assert (clip.size.shortest_edge, clip.crop_size.height, clip.do_center_crop) == (224, 224, True)
    dino = M.load_image_processor(str(tmp_path / "dino"))
    assert type(dino).__name__ == "ViTImageProcessorPil"
    assert (dino.size.height, dino.size.width, bool(dino.do_center_crop)) == (224, 224, False)
    image = noise(5, (300, 200))
    squashed = np.asarray(image.resize((224, 224), Image.Resampling.BILINEAR), np.float32) / 255
    expected = torch.from_numpy(((squashed - 0.5) / 0.5).transpose(2, 0, 1))[None]
    got = dino(images=[image], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    from dreambooth_sweep.metrics.preprocess import describe_processor

    record = describe_processor(dino)
    assert record["image_mean"] == [0.5, 0.5, 0.5] and record["size"] == {"height": 224, "width": 224}


def test_labels_name_every_backbone_but_the_papers(cache_dir: Path) -> None:
    assert M.backbone_label("dino", "dino", 384, 16, 224) == ""  # DINO ViT-S/16
    assert M.backbone_label("dino", "dino", 768, 16, 224) == "dino_b16"
    assert M.backbone_label("dino", "dinov2", 384, 14, 518) == "dinov2_s14"
    assert M.backbone_label("clip", "clip", 768, 32, 224) == ""  # CLIP ViT-B/32
    assert M.backbone_label("clip", "clip", 1024, 14, 336) == "clip_l14_336"
    assert M.backbone_label("clip", "siglip", 768, 16, 224) == "siglip_b16"
    names = M.MetricNames("dinov2_s14", "siglip_b16")
    assert [names.key(b) for b in ("dino", "pres", "div_dino", "mem_max", "clip_i", "clip_t")] == [
        "eval/dinov2_s14",
        "eval/pres_dinov2_s14",
        "eval/div_dinov2_s14",
        "eval/mem_max_dinov2_s14",
        "eval/clip_i_siglip_b16",
        "eval/clip_t_siglip_b16",
    ]
    assert names.resolve("eval/dino") == "eval/dinov2_s14" and names.resolve("eval/score") == "eval/score"
    # "tiny" stands in for the paper's backbones; the same folder by path is just another ViT.
    assert M.load_encoder("dino", "tiny", cache_dir=cache_dir).label == ""
    assert M.load_encoder("dino", tiny_folder("dino", cache_dir), cache_dir=cache_dir).label == "dino_w32p8"
    assert (
        M.load_encoder("dino", tiny_folder("dinov2", cache_dir), cache_dir=cache_dir).label == "dinov2_w32p8"
    )
    assert (
        M.load_encoder("clip", tiny_folder("siglip", cache_dir), cache_dir=cache_dir).label
        == "siglip_w32p8_32"
    )


def test_models_load_once_per_process(cache_dir: Path) -> None:
    dino = M.load_encoder("dino", "tiny", preprocess="dino_eval", cache_dir=cache_dir)
    assert M.load_encoder("dino", "tiny", preprocess="dino_eval", cache_dir=cache_dir) is dino
    assert M.load_encoder("dino", "tiny", preprocess="model_config", cache_dir=cache_dir) is not dino
    assert M.load_encoder("clip", "tiny", cache_dir=cache_dir) is M.load_encoder(
        "clip", "tiny", cache_dir=cache_dir
    )


def test_unknown_architecture_is_one_line_naming_the_supported(cache_dir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        M.load_encoder("dino", tiny_folder("clip", cache_dir), cache_dir=cache_dir)
    message = str(info.value)
    assert "\n" not in message and "is a 'clip' checkpoint" in message
    assert "DINO v1 (vit)" in message and "DINOv2 (dinov2)" in message
    with pytest.raises(ConfigError, match=r"CLIP \(clip\), SigLIP \(siglip\), SigLIP2 \(siglip2\)"):
        M.load_encoder("clip", tiny_folder("dinov2", cache_dir), cache_dir=cache_dir)
    with pytest.raises(ConfigError, match="eval.dino_preprocess='squash' is not a protocol"):
        M.load_encoder("dino", "tiny", preprocess="squash", cache_dir=cache_dir)


@pytest.mark.parametrize("name", ["/no/such/model/dir", "no-such-org/no-such-model"])
def test_bad_model_id_is_one_line_config_error(name: str, cache_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never wait on the network in tests
    with pytest.raises(ConfigError) as info:
        M.load_encoder("clip", name, cache_dir=cache_dir)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"cannot load CLIP model {name!r}:")
    assert message.endswith("pass a hub id, a local dir, or 'tiny'")


def test_folder_that_is_not_a_model_is_config_error(tmp_path: Path, cache_dir: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load DINO model") as info:
        M.load_encoder("dino", str(tmp_path), cache_dir=cache_dir)
    assert "\n" not in str(info.value)
    # A model folder without preprocessor_config.json: fine under dino_eval, a clear error otherwise.
    folder = tmp_path / "dinov2"
    shutil.copytree(tiny_folder("dinov2", cache_dir), folder)
    (folder / "preprocessor_config.json").unlink()
    assert M.load_encoder("dino", str(folder), preprocess="dino_eval", cache_dir=cache_dir).embed_images(
        IMAGES[:1]
    ).shape == (1, 32)
    with pytest.raises(ConfigError, match="has no preprocessor_config.json"):
        M.load_encoder("dino", str(folder), preprocess="model_config", cache_dir=cache_dir)


def test_hub_id_loads_from_the_hf_cache_offline(cache_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A hub id already in the Hugging Face cache loads through from_pretrained with no network."""
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-siglip"
    shutil.copytree(tiny_folder("siglip", cache_dir), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        encoder = M.load_encoder("clip", "acme/tiny-siglip", cache_dir=cache_dir)
        assert encoder.name == "acme/tiny-siglip" and encoder.family.name == "siglip"
        assert encoder.embed_texts(["a dog"]).shape == (1, 32)
    finally:
        for key in [k for k in _MODELS if k[1] == "acme/tiny-siglip"]:
            _MODELS.pop(key)
