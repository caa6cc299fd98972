"""The DreamBooth training loop, top to bottom in one file, and its thin ``@hydra.main`` entry point.

    python -m dreambooth_sweep.train model=tiny eval=tiny           # one run on the CPU
    python -m dreambooth_sweep.train -m train.lr=5e-6,2e-6          # a grid (Hydra multirun)

``train(cfg)`` takes a composed config and returns a flat dict of metrics: ``objective`` (the best
checkpoint's sweet-spot score), ``best_step``, the final ``train/loss``, the last ``eval/*`` values and
``perf/train_steps_per_s`` (after the first step, evaluation and checkpoints left out; on CUDA also
``perf/peak_vram_allocated_gb`` and ``perf/peak_vram_reserved_gb``).
What happens, in order:

1. check the config (flag combinations, ranges) and read the subject photos — bad input fails here,
   before any model is loaded;
2. load the base model with ``from_pretrained`` (hub id, local folder or an offline tiny build); its
   *family* (``families/``: SD, SDXL, SD3, FLUX, read from ``model_index.json``) does everything
   architecture-specific below: prompt encoding, latents, the noise process and target, the denoiser
   call, sampling and the saved formats;
3. prior preservation: make sure the shared cache holds ``num_class_images`` class images from the
   *base* model (generated once, reused by every later run);
4. train with accelerate what ``method`` says (``methods.py``: the full denoiser [+ text encoders],
   LoRA adapters, a new token's embedding, or textual inversion then DreamBooth): noise → predict →
   MSE (DDPM ε/v, or flow matching with its timestep density and weighting), the prior loss on the
   class half of each batch, optional Min-SNR-γ, offset noise, EMA;
5. at step 0 (the base model baseline) and every ``eval.every_n_steps``: sample with fixed seeds and
   score (DINO, CLIP-I, CLIP-T, ...); the score goes to MLflow and, in an Optuna sweep, to the trial,
   which may stop the run early (pruning);
6. save the final weights in diffusers' formats under ``<run>/model``: a pipeline
   (``from_pretrained``), ``pytorch_lora_weights.safetensors`` (``load_lora_weights``) and/or
   ``learned_embeds.safetensors`` (``load_textual_inversion``).

Why one file of ~780 lines: the training loop is meant to be read top to bottom, as in diffusers'
examples and nanoGPT; what is not the loop (families, methods, data, caches, evaluation, tracking)
lives in its own module.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import hydra
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from dreambooth_sweep import data as data_lib
from dreambooth_sweep.caches import (
    BASE_MODELS,
    LatentCache,
    TextEmbeddingCache,
    encode_moments,
    encode_rows,
    trim_heap,
)
from dreambooth_sweep.config import ConfigError, register_configs, validate
from dreambooth_sweep.files import atomic_replace_dir, remove_dir, writing_dir
from dreambooth_sweep.methods import Method, build_method
from dreambooth_sweep.models import (
    Components,
    build_pipeline,
    load_components,
    model_family,
    resolve_pretrained,
)
from dreambooth_sweep.runtime import (
    conf_dir,
    resolve_output_dir,
    run_task,
    set_cpu_threads,
    untouched_training_state,
)
from dreambooth_sweep.runtime import weight_dtype as dtype_for

log = logging.getLogger("dreambooth_sweep.train")

__all__ = ["main", "train"]

register_configs()


# ----------------------------------------------------------------------------- small helpers


def _find_checkpoint(resume_from: str, out: Path) -> Path:
    if resume_from == "latest":
        found = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
        if not found:
            raise ConfigError(
                f"train.resume_from=latest but {out / 'checkpoints'} holds no checkpoint: "
                "set paths.output_dir to the earlier run's folder or pass a checkpoint dir"
            )
        return found[-1]
    path = Path(resume_from).expanduser()
    if not (path / "trainer_state.json").exists():
        raise ConfigError(
            f"train.resume_from={resume_from!r} is not a checkpoint (no trainer_state.json): "
            "pass <run dir>/checkpoints/checkpoint-<step> or 'latest'"
        )
    return path


class _StepTimer:
    """Training throughput without start-up, evaluation or checkpoints: optimizer steps per second from
    the end of this process's first step (kernel selection, allocator warm-up) to the end of the last."""

    def __init__(self) -> None:
        self.first: tuple[float, int, float] | None = None  # (time, step, paused seconds so far) per mark
        self.last: tuple[float, int, float] | None = None
        self.excluded = 0.0

    def step(self, global_step: int) -> None:
        mark = (time.perf_counter(), global_step, self.excluded)
        self.first = self.first or mark
        self.last = mark

    @contextmanager
    def paused(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - started

    def figures(self, device: torch.device) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.first is not None and self.last is not None and self.last[1] > self.first[1]:
            seconds = (self.last[0] - self.first[0]) - (self.last[2] - self.first[2])
            out["perf/train_steps_per_s"] = (self.last[1] - self.first[1]) / max(seconds, 1e-9)
        if device.type == "cuda":  # the whole run's peak, loading and evaluation included
            out["perf/peak_vram_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            out["perf/peak_vram_reserved_gb"] = torch.cuda.max_memory_reserved(device) / 2**30
        return out


def load_base_model(cfg: DictConfig, device: torch.device | None = None) -> Components:
    """The base model's components, loaded once per process when trials share it.

    Trials run one after another in one process (Hydra's basic launcher, the Optuna sweeper) each get a
    pristine, fingerprint-checked copy from :data:`~dreambooth_sweep.caches.BASE_MODELS`; a single
    ``python -m dreambooth_sweep.train`` run keeps no spare copy (no later trial could use it).
    """
    m = cfg.model

    def load() -> Components:
        return load_components(m, cfg.paths.cache_dir)

    if not cfg.train.cache_base_model:
        return load()
    single_run = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.RUN
    key = (resolve_pretrained(m.pretrained, cfg.paths.cache_dir), m.revision, m.variant)
    return BASE_MODELS.get(key, load, keep=not single_run, device=device)


# ----------------------------------------------------------------------------- class images


def prepare_class_images(
    cfg: DictConfig, comps: Components, device: torch.device, weight_dtype: torch.dtype
) -> list:
    """Class images of the *base* model for prior preservation, from the shared cache."""
    p = cfg.prior
    resolution = cfg.data.resolution
    settings = {"steps": p.gen_num_inference_steps, "guidance": p.gen_guidance_scale, "scheduler": "default"}
    model_key = f"{comps.family.name}:{comps.source}@{cfg.model.revision or 'main'}"
    if p.class_dir:
        folder = Path(p.class_dir).expanduser()
    else:
        folder = data_lib.class_cache_dir(
            cfg.paths.cache_dir, model_key, p.class_prompt, resolution, p.gen_seed, settings
        )
    pipe = None

    def generate(indices: list[int]) -> list:
        nonlocal pipe
        if pipe is None:
            log.info("generating class images for %r into %s", p.class_prompt, folder)
            pipe = build_pipeline(comps)
            pipe.to(device)
        generators = [torch.Generator(device).manual_seed(p.gen_seed + i) for i in indices]
        autocast = (
            torch.autocast(device.type, dtype=weight_dtype)
            if weight_dtype != torch.float32
            else nullcontext()
        )
        with torch.no_grad(), autocast:
            return comps.family.sample(
                pipe,
                comps,
                [p.class_prompt] * len(indices),
                num_inference_steps=p.gen_num_inference_steps,
                guidance_scale=p.gen_guidance_scale,
                height=resolution,
                width=resolution,
                generator=generators,
            )

    metadata = {
        "model": model_key,
        "prompt": p.class_prompt,
        "resolution": resolution,
        "seed": p.gen_seed,
        **settings,
    }
    with untouched_training_state(*(getattr(comps, n) for n in comps.module_names)):
        paths = data_lib.ensure_class_images(
            folder,
            p.num_class_images,
            generate,
            batch_size=p.gen_batch_size,
            metadata=metadata,
            source=cfg.model.name,
        )
    if pipe is not None:  # sampling's scratch memory goes back before training allocates its own
        pipe = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        trim_heap()
    return [im for _, im in data_lib.load_images(folder, p.num_class_images, what="prior.class_dir")][
        : len(paths)
    ]


# ----------------------------------------------------------------------------- the loop


def train(cfg: DictConfig, *, eval_hook: Callable[[Any], Any] | None = None) -> dict[str, float]:
    """Train one model as ``cfg`` says; return its metrics (see the module docstring).

    Args:
        cfg: a composed run config (``conf/train.yaml``).
        eval_hook: called with an ``EvalContext`` at step 0 and every ``eval.every_n_steps``; returns
            an object with ``metrics`` (dict, ``eval/score`` included) and optionally ``grid``. None
            builds the standard :class:`~dreambooth_sweep.evaluator.Evaluator` when ``eval.enabled``.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from dreambooth_sweep.sweep import TrialReporter
    from dreambooth_sweep.tracking import start_tracking

    # 1. Check everything that can be checked before loading a model.
    validate(cfg)
    t, p = cfg.train, cfg.prior
    out = resolve_output_dir(cfg)
    set_cpu_threads(t.num_threads)
    # Captions, repeats, masks; the data check warns (never changes anything) and writes data_check.png.
    instances = data_lib.check_run_data(cfg.data, out)
    instance_images = [i.image for i in instances]
    templates = data_lib.ti_templates(cfg, instances)  # method.ti_templates; refused with captions
    resume_dir = _find_checkpoint(t.resume_from, out) if t.resume_from else None
    family = model_family(cfg.model, cfg.paths.cache_dir)  # model_index.json only: no weights yet
    family.check(cfg)  # methods, samplers and losses that do not fit this family
    log.info("run dir %s: %d instance images from %s", out, len(instance_images), cfg.data.instance_dir)

    with start_tracking(cfg) as tracker, ExitStack() as cleanup:
        accelerator = Accelerator(
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            mixed_precision=t.mixed_precision,
            project_config=ProjectConfiguration(project_dir=str(out)),
        )
        device, weight_dtype = accelerator.device, dtype_for(t.mixed_precision)
        torch.manual_seed(t.seed)  # model-independent global seed; training noise has its own generator

        # 2. The base model, and what the method trains of it: new tokens / LoRA adapters are added,
        # everything else is frozen. Frozen modules run in the mixed-precision dtype; trainable
        # weights stay fp32 (accelerate autocasts).
        comps = load_base_model(cfg, device)
        method = build_method(cfg)
        method.setup(comps, device, weight_dtype)
        denoiser, vae = comps.denoiser, comps.vae
        encoders = comps.text_encoders()  # by pipeline name: text_encoder, text_encoder_2, ...
        vae.requires_grad_(False)
        vae.to(device) if weight_dtype == torch.float32 else vae.to(device, dtype=weight_dtype)

        # 3. Class images come from the base model, so generate them before training (LoRA adapters
        # start at zero and new tokens are not in the class prompt: the model still is the base model).
        class_images = prepare_class_images(cfg, comps, device, weight_dtype) if p.enabled else []
        if t.cache_text_embeddings:
            # Encoders that never train (T5) encode every prompt this run will see once, then leave
            # the device: the FLUX / SD3 memory lever. A no-op for CLIP-only families.
            from dreambooth_sweep.evaluator import evaluation_prompts

            prompts = [method.prompt(cfg.data.instance_prompt), *([p.class_prompt] if p.enabled else [])]
            family.offload_frozen_encoders(comps, [*prompts, *evaluation_prompts(cfg)], device)

        if t.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
            for name in method.text_encoder_names:
                encoders[name].gradient_checkpointing_enable()
        if t.enable_xformers:
            try:
                denoiser.enable_xformers_memory_efficient_attention()
            except Exception as exc:
                raise ConfigError(
                    f"train.enable_xformers=true but xformers is unusable ({exc}): install xformers or "
                    "leave it off (torch's SDPA is used by default)"
                ) from exc

        # 4. Optimizer and schedule.
        scale = t.batch_size * t.gradient_accumulation_steps * accelerator.num_processes if t.scale_lr else 1
        # Every phase's weights, one group each with its lr (train.lr, text_encoder_lr, method.ti_lr).
        optimizer = _make_optimizer(t, method.param_groups(scale))
        # one schedule per phase
        lr_scheduler = method.lr_scheduler(optimizer, num_processes=accelerator.num_processes)

        dataset = data_lib.DreamBoothDataset(
            instances,
            cfg.data.instance_prompt,
            None,
            cfg.data.resolution,
            class_images=class_images,
            class_prompt=p.class_prompt,
            center_crop=cfg.data.center_crop,
            random_flip=cfg.data.random_flip,
            seed=t.seed,
            caption_dropout=cfg.data.caption_dropout,
            templates=templates,
            prompt_fn=method.prompt,  # multi-vector tokens spelled out
            tokenize=lambda prompt: family.tokenize(comps, prompt),  # every tokenizer's ids in one row
            buckets=data_lib.dataset_buckets(cfg.data),
            mask_loss_weight=cfg.data.mask_loss_weight,
        )
        # One bucket per batch (with data.buckets); the order is a pure function of (seed, epoch).
        sampler = data_lib.batch_sampler(
            dataset,
            t.batch_size,
            t.seed,
            num_replicas=accelerator.num_processes,
            rank=accelerator.process_index,
        )
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=data_lib.collate,
            num_workers=t.dataloader_workers,
        )
        # Work done once, not every step (caches.py): the VAE's latent distribution of each fixed view
        # (center crop, flipped or not), and the frozen text encoder's output for the prompts.
        latent_cache = None
        if t.cache_latents and cfg.data.center_crop:
            latent_cache = LatentCache(vae)
            dataset.cached_views = latent_cache.keys  # cached views skip preprocessing
        elif t.cache_latents:
            log.info("data.center_crop=false: random crops are VAE-encoded every step (no latent cache)")
        text_cache = TextEmbeddingCache() if t.cache_text_embeddings else None
        te_names = method.text_encoder_names  # the text encoders any phase trains
        trained = [denoiser] if method.trains_denoiser else []
        trained += [encoders[name] for name in te_names]
        *trained, optimizer, lr_scheduler = accelerator.prepare(*trained, optimizer, lr_scheduler)
        if method.trains_denoiser:
            denoiser = trained.pop(0)
        for name in te_names:
            encoders[name] = trained.pop(0)

        ema = None
        if t.use_ema:
            base_denoiser = accelerator.unwrap_model(denoiser)
            ema = EMAModel(
                base_denoiser.parameters(),
                decay=t.ema_decay,
                model_cls=type(base_denoiser),
                model_config=base_denoiser.config,
            )
            ema.to(device)
            accelerator.register_for_checkpointing(ema)

        # Training noise, timesteps and VAE sampling draw from their own generator, saved in checkpoints.
        noise_gen = torch.Generator(device).manual_seed(t.seed)
        global_step = 0
        if resume_dir is not None:
            accelerator.load_state(str(resume_dir))
            state = json.loads((resume_dir / "trainer_state.json").read_text())
            global_step = int(state["global_step"])
            noise_gen.set_state(torch.load(resume_dir / "noise_generator.pt", weights_only=True).to("cpu"))
            log.info("resumed from %s at step %d", resume_dir, global_step)
        method.enter(global_step)  # the phase this step belongs to: which weights train now

        # 5. Evaluation hook and trial reporting.
        reporter = TrialReporter.from_context(cfg.sweep, run_dir=out)  # best score/step; pruning in a sweep
        if eval_hook is None and cfg.eval.enabled:
            from dreambooth_sweep.evaluator import Evaluator

            eval_hook = Evaluator(cfg, instance_images, out, Path(cfg.paths.cache_dir), device)
        if getattr(eval_hook, "suite", None) is not None:
            # How every eval/* number is scored (backbones, preprocessing, CLIP-T rule), beside the config.
            tracker.log_params({"scoring": eval_hook.suite.protocol()})
        last_metrics: dict[str, float] = {}
        # The fixed-noise validation loss (val_loss.py): cheap, so it may run more often than the images.
        val_every = cfg.eval.val_loss_every_n_steps if cfg.eval.enabled else 0
        val_loss = None
        if val_every and accelerator.is_main_process:
            from dreambooth_sweep.val_loss import ValidationLoss

            val_loss = ValidationLoss(
                cfg,
                comps,
                instances,
                dataset.image_buckets,
                [dataset.prompt_fn(i.caption or cfg.data.instance_prompt) for i in instances],
                class_images,
                p.class_prompt,
                device=device,
                dtype=weight_dtype,
            )
        _check_prune_on(reporter, val_loss if val_every else None, val_every, cfg)

        def evaluate(step: int, final: bool, *, images: bool = True, val: bool = False) -> None:
            """Only rank 0 evaluates and asks the pruner; every other rank follows its decision."""
            images = images and eval_hook is not None
            val = val and val_every > 0
            if not (images or val):
                return
            import optuna

            stop: optuna.TrialPruned | None = None
            if accelerator.is_main_process:
                try:
                    _evaluate_main(step, final, images, val)
                except optuna.TrialPruned as exc:
                    stop = exc
            if accelerator.num_processes > 1:
                from accelerate.utils import broadcast_object_list

                decision = broadcast_object_list([stop is not None])
                if decision[0] and stop is None:
                    stop = optuna.TrialPruned(f"pruned at step {step} (decided on the main process)")
            if stop is not None:
                raise stop

        def _evaluate_main(step: int, final: bool, images: bool, val: bool) -> None:
            from dreambooth_sweep.evaluator import EvalContext

            live = _unwrapped(accelerator, family.denoiser, denoiser, encoders)
            live_denoiser = live[family.denoiser]
            metrics: dict[str, float] = {}
            result = None
            with untouched_training_state(*live.values()), _ema_weights(ema, live_denoiser):
                if val and val_loss is not None:
                    for module in live.values():
                        module.eval()  # untouched_training_state puts the train flags back
                    with accelerator.autocast():
                        metrics.update(val_loss(live))
                if images:
                    result = eval_hook(
                        EvalContext(
                            step=step,
                            final=final,
                            components=comps,
                            unet=live_denoiser,
                            text_encoder=live[family.text_encoders[0]],
                            device=device,
                            dtype=weight_dtype,
                            modules=live,
                        )
                    )
                    metrics.update(result.metrics)
            last_metrics.update(metrics)
            with open(out / "eval_history.jsonl", "a") as history:  # the run's curve, readable without MLflow
                history.write(json.dumps({"step": step, **metrics}) + "\n")
            tracker.log_metrics(metrics, step=step)
            if getattr(result, "grid", None) is not None:
                tracker.log_image(result.grid, key="samples", step=step)
            score = metrics.get("eval/score") if images else None
            # Step 0 is the untouched base model: the baseline every score is measured against, never a
            # candidate sweet spot (it would tie every trial whose training only hurt at the same value).
            if step > 0 and score is not None and math.isfinite(score):
                # raises optuna.TrialPruned when the pruner says stop (never at the final evaluation)
                reporter.report(score, step, metrics, final=final)
                log.info(
                    "step %d: score %.4f (best %.4f at step %d)",
                    step,
                    score,
                    reporter.best_score,
                    reporter.best_step,
                )
            if step > 0:  # after the score is recorded: hydra.sweeper.prune_on=val/* may stop the trial here
                reporter.report_signal(metrics, step, final=final)

        # 6. The loop. One optimizer step = gradient_accumulation_steps micro-batches.
        if global_step == 0:
            evaluate(0, final=False, images=True, val=True)
        batches_per_epoch = len(loader)
        micro = global_step * t.gradient_accumulation_steps
        epoch, skip = divmod(micro, batches_per_epoch)
        bar = tqdm(
            total=t.max_steps,
            initial=global_step,
            desc="train",
            unit="step",
            disable=not accelerator.is_main_process,
        )
        cleanup.callback(bar.close)  # closed before an error propagates: no stray bar after the message
        loss_value = float("nan")
        clip_params: tuple[Any, list[torch.nn.Parameter]] = (None, [])
        speed = _StepTimer()
        while global_step < t.max_steps:
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            for index, batch in enumerate(loader):
                if index < skip:  # replaying a resumed epoch up to where the checkpoint was taken
                    continue
                models = [denoiser] if method.denoiser_active else []
                models += [encoders[name] for name in te_names] if method.text_encoder_active else []
                with accelerator.accumulate(*models):
                    with torch.no_grad():
                        if latent_cache is not None:
                            moments = latent_cache.moments(
                                batch["views"], batch["pixels"], device, weight_dtype
                            )
                        else:
                            moments = encode_moments(
                                vae, batch["pixel_values"].to(device, dtype=weight_dtype)
                            )
                        # A fresh sample of each image's latent distribution every step, cached or not,
                        # shifted and scaled as the family's denoiser expects.
                        latents = family.latents(comps, moments, noise_gen)
                    noise = torch.randn(latents.shape, generator=noise_gen, device=device)
                    if t.noise_offset:
                        # Offset noise: a per-channel constant lets the model shift overall brightness.
                        noise += t.noise_offset * torch.randn(
                            (*latents.shape[:2], 1, 1), generator=noise_gen, device=device
                        )
                    # Timesteps (DDPM) or noise levels (flow matching), the noisy input and the target.
                    noised = family.noise(comps, latents, noise, noise_gen, t)
                    input_ids = batch["input_ids"].to(device)
                    # A frozen denoiser (textual inversion) still passes gradients back to the embedding; it
                    # runs unwrapped (no DDP sync of weights that do not train) under the mixed-precision autocast.
                    net = denoiser if method.denoiser_active else accelerator.unwrap_model(denoiser)

                    def encode(ids: torch.Tensor = input_ids) -> Any:
                        return family.encode_prompt(comps, ids, encoders)

                    with accelerator.autocast():
                        if method.text_encoder_active:
                            if text_cache is not None:
                                text_cache.clear()  # its weights move in this step: cached states go stale
                            cond = encode()
                        else:  # frozen: each distinct prompt (caption) encoded alone, cached or not
                            with torch.no_grad():
                                cond = encode_rows(input_ids, encode, text_cache)
                        pred = family.predict(net, comps, noised, cond, batch)
                    # Per-example loss, so Min-SNR weights and the instance/class split line up example by example.
                    per_element = F.mse_loss(pred.float(), noised.target.float(), reduction="none")
                    if noised.weighting is not None:  # flow matching's loss weighting (1 for "none")
                        per_element = noised.weighting.float() * per_element
                    weights = data_lib.latent_weights(batch["masks"], latents.shape[-2:], device)
                    if weights is not None:  # masks: background pixels weigh data.mask_loss_weight
                        per_element = per_element * weights
                    per_example = per_element.mean(dim=tuple(range(1, per_element.ndim)))
                    if t.snr_gamma is not None:
                        per_example = per_example * family.min_snr_weights(comps, noised, t.snr_gamma)
                    if p.enabled:
                        # collate puts instance examples first
                        instance_loss, prior_loss = per_example.chunk(2)
                        loss = instance_loss.mean() + p.loss_weight * prior_loss.mean()
                    else:
                        loss = per_example.mean()
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and t.max_grad_norm > 0:
                        if clip_params[0] != method.state:  # the trainable set changes only with the phase
                            clip_params = (
                                method.state,
                                [q for m in models for q in m.parameters() if q.requires_grad],
                            )
                        accelerator.clip_grad_norm_(clip_params[1], t.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)

                if not accelerator.sync_gradients:
                    continue
                global_step += 1
                method.after_step()  # e.g. put back the embedding rows textual inversion must not move
                loss_value = accelerator.gather(loss.detach()).mean().item()
                if ema is not None and method.denoiser_active:
                    ema.step(accelerator.unwrap_model(denoiser).parameters())
                train_lr = lr_scheduler.get_last_lr()[method.lr_group]
                # The next step's weights: the text encoder stops after text_encoder_steps, textual inversion
                # hands over to DreamBooth after ti_steps. Frozen weights get no grads: AdamW skips them.
                method.enter(global_step)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}")
                tracker.log_train(global_step, {"train/loss": loss_value, "train/lr": train_lr})
                speed.step(global_step)
                if t.checkpoint_every_n_steps and global_step % t.checkpoint_every_n_steps == 0:
                    with speed.paused():
                        _save_checkpoint(
                            accelerator,
                            out,
                            global_step,
                            noise_gen,
                            t.checkpoints_total_limit,
                            method.text_encoder_active,
                            weights=lambda folder: method.save_checkpoint_files(
                                folder, _unwrapped(accelerator, family.denoiser, denoiser, encoders)
                            ),
                        )
                is_last = global_step >= t.max_steps
                images = cfg.eval.enabled and (global_step % cfg.eval.every_n_steps == 0 or is_last)
                val = bool(val_every) and (global_step % val_every == 0 or is_last)
                if images or val:
                    with speed.paused():
                        evaluate(global_step, final=is_last, images=images, val=val)
                if is_last:
                    break
            epoch, skip = epoch + 1, 0
        bar.close()

        # 7. Final weights in the family's diffusers formats (EMA weights when EMA is on).
        results = {
            "train/loss": loss_value,
            "final_step": float(global_step),
            **last_metrics,
            **speed.figures(device),
        }
        if reporter.best_step is not None:
            results.update(objective=reporter.best_score, best_step=float(reporter.best_step))
        else:  # no evaluation: the only signal left is the training loss (lower is better, so negate)
            results.update(objective=-loss_value, best_step=float(global_step))
        accelerator.wait_for_everyone()
        if t.save_final and accelerator.is_main_process:
            live = _unwrapped(accelerator, family.denoiser, denoiser, encoders)
            model_dir, weight_files = _save_final(method, live, family.denoiser, ema, out)
            tracker.set_tags({"model_path": str(model_dir.resolve())})
            for name in weight_files:  # LoRA / embedding files are small: always tracked
                tracker.log_artifact(model_dir / name, artifact_path="weights")
            if cfg.tracking.log_model:
                tracker.log_artifact(model_dir, artifact_path="model")
        perf = {k: v for k, v in results.items() if k.startswith("perf/")}
        tracker.log_summary({"best/score": results["objective"], "best/step": results["best_step"], **perf})
        if accelerator.is_main_process:
            (out / "metrics.json").write_text(json.dumps(results, indent=2, sort_keys=True))
            reporter.write_state("COMPLETE", global_step)
        accelerator.end_training()
    log.info("done: results in %s (metrics.json, samples/, model/)", out)
    return results


def _check_prune_on(reporter: Any, val_loss: Any, val_every: int, cfg: DictConfig) -> None:
    """A ``val/*`` pruning signal this run never computes is a one-line error, not a trial never pruned."""
    key = reporter.prune_on
    if not reporter.active or not key.startswith("val/"):
        return
    if not val_every:
        raise ConfigError(
            f"hydra.sweeper.prune_on={key} but the validation loss is off "
            f"(eval.enabled={cfg.eval.enabled}, eval.val_loss_every_n_steps={cfg.eval.val_loss_every_n_steps}): "
            "set eval.val_loss_every_n_steps (e.g. 10) or prune on eval/score"
        )
    if val_loss is not None and key not in val_loss.metric_names():
        raise ConfigError(
            f"hydra.sweeper.prune_on={key} is not a validation loss of this run: "
            f"choose one of {', '.join(val_loss.metric_names())}"
        )


def _make_optimizer(t: DictConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    kwargs = dict(betas=(t.adam_beta1, t.adam_beta2), weight_decay=t.adam_weight_decay, eps=t.adam_epsilon)
    if t.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(groups, **kwargs)
        except Exception as exc:  # missing package, no CUDA build, ...
            raise ConfigError(
                f"train.optimizer=adamw8bit needs a working bitsandbytes ({type(exc).__name__}: {exc}): "
                "install bitsandbytes for your CUDA, or use train.optimizer=adamw"
            ) from exc
    # One fused kernel per step instead of a dozen ops per tensor (torch's CPU and CUDA kernels).
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, **kwargs, fused=fused or None)


def _unwrapped(
    accelerator: Any, denoiser_name: str, denoiser: Any, encoders: dict[str, Any]
) -> dict[str, torch.nn.Module]:
    """The live training modules without their accelerate wrappers, by pipeline name."""
    live = {denoiser_name: accelerator.unwrap_model(denoiser)}
    live.update({name: accelerator.unwrap_model(module) for name, module in encoders.items()})
    return live


@contextmanager
def _ema_weights(ema: Any, denoiser: torch.nn.Module) -> Iterator[None]:
    """Evaluate the EMA weights when EMA is on, then put the raw training weights back."""
    if ema is None:
        yield
        return
    ema.store(denoiser.parameters())
    ema.copy_to(denoiser.parameters())
    try:
        yield
    finally:
        ema.restore(denoiser.parameters())


def _save_checkpoint(
    accelerator: Any,
    out: Path,
    step: int,
    noise_gen: torch.Generator,
    limit: int | None,
    te_active: bool,
    weights: Callable[[Path], Any] | None = None,
) -> None:
    """Full training state (weights, optimizer, lr schedule, EMA, RNG) written atomically, with the
    method's own weight files (``weights(folder)``: LoRA, embedding) beside it."""
    root = out / "checkpoints"
    final = root / f"checkpoint-{step}"
    tmp = root / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()  # no process writes into tmp before it is clean
    with writing_dir(tmp, final.name, clean_up=accelerator.is_main_process):
        accelerator.save_state(str(tmp))  # every process writes its random_states_<rank>.pkl
        if accelerator.is_main_process:
            torch.save(noise_gen.get_state(), tmp / "noise_generator.pt")
            (tmp / "trainer_state.json").write_text(
                json.dumps({"global_step": step, "text_encoder_active": te_active})
            )
            if weights is not None:
                weights(tmp)
    accelerator.wait_for_everyone()  # all of it is in tmp before it becomes the checkpoint
    if accelerator.is_main_process:
        atomic_replace_dir(tmp, final)
        if limit:
            done = sorted(root.glob("checkpoint-*"), key=lambda q: int(q.name.split("-")[-1]))
            for old in done[:-limit]:
                remove_dir(old)
    log.info("checkpoint saved: %s", final)


def _save_final(
    method: Method, live: dict[str, Any], denoiser_name: str, ema: Any, out: Path
) -> tuple[Path, list[str]]:
    """The method's weights in the family's diffusers formats under ``<out>/model``; returns it and its
    small files."""
    if ema is not None:
        ema.copy_to(live[denoiser_name].parameters())
    final, tmp = out / "model", out / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with writing_dir(tmp, "the final model"):
        files = method.save(tmp, live)
    atomic_replace_dir(tmp, final)
    log.info("model saved: %s (%s)", final, ", ".join(sorted(f.name for f in final.iterdir())))
    return final, files


# ----------------------------------------------------------------------------- entry point


@hydra.main(config_path=conf_dir(), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, float]:
    """``python -m dreambooth_sweep.train``: returns the metrics dict, which sweepers read."""
    return run_task(train, cfg)


if __name__ == "__main__":
    # Run the importable module's `main`, not this __main__ copy: launchers that pickle the task
    # (submitit) then pickle it by reference instead of dragging this module's globals along.
    from dreambooth_sweep.runtime import run_hydra_entry
    from dreambooth_sweep.train import main as task

    run_hydra_entry(task, "dreambooth_sweep.train")
