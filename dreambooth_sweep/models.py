"""Load the Stable Diffusion components a run trains, and build samplers/pipelines around them.

One loading path for everyone: a hub id (``stable-diffusion-v1-5/stable-diffusion-v1-5``), a local
diffusers folder, or ``tiny`` (a random-weight model built offline once and cached) all go through
``from_pretrained``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dreambooth_sweep.config import ConfigError
from dreambooth_sweep.tiny import TINY_ID, ensure_tiny

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.schedulers.scheduling_utils import SchedulerMixin
    from transformers import CLIPTextModel, CLIPTokenizer

__all__ = [
    "SCHEDULERS",
    "Components",
    "build_pipeline",
    "load_components",
    "make_scheduler",
    "resolve_pretrained",
]

# Inference samplers by the short names used in configs; values are diffusers class names.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
}


@dataclass
class Components:
    """The pieces of a Stable Diffusion pipeline that training touches."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler  # the training noise schedule
    scheduler_config: dict[str, Any]  # the pipeline's own scheduler config, source of inference samplers
    source: str  # what was loaded: hub id or local path

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def resolve_pretrained(pretrained: str, cache_dir: str | os.PathLike[str]) -> str:
    """The string to hand to ``from_pretrained``: ``tiny`` becomes the cached offline build."""
    if pretrained == TINY_ID:
        return str(ensure_tiny("sd", cache_dir))
    return pretrained


def _load_error(what: str, source: str, exc: BaseException) -> ConfigError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = (
        "check the hub id (org/name), network access and HF_TOKEN for gated models, "
        "or pass a local diffusers folder or model=tiny"
    )
    if source.startswith((".", "/", "~")) or Path(source).expanduser().exists():  # a hub id is org/name too
        hint = "check the folder holds a diffusers pipeline (model_index.json, unet/, vae/, ...)"
    return ConfigError(f"cannot load {what} from {source!r} ({type(exc).__name__}: {reason}): {hint}")


def load_components(model_cfg: Any, cache_dir: str | os.PathLike[str]) -> Components:
    """Load tokenizer, text encoder, VAE, UNet and the noise schedule of ``model_cfg.pretrained``."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    source = resolve_pretrained(model_cfg.pretrained, cache_dir)
    local = Path(source)
    if (source.startswith((".", "/")) or local.exists()) and not (local / "model_index.json").exists():
        raise ConfigError(
            f"model.pretrained={source!r} is not a diffusers pipeline folder (no model_index.json): "
            "point it at a folder written by save_pretrained, a hub id, or use model=tiny"
        )
    common = {"revision": model_cfg.revision}
    try:
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **common)
        text_encoder = CLIPTextModel.from_pretrained(
            source, subfolder="text_encoder", variant=model_cfg.variant, **common
        )
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", variant=model_cfg.variant, **common)
        unet = UNet2DConditionModel.from_pretrained(
            source, subfolder="unet", variant=model_cfg.variant, **common
        )
        scheduler_config = _raw_scheduler_config(source, common)
        noise_scheduler = DDPMScheduler.from_config(scheduler_config)
    except ConfigError:
        raise
    except Exception as exc:  # hub errors, missing files, bad weights: one clear line
        raise _load_error("the Stable Diffusion model", source, exc) from exc
    return Components(tokenizer, text_encoder, vae, unet, noise_scheduler, scheduler_config, source)


def _raw_scheduler_config(source: str, common: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's scheduler config as saved (keeps ``_class_name`` and e.g. PNDM's skip_prk_steps)."""
    from diffusers import DDPMScheduler

    config = DDPMScheduler.load_config(source, subfolder="scheduler", **common)
    return {k: v for k, v in config.items() if k == "_class_name" or not k.startswith("_")}


def make_scheduler(name: str | None, scheduler_config: dict[str, Any]) -> SchedulerMixin:
    """An inference sampler by short name (``ddim``, ``pndm``, ``lms``, ``dpm++``, ``euler``, ...).

    ``None`` gives the pipeline's own sampler class.

    Built from the pipeline's own scheduler config, so the noise schedule (betas, prediction type)
    always matches the model.
    """
    import diffusers

    if name is None:  # the pipeline's own sampler (PNDM for SD-1.5)
        cls_name, extra = scheduler_config.get("_class_name", "PNDMScheduler"), {}
    elif name in SCHEDULERS:
        cls_name, extra = SCHEDULERS[name]
    else:
        raise ConfigError(f"unknown scheduler {name!r}: choose one of {', '.join(SCHEDULERS)}")
    cls = getattr(diffusers, cls_name)
    # SD checkpoints are trained without sample clipping; diffusers' DDIM/DDPM default to clipping
    # when a (PNDM) config does not say, which would silently distort their samples.
    base = {"clip_sample": False, **scheduler_config}
    return cls.from_config({**base, **extra})


def build_pipeline(
    components: Components, scheduler: str | None = None, *, unet: Any = None, text_encoder: Any = None
) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline over the live modules (no copy, no reload, no safety checker).

    Args:
        components: loaded components.
        scheduler: short sampler name; None: the pipeline's own (PNDM for SD-1.5).
        unet: override the UNet (e.g. the unwrapped training module).
        text_encoder: override the text encoder.
    """
    from diffusers import StableDiffusionPipeline

    sampler = make_scheduler(scheduler, components.scheduler_config)
    pipe = StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=text_encoder if text_encoder is not None else components.text_encoder,
        tokenizer=components.tokenizer,
        unet=unet if unet is not None else components.unet,
        scheduler=sampler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype
