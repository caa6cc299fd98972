"""The model-family interface: everything that differs between SD-1.x/2.x, SDXL, SD3.x and FLUX.1.

The training loop, the methods, class-image generation and evaluation hold a :class:`Components`
and ask ``components.family`` (a :class:`ModelFamily`) for anything architecture-specific:

* which modules a pipeline has (``denoiser``: ``unet`` or ``transformer``; ``text_encoders``; which of
  them may train, which take a textual-inversion token), which methods and samplers apply;
* ``tokenize`` / ``encode_prompt``: prompt → token ids (one row per prompt, every tokenizer's ids
  side by side) → the denoiser's conditioning;
* ``latents``: the VAE's latent distribution → scaled (and shifted) latents;
* ``noise``: the forward process and the regression target (DDPM ε / v, or rectified flow);
* ``predict``: the denoiser call;
* ``pipeline`` / ``sample``: the family's diffusers pipeline over the live modules;
* ``save_full`` / ``save_lora`` / ``save_embeddings``: the files that pipeline loads.

The family is read from ``model_index.json`` (``_class_name``) by :func:`detect_family`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from dreambooth_sweep.errors import ConfigError
from dreambooth_sweep.families.lora_files import FAMILY_METADATA_KEY, file_family, guess_lora_family, tag_file

__all__ = [
    "FAMILY_METADATA_KEY",
    "Components",
    "Conditioning",
    "ModelFamily",
    "Noised",
    "load_error",
    "pick",
    "split_ids",
]

log = logging.getLogger("dreambooth_sweep.families")


@dataclass
class Conditioning:
    """What the denoiser is conditioned on, for a batch of prompts."""

    states: torch.Tensor  # token-level states (B, L, D): cross-attention / joint-attention input
    pooled: torch.Tensor | None = None  # pooled text embedding (SDXL, SD3, FLUX)
    text_ids: torch.Tensor | None = None  # FLUX: positions of the text tokens (L, 3)

    def first_row(self) -> Conditioning:
        """Row 0 (batch dim dropped), for per-prompt caching; ``text_ids`` are shared by every row."""
        pooled = self.pooled[0] if self.pooled is not None else None
        return Conditioning(self.states[0], pooled, self.text_ids)

    @staticmethod
    def stack(rows: list[Conditioning]) -> Conditioning:
        pooled = torch.stack([r.pooled for r in rows]) if rows[0].pooled is not None else None
        return Conditioning(torch.stack([r.states for r in rows]), pooled, rows[0].text_ids)


@dataclass
class Noised:
    """One batch pushed through the forward process."""

    noisy: torch.Tensor  # the denoiser's input
    timesteps: torch.Tensor  # (B,) in the scheduler's units
    target: torch.Tensor  # what the denoiser regresses onto
    weighting: torch.Tensor | None = None  # per-element loss weights (flow matching), broadcastable
    sigmas: torch.Tensor | None = None  # flow matching: noise level per example


class Components:
    """A loaded pipeline's modules by their diffusers names (``unet``/``transformer``, ``vae``,
    ``text_encoder``, ``text_encoder_2``, ..., ``tokenizer``, ...) plus the training noise schedule.

    ``module_names`` lists the torch modules (what a copy or fingerprint walks);
    ``frozen_prompts`` caches the embeddings of encoders that never train (T5) per prompt row.
    """

    def __init__(
        self,
        family: ModelFamily,
        source: str,
        modules: dict[str, torch.nn.Module],
        tokenizers: dict[str, Any],
        noise_scheduler: Any,
        scheduler_config: dict[str, Any],
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.family = family
        self.source = source
        self.noise_scheduler = noise_scheduler  # the training noise schedule
        self.scheduler_config = (
            scheduler_config  # the pipeline's own scheduler config (samplers come from it)
        )
        self.settings = dict(settings or {})  # model-config values the family reads (sequence length, ...)
        self.module_names = tuple(modules)
        self.tokenizer_names = tuple(tokenizers)
        for name, value in {**modules, **tokenizers}.items():
            setattr(self, name, value)
        self.frozen_prompts: dict[tuple[str, bytes], torch.Tensor] | None = None

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self, self.family.denoiser)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def text_encoders(self) -> dict[str, torch.nn.Module]:
        return {name: getattr(self, name) for name in self.family.text_encoders}


def pick(comps: Components, live: dict[str, Any], name: str) -> Any:
    """The live override of module ``name`` if given, else the loaded one."""
    module = live.get(name)
    return module if module is not None else getattr(comps, name)


def split_ids(ids: torch.Tensor, lengths: tuple[int, ...]) -> list[torch.Tensor]:
    """Every tokenizer's ids back out of the side-by-side rows :meth:`ModelFamily.tokenize` made."""
    return list(ids.split(list(lengths), dim=-1))


def load_error(what: str, source: str, exc: BaseException) -> ConfigError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = (
        "check the hub id (org/name), network access and HF_TOKEN for gated models, "
        "or pass a local diffusers folder or model=tiny"
    )
    if source.startswith((".", "/", "~")) or Path(source).expanduser().exists():  # a hub id is org/name too
        hint = "check the folder holds a diffusers pipeline (model_index.json, its component folders, ...)"
    return ConfigError(f"cannot load {what} from {source!r} ({type(exc).__name__}: {reason}): {hint}")


class ModelFamily:
    """One architecture family. Subclasses fill the class attributes and override what differs."""

    name: ClassVar[str]
    label: ClassVar[str]  # for messages: "Stable Diffusion XL"
    pipeline_class: ClassVar[str]  # the diffusers pipeline that loads what we save
    pipeline_names: ClassVar[tuple[str, ...]]  # model_index.json _class_name values of this family
    denoiser: ClassVar[str] = "unet"
    text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder",)
    tokenizers: ClassVar[tuple[str, ...]] = ("tokenizer",)
    trainable_text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder",)  # LoRA on the text encoder(s)
    full_text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder",)  # dreambooth + train_text_encoder
    token_encoders: ClassVar[tuple[str, ...]] = ("text_encoder",)  # a textual-inversion token goes into each
    methods: ClassVar[tuple[str, ...]]
    samplers: ClassVar[tuple[str, ...]]
    flow_matching: ClassVar[bool] = False
    lora_targets: ClassVar[list[str]] = ["to_q", "to_k", "to_v", "to_out.0"]
    kohya_export: ClassVar[bool] = False  # method.export_kohya applies

    # -- checks

    def check(self, cfg: Any) -> None:
        """Method, sampler and loss settings that do not fit this family: one-line ConfigErrors."""
        m, t = cfg.method, cfg.train
        if m.name not in self.methods:
            raise ConfigError(
                f"method={m.name} does not apply to {self.label} ({cfg.model.name}): "
                f"choose one of {', '.join(self.methods)}"
            )
        if m.name == "ti_dreambooth" and m.phase2 == "lora" and "lora" not in self.methods:
            raise ConfigError(f"method.phase2=lora does not apply to {self.label}: use method.phase2=full")
        if t.train_text_encoder:
            te = self.full_text_encoders if self._trains_full(m) else self.trainable_text_encoders
            if not te:
                what = "full fine-tuning" if self._trains_full(m) else m.name
                raise ConfigError(
                    f"train.train_text_encoder=true: {what} of {self.label} trains the {self.denoiser} only "
                    "here; set train.train_text_encoder=false (method=lora trains the CLIP text encoder's LoRA)"
                )
        if m.get("export_kohya") and not self.kohya_export:
            raise ConfigError(
                f"method.export_kohya=true is written for SD-1.x/2.x key names only, not {self.label}: "
                "set method.export_kohya=false (the diffusers LoRA file loads in ComfyUI too)"
            )
        self.check_sampler(cfg)
        if self.flow_matching and t.snr_gamma is not None:
            raise ConfigError(
                f"train.snr_gamma is a DDPM loss weighting and {self.label} is a flow-matching model: "
                "set train.snr_gamma=null and use train.weighting_scheme (none|sigma_sqrt|cosmap|logit_normal|mode)"
            )

    def check_sampler(self, cfg: Any) -> None:
        e = cfg.eval
        if e.scheduler not in self.samplers:
            raise ConfigError(
                f"eval.scheduler={e.scheduler} does not fit {self.label}"
                f"{' (a flow-matching model)' if self.flow_matching else ''}: "
                f"choose one of {', '.join(self.samplers)}"
            )

    @staticmethod
    def _trains_full(m: Any) -> bool:
        return m.name == "dreambooth" or (m.name == "ti_dreambooth" and m.phase2 == "full")

    # -- loading

    def load(self, model_cfg: Any, source: str) -> Components:
        raise NotImplementedError

    def _load_module(self, cls: Any, source: str, name: str, model_cfg: Any) -> Any:
        kwargs: dict[str, Any] = {"subfolder": name, "revision": model_cfg.get("revision")}
        variant = model_cfg.get("variant")
        if variant and name not in self.tokenizers:
            kwargs["variant"] = variant
        return cls.from_pretrained(source, **kwargs)

    def _vae(self, model_cfg: Any, source: str) -> Any:
        """The pipeline's VAE, or ``model.vae`` (a hub id or folder of a standalone AutoencoderKL)."""
        from diffusers import AutoencoderKL

        other = model_cfg.get("vae")
        if other:
            return AutoencoderKL.from_pretrained(other, revision=None)
        return self._load_module(AutoencoderKL, source, "vae", model_cfg)

    @staticmethod
    def raw_scheduler_config(source: str, revision: str | None) -> dict[str, Any]:
        """The pipeline's scheduler config as saved (keeps ``_class_name`` and e.g. PNDM's skip_prk_steps)."""
        from diffusers import DDPMScheduler

        config = DDPMScheduler.load_config(source, subfolder="scheduler", revision=revision)
        return {k: v for k, v in config.items() if k == "_class_name" or not k.startswith("_")}

    # -- prompts

    def max_lengths(self, comps: Components) -> tuple[int, ...]:
        return tuple(int(getattr(comps, name).model_max_length) for name in self.tokenizers)

    def tokenize(self, comps: Components, prompt: str) -> torch.Tensor:
        """One row: every tokenizer's padded ids side by side (``split_ids`` takes them apart)."""
        rows = []
        for name, length in zip(self.tokenizers, self.max_lengths(comps), strict=True):
            tokenizer = getattr(comps, name)
            rows.append(
                tokenizer(
                    prompt, padding="max_length", truncation=True, max_length=length, return_tensors="pt"
                ).input_ids[0]
            )
        return torch.cat(rows) if len(rows) > 1 else rows[0]

    def encode_prompt(self, comps: Components, ids: torch.Tensor, encoders: dict[str, Any]) -> Any:
        """The conditioning of a batch of token-id rows; ``encoders`` are the live text encoders."""
        raise NotImplementedError

    def frozen_states(
        self, comps: Components, name: str, ids: torch.Tensor, encode: Any, device: torch.device
    ) -> torch.Tensor:
        """States of an encoder that never trains (T5), cached per prompt row when
        ``comps.frozen_prompts`` is on: the encoder may then live off the training device."""
        cache = comps.frozen_prompts
        module = getattr(comps, name)
        home = next(module.parameters()).device
        if cache is None:
            return encode(module, ids.to(home)).to(device)
        rows = []
        for row in ids:
            key = (name, row.cpu().numpy().tobytes())
            if key not in cache:
                cache[key] = encode(module, row[None].to(home))[0].to(device)
            rows.append(cache[key].to(device))
        return torch.stack(rows)

    def offload_frozen_encoders(self, comps: Components, prompts: list[str], device: torch.device) -> None:
        """Encode ``prompts`` with every never-trained encoder once, then move those encoders to the CPU."""
        frozen = [n for n in self.text_encoders if n not in self.trainable_text_encoders]
        if not frozen:
            return
        comps.frozen_prompts = {}
        ids = torch.stack([self.tokenize(comps, p) for p in dict.fromkeys(prompts)]).to(device)
        with torch.no_grad():
            self.encode_prompt(comps, ids, comps.text_encoders())
        for name in frozen:
            getattr(comps, name).to("cpu")
        log.info("%s: %d prompts encoded and cached, moved to the CPU", ", ".join(frozen), len(set(prompts)))

    # -- latents and noise

    def latents(self, comps: Components, moments: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A fresh sample of the latent distribution, shifted and scaled as the denoiser expects."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        return self._to_denoiser_space(
            comps, DiagonalGaussianDistribution(moments).sample(generator=generator)
        )

    @staticmethod
    def _to_denoiser_space(comps: Components, latents: torch.Tensor) -> torch.Tensor:
        """VAE latents shifted (``shift_factor``, when the VAE has one) and scaled as the denoiser expects."""
        latents = latents.float()
        config = comps.vae.config
        shift = getattr(config, "shift_factor", None)
        if shift is not None:
            latents = latents - shift
        return latents * config.scaling_factor

    def noise(
        self,
        comps: Components,
        latents: torch.Tensor,
        noise: torch.Tensor,
        generator: torch.Generator,
        train_cfg: Any,
    ) -> Noised:
        raise NotImplementedError

    def predict(
        self, denoiser: Any, comps: Components, noised: Noised, cond: Any, batch: dict
    ) -> torch.Tensor:
        raise NotImplementedError

    # -- fixed inputs of the validation loss (val_loss.py)

    def latent_mean(self, comps: Components, moments: torch.Tensor) -> torch.Tensor:
        """The latent distribution's mean, shifted and scaled as :meth:`latents` does: no sampling."""
        return self._to_denoiser_space(comps, moments.chunk(2, dim=1)[0])

    def noise_at(
        self,
        comps: Components,
        latents: torch.Tensor,
        noise: torch.Tensor,
        quantiles: torch.Tensor,
        train_cfg: Any,
    ) -> Noised:
        """The forward process at fixed noise levels: example ``i`` at quantile ``quantiles[i]`` (in (0, 1),
        0 the least noise) of the noise levels training draws; the same target and weighting as
        :meth:`noise`, no random draw."""
        raise NotImplementedError

    # -- inference

    def pipeline(self, comps: Components, sampler: str | None = None, **live: Any) -> Any:
        """The family's pipeline over ``comps`` (``live`` overrides modules by name), progress bars off."""
        import diffusers

        from dreambooth_sweep.samplers import make_scheduler

        modules = {name: pick(comps, live, name) for name in (self.denoiser, *self.text_encoders)}
        tokenizers = {name: getattr(comps, name) for name in self.tokenizers}
        pipe = getattr(diffusers, self.pipeline_class)(
            vae=comps.vae,
            scheduler=make_scheduler(sampler, comps.scheduler_config),
            **modules,
            **tokenizers,
            **self.pipeline_options(comps),
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def pipeline_options(self, comps: Components) -> dict[str, Any]:
        """The pipeline's other constructor arguments (safety checker, watermark, ...)."""
        return {}

    def sample(self, pipe: Any, comps: Components, prompts: list[str], **kwargs: Any) -> list[Any]:
        """PIL images of ``prompts`` (kwargs: num_inference_steps, guidance_scale, height, width, generator)."""
        return pipe(prompt=prompts, output_type="pil", **kwargs).images

    # -- saving

    def save_full(self, folder: Path, comps: Components, live: dict[str, Any]) -> None:
        self.pipeline(comps, **live).save_pretrained(folder, safe_serialization=True)
        log.info("pipeline saved: %s.from_pretrained(<run>/model)", self.pipeline_class)

    def lora_save_kwargs(self, layers: dict[str, dict], metadata: dict[str, dict]) -> dict[str, Any]:
        """``save_lora_weights`` keyword arguments for these modules' LoRA layers and adapter configs."""
        kwargs: dict[str, Any] = {}
        for name, state in layers.items():
            kwargs[f"{name}_lora_layers"] = state
            kwargs[f"{name}_lora_adapter_metadata"] = metadata[name]
        return kwargs

    def save_lora(
        self, folder: Path, layers: dict[str, dict], metadata: dict[str, dict], weight_name: str
    ) -> None:
        import diffusers

        cls = getattr(diffusers, self.pipeline_class)
        cls.save_lora_weights(
            folder,
            **self.lora_save_kwargs(layers, metadata),
            weight_name=weight_name,
            safe_serialization=True,
        )
        tag_file(folder / weight_name, self.name)

    def save_embeddings(
        self, folder: Path, identifier: str, vectors: dict[str, torch.Tensor], file: str
    ) -> None:
        raise NotImplementedError

    def load_embeddings(self, pipe: Any, path: Path, token: str | None) -> None:
        """Load a textual-inversion file into ``pipe`` the way this family's pipelines do."""
        pipe.load_textual_inversion(str(path), token=token)

    def check_lora_file(self, path: Path) -> None:
        """A one-line error when ``path`` holds a LoRA for another family."""
        found = file_family(path)
        if found is not None and found != self.name:
            raise ConfigError(
                f"{path.name} is a LoRA for the {found} family but model={self.name} ({self.label}): "
                f"evaluate it with the {found} base model it was trained on"
            )
        if found is None:
            guessed = guess_lora_family(path)
            if guessed is not None and self.name not in guessed:
                raise ConfigError(
                    f"{path.name} looks like a LoRA for {'/'.join(guessed)}, not {self.label}: "
                    "evaluate it with the base model it was trained on"
                )


def read_model_index(source: str, revision: str | None = None) -> dict[str, Any]:
    local = Path(source).expanduser()
    if local.is_dir():
        return json.loads((local / "model_index.json").read_text())
    from diffusers import DiffusionPipeline

    return dict(DiffusionPipeline.load_config(source, revision=revision))
