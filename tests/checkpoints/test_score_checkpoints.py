"""score-checkpoints end to end on the tiny model: real checkpoints of this project's trainer and
hand-made kohya / ai-toolkit files, scored with the training evaluator, against direct evaluation."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from handmade_checkpoints import ai_toolkit_metadata, fake_kohya, kohya_lora, kohya_metadata
from PIL import Image

import dreambooth_sweep.evaluate  # noqa: F401  (registers evaluate_schema for compose)
from dreambooth_sweep.errors import ConfigError

PROMPTS = [
    "eval.prompts=custom",
    "eval.custom_prompts=['a {V} {C}','a {V} {C} on a beach']",
    "eval.num_prompts=null",
]
METRICS = ("eval/dino", "eval/clip_i", "eval/clip_t", "eval/pres", "eval/score")


def _score_cfg(
    tmp_path: Path, cache_dir: Path, demo_dir: Path, ckpt_dir: Path, *extra: str, out: str = "scored"
):
    from conftest import compose_config

    return compose_config(
        [
            "model=tiny",
            "eval=tiny",
            *PROMPTS,
            "tracking=none",
            f"paths.root_dir={tmp_path}",
            f"paths.cache_dir={cache_dir}",
            f"data.instance_dir={demo_dir}",
            "data.generate_demo=false",
            "data.class_noun=toy",
            "train.num_threads=1",
            f"checkpoints.dir={ckpt_dir}",
            f"checkpoints.out={tmp_path / out}",
            "checkpoints.settle_s=0",
            *extra,
        ],
        config_name="evaluate",
    )


def _direct(
    tmp_path: Path, cache_dir: Path, demo_dir: Path, *weights: str, out: str = "direct"
) -> dict[str, float]:
    """The same weights through the eval-only mode (``weights.*``), which loads them its own way."""
    from conftest import compose_config

    from dreambooth_sweep.evaluate import evaluate

    cfg = compose_config(
        [
            "model=tiny",
            "eval=tiny",
            *PROMPTS,
            "tracking=none",
            f"paths.root_dir={tmp_path}",
            f"paths.cache_dir={cache_dir}",
            f"paths.output_dir={tmp_path / out}",
            f"data.instance_dir={demo_dir}",
            "data.generate_demo=false",
            "data.class_noun=toy",
            *weights,
        ],
        config_name="evaluate",
    )
    return evaluate(cfg)


def _history(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _unet_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from diffusers import UNet2DConditionModel

    calls: list[str] = []
    original = UNet2DConditionModel.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        calls.append(str(args[0]) if args else "")
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "from_pretrained", classmethod(counting))
    return calls


def test_score_our_lora_checkpoints_with_strengths(
    make_cfg, tmp_path, cache_dir, demo_dir, monkeypatch, capsys
):
    """The CI command: our trainer's LoRA checkpoints (diffusers files per step), two strengths, MLflow."""
    from mlflow.tracking import MlflowClient

    from dreambooth_sweep.cli import main as cli
    from dreambooth_sweep.train import train

    train_cfg = make_cfg(
        "method=lora",
        "method.export_kohya=true",
        "train.max_steps=4",
        "train.lr=1e-2",
        "train.checkpoint_every_n_steps=2",
        "train.checkpoints_total_limit=null",
        "train.num_threads=1",
    )
    train(train_cfg)
    run = Path(train_cfg.paths.output_dir)
    assert (run / "checkpoints" / "checkpoint-2" / "pytorch_lora_weights.safetensors").is_file()

    loads = _unet_loads(monkeypatch)
    out = tmp_path / "scored"
    code = cli(
        [
            "score-checkpoints",
            str(run),
            "model=tiny",
            "eval=tiny",
            *PROMPTS,
            "tracking=mlflow",
            f"paths.root_dir={tmp_path}",
            f"paths.cache_dir={cache_dir}",
            f"data.instance_dir={demo_dir}",
            "data.generate_demo=false",
            "data.class_noun=toy",
            "train.num_threads=1",
            "eval.lora_scales=[0.5,1.0]",
            f"checkpoints.out={out}",
            "checkpoints.settle_s=0",
        ]
    )
    assert code == 0
    assert len(loads) == 1, loads  # the base model once, whatever the number of checkpoints and strengths
    printed = capsys.readouterr().out
    assert "sweet spot:" in printed and "report:" in printed and "make ui" in printed

    # One job folder per strength, each a training run's files; checkpoint-4 and model/ are one step.
    rows = _history(out / "eval_history.jsonl")
    assert [(r["step"], r["lora_scale"]) for r in rows if r["step"]] == [
        (2, 0.5),
        (2, 1.0),
        (4, 0.5),
        (4, 1.0),
    ]
    for n, scale in enumerate((0.5, 1.0)):
        job = out / str(n)
        assert [r["step"] for r in _history(job / "eval_history.jsonl")] == [0, 2, 4]
        assert {r["lora_scale"] for r in _history(job / "eval_history.jsonl")} == {scale}
        assert sorted(p.name for p in (job / "samples").glob("*.png")) == [
            "step_000000.png",
            "step_000002.png",
            "step_000004.png",
        ]
        assert json.loads((job / "metrics.json").read_text())["lora_scale"] == scale
    a = np.asarray(Image.open(out / "0" / "samples" / "step_000004" / "00_0.png"), dtype=float)
    b = np.asarray(Image.open(out / "1" / "samples" / "step_000004" / "00_0.png"), dtype=float)
    assert np.abs(a - b).mean() > 0.5  # the strength changes the samples
    summary = json.loads((out / "metrics.json").read_text())
    best = next(
        r for r in rows if r["step"] == summary["best_step"] and r["lora_scale"] == summary["best_scale"]
    )
    assert summary["objective"] == pytest.approx(best["eval/score"])
    assert summary["best_checkpoint"].endswith("pytorch_lora_weights.safetensors")
    assert (out / "report" / "index.html").is_file()

    # The same weights evaluated directly (eval-only mode, its own loading): the same metrics.
    direct = _direct(tmp_path, cache_dir, demo_dir, f"weights.lora={run / 'checkpoints' / 'checkpoint-4'}")
    scored = next(r for r in rows if r["step"] == 4 and r["lora_scale"] == 1.0)
    for key in METRICS:
        assert scored[key] == pytest.approx(direct[key], abs=1e-5), key
    kohya = _direct(
        tmp_path,
        cache_dir,
        demo_dir,
        f"weights.lora={run / 'model' / 'pytorch_lora_weights_kohya.safetensors'}",
        out="k",
    )
    assert kohya["eval/dino"] == pytest.approx(scored["eval/dino"], abs=1e-5)

    # MLflow: a parent for the folder, a child per strength whose step axis is the checkpoints' steps.
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("dbs.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 2
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "eval/score")]
        assert sorted(steps) == [0, 2, 4]
        assert child.info.status == "FINISHED"


@pytest.mark.slow
def test_handmade_kohya_and_ai_toolkit_files(tmp_path, cache_dir, demo_dir, caplog) -> None:
    from diffusers import UNet2DConditionModel

    from dreambooth_sweep.checkpoints.score import run_scoring
    from dreambooth_sweep.tiny import ensure_tiny

    unet = UNet2DConditionModel.from_pretrained(ensure_tiny("sd", cache_dir), subfolder="unet")
    kohya = tmp_path / "kohya"
    kohya_lora(unet, kohya / "subject.safetensors", seed=3, metadata=kohya_metadata(30, 3, 4, 2))
    kohya_lora(unet, kohya / "subject-000001.safetensors", seed=1, metadata=kohya_metadata(10, 1, 4, 2))
    kohya_lora(unet, kohya / "subject-000002.safetensors", seed=2, metadata=kohya_metadata(20, 2, 4, 2))
    (kohya / "subject-000004.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with caplog.at_level(logging.WARNING, logger="dreambooth_sweep.checkpoints"):
        run_scoring(_score_cfg(tmp_path, cache_dir, demo_dir, kohya))
    assert "subject-000004.safetensors" in caplog.text  # skipped, named; the rest scored
    rows = _history(tmp_path / "scored" / "eval_history.jsonl")
    assert [r["step"] for r in rows] == [0, 10, 20, 30]
    direct = _direct(tmp_path, cache_dir, demo_dir, f"weights.lora={kohya / 'subject-000002.safetensors'}")
    for key in METRICS:
        assert rows[2][key] == pytest.approx(direct[key], abs=1e-5), key

    toolkit = tmp_path / "toolkit"  # ai-toolkit names: name_000000500, final name.safetensors
    kohya_lora(unet, toolkit / "subject_000000500.safetensors", seed=5, metadata=ai_toolkit_metadata(500, 1))
    kohya_lora(unet, toolkit / "subject.safetensors", seed=6, metadata=ai_toolkit_metadata(750, 2))
    summary = run_scoring(_score_cfg(tmp_path, cache_dir, demo_dir, toolkit, out="scored_toolkit"))
    assert [r["step"] for r in _history(tmp_path / "scored_toolkit" / "eval_history.jsonl")] == [0, 500, 750]
    assert summary["best_step"] in (500.0, 750.0)


def test_files_for_another_base_and_an_empty_folder_fail_in_one_line(tmp_path, cache_dir, demo_dir) -> None:
    from dreambooth_sweep.checkpoints.score import run_scoring

    other = tmp_path / "sd15"  # files for another base: one line naming the file and the base it fits
    fake_kohya(other / "subject-000001.safetensors", context=768)
    with pytest.raises(
        ConfigError, match=r"subject-000001.safetensors seems made for SD-1.x \(cross-attention width 768\)"
    ) as info:
        run_scoring(_score_cfg(tmp_path, cache_dir, demo_dir, other, out="scored_other"))
    assert "\n" not in str(info.value) and "model=" in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no checkpoints found"):
        run_scoring(_score_cfg(tmp_path, cache_dir, demo_dir, empty, out="scored_empty"))


@pytest.mark.slow
def test_full_and_embedding_checkpoints_and_several_runs(make_cfg, tmp_path, cache_dir, demo_dir) -> None:
    from dreambooth_sweep.checkpoints.score import run_scoring
    from dreambooth_sweep.train import train

    runs = tmp_path / "runs"
    common = ["train.max_steps=4", "train.checkpoint_every_n_steps=2", "train.checkpoints_total_limit=null"]
    full = make_cfg("method=dreambooth", "train.lr=1e-3", *common, f"paths.output_dir={runs / 'full'}")
    train(full)
    ti = make_cfg("method=textual_inversion", "data.identifier='<sks>'", "method.ti_lr=5e-2", *common,
                  f"paths.output_dir={runs / 'ti'}")  # fmt: skip
    train(ti)

    run_scoring(_score_cfg(tmp_path, cache_dir, demo_dir, runs / "full", out="scored_full"))
    rows = _history(tmp_path / "scored_full" / "eval_history.jsonl")
    assert [r["step"] for r in rows] == [0, 2, 4]
    direct = _direct(tmp_path, cache_dir, demo_dir, f"weights.model_dir={runs / 'full' / 'model'}")
    for key in METRICS:
        assert rows[-1][key] == pytest.approx(direct[key], abs=1e-5), key

    run_scoring(
        _score_cfg(tmp_path, cache_dir, demo_dir, runs / "ti", "data.identifier='<sks>'", out="scored_ti")
    )
    rows = _history(tmp_path / "scored_ti" / "eval_history.jsonl")
    assert [r["step"] for r in rows] == [0, 2, 4]
    direct = _direct(tmp_path, cache_dir, demo_dir, "data.identifier='<sks>'",
                     f"weights.embedding={runs / 'ti' / 'model' / 'learned_embeds.safetensors'}", out="d_ti")  # fmt: skip
    for key in METRICS:
        assert rows[-1][key] == pytest.approx(direct[key], abs=1e-5), key

    # A folder of runs: one job per run, one report; lora_scales with full weights is refused.
    summary = run_scoring(
        _score_cfg(tmp_path, cache_dir, demo_dir, runs, "data.identifier='<sks>'", out="scored_all")
    )
    jobs = sorted(p.parent.parent.name for p in (tmp_path / "scored_all").glob("*/.hydra/overrides.yaml"))
    assert jobs == ["0", "1"] and summary["best_step"] in (2.0, 4.0)
    assert "checkpoints.run=full" in (tmp_path / "scored_all" / "0" / ".hydra" / "overrides.yaml").read_text()
    assert (tmp_path / "scored_all" / "report" / "index.html").is_file()
    with pytest.raises(ConfigError, match="needs LoRA checkpoints"):
        run_scoring(
            _score_cfg(tmp_path, cache_dir, demo_dir, runs / "full", "eval.lora_scales=[0.5,1]", out="x")
        )


@pytest.mark.slow
def test_watch_scores_checkpoints_as_they_appear(tmp_path, cache_dir, demo_dir) -> None:
    from diffusers import UNet2DConditionModel

    from dreambooth_sweep.checkpoints.score import run_scoring
    from dreambooth_sweep.tiny import ensure_tiny

    unet = UNet2DConditionModel.from_pretrained(ensure_tiny("sd", cache_dir), subfolder="unet")
    folder = tmp_path / "live"
    kohya_lora(unet, folder / "subject-000001.safetensors", seed=1, metadata=kohya_metadata(10, 1, 4, 2))
    second = tmp_path / "staging.safetensors"
    kohya_lora(unet, second, seed=2, metadata=kohya_metadata(20, 2, 4, 2))
    data = second.read_bytes()

    def trainer() -> None:  # writes the next epoch in two halves, like a slow disk
        time.sleep(3)
        target = folder / "subject-000002.safetensors"
        target.write_bytes(data[: len(data) // 2])
        time.sleep(1.5)
        target.write_bytes(data)

    thread = threading.Thread(target=trainer)
    thread.start()
    cfg = _score_cfg(tmp_path, cache_dir, demo_dir, folder, "checkpoints.watch=true", "checkpoints.poll_s=0.5",
                     "checkpoints.watch_idle_s=6", "checkpoints.settle_s=0.5")  # fmt: skip
    run_scoring(cfg)
    thread.join()
    assert [r["step"] for r in _history(tmp_path / "scored" / "eval_history.jsonl")] == [0, 10, 20]
