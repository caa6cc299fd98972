"""Bad input across families, each a one-line ConfigError naming the fix: an unknown pipeline class,
a method or sampler that does not fit the family, a LoRA saved for one family loaded for another;
and eval-only mode scoring a FLUX LoRA."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import compose_config

from dreambooth_sweep.config import ConfigError
from dreambooth_sweep.evaluate import evaluate
from dreambooth_sweep.families import detect_family
from dreambooth_sweep.methods import LORA_FILE
from dreambooth_sweep.train import train


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and ": " in text, text
    return text


def test_an_unknown_pipeline_class_is_one_line(tmp_path: Path, tiny_family) -> None:
    folder = tmp_path / "kandinsky"
    shutil.copytree(tiny_family("sdxl"), folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "KandinskyV22Pipeline"}))
    with pytest.raises(ConfigError) as info:
        detect_family(str(folder))
    text = _one_line(info.value)
    assert "KandinskyV22Pipeline" in text and "FluxPipeline" in text and "StableDiffusionXLPipeline" in text


@pytest.mark.parametrize(
    ("model", "overrides", "needle"),
    [
        (
            "tiny_sd3",
            ["method=textual_inversion", "data.identifier='<sks>'"],
            "choose one of lora, dreambooth",
        ),
        (
            "tiny_sd3",
            ["method=ti_dreambooth", "data.identifier='<sks>'", "method.ti_steps=1"],
            "does not apply",
        ),
        ("tiny_sdxl", ["eval.scheduler=flow_euler"], "choose one of ddim"),
        ("tiny_sdxl", ["method=lora", "method.export_kohya=true"], "method.export_kohya=false"),
        ("tiny_sd3", ["eval.scheduler=euler_a"], "flow-matching"),
    ],
)
def test_what_does_not_fit_the_family_fails_before_training(family_cfg, model, overrides, needle) -> None:
    with pytest.raises(ConfigError) as info:
        train(family_cfg(model, *overrides))
    assert needle in _one_line(info.value)


def _eval_cfg(tmp_path: Path, cache_dir: Path, demo_dir: Path, model: str, lora: Path):
    return compose_config(
        [
            f"model={model}", "eval=tiny", "tracking=none", f"paths.root_dir={tmp_path}",
            f"paths.cache_dir={cache_dir}", f"paths.output_dir={tmp_path / 'eval'}",
            f"data.instance_dir={demo_dir}", "data.generate_demo=false", "data.class_noun=toy",
            "eval.prompts=custom", "eval.custom_prompts=['a {V} {C} on the beach']", "eval.seeds=[0]",
            "eval.class_prompt_images=1", "eval.num_inference_steps=2", f"weights.lora={lora}",
        ],
        config_name="evaluate",
    )  # fmt: skip


def test_a_lora_for_another_family_is_one_line_and_its_own_family_scores_it(
    family_cfg, tmp_path: Path, cache_dir: Path, demo_dir: Path, tiny_family
) -> None:
    tiny_family("flux")
    cfg = family_cfg("tiny_flux", "method=lora", "train.max_steps=1", run="flux-lora")
    train(cfg)
    lora = Path(cfg.paths.output_dir) / "model" / LORA_FILE
    for other in ("tiny", "tiny_sdxl"):  # SD and SDXL base models refuse it before sampling anything
        with pytest.raises(ConfigError) as info:
            evaluate(_eval_cfg(tmp_path, cache_dir, demo_dir, other, lora))
        assert "LoRA for the flux family" in _one_line(info.value)
        assert not (tmp_path / "eval" / "samples").exists()
    metrics = evaluate(_eval_cfg(tmp_path, cache_dir, demo_dir, "tiny_flux", lora))  # eval-only on FLUX
    assert "eval/score" in metrics and (tmp_path / "eval" / "samples" / "final.png").exists()
