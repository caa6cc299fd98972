"""``dreambooth-sweep score`` / ``python -m dreambooth_sweep.metrics``: folders in, JSON out; the
scoring record makes a rescored step folder give the logged numbers; one image loader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_config
from metric_images import ATOL, noise, pattern, tiny_folder, write_images
from PIL import Image

from dreambooth_sweep import metrics as M
from dreambooth_sweep.cli import main as dreambooth_sweep_main
from dreambooth_sweep.data import load_instance_images

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_module_entry_prints_json_metrics_and_one_line_errors(tmp_path: Path, cache_dir: Path) -> None:
    generated = write_images(
        tmp_path / "gen", {"0.png": noise(1), "1.png": noise(2), "2.png": pattern(3), "3.jpg": pattern(4)}
    )
    prompts = {"0.png": "a sks dog", "1.png": "a sks dog", "2.png": "a sks dog in the snow"}
    (generated / "prompts.json").write_text(json.dumps({**prompts, "3.jpg": "a sks dog in the snow"}))
    real = write_images(tmp_path / "real", {"a.png": pattern(3), "b.png": pattern(5)})
    klass = write_images(tmp_path / "class", {"c.png": noise(9)})
    command = [sys.executable, "-m", "dreambooth_sweep.metrics", "--generated", str(generated)]
    command += ["--real", str(real), "--class-images", str(klass), "--clip-model", "tiny"]
    command += ["--dino-model", "tiny", "--cache-dir", str(cache_dir)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    expected = {"dino", "clip_i", "clip_t", "pres", "div_dino", "mem_mean", "mem_max", "mem_ceiling"}
    assert set(out) == {f"eval/{k}" for k in expected}
    assert out["eval/mem_max"] == pytest.approx(1.0, abs=ATOL)

    # Bad folder: one line on stderr, non-zero exit, before any model is loaded.
    bad = [sys.executable, "-m", "dreambooth_sweep.metrics", "--generated", str(tmp_path / "nope")]
    bad = subprocess.run(bad + ["--real", str(real)], capture_output=True, text=True, cwd=REPO_ROOT, env=env)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: image folder")


def test_score_subcommand_single_prompt_and_errors(tmp_path: Path, cache_dir: Path, capsys) -> None:
    generated = write_images(tmp_path / "gen", {"0.png": noise(1), "1.png": noise(2)})
    real = write_images(tmp_path / "real", {"a.png": pattern(3)})
    base = ["score", "--generated", str(generated), "--real", str(real), "--clip-model", "tiny"]
    base += ["--dino-model", "tiny", "--cache-dir", str(cache_dir)]

    assert dreambooth_sweep_main([*base, "--prompt", "a sks dog"]) == 0
    out = json.loads(capsys.readouterr().out)
    # No class images: no PRES; one real photo: no memorisation ceiling.
    assert set(out) == {
        "eval/dino",
        "eval/clip_i",
        "eval/clip_t",
        "eval/div_dino",
        "eval/mem_mean",
        "eval/mem_max",
    }
    assert dreambooth_sweep_main(base) == 0  # no prompt at all: the prompt-free metrics only
    assert set(json.loads(capsys.readouterr().out)) == {
        "eval/dino",
        "eval/clip_i",
        "eval/mem_mean",
        "eval/mem_max",
    }
    assert dreambooth_sweep_main([*base, "--metrics", "clip_t"]) == 2
    assert "cannot compute clip_t" in capsys.readouterr().err
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"0.png": "a sks dog"}))
    assert dreambooth_sweep_main([*base, "--prompts-file", str(prompts)]) == 2
    assert "no prompt for '1.png'" in capsys.readouterr().err
    argv = [*base, "--prompts-file", str(prompts), "--prompt", "a sks toy", "--metrics", "clip_t,dino"]
    assert dreambooth_sweep_main(argv) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"eval/dino", "eval/clip_t"}
    # Without --real and without a scoring record there are no subject photos to compare with.
    assert M.main(["--generated", str(generated), "--cache-dir", str(cache_dir)]) == 2
    assert "pass --real DIR" in capsys.readouterr().err


def test_a_16_bit_png_scores_as_the_training_loader_reads_it(tmp_path: Path, cache_dir: Path, capsys) -> None:
    """The CLI and training read photos through one loader: a 16-bit PNG is scaled, never clipped."""
    ramp = (np.linspace(0, 65535, 96 * 128).reshape(96, 128)).astype(np.uint16)
    real = tmp_path / "real"
    real.mkdir()
    Image.fromarray(ramp).save(real / "deep.png")  # uint16 → mode I;16
    assert Image.open(real / "deep.png").mode.startswith("I")
    pattern(7, size=80).save(real / "flat.png")
    generated = write_images(tmp_path / "gen", {"0.png": noise(1), "1.png": pattern(2)})
    config = compose_config(
        ["model=tiny", "eval=tiny", f"data.instance_dir={real}", "data.generate_demo=false"]
    )
    photos = load_instance_images(config.data)  # what training and the evaluator get
    assert np.asarray(photos[0]).max() > 200  # scaled to 8 bits, not clipped to white or black
    suite = M.MetricSuite(config.eval, photos, cache_dir=cache_dir)
    expected = suite.compute({"": [Image.open(generated / n).convert("RGB") for n in ("0.png", "1.png")]})
    argv = ["--generated", str(generated), "--real", str(real), "--cache-dir", str(cache_dir)]
    argv += ["--dino-model", "tiny", "--clip-model", "tiny"]
    assert M.main(argv) == 0
    rescored = json.loads(capsys.readouterr().out)
    assert rescored == pytest.approx({k: expected[k] for k in rescored}, abs=ATOL)
    assert {"eval/dino", "eval/clip_i", "eval/mem_mean", "eval/mem_ceiling"} <= set(rescored)


def test_a_step_folder_rescores_to_the_logged_metrics_with_no_flags(
    tmp_path: Path, cache_dir: Path, demo_dir: Path, capsys
) -> None:
    """Non-default backbones and protocol on purpose: only the record can make the numbers agree."""
    from dreambooth_sweep.evaluate import EvalContext, Evaluator
    from dreambooth_sweep.models import load_components

    dinov2, siglip = tiny_folder("dinov2", cache_dir), tiny_folder("siglip", cache_dir)
    cfg = compose_config(
        [
            "model=tiny",
            "eval=tiny",
            f"paths.cache_dir={cache_dir}",
            f"data.instance_dir={demo_dir}",
            "data.generate_demo=false",
            "data.identifier=aawxbc",
            "data.max_images=4",
            f"eval.dino_model={dinov2}",
            f"eval.clip_model={siglip}",
            "eval.dino_preprocess=model_config",
            "eval.num_inference_steps=2",
            "eval.prompts=custom",
            "eval.custom_prompts=['a {V} {C} on the moon','a red {V} {C}','a {V} {C} in the snow']",
        ],
        config_name="evaluate",
    )
    components = load_components(cfg.model, cache_dir)
    evaluator = Evaluator(cfg, load_instance_images(cfg.data), tmp_path / "run", cache_dir, "cpu")
    assert evaluator.objective.metric == "eval/dinov2_w32p8"  # eval.objective.metric=eval/dino follows
    ctx = EvalContext(1, False, components, components.unet, components.text_encoder, "cpu")
    with pytest.warns(UserWarning, match="no step-0 samples"):
        result = evaluator(ctx)
    record = json.loads((result.sample_dir / M.SCORING_FILE).read_text())
    assert record["identifier"] == "aawxbc" and record["class_dir"] == "class"
    assert record["settings"]["dino_preprocess"] == "model_config"
    assert record["protocol"]["clip"]["family"] == "siglip"

    assert M.main(["--generated", str(result.sample_dir), "--cache-dir", str(cache_dir)]) == 0
    rescored = json.loads(capsys.readouterr().out)
    logged = {k: v for k, v in result.metrics.items() if k not in ("eval/score", "eval/seconds")}
    assert set(rescored) == set(logged)
    assert rescored == pytest.approx(logged, abs=ATOL)
    # An explicit flag wins over the record (and renames the metrics it changes).
    argv = ["--generated", str(result.sample_dir), "--cache-dir", str(cache_dir), "--dino-model", "tiny"]
    assert M.main([*argv, "--metrics", "dino"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"eval/dino"}


@pytest.mark.parametrize("kind, family", [("dinov2", "dinov2"), ("siglip", "siglip")])
def test_make_tiny_model_writes_every_backbone_kind(kind: str, family: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / kind
    assert dreambooth_sweep_main(["make-tiny-model", str(out), "--kind", kind]) == 0
    assert "score with it" in capsys.readouterr().out
    slot = "dino" if kind == "dinov2" else "clip"
    encoder = M.load_encoder(slot, str(out), preprocess="model_config", cache_dir=tmp_path)
    assert encoder.family.name == family
    assert encoder.embed_images([noise(0)]).shape == (1, 32)
