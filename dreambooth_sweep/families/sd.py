"""Stable Diffusion 1.x / 2.x: one CLIP text encoder, a UNet, DDPM noise (ε or v prediction).

:class:`DDPMFamily` holds what SDXL shares with it (the forward process, Min-SNR weights, the eight
samplers); :class:`SDFamily` is exactly the trainer's behaviour before families existed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dreambooth_sweep.errors import ConfigError
from dreambooth_sweep.families.base import Components, ModelFamily, Noised, load_error
from dreambooth_sweep.samplers import SCHEDULERS

__all__ = ["DDPMFamily", "SDFamily"]

ALL_METHODS = ("dreambooth", "lora", "textual_inversion", "ti_dreambooth")


class DDPMFamily(ModelFamily):
    """A UNet trained on DDPM noise: ``noisy = √ᾱ·x0 + √(1-ᾱ)·ε``, target ε or v."""

    samplers = tuple(SCHEDULERS)
    methods = ALL_METHODS

    def noise(
        self,
        comps: Components,
        latents: torch.Tensor,
        noise: torch.Tensor,
        generator: torch.Generator,
        train_cfg: Any,
    ) -> Noised:
        scheduler = comps.noise_scheduler
        timesteps = torch.randint(
            0,
            scheduler.config.num_train_timesteps,
            (latents.shape[0],),
            generator=generator,
            device=latents.device,
        )
        noisy = scheduler.add_noise(latents, noise, timesteps)
        kind = scheduler.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps)
        else:
            raise ConfigError(f"unsupported prediction_type {kind!r} in the model's scheduler config")
        return Noised(noisy, timesteps, target)

    def noise_at(
        self,
        comps: Components,
        latents: torch.Tensor,
        noise: torch.Tensor,
        quantiles: torch.Tensor,
        train_cfg: Any,
    ) -> Noised:
        """Training draws t uniformly from [0, T): quantile q is t = ⌊q·T⌋ (timestep 0 the least noise)."""
        scheduler = comps.noise_scheduler
        total = scheduler.config.num_train_timesteps
        timesteps = (quantiles.double() * total).long().clamp(0, total - 1).to(latents.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        return Noised(noisy, timesteps, self._target(scheduler, latents, noise, timesteps))

    @staticmethod
    def _target(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
        kind = scheduler.config.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return scheduler.get_velocity(latents, noise, timesteps)
        raise ConfigError(f"unsupported prediction_type {kind!r} in the model's scheduler config")

    def min_snr_weights(self, comps: Components, noised: Noised, gamma: float) -> torch.Tensor:
        """Min-SNR-γ per example (Hang et al. 2023), for ε and v targets."""
        from diffusers.training_utils import compute_snr

        snr = compute_snr(comps.noise_scheduler, noised.timesteps)
        clipped = torch.clamp(snr, max=gamma)
        v = comps.noise_scheduler.config.prediction_type == "v_prediction"
        return clipped / (snr + 1) if v else clipped / snr

    def _load_ddpm(self, model_cfg: Any, source: str, modules: dict[str, Any], tokenizers: dict[str, Any]):
        from diffusers import DDPMScheduler

        scheduler_config = self.raw_scheduler_config(source, model_cfg.get("revision"))
        return Components(
            self,
            source,
            modules,
            tokenizers,
            DDPMScheduler.from_config(scheduler_config),
            scheduler_config,
            settings={},
        )


class SDFamily(DDPMFamily):
    name = "sd"
    label = "Stable Diffusion 1.x/2.x"
    pipeline_class = "StableDiffusionPipeline"
    pipeline_names = ("StableDiffusionPipeline",)
    kohya_export = True

    def load(self, model_cfg: Any, source: str) -> Components:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        try:
            tokenizer = self._load_module(CLIPTokenizer, source, "tokenizer", model_cfg)
            text_encoder = self._load_module(CLIPTextModel, source, "text_encoder", model_cfg)
            vae = self._vae(model_cfg, source)
            unet = self._load_module(UNet2DConditionModel, source, "unet", model_cfg)
            return self._load_ddpm(
                model_cfg,
                source,
                {"text_encoder": text_encoder, "vae": vae, "unet": unet},
                {"tokenizer": tokenizer},
            )
        except ConfigError:
            raise
        except Exception as exc:  # hub errors, missing files, bad weights: one clear line
            raise load_error("the Stable Diffusion model", source, exc) from exc

    def encode_prompt(self, comps: Components, ids: torch.Tensor, encoders: dict[str, Any]) -> torch.Tensor:
        return encoders["text_encoder"](ids)[0]

    def predict(
        self, denoiser: Any, comps: Components, noised: Noised, cond: Any, batch: dict
    ) -> torch.Tensor:
        return denoiser(noised.noisy, noised.timesteps, cond).sample

    def pipeline_options(self, comps: Components) -> dict[str, Any]:
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    def save_embeddings(
        self, folder: Path, identifier: str, vectors: dict[str, torch.Tensor], file: str
    ) -> None:
        from safetensors.torch import save_file

        # diffusers' format: {token: (num_vectors, dim)}; load_textual_inversion adds <tok>_1, ... itself.
        save_file({identifier: vectors["text_encoder"]}, str(folder / file))
