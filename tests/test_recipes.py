"""The source documents' experiments: each recipe's resolved settings match SEEDS.md, and each make
target runs in smoke mode (`MODEL=tiny SMOKE=1`) — one in the default suite, the rest marked slow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, compose_config
from omegaconf import OmegaConf

SWEEPS = ROOT / "sweeps"

# recipe (conf/experiment) → settings stated in SEEDS.md. Effective batch = batch_size × accumulation
# (× GPUs: the documents used 2, the recipes run them on one GPU).
RECIPES = {
    "blog_objects": dict(
        max_steps=400, effective_batch=4, prior=False, text_encoder=False, method="dreambooth"
    ),
    "blog_faces": dict(
        max_steps=1200, effective_batch=2, prior=True, text_encoder=False, method="dreambooth"
    ),
    "blog_text_encoder": dict(max_steps=1200, effective_batch=2, prior=True, lr=1e-6, method="dreambooth"),
    "blog_ema": dict(max_steps=1200, effective_batch=2, prior=True, lr=1e-6, ema=True, method="dreambooth"),
    "blog_identifier": dict(max_steps=400, effective_batch=4, prior=False, method="dreambooth"),
    "blog_schedulers": dict(scheduler="ddim", inference_steps=100),
    "blog_ti_dreambooth": dict(max_steps=2500, ti_steps=2000, lr=1e-6, method="ti_dreambooth"),
    "lora_figurine": dict(
        method="lora",
        rank=4,
        prior=True,
        prior_weight=1.0,
        optimizer="adamw8bit",
        lr_scheduler="constant",
        precision="fp16",
        checkpointing=True,
        xformers=True,
        inference_steps=180,
        max_steps=1250,
        effective_batch=4,
    ),
}
# sweep file → the axis it compares, as stated in SEEDS.md
GRIDS = {
    "blog_objects": {"train.lr": [5e-6, 2e-6]},
    "blog_faces": {"train.lr": [5e-6, 2e-6]},
    "blog_faces_prior": {"prior": ["on", "off"]},
    "blog_text_encoder": {"train.train_text_encoder": [False, True]},
    "blog_ema": {"train.use_ema": [False, True]},
    "blog_identifier": {"data.identifier": ["sks", "my", "aawxbc"]},
    "lora_figurine": {"data.max_images": [5, 15, 25]},
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_settings_match_the_documents(recipe: str) -> None:
    want = RECIPES[recipe]
    cfg = compose_config([f"experiment={recipe}", "data.instance_dir=/photos"])
    t = cfg.train
    got = {
        "max_steps": t.max_steps,
        "effective_batch": t.batch_size * t.gradient_accumulation_steps,
        "prior": cfg.prior.enabled,
        "text_encoder": t.train_text_encoder,
        "lr": t.lr,
        "ema": t.use_ema,
        "method": cfg.method.name,
        "scheduler": cfg.eval.scheduler,
        "inference_steps": cfg.eval.num_inference_steps,
        "ti_steps": cfg.method.get("ti_steps"),
        "rank": cfg.method.get("rank"),
        "prior_weight": cfg.prior.loss_weight,
        "optimizer": t.optimizer,
        "lr_scheduler": t.lr_scheduler,
        "precision": t.mixed_precision,
        "checkpointing": t.gradient_checkpointing,
        "xformers": t.enable_xformers,
    }
    assert {k: got[k] for k in want} == want
    assert cfg.model.pretrained == "stable-diffusion-v1-5/stable-diffusion-v1-5"  # SD-1.5 by default
    if recipe == "blog_faces":  # 800 and 1200 steps are both checkpoints of one run
        assert 800 % cfg.eval.every_n_steps == 0 and 1200 % cfg.eval.every_n_steps == 0
    if recipe == "lora_figurine":
        assert cfg.data.instance_prompt == "a photo of aawxbc figurine"
        assert cfg.prior.class_prompt == "a photo of figurine"


@pytest.mark.parametrize("sweep", sorted(GRIDS))
def test_sweep_files_compare_what_the_documents_compared(sweep: str) -> None:
    raw = OmegaConf.load(SWEEPS / f"{sweep}.yaml")
    assert str(raw.get("defaults")[0]) == "train"
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()  # read the grid exactly as Hydra's basic sweeper will
    params = {
        k: list(parser.parse_override(f"{k}={v}").sweep_iterator())
        for k, v in raw.hydra.sweeper.params.items()
    }
    assert params == GRIDS[sweep]
    first = (SWEEPS / f"{sweep}.yaml").read_text().splitlines()[0]
    assert first.startswith("# make ") or first.startswith("# part of make")  # starts with its command


def test_optuna_sweep_files_compose() -> None:
    for name in ("demo", "lr_steps"):
        raw = OmegaConf.load(SWEEPS / f"{name}.yaml")
        assert {"override hydra/sweeper": "optuna"} in [
            OmegaConf.to_container(d) for d in raw.defaults if not isinstance(d, str)
        ]
        assert raw.hydra.sweeper.params and raw.hydra.sweeper.pruner._target_.startswith("optuna.pruners.")


def _make(target: str, tmp_path: Path, cache_dir: Path, extra: str = "") -> subprocess.CompletedProcess:
    if shutil.which("make") is None or not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("needs make and the project's .venv (make install)")
    args = f"tracking=none paths.root_dir={tmp_path} paths.cache_dir={cache_dir} {extra}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), target, "MODEL=tiny", "SMOKE=1", f"ARGS={args}"],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip


def _finished_jobs(tmp_path: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "outputs").glob("**/metrics.json"))]


def test_blog_objects_smoke_run(tmp_path: Path, cache_dir: Path) -> None:
    # eval trimmed further (one seed): the point is the sweep shape (two lrs, checkpoints, a report)
    proc = _make("blog-objects", tmp_path, cache_dir, "eval.seeds=[0] eval.class_prompt_images=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _finished_jobs(tmp_path)
    assert len(jobs) == 2 and all(j["final_step"] == 8 and j["best_step"] > 0 for j in jobs)
    assert list((tmp_path / "outputs" / "multiruns").glob("*/report/index.html"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("target", "runs"),
    [("blog-faces", 4), ("blog-text-encoder", 2), ("blog-ema", 2), ("blog-identifier", 3),
     ("blog-ti-dreambooth", 1), ("lora-figurine", 3), ("blog-schedulers", 1)],
)  # fmt: skip
def test_recipe_targets_smoke_run(target: str, runs: int, tmp_path: Path, cache_dir: Path) -> None:
    extra = "eval.seeds=[0] eval.class_prompt_images=1"
    proc = _make(target, tmp_path, cache_dir, extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [p for p in (tmp_path / "outputs").glob("**/metrics.json")]
    assert len(jobs) >= runs, proc.stdout[-2000:]
