"""Checkpoint evaluation on the tiny offline model: samplers, determinism, grids, baselines, eval-only mode."""

from __future__ import annotations

import copy
import json
import math
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config, tiny_overrides
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from dreambooth_sweep.config import ConfigError
from dreambooth_sweep.data import load_instance_images
from dreambooth_sweep.evaluate import (
    COL_LABEL_H,
    GAP,
    LABEL_W,
    TILE_GAP,
    TITLE_H,
    EvalContext,
    Evaluator,
    _wrap,
    evaluate,
    make_grid,
)
from dreambooth_sweep.metrics import main as metrics_main
from dreambooth_sweep.models import SCHEDULERS, Components, load_components
from dreambooth_sweep.objective import sweet_spot_score

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = "eval.custom_prompts=['a {V} {C} on the moon','a red {V} {C}','a {V} {C} in the snow','a wet {V} {C}','a {C}']"


@pytest.fixture(scope="session")
def components(cache_dir: Path) -> Components:
    return load_components(
        OmegaConf.create({"pretrained": "tiny", "revision": None, "variant": None}), cache_dir
    )


@pytest.fixture
def eval_cfg(tmp_path: Path, cache_dir: Path, demo_dir: Path) -> Callable[..., DictConfig]:
    """The real eval-only config, shrunk: tiny models, five custom prompts, two sampler steps."""

    def _make(*overrides: str) -> DictConfig:
        base = [
            *tiny_overrides(tmp_path, cache_dir, demo_dir, evaluate=True, output_dir=tmp_path / "run"),
            "eval.prompts=custom",
            PROMPTS,
            "eval.num_inference_steps=2",
            "eval.batch_size=4",
        ]
        return compose_config([*base, *overrides], config_name="evaluate")

    return _make


def _evaluator(cfg: DictConfig, out: Path) -> Evaluator:
    return Evaluator(cfg, load_instance_images(cfg.data), out, Path(cfg.paths.cache_dir), "cpu")


def _ctx(components: Components, step: int, final: bool = False, unet=None, text_encoder=None) -> EvalContext:
    return EvalContext(
        step, final, components, unet or components.unet, text_encoder or components.text_encoder, "cpu"
    )


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_scheduler_list_is_the_documented_one() -> None:
    assert set(SCHEDULERS) == {"ddim", "pndm", "lms", "dpm++", "euler", "euler_a", "unipc", "ddpm"}


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_every_scheduler_samples_through_the_evaluator(scheduler, eval_cfg, components, tmp_path) -> None:
    cfg = eval_cfg(
        f"eval.scheduler={scheduler}",
        "eval.custom_prompts=['a {V} {C}']",
        "eval.seeds=[0]",
        "eval.metrics=[dino,clip_t]",
    )
    result = _evaluator(cfg, tmp_path / "run")(_ctx(components, 0))
    image = Image.open(result.sample_dir / "00_0.png")
    assert image.size == (64, 64) and np.asarray(image).std() > 0  # decoded, not blank
    assert np.isfinite(
        [result.metrics["eval/dino"], result.metrics["eval/clip_t"], result.metrics["eval/score"]]
    ).all()


def test_fixed_seeds_deterministic_and_training_state_untouched(eval_cfg, components, tmp_path) -> None:
    cfg = eval_cfg("eval.scheduler=euler_a", "eval.batch_size=3")  # ancestral: noise at every step, too
    unet, text_encoder = copy.deepcopy(components.unet), copy.deepcopy(components.text_encoder)
    unet.train().requires_grad_(True)
    unet.conv_in.eval()  # a mixed state must come back exactly, module by module
    text_encoder.eval()
    modes = [m.training for m in (*unet.modules(), *text_encoder.modules())]
    evaluator = _evaluator(cfg, tmp_path / "run")

    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    first = evaluator(_ctx(components, 0, unet=unet, text_encoder=text_encoder))
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]
    assert [m.training for m in (*unet.modules(), *text_encoder.modules())] == modes
    assert all(p.grad is None for p in unet.parameters())
    assert torch.is_grad_enabled()

    step0 = {
        name: _pixels(first.sample_dir / name)
        for name in json.loads((first.sample_dir / "prompts.json").read_text())
    }
    again = evaluator(_ctx(components, 0, unet=unet, text_encoder=text_encoder))
    assert all(np.array_equal(step0[name], _pixels(again.sample_dir / name)) for name in step0)
    assert {k: v for k, v in again.metrics.items() if k != "eval/seconds"} == {
        k: v for k, v in first.metrics.items() if k != "eval/seconds"
    }
    # A checkpoint with unchanged weights draws the same noise for the same (prompt, seed), whatever
    # the batch it lands in (batched float maths may differ by a rounding step).
    mid = evaluator(_ctx(components, 5, unet=unet, text_encoder=text_encoder))
    for name in json.loads((mid.sample_dir / "prompts.json").read_text()):
        assert np.abs(_pixels(mid.sample_dir / name) - step0[name]).max() <= 2


def test_prompt_sets_per_step_files_and_step0_score(eval_cfg, components, tmp_path, capsys) -> None:
    cfg = eval_cfg("eval.num_prompts=2", "eval.seeds=[3,7]")
    prompts = ["a sks toy on the moon", "a red sks toy", "a sks toy in the snow", "a wet sks toy", "a toy"]
    evaluator = _evaluator(cfg, tmp_path / "run")

    base = evaluator(_ctx(components, 0))
    assert base.prompts == prompts
    # eval/* is the fixed subset (comparable at every step); eval_all/* every prompt, at step 0 and the end
    assert base.metrics["eval/score"] == base.metrics["eval/dino"]  # no CLIP-T loss against itself
    assert base.metrics["eval_all/score"] == base.metrics["eval_all/dino"]
    assert base.grid_path == tmp_path / "run" / "samples" / "step_000000.png" and base.grid_path.is_file()
    names = json.loads((base.sample_dir / "prompts.json").read_text())
    assert names == {f"{i:02d}_{s}.png": p for i, p in enumerate(prompts) for s in (3, 7)}
    assert all((base.sample_dir / n).is_file() for n in names)
    assert sorted(p.name for p in (base.sample_dir / "class").glob("*.png")) == ["0.png", "1.png"]

    mid = evaluator(_ctx(components, 2))
    assert mid.prompts == [prompts[1], prompts[3]]  # evenly spaced, the same at every checkpoint
    assert sorted(json.loads((mid.sample_dir / "prompts.json").read_text())) == [
        "01_3.png",
        "01_7.png",
        "03_3.png",
        "03_7.png",
    ]
    assert not any(k.startswith("eval_all/") for k in mid.metrics)
    # The saved folder rescores to the same numbers with the metrics command line: its scoring.json
    # names the photos, class images, identifier, backbones and protocol (--cache-dir: where "tiny" is).
    assert metrics_main(["--generated", str(mid.sample_dir), "--cache-dir", str(cfg.paths.cache_dir)]) == 0
    rescored = json.loads(capsys.readouterr().out)
    assert set(rescored) == set(mid.metrics) - {"eval/score", "eval/seconds"}
    assert rescored == pytest.approx({k: mid.metrics[k] for k in rescored}, abs=1e-5)
    assert mid.metrics["eval/dino"] == pytest.approx(
        base.metrics["eval/dino"], abs=1e-3
    )  # same prompts, same weights
    final = evaluator(_ctx(components, 4, final=True))
    assert final.prompts == prompts
    assert final.metrics["eval_all/dino"] == pytest.approx(base.metrics["eval_all/dino"], abs=1e-3)
    assert (tmp_path / "run" / "samples" / "step_000004.png").is_file()
    assert all(math.isfinite(r.metrics["eval/score"]) for r in (base, mid, final))


def test_score_uses_the_step0_baseline_of_the_same_prompts(eval_cfg, components, tmp_path) -> None:
    # A negative tolerance keeps the CLIP-T penalty active, so the baseline really enters the score.
    cfg = eval_cfg("eval.num_prompts=2", "eval.objective.tolerance=-1.0", "eval.objective.penalty=0.5")
    out = tmp_path / "run"
    evaluator = _evaluator(cfg, out)
    evaluator(_ctx(components, 0))
    trained = copy.deepcopy(components.unet)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    mid = evaluator(_ctx(components, 3, unet=trained))

    step0 = out / "samples" / "step_000000"
    names = json.loads((step0 / "prompts.json").read_text())
    subset = {p: [Image.open(step0 / n) for n, q in sorted(names.items()) if q == p] for p in mid.prompts}
    classes = [Image.open(step0 / "class" / f"{i}.png") for i in range(2)]
    baseline = evaluator.suite.compute(subset, classes, "sks")
    expected = sweet_spot_score(mid.metrics, baseline, cfg.eval.objective)
    assert mid.metrics["eval/score"] == pytest.approx(expected, abs=1e-6)
    assert mid.metrics["eval/score"] != pytest.approx(mid.metrics["eval/dino"])

    final = evaluator(_ctx(components, 9, final=True, unet=trained))
    every = {p: [Image.open(step0 / n) for n, q in sorted(names.items()) if q == p] for p in final.prompts}
    full = {
        "eval/" + k.removeprefix("eval_all/"): v
        for k, v in final.metrics.items()
        if k.startswith("eval_all/")
    }
    expected = sweet_spot_score(full, evaluator.suite.compute(every, classes, "sks"), cfg.eval.objective)
    assert final.metrics["eval_all/score"] == pytest.approx(expected, abs=1e-6)

    # A resumed run that never saw step 0 reads the baseline back from samples/step_000000.
    resumed = _evaluator(cfg, out)(_ctx(components, 3, unet=trained))
    assert resumed.metrics["eval/score"] == pytest.approx(mid.metrics["eval/score"], abs=1e-6)


def test_grid_layout_and_labels() -> None:
    cell, cols = 32, 3
    colors = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]
    rows = [
        (
            f"prompt {r} " + "long words " * (30 if r == 1 else 0),
            [Image.new("RGB", (64, 64), c) for c in colors],
        )
        for r in range(4)
    ]
    reference = [Image.new("RGB", (80, 60), (250, 200, 0)) for _ in range(7)]
    grid = make_grid(rows, title="step 7 (checkpoint)", reference=reference, cell=cell)
    thumb = cell // 2
    per_ref_row = cols * cell // thumb  # 6: seven photos need two strip rows
    assert per_ref_row == 6
    top = TITLE_H + 2 * thumb + GAP
    step = cell + TILE_GAP  # tiles are TILE_GAP apart
    assert grid.size == (LABEL_W + cols * cell + (cols - 1) * TILE_GAP, top + len(rows) * step - TILE_GAP)

    px = np.asarray(grid)
    assert (px[:TITLE_H, :LABEL_W].min(axis=-1) < 100).any()  # title written
    for r in range(len(rows)):
        label = px[top + r * step : top + r * step + cell, :LABEL_W]
        assert (label.min(axis=-1) < 100).sum() > 10, f"row {r} has no label"
        for c, color in enumerate(colors):
            x, y = LABEL_W + c * step + cell // 2, top + r * step + cell // 2
            assert tuple(px[y, x]) == color
    assert tuple(px[TITLE_H + thumb // 2, LABEL_W + thumb // 2]) == (250, 200, 0)  # reference strip

    from PIL import ImageFont

    lines = _wrap("word " * 200, ImageFont.load_default(), 100, 3)
    assert len(lines) == 3 and lines[-1].endswith("...")


def test_grid_labels_columns_with_seeds_and_keeps_tiles_apart() -> None:
    cell, cols, n_rows = 32, 3, 2
    black = [Image.new("RGB", (40, 40), (0, 0, 0)) for _ in range(cols)]
    rows = [(f"prompt {r}", black) for r in range(n_rows)]
    plain = make_grid(rows, title="t", cell=cell)
    grid = make_grid(rows, title="t", cell=cell, col_labels=[f"seed {s}" for s in (0, 1, 7)])
    assert grid.size == (plain.width, plain.height + COL_LABEL_H)  # a strip for the column labels
    px = np.asarray(grid).astype(int)
    top = TITLE_H + GAP + COL_LABEL_H
    band = px[top : top + n_rows * cell, LABEL_W:]
    white = (band == 255).all(axis=-1)
    # Pixel columns of pure background between the tiles, exactly TILE_GAP wide, and no white inside a tile.
    gap_cols = [x for x in range(band.shape[1]) if white[:cell, x].all()]
    expected = [c * (cell + TILE_GAP) - TILE_GAP + k for c in range(1, cols) for k in range(TILE_GAP)]
    assert gap_cols == expected
    gap_rows = [y for y in range(band.shape[0]) if white[y, :cell].all()]
    assert gap_rows == [cell + k for k in range(TILE_GAP)]  # and between the rows
    # Each seed label is drawn above its own column, and nowhere else in the strip.
    strip = px[top - COL_LABEL_H : top, LABEL_W:]
    for c in range(cols):
        x0 = c * (cell + TILE_GAP)
        assert (strip[:, x0 : x0 + cell].min(axis=-1) < 160).any(), f"column {c} has no label"
    assert (strip[:, cell : cell + TILE_GAP] == 255).all()


def test_evaluator_grid_matches_rows_and_columns(eval_cfg, components, tmp_path) -> None:
    cfg = eval_cfg("eval.num_prompts=2", "eval.seeds=[0,1,2]", "eval.class_prompt_images=2")
    with pytest.warns(UserWarning, match="no step-0 samples"):  # no baseline yet: no penalty, said out loud
        result = _evaluator(cfg, tmp_path / "run")(_ctx(components, 1))
    rows, cols, cell = 2 + 1, 3, 64  # two prompts + the class-prompt row; three seeds
    demo_photos = 6  # conftest's demo subject: 6 photos, 2·3 = 6 per strip row
    assert result.grid.size == (  # seed labels above the columns, TILE_GAP between tiles
        LABEL_W + cols * cell + (cols - 1) * TILE_GAP,
        TITLE_H
        + -(-demo_photos // 6) * (cell // 2)
        + GAP
        + COL_LABEL_H
        + rows * cell
        + (rows - 1) * TILE_GAP,
    )
    assert Image.open(result.grid_path).size == result.grid.size


def test_bad_settings_fail_with_one_line(eval_cfg) -> None:
    with pytest.raises(ConfigError, match="custom_prompts is empty"):
        _evaluator(eval_cfg("eval.custom_prompts=[]"), Path("unused"))
    with pytest.raises(ConfigError, match="eval.seeds is empty"):
        _evaluator(eval_cfg("eval.seeds=[]"), Path("unused"))


def test_eval_only_with_a_trained_model_dir(eval_cfg, components, tmp_path) -> None:
    from dreambooth_sweep.models import build_pipeline

    trained = copy.deepcopy(components.unet)
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(1.2)
    build_pipeline(components, unet=trained).save_pretrained(tmp_path / "model")
    metrics = evaluate(eval_cfg(f"weights.model_dir={tmp_path / 'model'}", "eval.metrics=[dino,clip_t]"))
    out = tmp_path / "run"
    base = json.loads((out / "metrics_base.json").read_text())
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)
    assert metrics["eval/dino"] != base["eval/dino"]  # the trained UNet was used
    drop = max(0.0, base["eval/clip_t"] - metrics["eval/clip_t"] - 0.01)
    assert metrics["eval/score"] == pytest.approx(metrics["eval/dino"] - 2.0 * drop, abs=1e-6)
    assert (out / "samples" / "base.png").is_file() and (out / "samples" / "final.png").is_file()
    with pytest.raises(ConfigError, match="has no unet/ folder"):
        evaluate(eval_cfg(f"weights.model_dir={tmp_path}"))


def test_eval_only_cli_two_schedulers(tmp_path: Path, cache_dir: Path, demo_dir: Path) -> None:
    """``python -m dreambooth_sweep.evaluate -m eval.scheduler=ddim,dpm++``: one job per sampler."""
    cmd = [
        sys.executable, "-m", "dreambooth_sweep.evaluate", "-m",
        *tiny_overrides(tmp_path, cache_dir, demo_dir, evaluate=True),
        "eval.prompts=custom", PROMPTS, "eval.num_inference_steps=2", "eval.scheduler=ddim,dpm++",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = sorted((tmp_path / "outputs" / "evals" / "multirun").glob("*/[0-9]"))
    assert len(jobs) == 2
    for job, scheduler in zip(jobs, ["ddim", "dpm++"], strict=True):
        metrics = json.loads((job / "metrics.json").read_text())
        # the base model alone: its own baseline
        assert metrics["eval/score"] == pytest.approx(metrics["eval/dino"])
        grid = Image.open(job / "samples" / "base.png")
        assert grid.width == LABEL_W + 2 * 64 + TILE_GAP  # two seeds, one gap between them
        assert OmegaConf.load(job / ".hydra" / "config.yaml").eval.scheduler == scheduler
        assert f"{job / 'metrics.json'}" in proc.stdout
