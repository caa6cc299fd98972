"""Rectified flow matching, what SD3.x and FLUX.1 train with (Esser et al. 2024).

``noisy = (1 − σ)·x0 + σ·noise``, target ``noise − x0``. σ comes from the model's own
``FlowMatchEulerDiscreteScheduler`` table at an index drawn with diffusers'
``compute_density_for_timestep_sampling`` (``train.weighting_scheme``: uniform, logit-normal, mode),
and the loss is weighted by ``compute_loss_weighting_for_sd3`` — as diffusers' DreamBooth scripts for
SD3 and FLUX do (without SD3's optional output preconditioning).
"""

from __future__ import annotations

from typing import Any

import torch

from dreambooth_sweep.families.base import Components, ModelFamily, Noised
from dreambooth_sweep.samplers import FLOW_SCHEDULERS

__all__ = ["FlowFamily"]


class FlowFamily(ModelFamily):
    denoiser = "transformer"
    flow_matching = True
    samplers = tuple(FLOW_SCHEDULERS)
    methods = ("lora", "dreambooth")
    token_encoders = ()
    full_text_encoders = ()  # full fine-tuning trains the transformer only

    def _load_flow(self, model_cfg: Any, source: str, modules: dict[str, Any], tokenizers: dict[str, Any]):
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler_config = self.raw_scheduler_config(source, model_cfg.get("revision"))
        settings = {
            "max_sequence_length": model_cfg.get("max_sequence_length"),
            "train_guidance": model_cfg.get("train_guidance", 1.0),
        }
        return Components(
            self,
            source,
            modules,
            tokenizers,
            FlowMatchEulerDiscreteScheduler.from_config(scheduler_config),
            scheduler_config,
            settings=settings,
        )

    def max_lengths(self, comps: Components) -> tuple[int, ...]:
        """CLIP tokenizers pad to their own length, T5 to ``model.max_sequence_length`` (when set)."""
        t5_length = comps.settings.get("max_sequence_length")
        return tuple(
            int(t5_length)
            if name == self.t5_tokenizer and t5_length
            else int(getattr(comps, name).model_max_length)
            for name in self.tokenizers
        )

    t5_tokenizer = ""  # the tokenizer whose length model.max_sequence_length sets

    def noise(
        self,
        comps: Components,
        latents: torch.Tensor,
        noise: torch.Tensor,
        generator: torch.Generator,
        train_cfg: Any,
    ) -> Noised:
        from diffusers.training_utils import (
            compute_density_for_timestep_sampling,
            compute_loss_weighting_for_sd3,
        )

        scheduler = comps.noise_scheduler
        u = compute_density_for_timestep_sampling(
            weighting_scheme=train_cfg.weighting_scheme,
            batch_size=latents.shape[0],
            logit_mean=train_cfg.logit_mean,
            logit_std=train_cfg.logit_std,
            mode_scale=train_cfg.mode_scale,
            device=latents.device,
            generator=generator,
        )
        indices = (u * scheduler.config.num_train_timesteps).long().cpu()
        timesteps = scheduler.timesteps[indices].to(latents.device)
        sigmas = scheduler.sigmas[indices].to(latents.device, dtype=latents.dtype)
        sigmas = sigmas.reshape(-1, *([1] * (latents.ndim - 1)))
        noisy = (1.0 - sigmas) * latents + sigmas * noise
        weighting = compute_loss_weighting_for_sd3(weighting_scheme=train_cfg.weighting_scheme, sigmas=sigmas)
        return Noised(noisy, timesteps, noise - latents, weighting=weighting, sigmas=sigmas)

    def noise_at(
        self,
        comps: Components,
        latents: torch.Tensor,
        noise: torch.Tensor,
        quantiles: torch.Tensor,
        train_cfg: Any,
    ) -> Noised:
        """σ at quantile q of training's σ distribution: ``u`` (the table position :meth:`noise` draws) is
        the (1 − q) quantile of ``train.weighting_scheme``'s density — a high table position is a low σ."""
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        scheduler = comps.noise_scheduler
        p = (1.0 - quantiles.double()).clamp(1e-6, 1 - 1e-6)
        scheme = train_cfg.weighting_scheme
        if scheme == "logit_normal":
            normal = torch.distributions.Normal(float(train_cfg.logit_mean), float(train_cfg.logit_std))
            u = torch.sigmoid(normal.icdf(p))
        elif scheme == "mode":
            # diffusers maps a uniform r to 1 - r - s·(cos²(πr/2) - 1 + r), decreasing in r (s ≤ 1.29)
            r = 1.0 - p
            u = 1 - r - float(train_cfg.mode_scale) * (torch.cos(torch.pi * r / 2) ** 2 - 1 + r)
        else:
            u = p
        total = scheduler.config.num_train_timesteps
        indices = (u * total).long().clamp(0, total - 1)
        timesteps = scheduler.timesteps[indices].to(latents.device)
        sigmas = scheduler.sigmas[indices].to(latents.device, dtype=latents.dtype)
        sigmas = sigmas.reshape(-1, *([1] * (latents.ndim - 1)))
        noisy = (1.0 - sigmas) * latents + sigmas * noise
        weighting = compute_loss_weighting_for_sd3(weighting_scheme=scheme, sigmas=sigmas)
        return Noised(noisy, timesteps, noise - latents, weighting=weighting, sigmas=sigmas)
