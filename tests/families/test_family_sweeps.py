"""Optuna sweeps with pruning on tiny FLUX and tiny SDXL, from the real sweep files, ending in a report;
``make sweep MODEL=<family>`` picks the family's sweep file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _sweep(
    name: str, model: str, tmp_path: Path, cache_dir: Path, demo_dir: Path
) -> subprocess.CompletedProcess:
    args = [
        f"model={model}", "smoke=cpu", "eval.clip_model=tiny", "eval.dino_model=tiny", "tracking=none",
        f"paths.root_dir={tmp_path}", f"paths.cache_dir={cache_dir}",
        f"data.instance_dir={demo_dir}", "data.class_noun=toy", "data.generate_demo=false",
        "train.max_steps=4", "eval.every_n_steps=2", "eval.seeds=[0]", "eval.class_prompt_images=1",
        "eval.prompts=custom", "eval.custom_prompts=['a {V} {C} on the beach']", "eval.num_inference_steps=2",
        "prior.num_class_images=2", "prior.gen_num_inference_steps=2", "train.batch_size=1", "train.num_threads=1",
        "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=2",
        "hydra.sweeper.pruner.n_startup_trials=1", "hydra.sweeper.pruner.n_warmup_steps=0",
        f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db", "hydra.sweeper.study_name=family-test",
        f"hydra.sweep.dir={tmp_path}/multirun",
    ]  # fmt: skip
    cmd = [
        sys.executable,
        "-m",
        "dreambooth_sweep.train",
        "-m",
        "--config-dir",
        str(ROOT / "sweeps"),
        "--config-name",
        name,
    ]
    # this checkout's package, not whichever one the venv has installed
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([*cmd, *args], cwd=tmp_path, capture_output=True, text=True, timeout=1800, env=env)


def _check(proc: subprocess.CompletedProcess, tmp_path: Path) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="family-test", storage=f"sqlite:///{tmp_path}/optuna.db")
    states = [t.state for t in study.trials]
    assert len(states) == 3 and all(
        s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for s in states
    )
    assert all(t.intermediate_values for t in study.trials)  # checkpoint scores reached the pruner
    assert isinstance(study.pruner, optuna.pruners.MedianPruner)
    assert (tmp_path / "multirun" / "report" / "index.html").exists()


def test_flux_lora_sweep_with_pruning_makes_a_report(
    tmp_path: Path, cache_dir: Path, demo_dir: Path, tiny_family
) -> None:
    tiny_family("flux")
    _check(_sweep("flux_lr_steps", "tiny_flux", tmp_path, cache_dir, demo_dir), tmp_path)


def test_sdxl_lora_sweep_with_pruning_makes_a_report(
    tmp_path: Path, cache_dir: Path, demo_dir: Path, tiny_family
) -> None:
    tiny_family("sdxl")
    _check(_sweep("sdxl_lr_steps", "tiny_sdxl", tmp_path, cache_dir, demo_dir), tmp_path)


@pytest.mark.parametrize(
    ("model", "name"), [("sdxl", "sdxl_lr_steps"), ("tiny_flux", "flux_lr_steps"), ("sd15", "lr_steps")]
)
def test_make_sweep_picks_the_family_sweep(model: str, name: str) -> None:
    if shutil.which("make") is None:
        pytest.skip("needs make")
    proc = subprocess.run(
        ["make", "--no-print-directory", "-n", "-C", str(ROOT), "sweep", f"MODEL={model}", "SMOKE=1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"--config-name {name} model={model}" in proc.stdout
