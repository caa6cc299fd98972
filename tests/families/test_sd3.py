"""Tiny SD3.5: round trip, prompt encoding equal to StableDiffusion3Pipeline's (CFG sampling included),
LoRA on the transformer and both CLIPs (with prior preservation) loading with load_lora_weights, full
fine-tuning of the transformer loading with from_pretrained."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from family_helpers import Capture, fresh, sample
from omegaconf import OmegaConf
from safetensors.torch import load_file

from dreambooth_sweep.methods import LORA_FILE
from dreambooth_sweep.models import build_pipeline, load_components
from dreambooth_sweep.train import train

PIPE = "StableDiffusion3Pipeline"
SAMPLE = dict(guidance_scale=4.5, max_sequence_length=64)


@pytest.fixture(scope="module")
def base(tiny_family) -> Path:
    return tiny_family("sd3")


def test_tiny_sd3_round_trips_and_encodes_like_the_pipeline(base: Path, cache_dir: Path) -> None:
    assert json.loads((base / "model_index.json").read_text())["_class_name"] == PIPE
    comps = load_components(
        OmegaConf.create({"pretrained": "tiny_sd3", "max_sequence_length": 64}), cache_dir
    )
    assert comps.family.name == "sd3"
    pipe = fresh(PIPE, base)
    prompt = "a photo of sks toy"
    ids = comps.family.tokenize(comps, prompt)[None]
    with torch.no_grad():
        cond = comps.family.encode_prompt(comps, ids, comps.text_encoders())
        states, _, pooled, _ = pipe.encode_prompt(
            prompt, prompt, prompt, do_classifier_free_guidance=False, max_sequence_length=64
        )
    torch.testing.assert_close(cond.states, states)
    torch.testing.assert_close(cond.pooled, pooled)
    ours = sample(build_pipeline(comps), comps, prompt, guidance_scale=4.5)  # CFG with "" as the negative
    # prompt and negative encoded in one batch here, one by one there: uint8 pixels at most one level apart
    np.testing.assert_allclose(ours, sample(pipe, None, prompt, **SAMPLE), atol=1.0)


def test_lora_on_transformer_and_both_clips_with_prior_loads(family_cfg, base) -> None:
    prompt = "a photo of sks toy"
    hook = Capture(prompt, guidance_scale=4.5)
    cfg = family_cfg(
        "tiny_sd3", "method=lora", "train.train_text_encoder=true", "eval.enabled=true", "eval.every_n_steps=1000",
        "prior=on", "prior.num_class_images=2", "prior.gen_num_inference_steps=2",
    )  # fmt: skip
    train(cfg, eval_hook=hook)
    for name in ("transformer", "text_encoder", "text_encoder_2"):
        assert hook.changed(name, 0, 2), name
    assert not hook.changed("text_encoder_3", 0, 2)
    model = Path(cfg.paths.output_dir) / "model"
    assert {k.split(".")[0] for k in load_file(model / LORA_FILE)} == {
        "transformer",
        "text_encoder",
        "text_encoder_2",
    }
    pipe = fresh(PIPE, base)
    before = sample(pipe, None, prompt, **SAMPLE)
    pipe.load_lora_weights(model, weight_name=LORA_FILE)
    after = sample(pipe, None, prompt, **SAMPLE)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, hook.image, atol=1.0)


def test_full_fine_tune_of_the_transformer_loads_with_from_pretrained(family_cfg, base) -> None:
    cfg = family_cfg("tiny_sd3", "method=dreambooth", "train.weighting_scheme=logit_normal")
    assert np.isfinite(train(cfg)["train/loss"])
    model = Path(cfg.paths.output_dir) / "model"
    (saved,) = (model / "transformer").glob("*.safetensors")
    (orig,) = (base / "transformer").glob("*.safetensors")
    assert any(not torch.equal(v, load_file(orig)[k]) for k, v in load_file(saved).items())
    assert sample(fresh(PIPE, model), None, "a photo of sks toy", **SAMPLE).shape == (64, 64, 3)
