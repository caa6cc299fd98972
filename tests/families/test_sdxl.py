"""Tiny SDXL: the pipeline round-trips, prompt encoding matches diffusers' pipeline, every method trains
(with and without prior preservation) and saves what StableDiffusionXLPipeline loads; resume is exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from family_helpers import Capture, fresh, sample
from omegaconf import OmegaConf
from safetensors.torch import load_file

from dreambooth_sweep.methods import EMBEDDINGS_FILE, LORA_FILE
from dreambooth_sweep.models import build_pipeline, load_components
from dreambooth_sweep.train import train

PIPE = "StableDiffusionXLPipeline"
EVAL_AT_END = ("eval.enabled=true", "eval.every_n_steps=1000")
PRIOR = ("prior=on", "prior.num_class_images=2", "prior.gen_num_inference_steps=2", "train.batch_size=1")


@pytest.fixture(scope="module")
def base(tiny_family) -> Path:
    return tiny_family("sdxl")


def test_tiny_sdxl_round_trips_and_encodes_like_the_pipeline(base: Path, cache_dir: Path) -> None:
    assert json.loads((base / "model_index.json").read_text())["_class_name"] == PIPE
    comps = load_components(OmegaConf.create({"pretrained": "tiny_sdxl"}), cache_dir)
    assert comps.family.name == "sdxl" and comps.source == str(base)
    pipe = fresh(PIPE, base)
    prompt = "a photo of sks toy"
    ids = comps.family.tokenize(comps, prompt)[None]
    with torch.no_grad():
        cond = comps.family.encode_prompt(comps, ids, comps.text_encoders())
        states, _, pooled, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False)
    torch.testing.assert_close(cond.states, states)
    torch.testing.assert_close(cond.pooled, pooled)
    # The live-module pipeline samples exactly what the reloaded one does.
    np.testing.assert_allclose(sample(build_pipeline(comps), None, prompt), sample(pipe, None, prompt))


@pytest.mark.parametrize("prior", [False, True], ids=["no-prior", "prior"])
def test_lora_on_unet_and_both_text_encoders_loads_with_load_lora_weights(family_cfg, base, prior) -> None:
    prompt = "a photo of sks toy"
    hook = Capture(prompt)
    cfg = family_cfg(
        "tiny_sdxl", "method=lora", "method.alpha=8", "train.train_text_encoder=true", *EVAL_AT_END,
        *(PRIOR if prior else ()),
    )  # fmt: skip
    train(cfg, eval_hook=hook)
    for name in ("unet", "text_encoder", "text_encoder_2"):
        changed = hook.changed(name, 0, 2)
        assert changed and all(".lora_" in k for k in changed), name
    model = Path(cfg.paths.output_dir) / "model"
    prefixes = {k.split(".")[0] for k in load_file(model / LORA_FILE)}
    assert prefixes == {"unet", "text_encoder", "text_encoder_2"}

    pipe = fresh(PIPE, base)
    before = sample(pipe, None, prompt)
    pipe.load_lora_weights(model, weight_name=LORA_FILE)
    after = sample(pipe, None, prompt)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, hook.image, atol=1.0)  # uint8 images: at most one level apart


def test_full_dreambooth_with_both_text_encoders_loads_with_from_pretrained(family_cfg, base) -> None:
    cfg = family_cfg("tiny_sdxl", "train.train_text_encoder=true", *PRIOR)
    train(cfg)
    model = Path(cfg.paths.output_dir) / "model"
    for part in ("unet", "text_encoder", "text_encoder_2"):
        (saved,) = (model / part).glob("*.safetensors")
        (orig,) = (base / part).glob("*.safetensors")
        a, b = load_file(saved), load_file(orig)
        assert any(not torch.equal(a[k], b[k]) for k in a), part
    pipe = fresh(PIPE, model)
    assert sample(pipe, None, "a photo of sks toy").shape == (64, 64, 3)


def test_textual_inversion_in_both_encoders_loads_with_load_textual_inversion(family_cfg, base) -> None:
    prompt = "a photo of <sks> toy"
    hook = Capture(prompt)
    cfg = family_cfg(
        "tiny_sdxl",
        "method=textual_inversion",
        "data.identifier='<sks>'",
        "method.num_vectors=2",
        *EVAL_AT_END,
    )
    train(cfg, eval_hook=hook)
    assert not hook.changed("unet", 0, 2)
    for name in ("text_encoder", "text_encoder_2"):
        assert {k for k in hook.changed(name, 0, 2)} == {
            k for k in hook.weights[2][name] if k.endswith("token_embedding.weight")
        }
    model = Path(cfg.paths.output_dir) / "model"
    saved = load_file(model / EMBEDDINGS_FILE)
    assert set(saved) == {"clip_l", "clip_g"} and saved["clip_l"].shape[0] == saved["clip_g"].shape[0] == 2

    # diffusers' documented SDXL recipe: each half into its own encoder.
    pipe = fresh(PIPE, base)
    before = sample(pipe, None, prompt)
    pipe.load_textual_inversion(
        saved["clip_l"], token="<sks>", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
    )
    pipe.load_textual_inversion(
        saved["clip_g"], token="<sks>", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
    )
    after = sample(pipe, None, prompt)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, hook.image, atol=1.0)


def test_ti_dreambooth_saves_embedding_and_pipeline(family_cfg) -> None:
    cfg = family_cfg(
        "tiny_sdxl", "method=ti_dreambooth", "data.identifier='<sks>'", "method.ti_steps=1", "train.max_steps=2",
        *PRIOR,
    )  # fmt: skip
    train(cfg)
    model = Path(cfg.paths.output_dir) / "model"
    assert (model / EMBEDDINGS_FILE).exists() and (model / "model_index.json").exists()
    pipe = fresh(PIPE, model)  # its tokenizers already hold the new token
    assert "<sks>" in pipe.tokenizer.get_vocab() and "<sks>" in pipe.tokenizer_2.get_vocab()


def test_lora_resume_is_exact(family_cfg) -> None:
    common = (
        "method=lora",
        "train.train_text_encoder=true",
        "train.max_steps=4",
        "train.checkpoint_every_n_steps=2",
    )
    straight = family_cfg("tiny_sdxl", *common, run="straight")
    train(straight)
    ckpt = Path(straight.paths.output_dir) / "checkpoints" / "checkpoint-2"
    resumed = family_cfg("tiny_sdxl", *common, f"train.resume_from={ckpt}", run="resumed")
    train(resumed)
    a = load_file(Path(straight.paths.output_dir) / "model" / LORA_FILE)
    b = load_file(Path(resumed.paths.output_dir) / "model" / LORA_FILE)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
