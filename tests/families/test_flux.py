"""Tiny FLUX.1: round trip, prompt encoding equal to FluxPipeline's, the flow-matching target and
weighting equal to diffusers' training_utils, LoRA (transformer ± CLIP-L) and full fine-tuning with
and without prior preservation, T5 cached and off the device, resume exact, bad combinations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from family_helpers import Capture, fresh, sample
from omegaconf import OmegaConf
from safetensors.torch import load_file

from dreambooth_sweep.config import ConfigError
from dreambooth_sweep.methods import LORA_FILE
from dreambooth_sweep.models import build_pipeline, load_components
from dreambooth_sweep.train import train

PIPE = "FluxPipeline"
EVAL_AT_END = ("eval.enabled=true", "eval.every_n_steps=1000")
PRIOR = ("prior=on", "prior.num_class_images=2", "prior.gen_num_inference_steps=2")
SAMPLE = dict(guidance_scale=3.5, max_sequence_length=64)


@pytest.fixture(scope="module")
def base(tiny_family) -> Path:
    return tiny_family("flux")


@pytest.fixture(scope="module")
def comps(base: Path, cache_dir: Path):
    return load_components(
        OmegaConf.create({"pretrained": "tiny_flux", "max_sequence_length": 64}), cache_dir
    )


def test_tiny_flux_round_trips_and_encodes_like_the_pipeline(base: Path, comps) -> None:
    assert json.loads((base / "model_index.json").read_text())["_class_name"] == PIPE
    assert comps.family.name == "flux" and type(comps.tokenizer_2).__name__ == "T5Tokenizer"
    pipe = fresh(PIPE, base)
    prompt = "a photo of sks toy"
    ids = comps.family.tokenize(comps, prompt)[None]
    with torch.no_grad():
        cond = comps.family.encode_prompt(comps, ids, comps.text_encoders())
        states, pooled, text_ids = pipe.encode_prompt(prompt, None, max_sequence_length=64)
    torch.testing.assert_close(cond.states, states)
    torch.testing.assert_close(cond.pooled, pooled)
    torch.testing.assert_close(cond.text_ids, text_ids)
    # Sampling from our own encoding = the reloaded pipeline encoding the prompt itself.
    ours = sample(build_pipeline(comps), comps, prompt, guidance_scale=3.5)
    np.testing.assert_allclose(ours, sample(pipe, None, prompt, **SAMPLE))


@pytest.mark.parametrize("scheme", ["none", "logit_normal", "mode", "sigma_sqrt", "cosmap"])
def test_flow_matching_target_and_weighting_are_diffusers(comps, scheme: str) -> None:
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

    t = OmegaConf.create(
        {"weighting_scheme": scheme, "logit_mean": 0.3, "logit_std": 1.2, "mode_scale": 1.29}
    )
    x0, noise = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    got = comps.family.noise(comps, x0, noise, torch.Generator().manual_seed(7), t)

    # diffusers' train_dreambooth_lora_flux.py, step by step
    sched = comps.noise_scheduler
    u = compute_density_for_timestep_sampling(
        scheme, 4, logit_mean=0.3, logit_std=1.2, mode_scale=1.29, generator=torch.Generator().manual_seed(7)
    )
    timesteps = sched.timesteps[(u * sched.config.num_train_timesteps).long()]
    steps = [(sched.timesteps == ts).nonzero().item() for ts in timesteps]
    sigmas = sched.sigmas[steps].flatten().reshape(4, 1, 1, 1)
    torch.testing.assert_close(got.timesteps, timesteps)
    torch.testing.assert_close(got.noisy, (1.0 - sigmas) * x0 + sigmas * noise)
    torch.testing.assert_close(got.target, noise - x0)
    torch.testing.assert_close(got.weighting, compute_loss_weighting_for_sd3(scheme, sigmas))


@pytest.mark.parametrize("prior", [False, True], ids=["no-prior", "prior"])
def test_lora_on_transformer_and_clip_loads_with_load_lora_weights(family_cfg, base, prior) -> None:
    prompt = "a photo of sks toy"
    hook = Capture(prompt, guidance_scale=3.5)
    cfg = family_cfg(
        "tiny_flux", "method=lora", "method.alpha=8", "train.train_text_encoder=true", *EVAL_AT_END,
        *(PRIOR if prior else ()),
    )  # fmt: skip
    train(cfg, eval_hook=hook)
    for name in ("transformer", "text_encoder"):
        changed = hook.changed(name, 0, 2)
        assert changed and all(".lora_" in k for k in changed), name
    assert not hook.changed("text_encoder_2", 0, 2)  # T5 never trains
    model = Path(cfg.paths.output_dir) / "model"
    assert {k.split(".")[0] for k in load_file(model / LORA_FILE)} == {"transformer", "text_encoder"}

    pipe = fresh(PIPE, base)
    before = sample(pipe, None, prompt, **SAMPLE)
    pipe.load_lora_weights(model, weight_name=LORA_FILE)
    after = sample(pipe, None, prompt, **SAMPLE)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, hook.image, atol=1.0)


def test_t5_is_cached_and_off_the_device_while_training(family_cfg) -> None:
    seen = {}

    def hook(ctx):
        from types import SimpleNamespace

        comps = ctx.components
        seen[ctx.step] = (
            next(comps.text_encoder_2.parameters()).device.type,
            len(comps.frozen_prompts or {}),
        )
        return SimpleNamespace(metrics={"eval/score": 0.0}, grid=None)

    train(family_cfg("tiny_flux", "method=lora", *EVAL_AT_END), eval_hook=hook)
    # every prompt the run needs (instance prompt + every eval prompt + the class prompt) was encoded once
    assert seen[0][0] == "cpu" and seen[0][1] > 2 and seen[2] == seen[0]


def test_full_fine_tune_of_the_transformer_loads_with_from_pretrained(family_cfg, base) -> None:
    cfg = family_cfg("tiny_flux", "method=dreambooth", *PRIOR)
    assert np.isfinite(train(cfg)["train/loss"])
    model = Path(cfg.paths.output_dir) / "model"
    (saved,) = (model / "transformer").glob("*.safetensors")
    (orig,) = (base / "transformer").glob("*.safetensors")
    a, b = load_file(saved), load_file(orig)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert sample(fresh(PIPE, model), None, "a photo of sks toy", **SAMPLE).shape == (64, 64, 3)


def test_lora_resume_is_exact(family_cfg) -> None:
    common = (
        "method=lora", "train.max_steps=4", "train.checkpoint_every_n_steps=2", "train.weighting_scheme=logit_normal",
    )  # fmt: skip
    straight = family_cfg("tiny_flux", *common, run="straight")
    train(straight)
    ckpt = Path(straight.paths.output_dir) / "checkpoints" / "checkpoint-2"
    resumed = family_cfg("tiny_flux", *common, f"train.resume_from={ckpt}", run="resumed")
    train(resumed)
    a = load_file(Path(straight.paths.output_dir) / "model" / LORA_FILE)
    b = load_file(Path(resumed.paths.output_dir) / "model" / LORA_FILE)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["method=textual_inversion", "data.identifier='<sks>'"], "choose one of lora, dreambooth"),
        (["method=dreambooth", "train.train_text_encoder=true"], "train.train_text_encoder"),
        (["eval.scheduler=ddim"], "flow_euler"),
        (["train.snr_gamma=5.0"], "train.weighting_scheme"),
    ],
)
def test_what_does_not_fit_flux_is_a_one_line_error(family_cfg, overrides, needle) -> None:
    with pytest.raises(ConfigError) as info:
        train(family_cfg("tiny_flux", *overrides))
    assert needle in str(info.value) and "\n" not in str(info.value)
