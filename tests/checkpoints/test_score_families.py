"""score-checkpoints on other families than SD-1.x/2.x: our trainer's tiny SDXL (and FLUX, slow) LoRA
checkpoints, scored through the family's pipeline, against eval-only evaluation of the same file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import dreambooth_sweep.evaluate  # noqa: F401  (registers evaluate_schema for compose)
from dreambooth_sweep.errors import ConfigError

PROMPTS = [
    "eval.prompts=custom",
    "eval.custom_prompts=['a {V} {C}']",
    "eval.num_prompts=null",
]
METRICS = ("eval/dino", "eval/clip_i", "eval/clip_t", "eval/pres", "eval/score")


def _common(model: str, tmp_path: Path, cache_dir: Path, demo_dir: Path) -> list[str]:
    return [
        f"model={model}",
        "eval=tiny",
        *PROMPTS,
        "tracking=none",
        f"paths.root_dir={tmp_path}",
        f"paths.cache_dir={cache_dir}",
        f"data.instance_dir={demo_dir}",
        "data.generate_demo=false",
        "data.class_noun=toy",
        "train.num_threads=1",
    ]


def _history(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _score_matches_direct(common: list[str], run: Path, weights: str, tmp_path: Path) -> None:
    """score-checkpoints over the run's steps 0, 2, 4; the last step's metrics equal an eval-only run of
    the saved weights (``weights``: the override naming them)."""
    from conftest import compose_config

    from dreambooth_sweep.evaluate import evaluate

    out = tmp_path / "scored"
    scoring = [*common, f"checkpoints.dir={run}", f"checkpoints.out={out}", "checkpoints.settle_s=0"]
    evaluate(compose_config(scoring, config_name="evaluate"))
    rows = _history(out / "eval_history.jsonl")
    assert [r["step"] for r in rows] == [0, 2, 4]
    direct = evaluate(
        compose_config([*common, f"paths.output_dir={tmp_path / 'direct'}", weights], config_name="evaluate")
    )
    for key in METRICS:
        assert rows[-1][key] == pytest.approx(direct[key], abs=1e-5), key


def _train_and_score(model: str, family_cfg, tmp_path: Path, cache_dir: Path, demo_dir: Path) -> None:
    from conftest import compose_config

    from dreambooth_sweep.cli import main as cli
    from dreambooth_sweep.evaluate import evaluate
    from dreambooth_sweep.train import train

    train_cfg = family_cfg(
        model,
        "method=lora",
        "train.lr=1e-2",
        "train.max_steps=4",
        "train.checkpoint_every_n_steps=2",
        "train.checkpoints_total_limit=null",
        "train.num_threads=1",
    )
    train(train_cfg)
    run = Path(train_cfg.paths.output_dir)
    lora = run / "checkpoints" / "checkpoint-2" / "pytorch_lora_weights.safetensors"
    assert lora.is_file()

    out = tmp_path / "scored"
    common = _common(model, tmp_path, cache_dir, demo_dir)
    code = cli(["score-checkpoints", str(run), *common, f"checkpoints.out={out}", "checkpoints.settle_s=0"])
    assert code == 0
    rows = _history(out / "eval_history.jsonl")
    assert [r["step"] for r in rows] == [0, 2, 4]  # checkpoint-4 and model/ are one step
    assert rows[1]["checkpoint"] == str(lora.parent)
    assert rows[1]["eval/dino"] != rows[0]["eval/dino"]  # the LoRA is on while its step is scored

    # The same file through eval-only mode (its own loading, no unload in between): the same metrics.
    direct = evaluate(
        compose_config(
            [*common, f"paths.output_dir={tmp_path / 'direct'}", f"weights.lora={lora}"],
            config_name="evaluate",
        )
    )
    for key in METRICS:
        assert rows[1][key] == pytest.approx(direct[key], abs=1e-5), key

    # A file of this family on an SD base: one line naming the file, before anything is scored.
    sd = _common("tiny", tmp_path, cache_dir, demo_dir)
    with pytest.raises(ConfigError, match=r"checkpoint-2.* seems made for .*set model=") as err:
        evaluate(
            compose_config(
                [*sd, f"checkpoints.dir={run / 'checkpoints'}", f"checkpoints.out={tmp_path / 'sd'}",
                 "checkpoints.settle_s=0"],
                config_name="evaluate",
            )
        )  # fmt: skip
    assert "\n" not in str(err.value)


def test_score_tiny_sdxl_lora_checkpoints(family_cfg, tmp_path, cache_dir, demo_dir) -> None:
    _train_and_score("tiny_sdxl", family_cfg, tmp_path, cache_dir, demo_dir)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny_flux", "tiny_sd3"])
def test_score_tiny_transformer_lora_checkpoints(model, family_cfg, tmp_path, cache_dir, demo_dir) -> None:
    _train_and_score(model, family_cfg, tmp_path, cache_dir, demo_dir)


@pytest.mark.parametrize("model", ["tiny_sdxl", pytest.param("tiny_flux", marks=pytest.mark.slow)])
def test_score_full_checkpoints(model, family_cfg, tmp_path, cache_dir, demo_dir) -> None:
    """Full fine-tuning states (accelerate's model.safetensors per step, then model/): into a copy of the
    family's denoiser; the last equals eval-only ``weights.model_dir`` of the saved pipeline."""
    from dreambooth_sweep.train import train

    train_cfg = family_cfg(
        model,
        "method=dreambooth",
        "train.lr=1e-3",
        "train.max_steps=4",
        "train.checkpoint_every_n_steps=2",
        "train.checkpoints_total_limit=null",
        "train.num_threads=1",
    )
    train(train_cfg)
    run = Path(train_cfg.paths.output_dir)
    _score_matches_direct(
        _common(model, tmp_path, cache_dir, demo_dir), run, f"weights.model_dir={run / 'model'}", tmp_path
    )


def test_score_tiny_sdxl_embeddings(family_cfg, tmp_path, cache_dir, demo_dir) -> None:
    """SDXL textual inversion (clip_l/clip_g files per step): into copies of both tokenizers/encoders."""
    from dreambooth_sweep.methods import EMBEDDINGS_FILE
    from dreambooth_sweep.train import train

    ident = "data.identifier='<sks>'"
    train_cfg = family_cfg("tiny_sdxl", "method=textual_inversion", ident, "method.ti_lr=5e-2",
                           "train.max_steps=4", "train.checkpoint_every_n_steps=2",
                           "train.checkpoints_total_limit=null", "train.num_threads=1")  # fmt: skip
    train(train_cfg)
    run = Path(train_cfg.paths.output_dir)
    common = [*_common("tiny_sdxl", tmp_path, cache_dir, demo_dir), ident]
    _score_matches_direct(common, run, f"weights.embedding={run / 'model' / EMBEDDINGS_FILE}", tmp_path)


def test_embeddings_are_refused_on_flow_families(family_cfg, tmp_path, cache_dir, demo_dir) -> None:
    """A textual-inversion embedding on a FLUX base: one line saying scoring loads them on SD/SDXL only."""
    import torch
    from conftest import compose_config
    from safetensors.torch import save_file

    from dreambooth_sweep.evaluate import evaluate

    folder = tmp_path / "ti"
    folder.mkdir()
    save_file({"<sks>": torch.zeros(1, 32)}, str(folder / "learned_embeds-steps-2.safetensors"))
    common = _common("tiny_flux", tmp_path, cache_dir, demo_dir)
    cfg = compose_config(
        [*common, f"checkpoints.dir={folder}", f"checkpoints.out={tmp_path / 'o'}", "checkpoints.settle_s=0"],
        config_name="evaluate",
    )
    with pytest.raises(ConfigError, match="SD-1.x/2.x and SDXL models only") as err:
        evaluate(cfg)
    assert "\n" not in str(err.value)
