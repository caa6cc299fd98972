"""Tiny offline builds load through the same from_pretrained path as hub ids; samplers by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dreambooth_sweep.config import ConfigError
from dreambooth_sweep.models import SCHEDULERS, build_pipeline, load_components, make_scheduler
from dreambooth_sweep.tiny import ensure_tiny, sd15_modules, write_clip_tokenizer


def _model_cfg(pretrained: str):
    return OmegaConf.create({"pretrained": pretrained, "revision": None, "variant": None})


def test_tiny_sd_is_a_diffusers_pipeline_folder(cache_dir: Path) -> None:
    path = ensure_tiny("sd", cache_dir)
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["safety_checker"] == [None, None]
    assert ensure_tiny("sd", cache_dir) == path  # cached: built once
    comps = load_components(_model_cfg("tiny"), cache_dir)
    assert comps.source == str(path) and comps.vae_scale_factor == 8
    assert comps.noise_scheduler.config.num_train_timesteps == 1000


def test_sd15_architecture_has_sd15_parameter_counts() -> None:
    """The random full-size model of the GPU benchmark is SD-1.5's architecture, parameter for parameter
    (counted on the meta device: nothing is allocated)."""
    with torch.device("meta"):
        unet, vae, text_encoder = sd15_modules(vocab_size=300)
    counts = [sum(p.numel() for p in m.parameters()) for m in (unet, vae, text_encoder)]
    assert counts == [859_520_964, 83_653_863, 123_060_480]  # SD-1.5's UNet, VAE, CLIP ViT-L/14 text


def test_tokenizer_covers_any_text(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    size = write_clip_tokenizer(tmp_path)
    tok = CLIPTokenizer.from_pretrained(tmp_path)
    ids = tok("a photo of sks dog, Ünïcode & 123!").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and max(ids) < size
    assert tok.unk_token_id not in ids[1:-1]  # byte-level: nothing is unknown
    assert len(tok("photo").input_ids) == 3  # whole-word merge for prompt words


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_samples(cache_dir: Path, name: str) -> None:
    comps = load_components(_model_cfg("tiny"), cache_dir)
    pipe = build_pipeline(comps, name)
    assert type(pipe.scheduler).__name__ == SCHEDULERS[name][0]
    out = pipe(
        "a photo of sks toy",
        num_inference_steps=3,
        height=64,
        width=64,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert out.shape == (1, 64, 64, 3)


def test_default_scheduler_is_the_pipelines_own(cache_dir: Path) -> None:
    comps = load_components(_model_cfg("tiny"), cache_dir)
    assert type(build_pipeline(comps).scheduler).__name__ == "PNDMScheduler"
    assert make_scheduler("ddim", comps.scheduler_config).config.clip_sample is False


def test_unknown_scheduler_and_bad_sources_are_config_errors(cache_dir: Path, tmp_path: Path) -> None:
    comps = load_components(_model_cfg("tiny"), cache_dir)
    with pytest.raises(ConfigError, match="unknown scheduler"):
        make_scheduler("warp", comps.scheduler_config)
    with pytest.raises(ConfigError, match="model_index.json"):
        load_components(_model_cfg(str(tmp_path)), cache_dir)
    with pytest.raises(ConfigError, match="cannot load") as info:
        load_components(_model_cfg("nobody/no-such-model-xyz"), cache_dir)  # offline: fails fast, one line
    assert "\n" not in str(info.value)
