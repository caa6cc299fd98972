"""The fixed-noise validation loss (dreambooth_sweep/val_loss.py): reproducible, invisible to training,
informative on tiny SD, working on a flow-matching family, and a pruning signal of a real sweep."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from conftest import compose_config, tiny_overrides
from omegaconf import OmegaConf

from dreambooth_sweep.config import ConfigError
from dreambooth_sweep.data import load_images
from dreambooth_sweep.models import load_components
from dreambooth_sweep.sweep import TrialReporter
from dreambooth_sweep.train import train
from dreambooth_sweep.val_loss import ValidationLoss, band_of, level_quantiles, stream_levels

ROOT = Path(__file__).resolve().parents[1]
BANDS = [f"val/instance_loss_by_t/{b}" for b in ("high", "low", "mid")]


class NoImages:
    """Eval hook standing in for the image evaluation: a constant score, and the weights at each call."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def __call__(self, ctx):
        unet = ctx.live()["unet"]
        self.weights[ctx.step] = {k: v.detach().clone() for k, v in unet.state_dict().items()}
        return SimpleNamespace(metrics={"eval/score": 0.0}, grid=None)


def _history(run: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run / "eval_history.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows}


def _photos(demo_dir: Path) -> list:
    return [SimpleNamespace(image=im) for _, im in load_images(demo_dir, 3, what="data.instance_dir")]


def test_quantiles_and_bands() -> None:
    assert level_quantiles(4).tolist() == [0.125, 0.375, 0.625, 0.875]
    assert [band_of(q) for q in level_quantiles(6).tolist()] == ["low", "low", "mid", "mid", "high", "high"]
    assert [band_of(q) for q in level_quantiles(4).tolist()] == ["low", "mid", "mid", "high"]
    assert band_of(0.5) == "mid"


def test_levels_are_stratified_over_the_stream() -> None:
    # one level per image: the images share the schedule, one bin each
    assert stream_levels(3, 1) == [[1 / 6], [0.5], [5 / 6]]
    # several per image: image i takes bins i, i + n, ...: one in each stratum of n bins
    levels = stream_levels(4, 3)
    assert sorted(q for image in levels for q in image) == level_quantiles(12).tolist()
    assert all([band_of(q) for q in image] == ["low", "mid", "high"] for image in levels)


@pytest.mark.parametrize(("photos", "per_image", "examples"), [(3, 1, 3), (1, 1, 3), (2, 1, 4), (3, 2, 6)])
def test_every_band_has_an_instance_example(
    make_cfg, cache_dir: Path, demo_dir: Path, photos: int, per_image: int, examples: int
) -> None:
    """Fewer than 3 photos take more levels each, so the three bands always exist."""
    cfg = make_cfg(f"eval.val_loss_timesteps={per_image}")
    comps = load_components(cfg.model, cache_dir)
    images = _photos(demo_dir)[:photos]
    loss = ValidationLoss(
        cfg, comps, images, [(64, 64)] * photos, ["a photo of sks toy"] * photos, device=torch.device("cpu"),
        dtype=torch.float32,
    )  # fmt: skip
    assert len(loss.examples) == examples
    assert loss.metric_names() == ["val/instance_loss", *BANDS]
    # the stream's examples fill its bins exactly once, image after image
    assert sorted(ex.quantile for ex in loss.examples) == level_quantiles(examples).tolist()
    per_photo = examples // photos
    assert [ex.quantile for ex in loss.examples] == [
        q for image in stream_levels(photos, per_photo) for q in image
    ]


def test_fixed_inputs_give_bit_identical_losses(make_cfg, cache_dir: Path, demo_dir: Path) -> None:
    cfg = make_cfg("eval.val_loss_timesteps=3", "eval.val_loss_batch_size=4")
    comps = load_components(cfg.model, cache_dir)
    photos = _photos(demo_dir)

    def build(**kw) -> ValidationLoss:
        return ValidationLoss(
            cfg, comps, photos, [(64, 64)] * 3, ["a photo of sks toy"] * 3, device=torch.device("cpu"),
            dtype=torch.float32, **kw,
        )  # fmt: skip

    loss = build(class_images=[p.image for p in photos[:2]], class_prompt="a photo of a toy")
    assert loss.metric_names() == ["val/instance_loss", *BANDS, "val/prior_loss"]
    with torch.no_grad():
        first = loss({})
        torch.randn(100)  # the global RNG moves between evaluations: the loss must not care
        second = loss({})
        again = build(class_images=[p.image for p in photos[:2]], class_prompt="a photo of a toy")({})
    assert first == second == again  # bit-identical: same inputs, same batches, same order
    assert set(first) == set(loss.metric_names()) and all(math.isfinite(v) for v in first.values())
    # the instance loss is the mean of its three bands (one level each at K=3)
    assert first["val/instance_loss"] == pytest.approx(sum(first[b] for b in BANDS) / 3)
    # another seed is another set of noises
    other = compose_config([*_overrides(cfg), "eval.val_loss_seed=7", "eval.val_loss_timesteps=3"])
    with torch.no_grad():
        moved = ValidationLoss(
            other, comps, photos, [(64, 64)] * 3, ["a photo of sks toy"] * 3, device=torch.device("cpu"),
            dtype=torch.float32,
        )({})  # fmt: skip
    assert moved["val/instance_loss"] != first["val/instance_loss"]


def _overrides(cfg) -> list[str]:
    return [
        "model=tiny", "eval=tiny", "tracking=none", f"paths.root_dir={cfg.paths.root_dir}",
        f"paths.cache_dir={cfg.paths.cache_dir}", f"data.instance_dir={cfg.data.instance_dir}",
        "data.generate_demo=false",
    ]  # fmt: skip


def test_training_is_untouched_and_the_loss_is_logged(make_cfg) -> None:
    runs = {}
    for name, every in (("without", 0), ("with", 2)):
        hook = NoImages()
        cfg = make_cfg(
            "eval.enabled=true", "eval.every_n_steps=1000", f"eval.val_loss_every_n_steps={every}",
            "train.max_steps=5", run=name,
        )  # fmt: skip
        results = train(cfg, eval_hook=hook)
        runs[name] = (hook, Path(cfg.paths.output_dir), results)
    (plain, _, _), (valued, out, results) = runs["without"], runs["with"]
    assert plain.weights.keys() == valued.weights.keys() == {0, 5}
    for key, value in plain.weights[5].items():
        assert torch.equal(value, valued.weights[5][key]), key  # training RNG and weights untouched
    history = _history(out)
    assert sorted(history) == [0, 2, 4, 5]  # step 0, every 2 steps, the last step
    assert "eval/score" in history[0] and "eval/score" not in history[2]  # val-only rows between
    assert all("val/instance_loss" in history[s] for s in history)
    assert results["val/instance_loss"] == history[5]["val/instance_loss"]
    assert "val/instance_loss" not in _history(runs["without"][1])[0]


def test_the_loss_drops_on_the_instance_images(tmp_path: Path, cache_dir: Path, demo_dir: Path) -> None:
    overrides = tiny_overrides(
        tmp_path, cache_dir, demo_dir, "eval.every_n_steps=1000", "eval.val_loss_every_n_steps=10",
        "train.lr=1e-3", "train.batch_size=2", "train.num_threads=1",
        steps=30, evaluate=True, tracking=True, output_dir=tmp_path / "run",
    )  # fmt: skip
    train(compose_config(overrides), eval_hook=NoImages())
    history = _history(tmp_path / "run")
    curve = [history[s]["val/instance_loss"] for s in (0, 10, 20, 30)]
    assert curve[-1] < 0.9 * curve[0], curve
    # the same values in the real MLflow store, at their steps
    from mlflow import MlflowClient

    from dreambooth_sweep.tracking.store import default_uri

    client = MlflowClient(default_uri(tmp_path / "outputs"))
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/instance_loss")}
    assert logged == pytest.approx(dict(zip((0, 10, 20, 30), curve, strict=True)))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.val_loss_every_n_steps=-1", "eval.val_loss_every_n_steps=-1 cannot be negative"),
        ("eval.val_loss_timesteps=0", "eval.val_loss_timesteps=0 must be at least 1"),
    ],
)
def test_bad_settings_are_one_line_errors(make_cfg, override: str, message: str) -> None:
    from dreambooth_sweep.config import validate

    with pytest.raises(ConfigError, match=message):
        validate(make_cfg(override))


def test_tiny_flux_flow_matching(family_cfg, tiny_family) -> None:
    tiny_family("flux")
    cfg = family_cfg(
        "tiny_flux", "method=lora", "eval.enabled=true", "eval.every_n_steps=1000",
        "eval.val_loss_every_n_steps=1", "eval.val_loss_timesteps=3", "train.weighting_scheme=logit_normal",
    )  # fmt: skip
    train(cfg, eval_hook=lambda ctx: SimpleNamespace(metrics={"eval/score": 0.0}, grid=None))
    history = _history(Path(cfg.paths.output_dir))
    assert sorted(history) == [0, 1, 2]
    assert all(math.isfinite(history[s]["val/instance_loss"]) for s in history)
    assert history[0]["val/instance_loss"] != history[2]["val/instance_loss"]  # the LoRA moved it
    # noise levels: σ rises with the quantile, the flow target noise - x0
    comps = load_components(
        OmegaConf.create({"pretrained": "tiny_flux", "max_sequence_length": 64}), cfg.paths.cache_dir
    )
    x0, noise = torch.zeros(3, 4, 2, 2), torch.ones(3, 4, 2, 2)
    noised = comps.family.noise_at(comps, x0, noise, level_quantiles(3), cfg.train)
    sigmas = noised.sigmas.flatten().tolist()
    assert sigmas == sorted(sigmas) and 0 < sigmas[0] < sigmas[-1] < 1
    assert torch.equal(noised.target, noise - x0)


def test_prune_on_a_metric_reports_it_in_the_study_direction(tmp_path: Path) -> None:
    for direction, sign in (("maximize", -1.0), ("minimize", 1.0)):
        study = optuna.create_study(direction=direction)
        reporter = TrialReporter(study.ask(), prune_on="val/instance_loss")
        reporter.report(0.5, 4, final=False)  # the image score: the trial's best, not the pruner's signal
        reporter.report_signal({"val/instance_loss": 1.25}, 2)
        reporter.report_signal({"eval/score": 0.5}, 4)  # an image-only row: nothing to report
        frozen = study.trials[0]
        assert frozen.intermediate_values == {2: sign * 1.25}
        assert reporter.best_score == 0.5 and frozen.user_attrs["best_score"] == 0.5
        assert (frozen.user_attrs["prune_on"], frozen.user_attrs["prune_sign"]) == ("val/instance_loss", sign)
        # a report from the study alone (no run folders) shows the loss itself, not the negated value
        from dreambooth_sweep.report.model import Trial
        from dreambooth_sweep.report.sources import _merge_study

        trials: dict[int, Trial] = {}
        _merge_study(trials, [frozen])
        assert trials[0].history[2] == {"val/instance_loss": 1.25}


def test_prune_on_val_loss_needs_the_loss(make_cfg, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.set_user_attr("prune_on", "val/prior_loss")
    trial = study.ask()
    ctx = ["sweep.study_name=s", f"sweep.storage='{storage}'", f"sweep.trial_number={trial.number}"]
    with pytest.raises(ConfigError, match="val/prior_loss is not a validation loss of this run"):
        train(make_cfg("eval.enabled=true", *ctx), eval_hook=NoImages())
    with pytest.raises(ConfigError, match="validation loss is off"):
        train(make_cfg("eval.enabled=true", "eval.val_loss_every_n_steps=0", *ctx), eval_hook=NoImages())


def test_a_sweep_prunes_on_the_validation_loss(tmp_path: Path, cache_dir: Path, demo_dir: Path) -> None:
    """3 trials; images only at steps 0 and 6, the loss every 2 steps: a pruner that stops any trial
    whose reported value is below -0.5 stops each at step 2 — only if -val/instance_loss went to it."""
    args = [
        *tiny_overrides(tmp_path, cache_dir, demo_dir, steps=6, evaluate=True),
        "train.num_threads=1", "eval.every_n_steps=6", "eval.val_loss_every_n_steps=2",
        "eval.metrics=[dino,clip_t]", "eval.seeds=[0]", "eval.num_inference_steps=2", "eval.class_prompt_images=1",
        "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.study_name=vl",
        f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db", f"hydra.sweep.dir={tmp_path}/multirun",
        "hydra.sweeper.prune_on=val/instance_loss",
        "++hydra.sweeper.pruner={_target_: optuna.pruners.ThresholdPruner, lower: -0.5}",
        "train.lr=interval(1e-4, 1e-3)",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "dreambooth_sweep.train", "-m", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="vl", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert study.user_attrs["prune_on"] == "val/instance_loss"
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 3
    for trial, job in zip(study.trials, sorted((tmp_path / "multirun").glob("[0-9]*")), strict=True):
        history = _history(job)
        assert sorted(history) == [0, 2]  # stopped at the first loss after step 0, before any image step
        assert trial.intermediate_values == {2: -history[2]["val/instance_loss"]}
    # the sweep's report reads histories whose rows carry val/* only
    assert (tmp_path / "multirun" / "report" / "index.html").exists()


@pytest.mark.parametrize("model", ["tiny_sdxl", "tiny_sd3"])
def test_other_families(model: str, family_cfg, tiny_family, demo_dir: Path) -> None:
    """SDXL (time ids from each photo's geometry) and SD3 (flow matching, three text encoders)."""
    tiny_family(model.removeprefix("tiny_"))
    cfg = family_cfg(model, "eval.val_loss_timesteps=3")
    comps = load_components(cfg.model, cfg.paths.cache_dir)
    photos = _photos(demo_dir)
    loss = ValidationLoss(
        cfg, comps, photos, [(64, 64)] * 3, ["a photo of sks toy"] * 3, device=torch.device("cpu"),
        dtype=torch.float32,
    )  # fmt: skip
    with torch.no_grad():
        first, second = loss({}), loss({})
    assert first == second and set(first) == {"val/instance_loss", *BANDS}
    assert all(math.isfinite(v) for v in first.values())
