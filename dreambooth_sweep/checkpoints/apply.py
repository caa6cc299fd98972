"""Put one checkpoint onto the once-loaded base model, and take it off again.

* **LoRA** (kohya / ai-toolkit / OneTrainer key names or diffusers') goes through diffusers'
  ``load_lora_weights`` on a pipeline over the live modules — diffusers converts the kohya names and
  folds in their ``alpha`` — as adapter ``checkpoint``; ``set_adapters`` sets the strength and
  ``unload_lora_weights`` takes the adapter layers out again. The base weights never change: a checksum
  taken at load time is compared after every unload.
* **Full weights** (``unet/``/``transformer/`` folders, pipeline folders, accelerate's ``model.safetensors``,
  single-file checkpoints) load into a *copy* of the family's denoiser (and text encoders), freed after
  scoring.
* **Embeddings** (SD-1.x/2.x and SDXL) load the family's way into copies of the tokenizers and text
  encoders, under ``data.identifier`` (the token the evaluation prompts use).

Every family the project supports (SD-1.x/2.x, SDXL, SD3.x, FLUX.1) is scored through its own pipeline
(``components.family``). A checkpoint made for another base is refused before anything is loaded: its
UNet cross-attention width (or embedding width, metadata, key names, our files' family tag) is compared
with the base model's, in one line naming both.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dreambooth_sweep.checkpoints import fit
from dreambooth_sweep.checkpoints.discover import Checkpoint
from dreambooth_sweep.errors import ConfigError, one_line

__all__ = ["ADAPTER", "Applied", "Applier", "load_base", "pipeline_over"]

log = logging.getLogger("dreambooth_sweep.checkpoints")

ADAPTER = "checkpoint"


# ----------------------------------------------------------------------------- the base model
# The two calls into model loading, kept here so they can be re-pointed when loading moves.


def load_base(cfg: Any) -> Any:
    """The base model's components (``models.load_components``), loaded once per scoring process."""
    from dreambooth_sweep.models import load_components

    return load_components(cfg.model, cfg.paths.cache_dir)


def pipeline_over(components: Any, scheduler: str | None = None) -> Any:
    """A pipeline over the live modules (``models.build_pipeline``): nothing is copied or reloaded."""
    from dreambooth_sweep.models import build_pipeline

    return build_pipeline(components, scheduler)


# ----------------------------------------------------------------------------- applying


# The fit module's names for the base families whose label does not come from the context width.
_FIT_LABELS = {"sdxl": "SDXL", "sd3": "SD3", "flux": "FLUX"}


@dataclass
class Applied:
    """The modules to sample with while a checkpoint is on, and its strength control."""

    components: Any  # the base's Components with the checkpoint's modules (copies where changed)
    modules: dict[str, torch.nn.Module]  # every module to sample with, by pipeline name
    set_scale: Callable[[float], None]  # LoRA strength; a no-op for other checkpoints

    @property
    def unet(self) -> torch.nn.Module:
        """The denoiser (UNet or transformer), as :class:`~dreambooth_sweep.evaluator.EvalContext` names it."""
        return self.modules[self.components.family.denoiser]

    @property
    def text_encoder(self) -> torch.nn.Module:
        return self.modules[self.components.family.text_encoders[0]]


class Applier:
    """Applies checkpoints to ``components`` one at a time (see the module docstring).

    Args:
        components: the base model, placed on its device in its dtype; never changed for good.
        identifier: the token the prompts use (an embedding is loaded under it).
        base_name: how error lines name the base model (``model.pretrained``).
    """

    def __init__(self, components: Any, identifier: str, base_name: str) -> None:
        from dreambooth_sweep.caches import fingerprint

        self.base = components
        self.model_family = components.family
        self.identifier = identifier
        self.base_name = base_name
        config = components.denoiser.config
        # A UNet's cross-attention width is what LoRA / full weights shapes tell; transformers have none.
        context = (
            getattr(config, "cross_attention_dim", None) if self.model_family.denoiser == "unet" else None
        )
        self.context = int(context) if context is not None else None
        self.hidden = int(getattr(components, self.model_family.text_encoders[0]).config.hidden_size)
        self.family = _FIT_LABELS.get(self.model_family.name) or (
            fit.CONTEXT_FAMILIES.get(self.context) if self.context is not None else None
        )
        self._fingerprint = fingerprint(components)

    def base_description(self) -> str:
        return fit.describe(self.family, self.context) if self.context else self.model_family.label

    def check_fit(self, ckpt: Checkpoint) -> None:
        """Refuse a checkpoint made for another base model (one line: the file, both bases, the fix)."""
        family = self.model_family
        if ckpt.kind == "embedding" and family.name not in ("sd", "sdxl"):
            raise ConfigError(
                f"{ckpt.path} is a textual-inversion embedding, which scoring loads into SD-1.x/2.x and SDXL "
                f"models only, not {family.label} ({self.base_name}): score LoRA or full checkpoints here"
            )
        if ckpt.kind == "embedding":
            mismatch = ckpt.embed_dim is not None and ckpt.embed_dim != self.hidden
            made_for = fit.describe(ckpt.family, None) + f" (embedding width {ckpt.embed_dim})"
            base = f"{self.base_description()}, text width {self.hidden}"
        else:
            other = "transformer" if family.denoiser == "unet" else "unet"
            if other in ckpt.parts:  # a UNet for a transformer model or the other way round
                mismatch = True
            elif ckpt.context is not None and self.context is not None:  # shapes decide when both have them
                mismatch = ckpt.context != self.context
            else:
                mismatch = not _same_family(ckpt.family, self.family)
            made_for, base = fit.describe(ckpt.family, ckpt.context), self.base_description()
        if mismatch:
            raise self._mismatch(ckpt, made_for, base)
        if "lora" in ckpt.parts:  # our own files name their family; key names tell the others apart
            try:
                family.check_lora_file(ckpt.parts["lora"])
            except ConfigError as exc:
                raise self._mismatch(
                    ckpt, _tagged_family(ckpt.parts["lora"]), self.base_description()
                ) from exc

    def _mismatch(self, ckpt: Checkpoint, made_for: str, base: str) -> ConfigError:
        return ConfigError(
            f"{ckpt.path} seems made for {made_for}, but the base model {self.base_name} is {base}: "
            "set model=... (or model.pretrained=...) to the base it was trained on"
        )

    @contextmanager
    def applied(self, ckpt: Checkpoint) -> Iterator[Applied]:
        """The base model with ``ckpt`` on it for the ``with`` block; the base as it was afterwards."""
        self.check_fit(ckpt)
        base, family = self.base, self.model_family
        live = {name: getattr(base, name) for name in base.module_names}
        tokenizers = {name: getattr(base, name) for name in base.tokenizer_names}
        lora_on = False
        pipe: Any = None
        try:
            try:
                if "embedding" in ckpt.parts:  # new tokens go into copies: the base keeps its vocabulary
                    for name in family.token_encoders:
                        live[name] = copy.deepcopy(live[name])
                    tokenizers = {name: copy.deepcopy(t) for name, t in tokenizers.items()}
                if any(k in ckpt.parts for k in ("unet", "transformer", "single_file")):
                    live[family.denoiser] = self._full_denoiser(ckpt)
                for name in family.text_encoders:
                    if name in ckpt.parts:
                        live[name] = copy.deepcopy(live[name])
                        _load_into(live[name], ckpt.parts[name])
                comps = copy.copy(base)  # shares the untouched modules, the noise schedule and settings
                for name, value in {**live, **tokenizers}.items():
                    setattr(comps, name, value)
                pipe = pipeline_over(comps)
                if "embedding" in ckpt.parts:
                    self._embedding(pipe, ckpt)
                if "lora" in ckpt.parts:
                    lora_on = True
                    file = ckpt.parts["lora"]
                    pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=ADAPTER)
            except ConfigError:
                raise
            except (RuntimeError, ValueError, KeyError) as exc:
                if "size mismatch" in str(exc) or "shape" in str(exc):
                    raise self._mismatch(
                        ckpt, fit.describe(ckpt.family, ckpt.context), self.base_description()
                    ) from exc
                raise ConfigError(
                    f"cannot load {ckpt.path} ({ckpt.format}): {one_line(exc, 300, with_type=True)}: "
                    "check that it is a complete checkpoint for this base model"
                ) from exc

            def set_scale(scale: float) -> None:
                if lora_on:
                    pipe.set_adapters([ADAPTER], adapter_weights=[float(scale)])

            modules = {name: getattr(pipe, name) for name in base.module_names}
            for name in base.tokenizer_names:
                setattr(comps, name, getattr(pipe, name))
            yield Applied(comps, modules, set_scale)
        finally:
            if lora_on and pipe is not None:
                pipe.unload_lora_weights()
            self._check_base()

    def _check_base(self) -> None:
        from dreambooth_sweep.caches import fingerprint

        if fingerprint(self.base) != self._fingerprint:
            raise RuntimeError("the base model's weights changed while a checkpoint was applied")

    def _full_denoiser(self, ckpt: Checkpoint) -> torch.nn.Module:
        if "single_file" in ckpt.parts:
            return self._single_file(ckpt.parts["single_file"])
        denoiser = copy.deepcopy(self.base.denoiser)
        part = ckpt.parts.get("unet") or ckpt.parts["transformer"]
        _load_into(denoiser, part)
        return denoiser

    def _single_file(self, path: Path) -> torch.nn.Module:
        """An original-layout checkpoint through diffusers' converter, with the base model's denoiser config."""
        base = self.base.denoiser
        param = next(base.parameters())
        if not hasattr(type(base), "from_single_file"):
            raise ConfigError(
                f"{path} is a single-file checkpoint, which diffusers cannot convert for "
                f"{type(base).__name__}: save it as a diffusers folder ({self.model_family.denoiser}/)"
            )
        denoiser = type(base).from_single_file(
            str(path),
            config=str(self.base.source),
            subfolder=self.model_family.denoiser,
            torch_dtype=param.dtype,
        )
        return denoiser.to(param.device)

    def _embedding(self, pipe: Any, ckpt: Checkpoint) -> None:
        try:
            self.model_family.load_embeddings(pipe, ckpt.parts["embedding"], self.identifier)
        except ValueError as exc:
            if "already in tokenizer vocabulary" in str(exc):
                raise ConfigError(
                    f"data.identifier={self.identifier!r} is a word the tokenizer already knows, so "
                    f"{ckpt.path.name} cannot be loaded under it: set data.identifier to a new token, "
                    f"e.g. \"data.identifier='<{ckpt.token or 'sks'}>'\""
                ) from exc
            raise


def _tagged_family(path: Path) -> str:
    """The family a LoRA file names (ours) or its key names point to, for error lines."""
    from dreambooth_sweep.families import FAMILIES
    from dreambooth_sweep.families.lora_files import file_family, guess_lora_family

    found = file_family(path)
    if found in FAMILIES:
        return FAMILIES[found].label
    guessed = guess_lora_family(path) or ()
    return "/".join(FAMILIES[n].label if n in FAMILIES else n for n in guessed) or "another base"


def _same_family(made_for: str | None, base: str | None) -> bool:
    """Whether a checkpoint's family (``fit`` names; ``FLUX/SD3`` fits either) fits the base's; unknown fits."""
    if made_for is None or base is None:
        return True
    return made_for == base or base in made_for.split("/")


def _load_into(module: torch.nn.Module, part: Path) -> None:
    """Load a folder's (``diffusion_pytorch_model*.safetensors``) or a file's weights into ``module``."""
    from safetensors.torch import load_file

    files = [part] if part.is_file() else sorted(part.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{part} holds no .safetensors weights: save with safe_serialization=True")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{part} does not match the base model's {type(module).__name__} "
            f"({len(missing)} weights missing, e.g. {missing[:1]}; {len(unexpected)} unexpected, e.g. "
            f"{unexpected[:1]}): set model= to the base it was trained on"
        )
