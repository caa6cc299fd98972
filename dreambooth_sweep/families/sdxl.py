"""Stable Diffusion XL: two CLIP text encoders, a UNet with SDXL's micro-conditioning, DDPM noise.

Prompt encoding as diffusers' SDXL pipeline: each encoder's penultimate hidden states, concatenated
along the feature axis (CLIP ViT-L 768 + OpenCLIP ViT-bigG 1280 = 2048), and the pooled, projected
output of encoder 2. ``add_time_ids`` are (original height, width, crop top, left, target height,
width) per example, from the dataset's geometry. Textual inversion puts the new token into both
encoders and saves ``{"clip_l": ..., "clip_g": ...}``, the layout diffusers documents for SDXL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dreambooth_sweep.errors import ConfigError
from dreambooth_sweep.families.base import (
    Components,
    Conditioning,
    Noised,
    load_error,
    read_model_index,
    split_ids,
)
from dreambooth_sweep.families.sd import DDPMFamily

__all__ = ["SDXLFamily"]

TOKEN_METADATA_KEY = "token"  # the clip_l/clip_g layout has no token name: it rides in the metadata


class SDXLFamily(DDPMFamily):
    name = "sdxl"
    label = "Stable Diffusion XL"
    pipeline_class = "StableDiffusionXLPipeline"
    pipeline_names = ("StableDiffusionXLPipeline",)
    text_encoders = ("text_encoder", "text_encoder_2")
    tokenizers = ("tokenizer", "tokenizer_2")
    trainable_text_encoders = ("text_encoder", "text_encoder_2")
    full_text_encoders = ("text_encoder", "text_encoder_2")
    token_encoders = ("text_encoder", "text_encoder_2")

    def load(self, model_cfg: Any, source: str) -> Components:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        try:
            tokenizers = {
                "tokenizer": self._load_module(CLIPTokenizer, source, "tokenizer", model_cfg),
                "tokenizer_2": self._load_module(CLIPTokenizer, source, "tokenizer_2", model_cfg),
            }
            modules = {
                "text_encoder": self._load_module(CLIPTextModel, source, "text_encoder", model_cfg),
                "text_encoder_2": self._load_module(
                    CLIPTextModelWithProjection, source, "text_encoder_2", model_cfg
                ),
                "vae": self._vae(model_cfg, source),
                "unet": self._load_module(UNet2DConditionModel, source, "unet", model_cfg),
            }
            comps = self._load_ddpm(model_cfg, source, modules, tokenizers)
            index = read_model_index(source, model_cfg.get("revision"))
        except ConfigError:
            raise
        except Exception as exc:
            raise load_error("the SDXL model", source, exc) from exc
        comps.settings["force_zeros_for_empty_prompt"] = bool(index.get("force_zeros_for_empty_prompt", True))
        return comps

    def encode_prompt(self, comps: Components, ids: torch.Tensor, encoders: dict[str, Any]) -> Conditioning:
        ids_l, ids_g = split_ids(ids, self.max_lengths(comps))
        out_l = encoders["text_encoder"](ids_l, output_hidden_states=True)
        out_g = encoders["text_encoder_2"](ids_g, output_hidden_states=True)
        states = torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2]], dim=-1)
        return Conditioning(states, pooled=out_g.text_embeds)

    def time_ids(self, comps: Components, noised: Noised, batch: dict) -> torch.Tensor:
        """(original h, w, crop top, left, target h, w) per example, as SDXL was trained with."""
        scale = comps.vae_scale_factor
        h, w = noised.noisy.shape[-2] * scale, noised.noisy.shape[-1] * scale
        n = noised.noisy.shape[0]
        sizes, crops = batch.get("original_sizes") or [None] * n, batch.get("crop_top_left") or [None] * n
        rows = [
            # no geometry (a caller of our own): the image is the target, uncropped
            [*(size or (h, w)), *(crop or (0, 0)), h, w]
            for size, crop in zip(sizes, crops, strict=True)
        ]
        return torch.tensor(rows, device=noised.noisy.device)

    def predict(
        self, denoiser: Any, comps: Components, noised: Noised, cond: Any, batch: dict
    ) -> torch.Tensor:
        time_ids = self.time_ids(comps, noised, batch).to(cond.pooled.dtype)
        added = {"text_embeds": cond.pooled, "time_ids": time_ids}
        return denoiser(noised.noisy, noised.timesteps, cond.states, added_cond_kwargs=added).sample

    def pipeline_options(self, comps: Components) -> dict[str, Any]:
        return {
            "force_zeros_for_empty_prompt": comps.settings.get("force_zeros_for_empty_prompt", True),
            "add_watermarker": False,
        }

    def save_embeddings(
        self, folder: Path, identifier: str, vectors: dict[str, torch.Tensor], file: str
    ) -> None:
        from safetensors.torch import save_file

        state = {"clip_l": vectors["text_encoder"], "clip_g": vectors["text_encoder_2"]}
        save_file(state, str(folder / file), metadata={TOKEN_METADATA_KEY: identifier, "family": self.name})

    def load_embeddings(self, pipe: Any, path: Path, token: str | None) -> None:
        """Each half into its encoder, as diffusers documents for SDXL embeddings."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            if keys != {"clip_l", "clip_g"}:
                raise ConfigError(
                    f"{path.name} holds {sorted(keys)}, not an SDXL embedding ({{clip_l, clip_g}}): "
                    "use an embedding trained on SDXL"
                )
            token = token or (f.metadata() or {}).get(TOKEN_METADATA_KEY)
            state = {k: f.get_tensor(k) for k in keys}
        if not token:
            raise ConfigError(f"{path.name} does not name its token: set weights.token='<your token>'")
        pipe.load_textual_inversion(
            state["clip_l"], token=token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
        )
        pipe.load_textual_inversion(
            state["clip_g"], token=token, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
        )
