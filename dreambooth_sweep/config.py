"""Typed schemas of one run, registered in Hydra's ConfigStore.

Values live in the YAML files under ``conf/`` (one place per value, with its comment); this module
only says which keys exist and what type each has (every field ``MISSING``), so a typo (``train.learning_rate``) or a wrong type (``train.max_steps=abc``) fails when
Hydra composes the config, before any model is loaded. Cross-field rules (prior preservation needs a
class prompt, lr must be positive, ...) are checked by :func:`validate`.

Why one piece (~520 lines): every group's schema and the cross-field rules that join them
(method × family, prior × data, eval × model) read best side by side; values are not here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from dreambooth_sweep.errors import ConfigError
from dreambooth_sweep.samplers import FLOW_SCHEDULERS, SCHEDULERS

__all__ = [
    "CheckpointsConfig",
    "ConfigError",
    "DINO_PREPROCESS",
    "DataConfig",
    "EvalConfig",
    "EvaluateConfig",
    "MethodConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "PathsConfig",
    "PriorConfig",
    "RunConfig",
    "ScoringEvalConfig",
    "SweepContext",
    "TrackingConfig",
    "TrainConfig",
    "WeightsConfig",
    "load_config",
    "register_configs",
    "validate",
]

METHODS = ("dreambooth", "lora", "textual_inversion", "ti_dreambooth")
TI_PHASE2 = ("full", "lora")
OPTIMIZERS = ("adamw", "adamw8bit")
PRECISIONS = ("no", "fp16", "bf16")
# eval.dino_preprocess: DINO's evaluation transform or the checkpoint's preprocessor_config.json.
DINO_PREPROCESS = ("dino_eval", "model_config")
EVAL_SCHEDULERS = tuple(SCHEDULERS)  # DDPM-trained families (SD, SDXL)
FLOW_EVAL_SCHEDULERS = tuple(FLOW_SCHEDULERS)  # flow-matching families (SD3, FLUX)
WEIGHTING_SCHEMES = ("none", "sigma_sqrt", "logit_normal", "mode", "cosmap")
LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)


# Every field is MISSING: its value (and the comment saying what it means) lives in the YAML of its
# group, conf/<group>/*.yaml. Only SweepContext keeps defaults: the sweeper fills it per job, no user
# sets it. tests/test_config_sources.py fails if a value is ever given in both places.


@dataclass
class ModelConfig:
    """``conf/model/*.yaml``: the base model."""

    name: str = MISSING
    pretrained: str = MISSING
    revision: str | None = MISSING
    variant: str | None = MISSING
    resolution: int = MISSING
    vae: str | None = MISSING  # another VAE (hub id or folder), e.g. madebyollin/sdxl-vae-fp16-fix
    sampler: str = MISSING  # the family's default eval sampler (eval.scheduler reads it)
    inference_steps: int = MISSING  # default sampler steps (eval.num_inference_steps reads it)
    guidance_scale: float = MISSING  # CFG scale, or FLUX's distilled guidance (eval / class images)
    max_sequence_length: int | None = MISSING  # T5 tokens (SD3, FLUX); null: the tokenizer's own
    train_guidance: float = MISSING  # FLUX guidance-embedding value while training


@dataclass
class MethodConfig:
    """``conf/method/*.yaml`` (values: ``method/base.yaml``): what is trained, see methods.py."""

    name: str = MISSING
    rank: int = MISSING
    alpha: float | None = MISSING
    dropout: float = MISSING
    unet_target_modules: list[str] | None = MISSING  # None: the family's default
    text_encoder_target_modules: list[str] = MISSING
    export_kohya: bool = MISSING
    num_vectors: int = MISSING
    initializer_token: str | None = MISSING
    ti_lr: float = MISSING
    ti_templates: str = MISSING
    ti_steps: int = MISSING
    phase2: str = MISSING


@dataclass
class DataConfig:
    """``conf/data/*.yaml`` (values: ``data/base.yaml``): the subject photos and prompts."""

    instance_dir: str = MISSING
    identifier: str = MISSING
    class_noun: str = MISSING
    instance_prompt: str = MISSING
    kind: str = MISSING
    resolution: int = MISSING
    center_crop: bool = MISSING
    random_flip: bool = MISSING
    max_images: int | None = MISSING
    generate_demo: bool = MISSING
    instance_dirs: list[str] = MISSING
    repeats: int = MISSING
    captions: bool = MISSING
    insert_identifier: bool = MISSING
    caption_dropout: float = MISSING
    buckets: bool = MISSING
    bucket_step: int = MISSING
    bucket_max_aspect: float = MISSING
    mask_loss_weight: float | None = MISSING


@dataclass
class PriorConfig:
    """``conf/prior/*.yaml`` (values: ``prior/base.yaml``): prior preservation."""

    enabled: bool = MISSING
    class_prompt: str | None = MISSING
    num_class_images: int = MISSING
    loss_weight: float = MISSING
    class_dir: str | None = MISSING
    gen_batch_size: int = MISSING
    gen_num_inference_steps: int = MISSING
    gen_guidance_scale: float = MISSING
    gen_seed: int = MISSING


@dataclass
class TrainConfig:
    """``conf/train/default.yaml``: optimisation, precision, checkpoints, caches."""

    seed: int = MISSING
    lr: float = MISSING
    scale_lr: bool = MISSING
    max_steps: int = MISSING
    batch_size: int = MISSING
    gradient_accumulation_steps: int = MISSING
    lr_scheduler: str = MISSING
    lr_warmup_steps: int = MISSING
    optimizer: str = MISSING
    adam_beta1: float = MISSING
    adam_beta2: float = MISSING
    adam_weight_decay: float = MISSING
    adam_epsilon: float = MISSING
    max_grad_norm: float = MISSING
    mixed_precision: str = MISSING
    gradient_checkpointing: bool = MISSING
    use_ema: bool = MISSING
    ema_decay: float = MISSING
    train_text_encoder: bool = MISSING
    text_encoder_lr: float | None = MISSING
    text_encoder_steps: int | None = MISSING
    snr_gamma: float | None = MISSING
    noise_offset: float = MISSING
    checkpoint_every_n_steps: int = MISSING
    checkpoints_total_limit: int | None = MISSING
    resume_from: str | None = MISSING
    save_final: bool = MISSING
    enable_xformers: bool = MISSING
    num_threads: int | None = MISSING
    dataloader_workers: int = MISSING
    cache_latents: bool = MISSING
    cache_text_embeddings: bool = MISSING
    cache_base_model: bool = MISSING
    weighting_scheme: str = MISSING  # flow matching (SD3, FLUX): timestep density / loss weighting
    logit_mean: float = MISSING
    logit_std: float = MISSING
    mode_scale: float = MISSING


@dataclass
class ObjectiveConfig:
    """``eval.objective`` in ``conf/eval/default.yaml``: the sweet-spot score (objective.py)."""

    metric: str = MISSING
    prompt_metric: str = MISSING
    penalty: float = MISSING
    tolerance: float = MISSING


@dataclass
class EvalConfig:
    """``conf/eval/*.yaml`` (values: ``eval/default.yaml``): checkpoint sampling and metrics."""

    enabled: bool = MISSING
    every_n_steps: int = MISSING
    scheduler: str = MISSING
    num_inference_steps: int = MISSING
    guidance_scale: float = MISSING
    prompts: str = MISSING
    custom_prompts: list[str] = MISSING
    num_prompts: int | None = MISSING
    seeds: list[int] = MISSING
    batch_size: int = MISSING
    resolution: int = MISSING
    metrics: list[str] = MISSING
    clip_model: str = MISSING
    dino_model: str = MISSING
    dino_preprocess: str = MISSING
    class_prompt_images: int = MISSING
    reuse_base_samples: bool = MISSING
    val_loss_every_n_steps: int = MISSING
    val_loss_timesteps: int = MISSING
    val_loss_batch_size: int = MISSING
    val_loss_seed: int | None = MISSING
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)


@dataclass
class TrackingConfig:
    """``conf/tracking/*.yaml`` (values: ``tracking/mlflow.yaml``): MLflow or none."""

    backend: str = MISSING
    uri: str | None = MISSING
    experiment: str = MISSING
    run_name: str | None = MISSING
    log_every_n_steps: int = MISSING
    log_model: bool = MISSING


@dataclass
class PathsConfig:
    """``conf/paths/default.yaml``: every path derives from ``root_dir``."""

    root_dir: str = MISSING
    data_dir: str = MISSING
    log_dir: str = MISSING
    cache_dir: str = MISSING
    output_dir: str | None = MISSING


@dataclass
class SweepContext:
    """Filled in by the Optuna sweeper for each job; empty for a single run or a grid."""

    study_name: str | None = None
    storage: str | None = None
    trial_number: int | None = None
    parent_run_id: str | None = None


@dataclass
class RunConfig:
    """The whole run: ``conf/train.yaml`` composes one option of each group onto this schema."""

    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    sweep: SweepContext = field(default_factory=SweepContext)
    task_name: str = MISSING


# ----------------------------------------------------------------------------- eval-only mode (conf/evaluate.yaml)


@dataclass
class WeightsConfig:
    """``weights`` in ``conf/evaluate.yaml``: trained weights to score; all null scores the base model."""

    model_dir: str | None = MISSING
    lora: str | None = MISSING
    embedding: str | None = MISSING
    token: str | None = MISSING


@dataclass
class CheckpointsConfig:
    """``checkpoints`` in ``conf/evaluate.yaml``: a folder of checkpoints to score (any trainer's)."""

    dir: str | None = MISSING
    watch: bool = MISSING
    watch_idle_s: float = MISSING
    poll_s: float = MISSING
    settle_s: float = MISSING
    incomplete_s: float = MISSING
    out: str | None = MISSING


@dataclass
class ScoringEvalConfig(EvalConfig):
    """``eval`` of eval-only mode: the training run's eval settings plus the LoRA strength axis."""

    lora_scales: list[float] = MISSING


@dataclass
class EvaluateConfig(RunConfig):
    """``conf/evaluate.yaml``: the groups of a run, plus what to score."""

    weights: WeightsConfig = field(default_factory=WeightsConfig)
    checkpoints: CheckpointsConfig = field(default_factory=CheckpointsConfig)
    eval: ScoringEvalConfig = field(default_factory=ScoringEvalConfig)


def register_configs() -> None:
    """Register the schemas ``conf/train.yaml`` and ``conf/evaluate.yaml`` put first in their defaults lists."""
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)


def load_config(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with ``overrides`` outside a Hydra app, as the entry point would.

    The way to get a run config in code (tests, benchmarks, notebooks): the schema has no values of
    its own, so ``OmegaConf.structured(RunConfig)`` is all ``???``. The ``hydra`` node is left out.
    """
    from hydra import compose, initialize_config_dir

    from dreambooth_sweep.runtime import conf_dir

    register_configs()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


def _fail(problem: str, fix: str) -> None:
    raise ConfigError(f"{problem}: {fix}")


def _validate_method(m: Any, t: Any) -> None:
    """Method settings; checks that need the tokenizer (identifier, initializer) run in methods.py."""
    lora = m.name == "lora" or (m.name == "ti_dreambooth" and m.phase2 == "lora")
    if m.name == "ti_dreambooth":
        if m.phase2 not in TI_PHASE2:
            _fail(f"unknown method.phase2={m.phase2!r}", f"choose one of {', '.join(TI_PHASE2)}")
        if not 0 < m.ti_steps < t.max_steps:
            _fail(
                f"method.ti_steps={m.ti_steps} must lie strictly between 0 and train.max_steps={t.max_steps}",
                "max_steps counts both phases, e.g. method.ti_steps=2000 train.max_steps=2500 (2000 TI + 500 DreamBooth)",
            )
        if t.train_text_encoder and t.text_encoder_steps is not None and t.text_encoder_steps <= m.ti_steps:
            _fail(
                f"train.text_encoder_steps={t.text_encoder_steps} ends before DreamBooth starts at method.ti_steps={m.ti_steps}",
                "it counts every step, textual inversion included: set it above method.ti_steps, or null",
            )
    if lora:
        if m.rank <= 0:
            _fail(f"method.rank={m.rank} must be a positive integer", "use e.g. method.rank=4")
        if m.alpha is not None and not m.alpha > 0:
            _fail(f"method.alpha={m.alpha} must be positive", "use e.g. method.alpha=4, or null (= rank)")
        if not 0 <= m.dropout < 1:
            _fail(f"method.dropout={m.dropout} must be in [0, 1)", "use e.g. 0.0 or 0.1")
        empty = m.unet_target_modules is not None and not m.unet_target_modules
        if empty or (t.train_text_encoder and not m.text_encoder_target_modules):
            _fail(
                "method.unet_target_modules / text_encoder_target_modules is empty",
                "name the layers to adapt, e.g. [to_q,to_k,to_v,to_out.0]",
            )
    elif m.export_kohya:
        _fail(
            f"method.export_kohya=true but method={m.name} trains no LoRA",
            "use method=lora (or ti_dreambooth with method.phase2=lora)",
        )
    if m.name in ("textual_inversion", "ti_dreambooth"):
        if m.num_vectors < 1:
            _fail(f"method.num_vectors={m.num_vectors} must be 1 or more", "use e.g. method.num_vectors=1")
        if not m.ti_lr > 0:
            _fail(f"method.ti_lr={m.ti_lr} must be positive", "use e.g. method.ti_lr=5e-4")
    if m.name == "textual_inversion":
        if t.train_text_encoder:
            _fail(
                "method=textual_inversion trains only the new embedding",
                "set train.train_text_encoder=false (or use method=ti_dreambooth)",
            )
        if t.use_ema:
            _fail(
                "train.use_ema averages UNet weights but method=textual_inversion trains none",
                "set train.use_ema=false",
            )


TI_TEMPLATE_SETS = ("none", "object", "style")


def _validate_data(d: Any, m: Any) -> None:
    if d.repeats < 1:
        _fail(f"data.repeats={d.repeats} must be 1 or more", "use e.g. data.repeats=1")
    if not 0 <= d.caption_dropout < 1:
        _fail(f"data.caption_dropout={d.caption_dropout} must be in [0, 1)", "use e.g. 0.1, or 0 to turn off")
    if d.bucket_step <= 0 or d.bucket_step % 8:
        _fail(f"data.bucket_step={d.bucket_step} must be a positive multiple of 8", "use 64 (kohya, SDXL)")
    if d.buckets and d.bucket_step > d.resolution:
        _fail(
            f"data.bucket_step={d.bucket_step} is larger than data.resolution={d.resolution}",
            "use a smaller step, e.g. data.bucket_step=16 for model=tiny",
        )
    if not d.bucket_max_aspect >= 1:
        _fail(f"data.bucket_max_aspect={d.bucket_max_aspect} must be 1 or more", "use e.g. 4.0")
    if d.mask_loss_weight is not None and not 0 <= d.mask_loss_weight <= 1:
        _fail(
            f"data.mask_loss_weight={d.mask_loss_weight} must be in [0, 1]",
            "use e.g. 0.1 (background weighs a tenth), or null to ignore masks",
        )
    templates = m.get("ti_templates", "none")
    if templates not in TI_TEMPLATE_SETS:
        _fail(f"unknown method.ti_templates={templates!r}", f"choose one of {', '.join(TI_TEMPLATE_SETS)}")
    if templates != "none" and m.name != "textual_inversion":
        _fail(
            f"method.ti_templates={templates} is for method=textual_inversion, not {m.name}",
            "set method.ti_templates=none",
        )


def validate(cfg: DictConfig | Any) -> None:
    """Check flag combinations and ranges up front, before anything is loaded or trained."""
    t, p, d = cfg.train, cfg.prior, cfg.data
    if cfg.method.name not in METHODS:
        _fail(f"unknown method.name={cfg.method.name!r}", f"choose one of {', '.join(METHODS)}")
    _validate_method(cfg.method, t)
    if not t.lr > 0:
        _fail(f"train.lr={t.lr} must be positive", "set e.g. train.lr=2e-6")
    if t.text_encoder_lr is not None and not t.text_encoder_lr > 0:
        _fail(
            f"train.text_encoder_lr={t.text_encoder_lr} must be positive",
            "set it or leave it null (= train.lr)",
        )
    for key in ("max_steps", "batch_size", "gradient_accumulation_steps"):
        if not getattr(t, key) > 0:
            _fail(f"train.{key}={getattr(t, key)} must be a positive integer", f"set train.{key}=1 or more")
    if t.lr_warmup_steps < 0 or t.checkpoint_every_n_steps < 0 or t.noise_offset < 0:
        _fail(
            "train.lr_warmup_steps, checkpoint_every_n_steps and noise_offset cannot be negative",
            "use 0 to turn off",
        )
    if t.text_encoder_steps is not None and t.text_encoder_steps < 0:
        _fail(f"train.text_encoder_steps={t.text_encoder_steps} cannot be negative", "use null for all steps")
    if t.snr_gamma is not None and not t.snr_gamma > 0:
        _fail(f"train.snr_gamma={t.snr_gamma} must be positive", "use e.g. 5.0, or null to turn it off")
    if not 0 < t.ema_decay < 1:
        _fail(f"train.ema_decay={t.ema_decay} must be in (0, 1)", "use e.g. 0.9999")
    if t.optimizer not in OPTIMIZERS:
        _fail(f"unknown train.optimizer={t.optimizer!r}", f"choose one of {', '.join(OPTIMIZERS)}")
    if t.mixed_precision not in PRECISIONS:
        _fail(
            f"unknown train.mixed_precision={t.mixed_precision!r}", f"choose one of {', '.join(PRECISIONS)}"
        )
    if t.lr_scheduler not in LR_SCHEDULERS:
        _fail(f"unknown train.lr_scheduler={t.lr_scheduler!r}", f"choose one of {', '.join(LR_SCHEDULERS)}")
    if d.resolution <= 0 or d.resolution % 8:
        _fail(
            f"data.resolution={d.resolution} must be a positive multiple of 8",
            "use e.g. 512 (SD-1.5) or 64 (tiny)",
        )
    if d.max_images is not None and d.max_images <= 0:
        _fail(f"data.max_images={d.max_images} must be positive", "use null for all images")
    _validate_data(d, cfg.method)
    if not str(d.identifier).strip():
        _fail("data.identifier is empty", "set a rare word, e.g. data.identifier=sks")
    if p.enabled:
        if not str(d.class_noun or "").strip():
            # prior/on builds the class prompt from it: "a photo of " would be trained on and cached
            _fail(
                "prior preservation is on but data.class_noun is empty",
                "name what the subject is, e.g. data.class_noun=dog (it also forms prior.class_prompt)",
            )
        if not str(p.class_prompt or "").strip():
            _fail(
                "prior preservation is on but prior.class_prompt is empty",
                "set prior.class_prompt='a photo of dog'",
            )
        if p.num_class_images <= 0:
            _fail(f"prior.num_class_images={p.num_class_images} must be positive", "use e.g. 100")
        if p.loss_weight < 0:
            _fail(f"prior.loss_weight={p.loss_weight} cannot be negative", "use e.g. 1.0")
    if cfg.eval.scheduler not in EVAL_SCHEDULERS + FLOW_EVAL_SCHEDULERS:
        _fail(
            f"unknown eval.scheduler={cfg.eval.scheduler!r}",
            f"choose one of {', '.join(EVAL_SCHEDULERS)} (SD, SDXL) or {', '.join(FLOW_EVAL_SCHEDULERS)} (SD3, FLUX)",
        )
    if t.weighting_scheme not in WEIGHTING_SCHEMES:
        _fail(
            f"unknown train.weighting_scheme={t.weighting_scheme!r}",
            f"choose one of {', '.join(WEIGHTING_SCHEMES)}",
        )
    if cfg.eval.get("dino_preprocess", "dino_eval") not in DINO_PREPROCESS:
        _fail(
            f"unknown eval.dino_preprocess={cfg.eval.dino_preprocess!r}",
            f"choose one of {', '.join(DINO_PREPROCESS)}",
        )
    if cfg.eval.enabled and cfg.eval.every_n_steps <= 0:
        _fail(f"eval.every_n_steps={cfg.eval.every_n_steps} must be positive", "or set eval.enabled=false")
    if cfg.eval.get("val_loss_every_n_steps", 0) < 0:
        _fail(
            f"eval.val_loss_every_n_steps={cfg.eval.val_loss_every_n_steps} cannot be negative",
            "set a number of steps, or 0 to turn the validation loss off",
        )
    if cfg.eval.get("val_loss_every_n_steps", 0) and cfg.eval.get("val_loss_timesteps", 1) < 1:
        _fail(
            f"eval.val_loss_timesteps={cfg.eval.val_loss_timesteps} must be at least 1",
            "3 or more fill every noise band (low, mid, high)",
        )
    if cfg.eval.get("val_loss_every_n_steps", 0) and cfg.eval.get("val_loss_batch_size", 1) < 1:
        _fail(
            f"eval.val_loss_batch_size={cfg.eval.val_loss_batch_size} must be at least 1",
            "set how many images x noise levels go through the denoiser at once (e.g. 16)",
        )


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """Resolved plain-dict copy of a config (for logging and return values)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]
