"""SDXL and FLUX.1 at their real sizes with random weights, for GPU throughput and memory figures.

The module configs are the published ``config.json`` values of stabilityai/stable-diffusion-xl-base-1.0
and black-forest-labs/FLUX.1-dev (``tests/families/test_full_size.py`` checks the parameter counts);
only the tokenizers are this package's offline ones (their ids stay below the real tables' sizes).
Build under ``torch.device("meta")`` to count parameters without allocating them. Never for images.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["build_random_flux", "build_random_sdxl", "flux_modules", "sdxl_modules"]

CLIP_L = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    hidden_act="quick_gelu", projection_dim=768,
)  # fmt: skip


def _big_vae(latent_channels: int, **extra: Any) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=latent_channels,
        norm_num_groups=32,
        **extra,
    )


def sdxl_modules(vocab_size: int) -> dict[str, Any]:
    """SDXL base 1.0's UNet (2.57 B), CLIP ViT-L text encoder, OpenCLIP ViT-bigG text encoder with
    projection (0.69 B) and VAE, random weights."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from dreambooth_sweep.tiny_text import text_config

    table = max(vocab_size, 49408)
    unet = UNet2DConditionModel(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20),
        transformer_layers_per_block=(1, 2, 10),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        norm_num_groups=32,
    )
    big_g = dict(
        hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
        hidden_act="gelu", projection_dim=1280,
    )  # fmt: skip
    return {
        "text_encoder": CLIPTextModel(text_config(vocab_size, table_size=table, **CLIP_L)),
        "text_encoder_2": CLIPTextModelWithProjection(text_config(vocab_size, table_size=table, **big_g)),
        "vae": _big_vae(4, sample_size=1024, scaling_factor=0.13025),
        "unet": unet,
    }


def flux_modules(vocab_size: int, t5_vocab_size: int) -> dict[str, Any]:
    """FLUX.1-dev's transformer (11.9 B, guidance embedding), CLIP ViT-L, T5 v1.1 XXL encoder (4.76 B)
    and 16-channel VAE, random weights."""
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    from dreambooth_sweep.tiny_text import text_config

    t5 = T5Config(
        vocab_size=max(t5_vocab_size, 32128), d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
        num_heads=64, relative_attention_num_buckets=32, feed_forward_proj="gated-gelu",
        is_gated_act=True, dense_act_fn="gelu_new", pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=19,
        num_single_layers=38,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    )
    vae = _big_vae(
        16, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
        use_post_quant_conv=False,
    )  # fmt: skip
    return {
        "text_encoder": CLIPTextModel(text_config(vocab_size, table_size=max(vocab_size, 49408), **CLIP_L)),
        "text_encoder_2": T5EncoderModel(t5),
        "vae": vae,
        "transformer": transformer,
    }


def _tokenizers(t5: bool) -> dict[str, Any]:
    import tempfile

    from transformers import CLIPTokenizer, T5TokenizerFast

    from dreambooth_sweep.families.tiny import write_t5_tokenizer
    from dreambooth_sweep.tiny_text import write_clip_tokenizer

    with tempfile.TemporaryDirectory() as clip_dir, tempfile.TemporaryDirectory() as t5_dir:
        write_clip_tokenizer(clip_dir)
        out = {"tokenizer": CLIPTokenizer.from_pretrained(clip_dir)}
        if t5:
            write_t5_tokenizer(t5_dir)
            out["tokenizer_2"] = T5TokenizerFast.from_pretrained(t5_dir, model_max_length=512)
    return out


def build_random_sdxl(directory: str | os.PathLike[str], seed: int = 0) -> Path:
    """A StableDiffusionXLPipeline folder at SDXL base's size (3.5 B parameters; fp16 weights: 7 GB)."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    torch.manual_seed(seed)
    tokenizers = _tokenizers(t5=False)
    modules = sdxl_modules(len(tokenizers["tokenizer"]))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading",
    )  # fmt: skip
    pipe = StableDiffusionXLPipeline(
        **modules, tokenizer=tokenizers["tokenizer"], tokenizer_2=tokenizers["tokenizer"], scheduler=scheduler,
        add_watermarker=False,
    )  # fmt: skip
    pipe.to(torch.float16).save_pretrained(directory, safe_serialization=True)
    return Path(directory)


def build_random_flux(directory: str | os.PathLike[str], seed: int = 0) -> Path:
    """A FluxPipeline folder at FLUX.1-dev's size (16.9 B parameters; bf16 weights: 34 GB)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    torch.manual_seed(seed)
    tokenizers = _tokenizers(t5=True)
    with torch.device("cpu"):
        torch.set_default_dtype(torch.bfloat16)  # built in bf16: 34 GB of host memory, not 68
        try:
            modules = flux_modules(len(tokenizers["tokenizer"]), len(tokenizers["tokenizer_2"]))
        finally:
            torch.set_default_dtype(torch.float32)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )  # fmt: skip
    pipe = FluxPipeline(**modules, **tokenizers, scheduler=scheduler)
    pipe.save_pretrained(directory, safe_serialization=True)
    return Path(directory)
