"""Every config choice and experiment composes against the typed schema; bad values fail early."""

from __future__ import annotations

import pytest
from conftest import CONF_DIR, compose_config
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from dreambooth_sweep.config import ConfigError, validate

GROUPS = ["model", "method", "data", "prior", "train", "eval", "tracking", "paths"]


def _choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(("group", "choice"), [(g, c) for g in GROUPS for c in _choices(g)])
def test_every_group_choice_composes(group: str, choice: str) -> None:
    overrides = [f"{group}={choice}", "data.instance_dir=/photos", "data.class_noun=dog"]
    cfg = compose_config(overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved[group] is not None


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_experiment_composes_and_validates(experiment: str) -> None:
    cfg = compose_config([f"experiment={experiment}", "data.instance_dir=/photos", "data.class_noun=dog"])
    OmegaConf.to_container(cfg, resolve=True)
    validate(cfg)


def test_demo_experiment_settings() -> None:
    cfg = compose_config(["experiment=demo"])
    assert cfg.model.name == "tiny" and cfg.model.pretrained == "tiny"
    assert cfg.prior.enabled and cfg.prior.class_prompt == "a photo of toy"
    assert cfg.data.instance_prompt == "a photo of sks toy"
    assert cfg.data.resolution == 64 and cfg.eval.resolution == 64


def test_model_defaults_are_the_real_ones() -> None:
    assert compose_config(["model=sd15"]).model.pretrained == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    cfg = compose_config([])
    assert cfg.eval.clip_model == "openai/clip-vit-base-patch32"
    assert cfg.eval.dino_model == "facebook/dino-vits16"


@pytest.mark.parametrize(
    "override",
    ["train.learning_rate=1e-6", "train.max_steps=abc", "prior.enabled=maybe", "model=sd99", "eval.seeds=3"],
)
def test_typos_and_wrong_types_fail_at_compose_time(override: str) -> None:
    with pytest.raises(ConfigCompositionException):
        compose_config([override])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.lr=0"], "train.lr"),
        (["train.lr=-1e-6"], "train.lr"),
        (["train.max_steps=0"], "train.max_steps"),
        (["train.batch_size=-2"], "train.batch_size"),
        (["train.gradient_accumulation_steps=0"], "gradient_accumulation_steps"),
        (["prior=on", "prior.class_prompt=null"], "class_prompt"),
        (["prior=on", "prior.class_prompt=''"], "class_prompt"),
        (["prior=on", "data.class_noun=''"], "data.class_noun"),
        (["prior=on", "data.class_noun=' '", "prior.class_prompt='a photo of dog'"], "data.class_noun"),
        (["prior=on", "prior.class_prompt='  '"], "class_prompt"),
        (["train.optimizer=sgd"], "train.optimizer"),
        (["train.mixed_precision=fp8"], "mixed_precision"),
        (["train.lr_scheduler=exponential"], "lr_scheduler"),
        (["method.name=hypernetwork"], "method.name"),
        (["data.resolution=100"], "multiple of 8"),
        (["train.ema_decay=1.5"], "ema_decay"),
        (["eval.scheduler=warp"], "eval.scheduler"),
    ],
)
def test_bad_values_get_one_line_errors(overrides: list[str], message: str) -> None:
    cfg = compose_config(["data.instance_dir=/x", "data.class_noun=dog", *overrides])
    with pytest.raises(ConfigError, match=message) as info:
        validate(cfg)
    text = str(info.value)
    assert "\n" not in text and ":" in text  # problem: fix


def test_eval_scheduler_names_match_the_model_layer() -> None:
    from dreambooth_sweep.config import EVAL_SCHEDULERS
    from dreambooth_sweep.models import SCHEDULERS

    assert set(EVAL_SCHEDULERS) == set(SCHEDULERS)


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("train.learning_rate=1e-6", ["train.learning_rate", "spelling"]),
        ("train.max_steps=abc", ["train.max_steps=abc", "Integer"]),
        ("model=sd99", ["model/sd99", "sd15 sd21 sd35 sdxl tiny"]),
    ],
)
def test_compose_errors_fold_into_one_line_with_a_fix(override: str, needles: list[str]) -> None:
    from dreambooth_sweep.errors import compose_error_line

    with pytest.raises(Exception) as info:
        compose_config([override])
    line = compose_error_line(info.value)
    assert "\n" not in line and all(n in line for n in needles), line
    assert "+train" not in line  # Hydra's hint would add the typo instead of fixing it
