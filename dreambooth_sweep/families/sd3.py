"""Stable Diffusion 3.x: CLIP-L + CLIP-G (penultimate states, pooled projections) + T5, an
SD3Transformer2DModel, flow matching with classifier-free guidance.

Prompt encoding as diffusers' SD3 pipeline: both CLIPs' penultimate hidden states side by side, padded
with zeros to T5's width and followed by T5's sequence; pooled = both CLIPs' projected pooled outputs.
LoRA targets are those of diffusers' ``train_dreambooth_lora_sd3.py`` (the joint attention blocks).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dreambooth_sweep.errors import ConfigError
from dreambooth_sweep.families.base import Components, Conditioning, Noised, load_error, split_ids
from dreambooth_sweep.families.flow import FlowFamily

__all__ = ["SD3Family"]


class SD3Family(FlowFamily):
    name = "sd3"
    label = "Stable Diffusion 3.x"
    pipeline_class = "StableDiffusion3Pipeline"
    pipeline_names = ("StableDiffusion3Pipeline",)
    text_encoders = ("text_encoder", "text_encoder_2", "text_encoder_3")  # CLIP-L, CLIP-G, T5
    tokenizers = ("tokenizer", "tokenizer_2", "tokenizer_3")
    trainable_text_encoders = ("text_encoder", "text_encoder_2")  # LoRA on both CLIPs; T5 never trains
    t5_tokenizer = "tokenizer_3"
    lora_targets = [  # noqa: RUF012 (a class-level constant list)
        "attn.add_k_proj",
        "attn.add_q_proj",
        "attn.add_v_proj",
        "attn.to_add_out",
        "attn.to_k",
        "attn.to_out.0",
        "attn.to_q",
        "attn.to_v",
    ]

    def load(self, model_cfg: Any, source: str) -> Components:
        from diffusers import SD3Transformer2DModel
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        try:
            tokenizers = {
                "tokenizer": self._load_module(CLIPTokenizer, source, "tokenizer", model_cfg),
                "tokenizer_2": self._load_module(CLIPTokenizer, source, "tokenizer_2", model_cfg),
                "tokenizer_3": self._load_module(T5TokenizerFast, source, "tokenizer_3", model_cfg),
            }
            modules = {
                "text_encoder": self._load_module(
                    CLIPTextModelWithProjection, source, "text_encoder", model_cfg
                ),
                "text_encoder_2": self._load_module(
                    CLIPTextModelWithProjection, source, "text_encoder_2", model_cfg
                ),
                "text_encoder_3": self._load_module(T5EncoderModel, source, "text_encoder_3", model_cfg),
                "vae": self._vae(model_cfg, source),
                "transformer": self._load_module(SD3Transformer2DModel, source, "transformer", model_cfg),
            }
            return self._load_flow(model_cfg, source, modules, tokenizers)
        except ConfigError:
            raise
        except Exception as exc:
            raise load_error(
                "the SD3 model (gated: accept its licence and set HF_TOKEN)", source, exc
            ) from exc

    def encode_prompt(self, comps: Components, ids: torch.Tensor, encoders: dict[str, Any]) -> Conditioning:
        ids_l, ids_g, ids_t5 = split_ids(ids, self.max_lengths(comps))
        out_l = encoders["text_encoder"](ids_l, output_hidden_states=True)
        out_g = encoders["text_encoder_2"](ids_g, output_hidden_states=True)
        clip = torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2]], dim=-1)
        t5 = self.frozen_states(comps, "text_encoder_3", ids_t5, lambda enc, x: enc(x)[0], ids.device)
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        states = torch.cat([clip, t5.to(clip.dtype)], dim=-2)
        pooled = torch.cat([out_l.text_embeds, out_g.text_embeds], dim=-1)
        return Conditioning(states, pooled=pooled)

    def predict(
        self, denoiser: Any, comps: Components, noised: Noised, cond: Any, batch: dict
    ) -> torch.Tensor:
        return denoiser(
            hidden_states=noised.noisy,
            timestep=noised.timesteps,
            encoder_hidden_states=cond.states,
            pooled_projections=cond.pooled,
            return_dict=False,
        )[0]

    def sample(self, pipe: Any, comps: Components, prompts: list[str], **kwargs: Any) -> list[Any]:
        device = pipe.vae.device
        encoders = {name: getattr(pipe, name) for name in self.text_encoders}
        ids = torch.stack([self.tokenize(comps, p) for p in [*prompts, *[""] * len(prompts)]]).to(device)
        with torch.no_grad():
            cond = self.encode_prompt(comps, ids, encoders)  # prompts, then the empty negative prompts
        dtype, n = pipe.transformer.dtype, len(prompts)
        states, pooled = cond.states.to(dtype), cond.pooled.to(dtype)
        return pipe(
            prompt_embeds=states[:n],
            negative_prompt_embeds=states[n:],
            pooled_prompt_embeds=pooled[:n],
            negative_pooled_prompt_embeds=pooled[n:],
            max_sequence_length=cond.states.shape[1] - self.max_lengths(comps)[0],
            output_type="pil",
            **kwargs,
        ).images
