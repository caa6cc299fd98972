"""FLUX.1: CLIP-L (pooled) + T5 (sequence), a FluxTransformer2DModel on 2×2-packed latents, flow matching.

Latents are shifted and scaled (``shift_factor``, ``scaling_factor``), packed into 2×2 patches with
their image ids (row, column); the text ids are zeros. FLUX.1-dev is guidance-distilled: its
transformer takes a guidance embedding, set to ``model.train_guidance`` (1.0) in training and to
``eval.guidance_scale`` (distilled guidance, not CFG) when sampling. LoRA targets are those of
diffusers' ``train_dreambooth_lora_flux.py`` (attention + feed-forward of the double blocks).
"""

from __future__ import annotations

from typing import Any

import torch

from dreambooth_sweep.errors import ConfigError
from dreambooth_sweep.families.base import Components, Conditioning, Noised, load_error, split_ids
from dreambooth_sweep.families.flow import FlowFamily

__all__ = ["FluxFamily"]


class FluxFamily(FlowFamily):
    name = "flux"
    label = "FLUX.1"
    pipeline_class = "FluxPipeline"
    pipeline_names = ("FluxPipeline",)
    text_encoders = ("text_encoder", "text_encoder_2")  # CLIP-L, T5
    tokenizers = ("tokenizer", "tokenizer_2")
    trainable_text_encoders = ("text_encoder",)  # LoRA on CLIP-L; T5 never trains
    t5_tokenizer = "tokenizer_2"
    lora_targets = [  # noqa: RUF012 (a class-level constant list)
        "attn.to_k",
        "attn.to_q",
        "attn.to_v",
        "attn.to_out.0",
        "attn.add_k_proj",
        "attn.add_q_proj",
        "attn.add_v_proj",
        "attn.to_add_out",
        "ff.net.0.proj",
        "ff.net.2",
        "ff_context.net.0.proj",
        "ff_context.net.2",
    ]

    def load(self, model_cfg: Any, source: str) -> Components:
        from diffusers import FluxTransformer2DModel
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        try:
            tokenizers = {
                "tokenizer": self._load_module(CLIPTokenizer, source, "tokenizer", model_cfg),
                "tokenizer_2": self._load_module(T5TokenizerFast, source, "tokenizer_2", model_cfg),
            }
            modules = {
                "text_encoder": self._load_module(CLIPTextModel, source, "text_encoder", model_cfg),
                "text_encoder_2": self._load_module(T5EncoderModel, source, "text_encoder_2", model_cfg),
                "vae": self._vae(model_cfg, source),
                "transformer": self._load_module(FluxTransformer2DModel, source, "transformer", model_cfg),
            }
            return self._load_flow(model_cfg, source, modules, tokenizers)
        except ConfigError:
            raise
        except Exception as exc:
            raise load_error(
                "the FLUX.1 model (gated: accept its licence and set HF_TOKEN)", source, exc
            ) from exc

    def encode_prompt(self, comps: Components, ids: torch.Tensor, encoders: dict[str, Any]) -> Conditioning:
        ids_clip, ids_t5 = split_ids(ids, self.max_lengths(comps))
        clip = encoders["text_encoder"]
        device = ids.device
        pooled = clip(ids_clip, output_hidden_states=False).pooler_output
        states = self.frozen_states(
            comps, "text_encoder_2", ids_t5, lambda t5, x: t5(x, output_hidden_states=False)[0], device
        )
        text_ids = torch.zeros(states.shape[1], 3, device=device, dtype=states.dtype)
        return Conditioning(states, pooled=pooled, text_ids=text_ids)

    def predict(
        self, denoiser: Any, comps: Components, noised: Noised, cond: Any, batch: dict
    ) -> torch.Tensor:
        from diffusers import FluxPipeline

        noisy = noised.noisy
        b, c, h, w = noisy.shape
        packed = FluxPipeline._pack_latents(noisy, b, c, h, w)
        image_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, noisy.device, noisy.dtype)
        config = getattr(denoiser, "module", denoiser).config  # DDP wraps the model
        guidance = None
        if config.guidance_embeds:
            guidance = torch.full((b,), float(comps.settings.get("train_guidance", 1.0)), device=noisy.device)
        out = denoiser(
            hidden_states=packed,
            timestep=noised.timesteps / 1000,  # the transformer takes t in [0, 1]
            guidance=guidance,
            pooled_projections=cond.pooled,
            encoder_hidden_states=cond.states,
            txt_ids=cond.text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]
        scale = comps.vae_scale_factor
        return FluxPipeline._unpack_latents(out, h * scale, w * scale, scale)

    def sample(self, pipe: Any, comps: Components, prompts: list[str], **kwargs: Any) -> list[Any]:
        device = pipe.vae.device
        ids = torch.stack([self.tokenize(comps, p) for p in prompts]).to(device)
        encoders = {name: getattr(pipe, name) for name in self.text_encoders}
        with torch.no_grad():
            cond = self.encode_prompt(comps, ids, encoders)
        dtype = pipe.transformer.dtype
        return pipe(
            prompt_embeds=cond.states.to(dtype),
            pooled_prompt_embeds=cond.pooled.to(dtype),
            max_sequence_length=cond.states.shape[1],
            output_type="pil",
            **kwargs,
        ).images
