"""Tiny random-weight models built offline, saved in the same formats as the real ones.

Nothing here can reach a model hub, so tests and the demo train and score a *tiny* Stable Diffusion,
CLIP, DINO, DINOv2 and SigLIP with random weights. Each is written with ``save_pretrained`` into a folder and then
loaded back through the very ``from_pretrained`` code a hub id takes, so the loading path users run
on SD-1.5 is the one the tests exercise.

The CLIP tokenizer files (``vocab.json``/``merges.txt``) are written here too: a byte-level BPE over
all 256 byte symbols, so any text tokenizes, plus whole-word merges for the words prompts use.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dreambooth_sweep.tiny_text import text_config, write_clip_tokenizer

__all__ = [
    "TINY_ID",
    "TINY_IDS",
    "build_family",
    "build_random_sd15",
    "build_tiny_clip",
    "build_tiny_dino",
    "build_tiny_dinov2",
    "build_tiny_siglip",
    "build_tiny_sd",
    "ensure_tiny",
    "sd15_modules",
    "write_clip_tokenizer",
]

TINY_ID = "tiny"
# model.pretrained values that name an offline build -> its ensure_tiny kind
TINY_IDS = {TINY_ID: "sd", "tiny_sdxl": "sdxl", "tiny_sd3": "sd3", "tiny_flux": "flux"}
_BUILD_VERSION = "1"  # bump when the architecture below changes: cached builds are then rebuilt


def _build_sd(directory: str | os.PathLike[str], seed: int, make_modules: Callable[[int], tuple]) -> Path:
    """Seed, write the tokenizer, build ``(unet, vae, text_encoder) = make_modules(vocab_size)``, save."""
    import torch
    from transformers import CLIPTokenizer

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tok_dir:
        vocab_size = write_clip_tokenizer(tok_dir)
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    unet, vae, text_encoder = make_modules(vocab_size)
    return _save_sd(Path(directory), unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)


def build_tiny_sd(directory: str | os.PathLike[str], seed: int = 0, resolution: int = 64) -> Path:
    """A Stable-Diffusion-1.x-shaped pipeline with random weights (about 2 M parameters).

    UNet (32, 64) channels with cross-attention at 32 dims, a 4-level VAE (8× downsampling, like
    SD's), a 2-layer CLIP text encoder and the SD-1.x noise schedule. Saved with
    ``StableDiffusionPipeline.save_pretrained`` (no safety checker).
    """
    return _build_sd(directory, seed, lambda vocab_size: _tiny_modules(vocab_size, resolution))


def _tiny_modules(vocab_size: int, resolution: int) -> tuple[Any, Any, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    text_encoder = CLIPTextModel(text_config(vocab_size))  # first: the seeded weights stay as they were
    unet = UNet2DConditionModel(
        sample_size=resolution // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=resolution,
    )
    return unet, vae, text_encoder


def _save_sd(directory: Path, **modules) -> Path:
    """An SD-1.x pipeline folder from the given modules, with SD-1.5's noise schedule and scheduler."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    # The SD-1.x schedule, with PNDM as the pipeline default exactly like the SD-1.5 repository.
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )
    pipe = StableDiffusionPipeline(
        **modules,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    # SD-1.5's scheduler config says clip_sample=false although PNDM ignores it; do the same.
    sched_file = directory / "scheduler" / "scheduler_config.json"
    sched_file.write_text(json.dumps({**json.loads(sched_file.read_text()), "clip_sample": False}, indent=2))
    return directory


def sd15_modules(vocab_size: int) -> tuple[Any, Any, Any]:
    """(UNet, VAE, text encoder) with Stable Diffusion 1.5's architecture and random weights.

    The configs are SD-1.5's (UNet 320-640-1280-1280 with cross-attention at 768, the 4-level VAE, CLIP
    ViT-L/14's 12-layer text encoder with a 49,408-token table); only the tokenizer is this module's
    byte-level one, so ids stay below its ``vocab_size``. Build under ``torch.device("meta")`` to count
    parameters without allocating them.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
    )
    clip_text = text_config(
        vocab_size,
        table_size=max(vocab_size, 49408),  # the embedding table of CLIP ViT-L/14
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        hidden_act="quick_gelu",
        projection_dim=768,
    )
    return unet, vae, CLIPTextModel(clip_text)


def build_random_sd15(directory: str | os.PathLike[str], seed: int = 0) -> Path:
    """A pipeline folder with SD-1.5's full-size architecture and random weights (about 1.07 G parameters,
    4.3 GB in float32): for throughput and memory measurements, never for images."""
    return _build_sd(directory, seed, sd15_modules)


def build_tiny_clip(directory: str | os.PathLike[str], seed: int = 0, image_size: int = 32) -> Path:
    """A random CLIPModel (ViT vision tower + text tower) with tokenizer and image-processor config."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vocab_size = write_clip_tokenizer(directory)
    CLIPTokenizer.from_pretrained(directory)  # fail here, not later, if the files are unusable
    text = text_config(vocab_size).to_dict()
    vision = dict(
        image_size=image_size,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
    CLIPModel(config).save_pretrained(directory, safe_serialization=True)
    _write_image_processor(
        directory,
        "CLIPImageProcessor",
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        mean=[0.48145466, 0.4578275, 0.40821073],
        std=[0.26862954, 0.26130258, 0.27577711],
        resample=3,
    )
    return directory


def build_tiny_dino(directory: str | os.PathLike[str], seed: int = 0, image_size: int = 32) -> Path:
    """A random ViTModel shaped like DINO ViT-S/16 (CLS token, final LayerNorm, no pooler)."""
    import torch
    from transformers import ViTConfig, ViTModel

    directory = Path(directory)
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=image_size,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(directory, safe_serialization=True)
    _write_image_processor(
        directory,
        "ViTImageProcessor",
        size={"height": image_size, "width": image_size},
        do_center_crop=False,
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
        resample=2,
    )
    return directory


def build_tiny_dinov2(directory: str | os.PathLike[str], seed: int = 0, image_size: int = 32) -> Path:
    """A random Dinov2Model (CLS token after the final layer norm) with DINOv2's image processor,
    scaled down: resize the short side bicubic, center crop ``image_size``, ImageNet mean/std."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    directory = Path(directory)
    torch.manual_seed(seed)
    config = Dinov2Config(
        image_size=image_size,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        mlp_ratio=2,
    )
    Dinov2Model(config).save_pretrained(directory, safe_serialization=True)
    _write_image_processor(
        directory,
        "BitImageProcessor",
        size={"shortest_edge": round(image_size * 256 / 224)},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
        resample=3,
    )
    return directory


def build_tiny_siglip(directory: str | os.PathLike[str], seed: int = 0, image_size: int = 32) -> Path:
    """A random SiglipModel (image and text towers) with SigLIP's image processor (square bicubic
    resize, mean/std 0.5) and this module's byte-level tokenizer, texts padded to 16 tokens."""
    import torch
    from transformers import CLIPTokenizer, SiglipConfig, SiglipModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    max_length = 16
    vocab_size = write_clip_tokenizer(directory, model_max_length=max_length)
    CLIPTokenizer.from_pretrained(directory)  # fail here, not later, if the files are unusable
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    text = dict(
        vocab_size=vocab_size,
        max_position_embeddings=max_length,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        **tower,
    )
    config = SiglipConfig(text_config=text, vision_config=dict(image_size=image_size, patch_size=8, **tower))
    SiglipModel(config).save_pretrained(directory, safe_serialization=True)
    _write_image_processor(
        directory,
        "SiglipImageProcessor",
        size={"height": image_size, "width": image_size},
        mean=[0.5, 0.5, 0.5],
        std=[0.5, 0.5, 0.5],
        resample=3,
    )
    return directory


def _write_image_processor(directory: Path, cls: str, *, mean, std, resample: int, **extra) -> None:
    config = {
        "image_processor_type": cls,
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
        "image_mean": mean,
        "image_std": std,
        "resample": resample,
        **extra,
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(config, indent=2))


def build_family(kind: str, directory: str | os.PathLike[str], **kwargs: Any) -> Path:
    """A tiny SDXL / SD3 / FLUX pipeline (``dreambooth_sweep.families.tiny``)."""
    from dreambooth_sweep.families import tiny as family_tiny

    return getattr(family_tiny, f"build_tiny_{kind}")(directory, **kwargs)


_BUILDERS = {
    "sd": build_tiny_sd,
    "clip": build_tiny_clip,
    "dino": build_tiny_dino,
    "dinov2": build_tiny_dinov2,
    "siglip": build_tiny_siglip,
    **{
        kind: (lambda k: lambda directory: build_family(k, directory))(kind)
        for kind in ("sdxl", "sd3", "flux")
    },
}


def ensure_tiny(kind: str, cache_dir: str | os.PathLike[str]) -> Path:
    """Path of the cached tiny ``kind`` model (see ``_BUILDERS``), building it the first time.

    The build goes to a temporary sibling folder that is renamed into place, so concurrent workers
    never see a half-written model and a crash never leaves one behind.
    """
    if kind not in _BUILDERS:
        raise ValueError(f"unknown tiny model kind {kind!r}: choose one of {', '.join(_BUILDERS)}")
    target = Path(cache_dir) / "models" / f"tiny-{kind}-v{_BUILD_VERSION}"
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    _BUILDERS[kind](staging)
    (staging / ".complete").write_text("ok\n")
    try:
        os.rename(staging, target)
    except OSError:  # another process won the race: its copy is complete, drop ours
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return target
