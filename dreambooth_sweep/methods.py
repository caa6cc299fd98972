"""Training methods: which weights a run trains, at which learning rates, and what it saves.

* ``dreambooth``: every UNet weight (+ the text encoder with ``train.train_text_encoder``); saves a
  diffusers pipeline in ``<run>/model`` (``StableDiffusionPipeline.from_pretrained``).
* ``lora``: LoRA adapters on the UNet attention (+ the text encoder's); saves
  ``pytorch_lora_weights.safetensors`` (``pipe.load_lora_weights``), with ``method.export_kohya`` also
  a copy under kohya / A1111 key names.
* ``textual_inversion``: only the new token's embedding row(s); saves ``learned_embeds.safetensors``
  (``pipe.load_textual_inversion``).
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
    method.save(folder, unet, text_encoder)         # the final weights
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dreambooth_sweep.config import ConfigError
from dreambooth_sweep.models import Components, build_pipeline

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
    records whether the UNet / text encoder need gradients then (``unet_active``/``text_encoder_active``).
    """

    label = ""
    trains_unet = False  # in any step: the UNet goes through accelerate.prepare
    trains_text_encoder = False  # in any step: the text encoder goes through accelerate.prepare
    fp32_unet = False  # the UNet's own weights train, so they stay float32 under mixed precision
    fp32_text_encoder = False

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.unet_active = False
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

    def save(self, folder: Path, comps: Components, unet: Any, text_encoder: Any) -> list[str]:
        """Write the final weights into ``folder``; returns the small weight files (always tracked)."""
        raise NotImplementedError


def _set_trainable(params: list[torch.nn.Parameter], on: bool) -> None:
    for p in params:
        p.requires_grad_(on)


def _text_encoder_on(cfg: Any, step: int) -> bool:
    """train.train_text_encoder, capped at train.text_encoder_steps (counted from the run's first step)."""
    t = cfg.train
    return bool(t.train_text_encoder) and (t.text_encoder_steps is None or step < t.text_encoder_steps)


class _UNetAndTextEncoder(Part):
    """A part with UNet weights and, with ``train.train_text_encoder``, text-encoder weights (``attach``
    fills ``unet_params`` and ``te_params``); the text encoder's stop after ``train.text_encoder_steps``."""

    frozen_message = "text encoder frozen after %d steps"
    unet_params: list[torch.nn.Parameter]
    te_params: list[torch.nn.Parameter]

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self._applied = False  # requires_grad set at least once; later calls only on a change

    def param_groups(self, lr_scale: float) -> list[dict[str, Any]]:
        t = self.cfg.train
        groups = [{"params": self.unet_params, "lr": t.lr * lr_scale}]
        if self.te_params:
            groups.append({"params": self.te_params, "lr": (t.text_encoder_lr or t.lr) * lr_scale})
        return groups

    def enable(self, on: bool, step: int) -> None:
        te_on = on and bool(self.te_params) and _text_encoder_on(self.cfg, step)
        if self.text_encoder_active and not te_on and on:
            log.info(self.frozen_message, step)
        if (on, te_on) != (self.unet_active, self.text_encoder_active) or not self._applied:
            _set_trainable(self.unet_params, on)  # only on a change: it walks every parameter
            _set_trainable(self.te_params, te_on)
            self._applied = True
        self.unet_active, self.text_encoder_active = on, te_on


class FullWeights(_UNetAndTextEncoder):
    """DreamBooth: every UNet weight, and the text encoder's with ``train.train_text_encoder``.

    Args:
        cfg: the run config.
        keep_embedding: leave the token-embedding matrix out (ti_dreambooth: the learned token stays
            as textual inversion left it while the rest of the text encoder trains).
    """

    label = "dreambooth"
    trains_unet = True
    fp32_unet = True

    def __init__(self, cfg: Any, *, keep_embedding: bool = False) -> None:
        super().__init__(cfg)
        self.keep_embedding = keep_embedding
        t = cfg.train
        self.trains_text_encoder = self.fp32_text_encoder = (
            bool(t.train_text_encoder) and t.text_encoder_steps != 0
        )

    def attach(self, comps: Components) -> None:
        self.unet_params = list(comps.unet.parameters())
        self.te_params: list[torch.nn.Parameter] = []
        if self.trains_text_encoder:
            embedding = comps.text_encoder.get_input_embeddings().weight
            self.te_params = [
                p for p in comps.text_encoder.parameters() if not (self.keep_embedding and p is embedding)
            ]

    def save(self, folder: Path, comps: Components, unet: Any, text_encoder: Any) -> list[str]:
        build_pipeline(comps, unet=unet, text_encoder=text_encoder).save_pretrained(
            folder, safe_serialization=True
        )
        log.info("pipeline saved: StableDiffusionPipeline.from_pretrained(<run>/model)")
        return []


class LoRAWeights(_UNetAndTextEncoder):
    """LoRA adapters (peft, through diffusers' ``add_adapter``) on the UNet, and on the text encoder
    with ``train.train_text_encoder``; the base weights stay frozen in the mixed-precision dtype while
    the adapters train in float32."""

    label = "lora"
    trains_unet = True
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
        m = self.cfg.method
        self.unet_params = self._add(comps.unet, m.unet_target_modules, "unet_target_modules")
        self.te_params: list[torch.nn.Parameter] = []
        if self.trains_text_encoder:
            self.te_params = self._add(
                comps.text_encoder, m.text_encoder_target_modules, "text_encoder_target_modules"
            )
        n = sum(p.numel() for p in self.unet_params + self.te_params)
        log.info("LoRA rank %d: %.2f M trainable parameters", m.rank, n / 1e6)

    def save(self, folder: Path, comps: Components, unet: Any, text_encoder: Any) -> list[str]:
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        te_layers = te_meta = None
        if self.te_params:
            te_layers = convert_state_dict_to_diffusers(
                get_peft_model_state_dict(text_encoder, save_embedding_layers=False)
            )
            te_meta = text_encoder.peft_config["default"].to_dict()
        # The adapter config goes into the file's metadata: without it load_lora_weights assumes
        # alpha = rank, and any other alpha would load at the wrong scale.
        StableDiffusionPipeline.save_lora_weights(
            folder,
            unet_lora_layers=convert_state_dict_to_diffusers(
                get_peft_model_state_dict(unet, save_embedding_layers=False)
            ),
            text_encoder_lora_layers=te_layers,
            unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
            text_encoder_lora_adapter_metadata=te_meta,
            weight_name=LORA_FILE,
            safe_serialization=True,
        )
        files = [LORA_FILE]
        if self.cfg.method.export_kohya:
            self._save_kohya(folder / KOHYA_LORA_FILE, unet, text_encoder if self.te_params else None)
            files.append(KOHYA_LORA_FILE)
        log.info("LoRA saved: pipe.load_lora_weights(dir, weight_name=%r)", LORA_FILE)
        return files

    def _save_kohya(self, path: Path, unet: Any, text_encoder: Any | None) -> None:
        """Kohya / A1111 key names via diffusers' own converter, with two fixes for SD-1/2: the converter
        writes SDXL's ``lora_te1_`` prefix and alpha = rank, where single-encoder models use
        ``lora_te_text_model_`` and the alpha this run trained with."""
        from diffusers.utils import convert_state_dict_to_kohya
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        peft_state = {
            f"unet.{k}": v for k, v in get_peft_model_state_dict(unet, save_embedding_layers=False).items()
        }
        if text_encoder is not None:
            peft_state.update(
                {
                    f"text_encoder.{k}": v
                    for k, v in get_peft_model_state_dict(text_encoder, save_embedding_layers=False).items()
                }
            )
        m = self.cfg.method
        alpha = float(m.alpha if m.alpha is not None else m.rank)
        kohya = {}
        for key, value in convert_state_dict_to_kohya(peft_state).items():
            if key.startswith("lora_te1_"):
                key = "lora_te_" + key.removeprefix("lora_te1_")
                if not key.startswith("lora_te_text_model_"):  # transformers 5 has no text_model level
                    key = "lora_te_text_model_" + key.removeprefix("lora_te_")
            kohya[key] = torch.tensor(alpha) if key.endswith(".alpha") else value.contiguous()
        save_file(kohya, str(path))


class NewTokens(Part):
    """Textual inversion: ``data.identifier`` becomes new token(s) whose embedding rows are the only
    weights that train; every other row is put back after each optimizer step (weight decay would
    otherwise shrink them).

    ``method.num_vectors`` > 1 gives the tokens ``<tok>``, ``<tok>_1``, ... (diffusers' multi-vector
    convention): the training prompt spells them all out, and pipelines do the same on their own
    (``maybe_convert_prompt``), so prompts keep saying just ``<tok>``.
    """

    label = "textual inversion"
    trains_text_encoder = True
    fp32_text_encoder = True

    def attach(self, comps: Components) -> None:
        tokenizer, text_encoder = comps.tokenizer, comps.text_encoder
        m, d = self.cfg.method, self.cfg.data
        self.identifier = str(d.identifier)
        if any(c.isspace() for c in self.identifier):
            raise ConfigError(
                f"data.identifier={self.identifier!r} has spaces: textual inversion needs one new token, "
                "e.g. \"data.identifier='<sks>'\""
            )
        self.tokens = [self.identifier] + [f"{self.identifier}_{i}" for i in range(1, m.num_vectors)]
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
        self.ids = tokenizer.convert_tokens_to_ids(self.tokens)
        # Pipelines find the token by tokenizing the prompt (maybe_convert_prompt): it must come back whole.
        back = tokenizer.tokenize(self.identifier)
        if back != self.tokens[:1] or tokenizer.convert_tokens_to_ids(back) != self.ids[:1]:
            raise ConfigError(
                f"the tokenizer does not read data.identifier={self.identifier!r} back as its new token "
                "(CLIP lowercases prompts): use a lower-case identifier, e.g. \"data.identifier='<sks>'\""
            )
        if max(self.ids) >= text_encoder.get_input_embeddings().weight.shape[0]:
            text_encoder.resize_token_embeddings(max(self.ids) + 1, mean_resizing=False)
        self.weight = text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            self.weight[self.ids] = self.weight[init_id].clone()
        self.original = self.weight.detach().clone()  # what every other row is put back to
        log.info(
            "textual inversion: %s (ids %s) from %r", " ".join(self.tokens), self.ids, self._initializer()
        )

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
        return [{"params": [self.weight], "lr": self.cfg.method.ti_lr * lr_scale}]

    def enable(self, on: bool, step: int) -> None:
        self.weight.requires_grad_(on)
        self.unet_active, self.text_encoder_active = False, on  # gradients flow through the frozen UNet

    def after_step(self) -> None:
        if not self.text_encoder_active:
            return
        with torch.no_grad():
            learned = self.weight[self.ids].clone()
            self.weight.copy_(self.original)
            self.weight[self.ids] = learned

    def prompt(self, text: str) -> str:
        return text.replace(self.identifier, " ".join(self.tokens)) if len(self.tokens) > 1 else text

    def embeddings(self, text_encoder: Any) -> torch.Tensor:
        """The learned vectors, shape (num_vectors, hidden size)."""
        return text_encoder.get_input_embeddings().weight[self.ids].detach().float().cpu().contiguous()

    def save(self, folder: Path, comps: Components, unet: Any, text_encoder: Any) -> list[str]:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        # diffusers' format: {token: (num_vectors, dim)}; load_textual_inversion adds <tok>_1, ... itself.
        save_file({self.identifier: self.embeddings(text_encoder)}, str(folder / EMBEDDINGS_FILE))
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
    def trains_unet(self) -> bool:
        return any(ph.part.trains_unet for ph in self.phases)

    @property
    def trains_text_encoder(self) -> bool:
        return any(ph.part.trains_text_encoder for ph in self.phases)

    @property
    def unet_active(self) -> bool:
        return any(ph.part.unet_active for ph in self.phases)

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
        unet, text_encoder = comps.unet, comps.text_encoder
        unet.requires_grad_(False)
        text_encoder.requires_grad_(False)
        parts = [ph.part for ph in self.phases]
        _place(unet, device, torch.float32 if any(p.fp32_unet for p in parts) else weight_dtype)
        _place(
            text_encoder, device, torch.float32 if any(p.fp32_text_encoder for p in parts) else weight_dtype
        )
        for part in parts:
            part.attach(comps)
        for ph in self.phases:
            ph.part.enable(True, ph.start)
        if weight_dtype != torch.float32:
            cast_training_params([unet, text_encoder], dtype=torch.float32)  # LoRA adapters train in float32

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
            probe = torch.optim.SGD(
                [torch.zeros(1, requires_grad=True)], lr=group["lr"]
            )  # polynomial reads its lr
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
        for module, mode in (
            (self.comps.unet, self.unet_active),
            (self.comps.text_encoder, self.text_encoder_active),
        ):
            if module.training != mode:  # train() walks every submodule: only on a change (evaluation
                module.train(mode)  # puts every module back as it found it)

    @property
    def state(self) -> tuple[int | None, bool, bool]:
        """(phase, UNet trains, text encoder trains): which weights have ``requires_grad`` changes with it."""
        return self._current, self.unet_active, self.text_encoder_active

    def after_step(self) -> None:
        for ph in self.phases:
            ph.part.after_step()

    def prompt(self, text: str) -> str:
        for ph in self.phases:
            text = ph.part.prompt(text)
        return text

    def save_checkpoint_files(self, folder: Path, unet: Any, text_encoder: Any) -> list[str]:
        """The small weight files (LoRA, embedding) into a training checkpoint, as diffusers' scripts do,
        so any checkpoint loads with ``load_lora_weights`` / ``load_textual_inversion`` (and
        ``score-checkpoints`` scores it); full weights are in the training state already."""
        files: list[str] = []
        for ph in self.phases:
            if not isinstance(ph.part, FullWeights):
                files += ph.part.save(folder, self.comps, unet, text_encoder)
        return files

    def save(self, folder: Path, unet: Any, text_encoder: Any) -> list[str]:
        """Every part's final weights into ``folder``; returns the small weight files (tracked always)."""
        folder.mkdir(parents=True, exist_ok=True)
        files: list[str] = []
        for ph in self.phases:
            files += ph.part.save(folder, self.comps, unet, text_encoder)
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
