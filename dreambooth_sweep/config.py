"""Typed schemas of one run, registered in Hydra's ConfigStore.

Values live in the YAML files under ``conf/``; this module only says which keys exist and what type
each has, so a typo (``train.learning_rate``) or a wrong type (``train.max_steps=abc``) fails when
Hydra composes the config, before any model is loaded. Cross-field rules (prior preservation needs a
class prompt, lr must be positive, ...) are checked by :func:`validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from dreambooth_sweep.errors import ConfigError
from dreambooth_sweep.samplers import FLOW_SCHEDULERS, SCHEDULERS

__all__ = [
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "MethodConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "PathsConfig",
    "PriorConfig",
    "RunConfig",
    "SweepContext",
    "TrackingConfig",
    "TrainConfig",
    "register_configs",
    "validate",
]

METHODS = ("dreambooth", "lora", "textual_inversion", "ti_dreambooth")
TI_PHASE2 = ("full", "lora")
OPTIMIZERS = ("adamw", "adamw8bit")
PRECISIONS = ("no", "fp16", "bf16")
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


@dataclass
class ModelConfig:
    name: str = MISSING  # short label: tags, cache keys, report legends
    pretrained: str = MISSING  # hub id, local diffusers dir, or "tiny" (random weights, built offline)
    revision: str | None = None  # hub revision (branch, tag or commit)
    variant: str | None = None  # weight variant on the hub, e.g. "fp16"
    resolution: int = 512  # native training resolution of the model
    vae: str | None = None  # another VAE (hub id or folder), e.g. madebyollin/sdxl-vae-fp16-fix for SDXL
    sampler: str = "ddim"  # the family's default eval sampler (eval.scheduler reads it)
    inference_steps: int = 50  # default sampler steps (eval.num_inference_steps reads it)
    guidance_scale: float = 7.5  # CFG scale, or FLUX's distilled guidance (eval / class images read it)
    max_sequence_length: int | None = None  # T5 tokens (SD3: 256, FLUX: 512); None: the tokenizer's own
    train_guidance: float = 1.0  # FLUX guidance embedding value during training (models that have one)


@dataclass
class MethodConfig:
    """What is trained (dreambooth_sweep/methods.py). Only the fields of the chosen method matter."""

    name: str = "dreambooth"  # dreambooth | lora | textual_inversion | ti_dreambooth
    # LoRA (method=lora, and ti_dreambooth with phase2=lora)
    rank: int = 4  # LoRA rank r (4 on SD-1.5 attention ≈ 3.2 MB, seed 2's file size)
    alpha: float | None = None  # LoRA scale is alpha / rank; null: alpha = rank (scale 1)
    dropout: float = 0.0  # dropout on the LoRA branch's input
    # the denoiser's (UNet / transformer) layers; None: the family's default (diffusers' script's list)
    unet_target_modules: list[str] | None = None
    text_encoder_target_modules: list[str] = field(  # adapted when train.train_text_encoder=true
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"]
    )
    export_kohya: bool = False  # also write pytorch_lora_weights_kohya.safetensors (A1111/ComfyUI key names)
    # Textual inversion (method=textual_inversion, and phase 1 of ti_dreambooth); data.identifier is the new token
    num_vectors: int = 1  # embedding vectors of the new token: <tok>, <tok>_1, ... (prompts just say <tok>)
    initializer_token: str | None = None  # one-token word the new vectors start from; null: data.class_noun
    ti_lr: float = 5e-4  # embedding learning rate (train.lr is the UNet's)
    # TI → DreamBooth (method=ti_dreambooth): train.max_steps = ti_steps + DreamBooth steps
    ti_steps: int = 0  # textual-inversion steps before DreamBooth starts
    phase2: str = "full"  # full (every UNet weight) | lora


@dataclass
class DataConfig:
    instance_dir: str = MISSING  # folder of subject photos (jpg/png/webp)
    identifier: str = "sks"  # rare token that names the subject ({V} in DreamBench prompts)
    class_noun: str = MISSING  # what the subject is ({C}): dog, toy, figurine, person
    instance_prompt: str = "a photo of ${.identifier} ${.class_noun}"
    kind: str = "object"  # object | live: which DreamBench prompt set fits the subject
    resolution: int = "${model.resolution}"  # type: ignore[assignment]  # square training size in px
    center_crop: bool = True  # center crop (deterministic) or random crop
    random_flip: bool = False  # horizontal flip augmentation
    max_images: int | None = None  # use only the first N images (sorted by name): dataset-size studies
    generate_demo: bool = False  # write the synthetic demo subject into instance_dir when it is missing


@dataclass
class PriorConfig:
    enabled: bool = False  # prior preservation loss (class images generated by the base model)
    class_prompt: str | None = None  # e.g. "a photo of dog"; required when enabled
    num_class_images: int = 100  # generated once per (model, prompt, resolution, count, seed), then cached
    loss_weight: float = 1.0  # weight of the prior loss against the instance loss
    class_dir: str | None = None  # use/extend this folder instead of the shared cache
    gen_batch_size: int = 4  # batch size when generating class images
    gen_num_inference_steps: int = 50  # sampler steps for class images
    gen_guidance_scale: float = 7.5
    gen_seed: int = 0  # part of the cache key


@dataclass
class TrainConfig:
    seed: int = 0
    lr: float = 2e-6  # UNet learning rate (per step; scale_lr multiplies it by the effective batch)
    scale_lr: bool = False
    max_steps: int = 400  # optimizer steps
    batch_size: int = 1  # instance examples per device per micro-batch (class examples are added on top)
    gradient_accumulation_steps: int = 1
    lr_scheduler: str = (
        "constant"  # constant | constant_with_warmup | linear | cosine | cosine_with_restarts | polynomial
    )
    lr_warmup_steps: int = 0
    optimizer: str = "adamw"  # adamw | adamw8bit (bitsandbytes; CUDA)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # no | fp16 | bf16
    gradient_checkpointing: bool = False
    use_ema: bool = False  # keep an EMA copy of the UNet; evaluated and saved instead of the raw weights
    ema_decay: float = 0.9999
    train_text_encoder: bool = False
    text_encoder_lr: float | None = None  # defaults to lr
    text_encoder_steps: int | None = None  # stop training the text encoder after N steps (None: all steps)
    snr_gamma: float | None = None  # Min-SNR-γ loss weighting (5.0 is the paper's value); None: plain MSE
    noise_offset: float = 0.0  # offset noise strength (0.1 is common); 0: off
    checkpoint_every_n_steps: int = 0  # full training state for exact resume; 0: off
    checkpoints_total_limit: int | None = 2  # keep only the newest N checkpoints
    resume_from: str | None = None  # checkpoint dir, or "latest" (newest in this run's output dir)
    save_final: bool = True  # save the final weights (diffusers format) under <output_dir>/model
    enable_xformers: bool = False  # xformers memory-efficient attention (CUDA)
    num_threads: int | None = None  # torch CPU threads; None: number of cores (never oversubscribed)
    dataloader_workers: int = 0
    # Work done once (dreambooth_sweep/caches.py); each switch exists for equivalence tests and debugging.
    cache_latents: bool = True  # VAE latents per fixed view (center crop, ± flip); random crops: off
    cache_text_embeddings: bool = True  # text-encoder output while the text encoder does not train
    cache_base_model: bool = True  # keep a pristine copy of the base model for the next trial in this process
    # Flow matching (SD3, FLUX): diffusers' compute_density_for_timestep_sampling / loss weighting
    weighting_scheme: str = "none"  # none | sigma_sqrt | logit_normal | mode | cosmap
    logit_mean: float = 0.0  # logit_normal: mean
    logit_std: float = 1.0  # logit_normal: std
    mode_scale: float = 1.29  # mode: scale


@dataclass
class ObjectiveConfig:
    metric: str = "eval/dino"  # subject fidelity term
    prompt_metric: str = "eval/clip_t"  # prompt fidelity term, compared with its step-0 baseline
    penalty: float = 2.0  # λ: how much each unit of lost prompt fidelity costs
    tolerance: float = 0.01  # loss of prompt fidelity allowed for free


@dataclass
class EvalConfig:
    enabled: bool = True
    every_n_steps: int = 100  # also at step 0 (base model baseline) and at the last step
    scheduler: str = (
        "${model.sampler}"  # ddim | pndm | lms | dpm++ | euler | euler_a | unipc | ddpm | flow_euler
    )
    num_inference_steps: int = "${model.inference_steps}"  # type: ignore[assignment]
    guidance_scale: float = "${model.guidance_scale}"  # type: ignore[assignment]
    prompts: str = "dreambench_${data.kind}"  # dreambench_object | dreambench_live | custom
    custom_prompts: list[str] = field(default_factory=list)  # with {V} and {C} placeholders
    num_prompts: int | None = 4  # prompts at intermediate checkpoints (deterministic subset); all at the last
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    batch_size: int = 8  # images per generation batch
    resolution: int = "${data.resolution}"  # type: ignore[assignment]
    metrics: list[str] = field(default_factory=lambda: ["dino", "clip_i", "clip_t", "pres", "div", "mem"])
    clip_model: str = "openai/clip-vit-base-patch32"  # hub id, local dir, or "tiny"
    dino_model: str = "facebook/dino-vits16"  # hub id, local dir, or "tiny"
    class_prompt_images: int = 4  # images of the plain class prompt for PRES
    reuse_base_samples: bool = True  # trials in one process sample the (same) step-0 base model once
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)


@dataclass
class TrackingConfig:
    backend: str = "mlflow"  # mlflow | none
    uri: str | None = None  # None: sqlite file under paths.log_dir; or http://host:5000, postgresql://...
    experiment: str = "dreambooth-sweep"
    run_name: str | None = None
    log_every_n_steps: int = 10  # train/loss and train/lr throttle
    log_model: bool = False  # upload the full model dir (LoRA/TI files are always logged)


@dataclass
class PathsConfig:
    root_dir: str = "${oc.env:DREAMBOOTH_SWEEP_ROOT,.}"  # project root; everything below derives from it
    data_dir: str = "${.root_dir}/data"  # demo subjects, user subjects
    log_dir: str = "${.root_dir}/outputs"  # Hydra run dirs, MLflow and Optuna stores
    cache_dir: str = "${.root_dir}/.cache"  # tiny models, class-image cache
    output_dir: str | None = None  # this run's dir; None: Hydra's run dir (or a timestamped dir)


@dataclass
class SweepContext:
    """Filled in by the Optuna sweeper for each job; empty for a single run or a grid."""

    study_name: str | None = None
    storage: str | None = None
    trial_number: int | None = None
    parent_run_id: str | None = None


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    sweep: SweepContext = field(default_factory=SweepContext)
    task_name: str = "train"


def register_configs() -> None:
    """Register the run schema so ``conf/train.yaml`` can put it first in its defaults list."""
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)


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
    if not str(d.identifier).strip():
        _fail("data.identifier is empty", "set a rare word, e.g. data.identifier=sks")
    if p.enabled:
        if not p.class_prompt:
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
    if cfg.eval.enabled and cfg.eval.every_n_steps <= 0:
        _fail(f"eval.every_n_steps={cfg.eval.every_n_steps} must be positive", "or set eval.enabled=false")


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """Resolved plain-dict copy of a config (for logging and return values)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]
