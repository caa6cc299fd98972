"""Training methods: which weights a run trains, at which learning rates, and what it saves.

The *denoiser* is the family's UNet (SD, SDXL) or transformer (SD3, FLUX); the *text encoders* that
may train are the family's CLIP encoders (T5 never trains). Which method applies to which family is
:meth:`~dreambooth_sweep.families.base.ModelFamily.check`'s business.

* ``dreambooth``: every denoiser weight (+ the CLIP text encoder(s) with ``train.train_text_encoder``
  on SD/SDXL); saves a diffusers pipeline in ``<run>/model`` (the family's pipeline ``from_pretrained``).
* ``lora``: LoRA adapters on the denoiser's attention (+ the CLIP text encoders'); saves
  ``pytorch_lora_weights.safetensors`` (``pipe.load_lora_weights``), with ``method.export_kohya`` also
  a copy under kohya / A1111 key names (SD, SDXL).
* ``textual_inversion``: only the new token's embedding row(s), in every CLIP encoder (SDXL: both);
  saves ``learned_embeds.safetensors`` (``pipe.load_textual_inversion``; SDXL: ``clip_l``/``clip_g``).
* ``ti_dreambooth``: textual inversion for ``method.ti_steps``, then dreambooth (or lora with
  ``method.phase2=lora``) until ``train.max_steps``; saves both.

A method is a list of *phases*, each training one *part* (:class:`FullWeights`, :class:`LoRAWeights`,
:class:`NewTokens`) over a range of optimizer steps. Every phase's weights sit in the one optimizer
from the start, in their own parameter groups with their own lr schedule; weights outside the current
phase have ``requires_grad=False``, so they get no gradient and AdamW skips them (no update, no weight
decay). That keeps one loop, one optimizer and one checkpoint format for every method, and a resumed
run lands in the right phase from the step number alone.

The loop in ``train.py`` calls, in order::

    method = build_method(cfg)
    method.setup(components, device, weight_dtype)  # new tokens / adapters, frozen weights, dtypes
    optimizer = AdamW(method.param_groups(lr_scale))
    lr_scheduler = method.lr_scheduler(optimizer)   # one schedule per phase
    method.enter(step)                              # this step's trainable weights (start, resume, each step)
    method.after_step()                             # after each optimizer step: frozen rows put back
    method.save(folder, live)                       # the final weights (live: modules by pipeline name)

Why one piece (~600 lines): the three parts (full weights, LoRA, new tokens) and the phase logic
that switches between them share parameter groups, schedules and saving; splitting them would
scatter one state machine over several files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dreambooth_sweep.config import ConfigError
from dreambooth_sweep.families import Components

__all__ = [
    "EMBEDDINGS_FILE",
    "KOHYA_LORA_FILE",
    "LORA_FILE",
    "FullWeights",
    "LoRAWeights",
    "Method",
    "NewTokens",
    "Part",
    "Phase",
    "build_method",
]

log = logging.getLogger("dreambooth_sweep.methods")

LORA_FILE = "pytorch_lora_weights.safetensors"  # pipe.load_lora_weights(dir, weight_name=LORA_FILE)
KOHYA_LORA_FILE = "pytorch_lora_weights_kohya.safetensors"  # A1111 / ComfyUI key names (method.export_kohya)
EMBEDDINGS_FILE = "learned_embeds.safetensors"  # pipe.load_textual_inversion(path)


# ----------------------------------------------------------------------------- parts


class Part:
    """One set of trainable weights.

    ``attach`` runs once on the placed modules; ``enable`` sets ``requires_grad`` for a step and
    records whether the denoiser / text encoders need gradients then (``denoiser_active`` /
    ``text_encoder_active``). ``te_names`` are the text encoders (pipeline names) the part trains.
    """

    label = ""
    trains_denoiser = False  # in any step: the denoiser goes through accelerate.prepare
    trains_text_encoder = False  # in any step: the text encoders in te_names go through accelerate.prepare
    fp32_denoiser = False  # the denoiser's own weights train, so they stay float32 under mixed precision
    fp32_text_encoder = False
    te_names: tuple[str, ...] = ()

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.denoiser_active = False
        self.text_encoder_active = False

    def attach(self, comps: Components) -> None:
        raise NotImplementedError

    def param_groups(self, lr_scale: float) -> list[dict[str, Any]]:
        raise NotImplementedError

    def enable(self, on: bool, step: int) -> None:
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after every optimizer step."""

    def prompt(self, text: str) -> str:
        """The training prompt as this part needs it (multi-vector tokens spelled out)."""
        return text

    def save(self, folder: Path, comps: Components, live: dict[str, Any]) -> list[str]:
        """Write the final weights into ``folder``; returns the small weight files (always tracked)."""
        raise NotImplementedError


def _set_trainable(params: list[torch.nn.Parameter], on: bool) -> None:
    for p in params:
        p.requires_grad_(on)


def _text_encoder_on(cfg: Any, step: int) -> bool:
    """train.train_text_encoder, capped at train.text_encoder_steps (counted from the run's first step)."""
    t = cfg.train
    return bool(t.train_text_encoder) and (t.text_encoder_steps is None or step < t.text_encoder_steps)


class _DenoiserAndTextEncoder(Part):
    """A part with denoiser weights and, with ``train.train_text_encoder``, text-encoder weights (``attach``
    fills ``denoiser_params`` and ``te_params``); the text encoders' stop after ``train.text_encoder_steps``."""

    frozen_message = "text encoder frozen after %d steps"
    denoiser_params: list[torch.nn.Parameter]
    te_params: list[torch.nn.Parameter]

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self._applied = False  # requires_grad set at least once; later calls only on a change

    def param_groups(self, lr_scale: float) -> list[dict[str, Any]]:
        t = self.cfg.train
        groups = [{"params": self.denoiser_params, "lr": t.lr * lr_scale}]
        if self.te_params:
            groups.append({"params": self.te_params, "lr": (t.text_encoder_lr or t.lr) * lr_scale})
        return groups

    def enable(self, on: bool, step: int) -> None:
        te_on = on and bool(self.te_params) and _text_encoder_on(self.cfg, step)
        if self.text_encoder_active and not te_on and on:
            log.info(self.frozen_message, step)
        if (on, te_on) != (self.denoiser_active, self.text_encoder_active) or not self._applied:
            _set_trainable(self.denoiser_params, on)  # only on a change: it walks every parameter
            _set_trainable(self.te_params, te_on)
            self._applied = True
        self.denoiser_active, self.text_encoder_active = on, te_on


class FullWeights(_DenoiserAndTextEncoder):
    """DreamBooth: every denoiser weight, and the CLIP text encoders' with ``train.train_text_encoder``.

    Args:
        cfg: the run config.
        keep_embedding: leave the token-embedding matrix out (ti_dreambooth: the learned token stays
            as textual inversion left it while the rest of the text encoder trains).
    """

    label = "dreambooth"
    trains_denoiser = True
    fp32_denoiser = True

    def __init__(self, cfg: Any, *, keep_embedding: bool = False) -> None:
        super().__init__(cfg)
        self.keep_embedding = keep_embedding
        t = cfg.train
        self.trains_text_encoder = self.fp32_text_encoder = (
            bool(t.train_text_encoder) and t.text_encoder_steps != 0
        )

    def attach(self, comps: Components) -> None:
        self.denoiser_params = list(comps.denoiser.parameters())
        self.te_params: list[torch.nn.Parameter] = []
        if self.trains_text_encoder:
            self.te_names = comps.family.full_text_encoders
            for name in self.te_names:
                encoder = getattr(comps, name)
                embedding = encoder.get_input_embeddings().weight
                self.te_params += [
                    p for p in encoder.parameters() if not (self.keep_embedding and p is embedding)
                ]

    def save(self, folder: Path, comps: Components, live: dict[str, Any]) -> list[str]:
        comps.family.save_full(folder, comps, live)
        return []


class LoRAWeights(_DenoiserAndTextEncoder):
    """LoRA adapters (peft, through diffusers' ``add_adapter``) on the denoiser, and on the CLIP text
    encoders with ``train.train_text_encoder``; the base weights stay frozen in the mixed-precision
    dtype while the adapters train in float32. ``method.unet_target_modules=null`` takes the family's
    default targets (those of diffusers' DreamBooth LoRA script for it)."""

    label = "lora"
    trains_denoiser = True
    frozen_message = "text-encoder LoRA frozen after %d steps"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        t = cfg.train
        self.trains_text_encoder = bool(t.train_text_encoder) and t.text_encoder_steps != 0

    def _config(self, targets: Any) -> Any:
        from peft import LoraConfig

        m = self.cfg.method
        return LoraConfig(
            r=m.rank,
            lora_alpha=m.alpha if m.alpha is not None else m.rank,
            lora_dropout=m.dropout,
            init_lora_weights="gaussian",  # B = 0: the adapted model starts exactly at the base model
            target_modules=list(targets),
        )

    def _add(self, module: torch.nn.Module, targets: Any, key: str) -> list[torch.nn.Parameter]:
        try:
            module.add_adapter(self._config(targets))
        except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
            reason = str(exc).strip().splitlines()[0]
            raise ConfigError(
                f"method.{key}={list(targets)} cannot be adapted ({reason}): name Linear layers of the model"
            ) from exc
        # add_adapter leaves exactly the adapter weights trainable
        return [p for p in module.parameters() if p.requires_grad]

    def attach(self, comps: Components) -> None:
        m, family = self.cfg.method, comps.family
        targets = m.unet_target_modules if m.unet_target_modules is not None else family.lora_targets
        self.denoiser_name = family.denoiser
        self.denoiser_params = self._add(comps.denoiser, targets, "unet_target_modules")
        self.te_params: list[torch.nn.Parameter] = []
        if self.trains_text_encoder:
            self.te_names = family.trainable_text_encoders
            for name in self.te_names:
                self.te_params += self._add(
                    getattr(comps, name), m.text_encoder_target_modules, "text_encoder_target_modules"
                )
        n = sum(p.numel() for p in self.denoiser_params + self.te_params)
        log.info("LoRA rank %d: %.2f M trainable parameters", m.rank, n / 1e6)

    def save(self, folder: Path, comps: Components, live: dict[str, Any]) -> list[str]:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        family = comps.family
        layers, metadata = {}, {}
        for name in (self.denoiser_name, *(self.te_names if self.te_params else ())):
            module = live[name]
            state = get_peft_model_state_dict(module, save_embedding_layers=False)
            # UNet families save diffusers' key names (lora.down/up), transformer families peft's
            # (lora_A/B), as diffusers' own DreamBooth LoRA scripts for each do.
            layers[name] = convert_state_dict_to_diffusers(state) if family.denoiser == "unet" else state
            # The adapter config goes into the file's metadata: without it load_lora_weights assumes
            # alpha = rank, and any other alpha would load at the wrong scale.
            metadata[name] = module.peft_config["default"].to_dict()
        family.save_lora(folder, layers, metadata, LORA_FILE)
        files = [LORA_FILE]
        if self.cfg.method.export_kohya:
            tes = {n: live[n] for n in self.te_names} if self.te_params else {}
            self._save_kohya(folder / KOHYA_LORA_FILE, live[self.denoiser_name], tes, family.name)
            files.append(KOHYA_LORA_FILE)
        log.info("LoRA saved: pipe.load_lora_weights(dir, weight_name=%r)", LORA_FILE)
        return files

    def _save_kohya(self, path: Path, unet: Any, text_encoders: dict[str, Any], family: str) -> None:
        """Kohya / A1111 key names via diffusers' own converter, with two fixes for SD-1/2: the converter
        writes SDXL's ``lora_te1_`` prefix and alpha = rank, where single-encoder models use
        ``lora_te_text_model_`` and the alpha this run trained with."""
        from diffusers.utils import convert_state_dict_to_kohya
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        peft_state = {
            f"unet.{k}": v for k, v in get_peft_model_state_dict(unet, save_embedding_layers=False).items()
        }
        for name, text_encoder in text_encoders.items():
            peft_state.update(
                {
                    f"{name}.{k}": v
                    for k, v in get_peft_model_state_dict(text_encoder, save_embedding_layers=False).items()
                }
            )
        m = self.cfg.method
        alpha = float(m.alpha if m.alpha is not None else m.rank)
        kohya = {}
        for key, value in convert_state_dict_to_kohya(peft_state).items():
            if key.startswith("lora_te1_") and family == "sd":
                key = "lora_te_" + key.removeprefix("lora_te1_")
                if not key.startswith("lora_te_text_model_"):  # transformers 5 has no text_model level
                    key = "lora_te_text_model_" + key.removeprefix("lora_te_")
            kohya[key] = torch.tensor(alpha) if key.endswith(".alpha") else value.contiguous()
        save_file(kohya, str(path))


class NewTokens(Part):
    """Textual inversion: ``data.identifier`` becomes new token(s) in every CLIP tokenizer of the family
    (SDXL: both), whose embedding rows are the only weights that train; every other row is put back
    after each optimizer step (weight decay would otherwise shrink them).

    ``method.num_vectors`` > 1 gives the tokens ``<tok>``, ``<tok>_1``, ... (diffusers' multi-vector
    convention): the training prompt spells them all out, and pipelines do the same on their own
    (``maybe_convert_prompt``), so prompts keep saying just ``<tok>``.
    """

    label = "textual inversion"
    trains_text_encoder = True
    fp32_text_encoder = True

    def attach(self, comps: Components) -> None:
        m, d = self.cfg.method, self.cfg.data
        self.identifier = str(d.identifier)
        if any(c.isspace() for c in self.identifier):
            raise ConfigError(
                f"data.identifier={self.identifier!r} has spaces: textual inversion needs one new token, "
                "e.g. \"data.identifier='<sks>'\""
            )
        self.tokens = [self.identifier] + [f"{self.identifier}_{i}" for i in range(1, m.num_vectors)]
        self.te_names = comps.family.token_encoders
        self.ids: dict[str, list[int]] = {}
        self.weights: dict[str, torch.nn.Parameter] = {}
        self.originals: dict[str, torch.Tensor] = {}
        for name in self.te_names:
            tokenizer_name = name.replace("text_encoder", "tokenizer")
            self._add_token(name, getattr(comps, tokenizer_name), getattr(comps, name))
        first = self.te_names[0]
        log.info(
            "textual inversion: %s (ids %s) from %r in %s",
            " ".join(self.tokens),
            self.ids[first],
            self._initializer(),
            ", ".join(self.te_names),
        )

    def _add_token(self, name: str, tokenizer: Any, text_encoder: Any) -> None:
        vocab = tokenizer.get_vocab()
        pieces = tokenizer.tokenize(self.identifier)
        if any(tok in vocab for tok in self.tokens) or (len(pieces) == 1 and pieces[0] in vocab):
            stem = self.identifier.strip("<>") or "sks"
            new = f"<{stem}2>" if self.identifier.startswith("<") else f"<{stem}>"
            raise ConfigError(
                f"data.identifier={self.identifier!r} is already in the tokenizer's vocabulary: "
                f"textual inversion needs a new token, e.g. \"data.identifier='{new}'\""
            )
        init_id = self._initializer_id(tokenizer)

        tokenizer.add_tokens(self.tokens)
        ids = tokenizer.convert_tokens_to_ids(self.tokens)
        # Pipelines find the token by tokenizing the prompt (maybe_convert_prompt): it must come back whole.
        back = tokenizer.tokenize(self.identifier)
        if back != self.tokens[:1] or tokenizer.convert_tokens_to_ids(back) != ids[:1]:
            raise ConfigError(
                f"the tokenizer does not read data.identifier={self.identifier!r} back as its new token "
                "(CLIP lowercases prompts): use a lower-case identifier, e.g. \"data.identifier='<sks>'\""
            )
        if max(ids) >= text_encoder.get_input_embeddings().weight.shape[0]:
            text_encoder.resize_token_embeddings(max(ids) + 1, mean_resizing=False)
        weight = text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            weight[ids] = weight[init_id].clone()
        self.ids[name], self.weights[name] = ids, weight
        self.originals[name] = weight.detach().clone()  # what every other row is put back to

    def _initializer(self) -> str:
        m = self.cfg.method
        return str(m.initializer_token if m.initializer_token is not None else self.cfg.data.class_noun)

    def _initializer_id(self, tokenizer: Any) -> int:
        word = self._initializer()
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            key = (
                "method.initializer_token"
                if self.cfg.method.initializer_token is not None
                else "data.class_noun (the default method.initializer_token)"
            )
            raise ConfigError(
                f"{key}={word!r} is {len(ids)} tokens {tokenizer.convert_ids_to_tokens(ids)}: the new "
                "embedding starts from one token's, so set method.initializer_token=<a one-token word>"
            )
        return ids[0]

    def param_groups(self, lr_scale: float) -> list[dict[str, Any]]:
        return [{"params": list(self.weights.values()), "lr": self.cfg.method.ti_lr * lr_scale}]

    def enable(self, on: bool, step: int) -> None:
        for weight in self.weights.values():
            weight.requires_grad_(on)
        # gradients flow through the frozen denoiser
        self.denoiser_active, self.text_encoder_active = False, on

    def after_step(self) -> None:
        if not self.text_encoder_active:
            return
        with torch.no_grad():
            for name, weight in self.weights.items():
                ids = self.ids[name]
                learned = weight[ids].clone()
                weight.copy_(self.originals[name])
                weight[ids] = learned

    def prompt(self, text: str) -> str:
        return text.replace(self.identifier, " ".join(self.tokens)) if len(self.tokens) > 1 else text

    def embeddings(self, text_encoder: Any, name: str = "text_encoder") -> torch.Tensor:
        """The learned vectors of encoder ``name``, shape (num_vectors, hidden size)."""
        ids = self.ids[name]
        return text_encoder.get_input_embeddings().weight[ids].detach().float().cpu().contiguous()

    def save(self, folder: Path, comps: Components, live: dict[str, Any]) -> list[str]:
        folder.mkdir(parents=True, exist_ok=True)
        vectors = {name: self.embeddings(live[name], name) for name in self.te_names}
        comps.family.save_embeddings(folder, self.identifier, vectors, EMBEDDINGS_FILE)
        log.info("embedding saved: pipe.load_textual_inversion(%r)", EMBEDDINGS_FILE)
        return [EMBEDDINGS_FILE]


# ----------------------------------------------------------------------------- methods


@dataclass
class Phase:
    part: Part
    start: int  # first optimizer step (0-based) this part trains
    end: int  # first step it no longer trains

    def covers(self, step: int) -> bool:
        return self.start <= step < self.end


class Method:
    """A sequence of phases over ``[0, train.max_steps)``; see the module docstring for the call order."""

    def __init__(self, cfg: Any, phases: list[Phase]) -> None:
        self.cfg = cfg
        self.name = str(cfg.method.name)
        self.phases = phases
        self._group_phase: list[int] = []
        self._current: int | None = None

    @property
    def trains_denoiser(self) -> bool:
        return any(ph.part.trains_denoiser for ph in self.phases)

    @property
    def trains_text_encoder(self) -> bool:
        return any(ph.part.trains_text_encoder for ph in self.phases)

    @property
    def denoiser_active(self) -> bool:
        return any(ph.part.denoiser_active for ph in self.phases)

    @property
    def text_encoder_names(self) -> tuple[str, ...]:
        """Every text encoder any phase trains (pipeline names, family order)."""
        names = {n for ph in self.phases for n in ph.part.te_names if ph.part.trains_text_encoder}
        return tuple(n for n in self.comps.family.text_encoders if n in names)

    @property
    def text_encoder_active(self) -> bool:
        return any(ph.part.text_encoder_active for ph in self.phases)

    def setup(self, comps: Components, device: torch.device, weight_dtype: torch.dtype) -> None:
        """Freeze everything, place the modules, add tokens/adapters, mark every phase's weights trainable.

        Frozen modules run in the mixed-precision dtype; weights that train stay float32 (accelerate
        autocasts the forward). Every phase's weights start trainable so ``accelerator.prepare`` sees
        them; :meth:`enter` then narrows them to the current step's.
        """
        from diffusers.training_utils import cast_training_params

        self.comps = comps
        family = comps.family
        denoiser = comps.denoiser
        encoders = comps.text_encoders()
        denoiser.requires_grad_(False)
        for encoder in encoders.values():
            encoder.requires_grad_(False)
        parts = [ph.part for ph in self.phases]
        _place(denoiser, device, torch.float32 if any(p.fp32_denoiser for p in parts) else weight_dtype)
        for name, encoder in encoders.items():
            # A part that fully trains a text encoder keeps every CLIP encoder it could touch in float32
            # (which ones it trains is known only after attach); T5 never trains.
            full = any(p.fp32_text_encoder for p in parts) and name in family.trainable_text_encoders
            _place(encoder, device, torch.float32 if full else weight_dtype)
        for part in parts:
            part.attach(comps)
        for ph in self.phases:
            ph.part.enable(True, ph.start)
        if weight_dtype != torch.float32:
            # LoRA adapters train in float32
            cast_training_params([denoiser, *encoders.values()], dtype=torch.float32)

    def param_groups(self, lr_scale: float = 1.0) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = []
        self._group_phase = []
        for index, ph in enumerate(self.phases):
            part_groups = ph.part.param_groups(lr_scale)
            groups += part_groups
            self._group_phase += [index] * len(part_groups)
        return groups

    def lr_scheduler(
        self, optimizer: torch.optim.Optimizer, num_processes: int = 1
    ) -> torch.optim.lr_scheduler.LambdaLR:
        """``train.lr_scheduler`` run separately in each phase (warmup included) over that phase's steps.

        With one phase this is exactly diffusers' ``get_scheduler`` over ``train.max_steps``.
        accelerate steps the schedule once per process per optimizer step, hence ``num_processes``.
        """
        from diffusers.optimization import get_scheduler

        t = self.cfg.train
        lambdas = []
        for group, index in zip(optimizer.param_groups, self._group_phase, strict=True):
            ph = self.phases[index]
            # polynomial reads its lr
            probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=group["lr"])
            schedule = get_scheduler(
                t.lr_scheduler,
                optimizer=probe,
                num_warmup_steps=t.lr_warmup_steps * num_processes,
                num_training_steps=(ph.end - ph.start) * num_processes,
            )
            lambdas.append(_shifted(schedule.lr_lambdas[0], ph.start * num_processes))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)

    @property
    def lr_group(self) -> int:
        """Index of the param group whose lr is reported as ``train/lr`` (the current phase's first)."""
        current = self._current if self._current is not None else len(self.phases) - 1
        return self._group_phase.index(current) if current in self._group_phase else 0

    def enter(self, step: int) -> None:
        """Make exactly the weights of the phase covering ``step`` trainable, and put the modules that
        train in train mode (the others in eval mode)."""
        current = next((i for i, ph in enumerate(self.phases) if ph.covers(step)), None)
        if current is not None and self._current is not None and current != self._current:
            log.info(
                "step %d: %s → %s",
                step,
                self.phases[self._current].part.label,
                self.phases[current].part.label,
            )
        for index, ph in enumerate(self.phases):
            ph.part.enable(index == current, step)
        if current is not None:
            self._current = current
        te_on = self.text_encoder_active
        for module, mode in (
            (self.comps.denoiser, self.denoiser_active),
            *((getattr(self.comps, n), te_on) for n in self.text_encoder_names),
        ):
            if module.training != mode:  # train() walks every submodule: only on a change (evaluation
                module.train(mode)  # puts every module back as it found it)

    @property
    def state(self) -> tuple[int | None, bool, bool]:
        """(phase, denoiser trains, text encoders train): which weights have ``requires_grad`` changes with it."""
        return self._current, self.denoiser_active, self.text_encoder_active

    def after_step(self) -> None:
        for ph in self.phases:
            ph.part.after_step()

    def prompt(self, text: str) -> str:
        for ph in self.phases:
            text = ph.part.prompt(text)
        return text

    def save_checkpoint_files(self, folder: Path, live: dict[str, Any]) -> list[str]:
        """The small weight files (LoRA, embedding) into a training checkpoint, as diffusers' scripts do,
        so any checkpoint loads with ``load_lora_weights`` / ``load_textual_inversion`` (and
        ``score-checkpoints`` scores it); full weights are in the training state already."""
        files: list[str] = []
        for ph in self.phases:
            if not isinstance(ph.part, FullWeights):
                files += ph.part.save(folder, self.comps, live)
        return files

    def save(self, folder: Path, live: dict[str, Any]) -> list[str]:
        """Every part's final weights into ``folder`` (``live``: the unwrapped modules by pipeline
        name); returns the small weight files (tracked always)."""
        folder.mkdir(parents=True, exist_ok=True)
        files: list[str] = []
        for ph in self.phases:
            files += ph.part.save(folder, self.comps, live)
        return files


def _place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    if next(module.parameters()).dtype == dtype:
        module.to(device)  # no dtype: diffusers warns about any .to(dtype) call
    else:
        module.to(device, dtype=dtype)


def _shifted(schedule: Callable[[int], float], start: int) -> Callable[[int], float]:
    return lambda step: schedule(max(step - start, 0))


def build_method(cfg: Any) -> Method:
    """The :class:`Method` that ``cfg.method.name`` names (the config is checked by ``validate``)."""
    m, total = cfg.method, int(cfg.train.max_steps)
    if m.name == "dreambooth":
        return Method(cfg, [Phase(FullWeights(cfg), 0, total)])
    if m.name == "lora":
        return Method(cfg, [Phase(LoRAWeights(cfg), 0, total)])
    if m.name == "textual_inversion":
        return Method(cfg, [Phase(NewTokens(cfg), 0, total)])
    if m.name == "ti_dreambooth":
        second = LoRAWeights(cfg) if m.phase2 == "lora" else FullWeights(cfg, keep_embedding=True)
        return Method(cfg, [Phase(NewTokens(cfg), 0, m.ti_steps), Phase(second, m.ti_steps, total)])
    raise ConfigError(
        f"unknown method.name={m.name!r}: choose dreambooth, lora, textual_inversion or ti_dreambooth"
    )
