"""Real training steps on the tiny model: what changes, what stays frozen, resume, caches, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides
from safetensors.torch import load_file

from dreambooth_sweep import train as train_mod
from dreambooth_sweep.config import ConfigError
from dreambooth_sweep.train import train

ROOT = Path(__file__).resolve().parents[1]


def _weights(model_dir: Path, part: str) -> dict[str, torch.Tensor]:
    (file,) = (model_dir / part).glob("*.safetensors")
    return load_file(file)


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def base_dir(cache_dir: Path) -> Path:
    from dreambooth_sweep.tiny import ensure_tiny

    return ensure_tiny("sd", cache_dir)


def test_unet_only_run_saves_a_loadable_pipeline(make_cfg, base_dir: Path) -> None:
    cfg = make_cfg("train.max_steps=3")
    result = train(cfg)
    out = Path(cfg.paths.output_dir)
    assert result["final_step"] == 3 and torch.isfinite(torch.tensor(result["train/loss"]))
    saved = json.loads((out / "metrics.json").read_text())
    assert (
        saved["final_step"] == 3 and saved["perf/train_steps_per_s"] == result["perf/train_steps_per_s"] > 0
    )
    model = out / "model"
    assert _changed(_weights(base_dir, "unet"), _weights(model, "unet"))
    assert not _changed(_weights(base_dir, "text_encoder"), _weights(model, "text_encoder"))
    assert not _changed(_weights(base_dir, "vae"), _weights(model, "vae"))

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model)
    image = pipe("a photo of sks toy", num_inference_steps=2, height=64, width=64, output_type="np").images[0]
    assert image.shape == (64, 64, 3)


def test_prior_preservation_and_text_encoder_training(
    make_cfg, base_dir: Path, cache_dir: Path, monkeypatch
) -> None:
    # A class prompt no other test uses: the session cache is shared, and this test counts its sets.
    cfg = make_cfg(
        "prior=on",
        "prior.class_prompt='a toy photo'",
        "prior.num_class_images=3",
        "prior.gen_num_inference_steps=2",
        "train.train_text_encoder=true",
        "train.batch_size=2",
        "train.max_steps=2",
        "train.snr_gamma=5.0",
        "train.noise_offset=0.1",
    )
    result = train(cfg)
    model = Path(cfg.paths.output_dir) / "model"
    assert torch.isfinite(torch.tensor(result["train/loss"]))
    assert _changed(_weights(base_dir, "text_encoder"), _weights(model, "text_encoder"))
    assert not _changed(_weights(base_dir, "vae"), _weights(model, "vae"))
    sets = [p for p in (cache_dir / "class_images").glob("a-toy-photo-64px-*") if p.is_dir()]
    assert len(sets) == 1 and len(list(sets[0].glob("*.png"))) == 3

    # A second run finds the class images in the shared cache and never builds a generation pipeline.
    built = []
    real_build = train_mod.build_pipeline
    monkeypatch.setattr(train_mod, "build_pipeline", lambda *a, **k: built.append(1) or real_build(*a, **k))
    mtimes = {p: p.stat().st_mtime_ns for p in sets[0].glob("*.png")}
    train(
        make_cfg(
            "prior=on",
            "prior.class_prompt='a toy photo'",
            "prior.num_class_images=3",
            "prior.gen_num_inference_steps=2",
            "train.max_steps=1",
            "train.save_final=false",
            run="again",
        )
    )
    assert built == [] and mtimes == {p: p.stat().st_mtime_ns for p in sets[0].glob("*.png")}


def test_text_encoder_stops_after_n_steps(make_cfg, base_dir: Path) -> None:
    # Same seed and data: after its first step the capped run's text encoder must never move again.
    one = make_cfg("train.train_text_encoder=true", "train.max_steps=1", run="one")
    capped = make_cfg(
        "train.train_text_encoder=true", "train.text_encoder_steps=1", "train.max_steps=3", run="capped"
    )
    train(one)
    train(capped)
    te_one = _weights(Path(one.paths.output_dir) / "model", "text_encoder")
    te_capped = _weights(Path(capped.paths.output_dir) / "model", "text_encoder")
    assert _changed(_weights(base_dir, "text_encoder"), te_one)
    assert all(torch.equal(te_one[k], te_capped[k]) for k in te_one)


def test_resume_matches_an_uninterrupted_run(make_cfg) -> None:
    common = (
        "train.train_text_encoder=true",
        "train.checkpoint_every_n_steps=2",
        "train.batch_size=2",
        "train.gradient_accumulation_steps=2",
        "data.center_crop=false",
        "data.random_flip=true",
    )
    straight = make_cfg(*common, "train.max_steps=4", run="straight")
    train(straight)
    first = make_cfg(*common, "train.max_steps=2", run="resumed")
    train(first)
    ckpt = Path(first.paths.output_dir) / "checkpoints" / "checkpoint-2"
    assert (ckpt / "trainer_state.json").exists()
    second = make_cfg(*common, "train.max_steps=4", "train.resume_from=latest", run="resumed")
    train(second)
    for part in ("unet", "text_encoder"):
        a = _weights(Path(straight.paths.output_dir) / "model", part)
        b = _weights(Path(second.paths.output_dir) / "model", part)
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), part
    # checkpoints_total_limit=2 keeps the newest two
    assert sorted(p.name for p in (Path(second.paths.output_dir) / "checkpoints").iterdir()) == [
        "checkpoint-2",
        "checkpoint-4",
    ]


def test_ema_and_scheduler_options_run(make_cfg) -> None:
    cfg = make_cfg(
        "train.use_ema=true",
        "train.ema_decay=0.5",
        "train.lr_scheduler=cosine",
        "train.lr_warmup_steps=1",
        "train.max_steps=3",
    )
    assert train(cfg)["final_step"] == 3


def test_eval_hook_is_called_at_zero_every_n_and_last(make_cfg) -> None:
    calls = []

    class Hook:
        def __call__(self, ctx):
            calls.append((ctx.step, ctx.final, ctx.unet.training))
            return type("R", (), {"metrics": {"eval/score": float(-ctx.step)}, "grid": None})()

    cfg = make_cfg("eval.enabled=true", "eval.every_n_steps=2", "train.max_steps=5")
    result = train(cfg, eval_hook=Hook())
    assert [(s, f) for s, f, _ in calls] == [(0, False), (2, False), (4, False), (5, True)]
    # step 0 is the baseline, never the sweet spot: the best trained checkpoint is step 2
    assert result["objective"] == -2.0 and result["best_step"] == 2


def test_step_timer_leaves_out_the_first_step_evaluation_and_checkpoints(monkeypatch) -> None:
    now = [0.0]
    monkeypatch.setattr(train_mod.time, "perf_counter", lambda: now[0])
    timer = train_mod._StepTimer()

    def advance(seconds: float) -> None:
        now[0] += seconds

    with timer.paused():  # step-0 evaluation, before any step: not in the window
        advance(50)
    advance(10)  # first step: kernel selection, warm-up
    timer.step(1)
    with timer.paused():  # an evaluation after step 1
        advance(100)
    for step in (2, 3, 4):
        advance(0.5)
        timer.step(step)
    with timer.paused():  # the final evaluation, after the last step
        advance(70)
    assert timer.figures(torch.device("cpu")) == {"perf/train_steps_per_s": 3 / 1.5}
    single = train_mod._StepTimer()
    single.step(1)
    assert single.figures(torch.device("cpu")) == {}  # one step: no steady-state window


def test_bad_resume_path_is_a_config_error(make_cfg, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="resume_from"):
        train(make_cfg(f"train.resume_from={tmp_path / 'nope'}"))
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(make_cfg("train.resume_from=latest"))


def test_unloadable_model_is_a_config_error(make_cfg, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model_index.json"):
        train(make_cfg(f"model.pretrained={tmp_path}"))


def _cli(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dreambooth_sweep.train", *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["data.instance_dir=/does/not/exist"], "data.instance_dir"),
        (["prior=on", "prior.class_prompt=null"], "class_prompt"),
        (["train.lr=0"], "train.lr"),
        (["eval.scheduler=warp"], "scheduler"),
        (["data=subject", "data.instance_dir=???"], "data.instance_dir has no value"),
    ],
)
def test_cli_bad_input_exits_non_zero_with_one_line(
    tmp_path: Path, cache_dir: Path, demo_dir: Path, overrides, needle
) -> None:
    proc = _cli(*tiny_overrides(tmp_path, cache_dir, demo_dir, *overrides, steps=1), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0]


def test_a_run_failing_after_compose_writes_its_error_into_train_log(
    tmp_path: Path, cache_dir: Path, demo_dir: Path
) -> None:
    """The run folder of a failed run says why: the one error line is in its train.log too (once on the console)."""
    missing = tmp_path / "no_photos_here"
    proc = _cli(
        *tiny_overrides(tmp_path, cache_dir, demo_dir, f"data.instance_dir={missing}", steps=1), cwd=tmp_path
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "no_photos_here" not in proc.stdout  # not repeated by Hydra's console handler
    [log] = (tmp_path / "outputs" / "runs").glob("*/train.log")
    assert line in log.read_text()
