"""Tiny random-weight SDXL, SD3 and FLUX pipelines built offline, in the real folder layout.

Like :mod:`dreambooth_sweep.tiny` (SD-1.x): each pipeline is constructed from small configs of the
real classes, written with the family's pipeline ``save_pretrained`` and loaded back by the same
``from_pretrained`` path a hub id takes. CLIP tokenizers are this package's byte-level BPE; the T5
tokenizer is a Unigram model trained here with the ``tokenizers`` library on a small synthetic
corpus and saved as a ``T5TokenizerFast`` (``tokenizer.json``), so nothing is downloaded.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["build_tiny_flux", "build_tiny_sd3", "build_tiny_sdxl", "write_t5_tokenizer"]

T5_LENGTH = 64  # T5 tokens of the tiny models (model.max_sequence_length of tiny_sd3 / tiny_flux)


def _clip_tokenizer() -> tuple[Any, int]:
    from transformers import CLIPTokenizer

    from dreambooth_sweep.tiny_text import write_clip_tokenizer

    with tempfile.TemporaryDirectory() as tok_dir:
        vocab_size = write_clip_tokenizer(tok_dir)
        return CLIPTokenizer.from_pretrained(tok_dir), vocab_size


def _vae(latent_channels: int, resolution: int, **extra: Any) -> Any:
    """A 4-level AutoencoderKL (8× downsampling like the real ones)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=resolution,
        **extra,
    )


def build_tiny_sdxl(directory: str | os.PathLike[str], seed: int = 0, resolution: int = 64) -> Path:
    """An SDXL-shaped pipeline: CLIP-L-like + CLIP-G-like (with projection) encoders of 32 dims, a
    UNet with ``text_time`` micro-conditioning, SDXL's VAE scaling factor and Euler scheduler."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from dreambooth_sweep.tiny_text import text_config

    torch.manual_seed(seed)
    tokenizer, vocab_size = _clip_tokenizer()
    text_encoder = CLIPTextModel(text_config(vocab_size))
    text_encoder_2 = CLIPTextModelWithProjection(text_config(vocab_size, projection_dim=32))
    unet = UNet2DConditionModel(
        sample_size=resolution // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six time ids × 8 + encoder 2's projection
        cross_attention_dim=64,  # 32 + 32: both encoders' states side by side
        norm_num_groups=16,
    )
    vae = _vae(4, resolution, scaling_factor=0.13025)  # SDXL's VAE scaling factor
    scheduler = EulerDiscreteScheduler(  # the SDXL base repository's scheduler
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    return Path(directory)


_T5_WORDS = """a an the of in on with and photo picture image sks aawxbc dog cat toy figurine person
man woman face red blue green shiny wet jungle snow beach street floor city mountain house forest tree
water grass mirror road wearing hat rainbow scarf chef wizard robot style high quality""".split()  # noqa: SIM905


def write_t5_tokenizer(directory: str | os.PathLike[str], vocab_size: int = 400) -> int:
    """Train a small Unigram model (the T5 tokenizer's kind) on a synthetic corpus and save it as a
    ``T5TokenizerFast`` (``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, like T5). Returns its size."""
    import random

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5TokenizerFast

    rng = random.Random(0)
    corpus = [" ".join(rng.choice(_T5_WORDS) for _ in range(rng.randint(3, 12))) for _ in range(2000)]
    corpus += [" ".join(_T5_WORDS)] + [chr(c) for c in range(33, 127)]  # every printable ASCII char
    model = Tokenizer(models.Unigram())
    model.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    model.train_from_iterator(corpus, trainer)
    import json

    vocab = [tuple(item) for item in json.loads(model.to_str())["model"]["vocab"]]
    tokenizer = T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=T5_LENGTH)
    tokenizer.save_pretrained(directory)
    return len(tokenizer)


def _t5_encoder(vocab_size: int, d_model: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(config)


def _t5_tokenizer() -> tuple[Any, int]:
    from transformers import T5TokenizerFast

    with tempfile.TemporaryDirectory() as tok_dir:
        size = write_t5_tokenizer(tok_dir)
        return T5TokenizerFast.from_pretrained(tok_dir), size


def _flow_scheduler(**extra: Any) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **extra)


def build_tiny_flux(directory: str | os.PathLike[str], seed: int = 0, resolution: int = 64) -> Path:
    """A FLUX.1-dev-shaped pipeline: CLIP-L-like pooled encoder, a tiny T5, a FluxTransformer2DModel
    with the guidance embedding (dev is guidance-distilled), a 4-channel VAE (FLUX's has 16) with
    FLUX's scaling and shift factors, and FLUX's dynamic-shift flow-matching scheduler."""
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    from dreambooth_sweep.tiny_text import text_config

    torch.manual_seed(seed)
    tokenizer, vocab_size = _clip_tokenizer()
    tokenizer_2, t5_size = _t5_tokenizer()
    text_encoder = CLIPTextModel(text_config(vocab_size))
    text_encoder_2 = _t5_encoder(t5_size, 32)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels packed 2×2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # T5 d_model
        pooled_projection_dim=32,  # CLIP hidden size
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    vae = _vae(
        4,
        resolution,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    scheduler = _flow_scheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    return Path(directory)


def build_tiny_sd3(directory: str | os.PathLike[str], seed: int = 0, resolution: int = 64) -> Path:
    """An SD3.5-shaped pipeline: two CLIP encoders with projection (pooled 32 + 32), a tiny T5 of 64
    dims, an SD3Transformer2DModel with patch size 2, SD3's VAE factors and shift-3 scheduler."""
    import torch
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    from dreambooth_sweep.tiny_text import text_config

    torch.manual_seed(seed)
    tokenizer, vocab_size = _clip_tokenizer()
    tokenizer_3, t5_size = _t5_tokenizer()
    text_encoder = CLIPTextModelWithProjection(text_config(vocab_size, projection_dim=32))
    text_encoder_2 = CLIPTextModelWithProjection(text_config(vocab_size, projection_dim=32))
    text_encoder_3 = _t5_encoder(t5_size, 64)
    transformer = SD3Transformer2DModel(
        sample_size=resolution // 8,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,  # T5 d_model; the CLIP states (32 + 32) are padded to it
        caption_projection_dim=32,
        pooled_projection_dim=64,  # both CLIPs' pooled projections side by side
        out_channels=4,
        pos_embed_max_size=16,
    )
    vae = _vae(
        4,
        resolution,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    pipe = StableDiffusion3Pipeline(
        scheduler=_flow_scheduler(shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
        transformer=transformer,
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    return Path(directory)
