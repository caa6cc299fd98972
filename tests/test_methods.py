"""Training methods on the tiny model: what trains and what stays bit-identical, the saved files
loading into a fresh pipeline, the TI → DreamBooth phase switch and resume across it, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import tiny_overrides
from safetensors.torch import load_file

from dreambooth_sweep.config import ConfigError, validate
from dreambooth_sweep.methods import EMBEDDINGS_FILE, KOHYA_LORA_FILE, LORA_FILE, Method, Part, Phase
from dreambooth_sweep.models import build_pipeline
from dreambooth_sweep.train import train

NEW_TOKEN = "data.identifier='<sks>'"  # textual inversion needs a token the tokenizer does not know
EVAL_AT_END = ("eval.enabled=true", "eval.every_n_steps=1000")  # the hook runs at step 0 and the last step


def _copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in a if not torch.equal(a[k], b[k])}


def _sample(pipe, prompt: str) -> np.ndarray:
    out = pipe(
        prompt,
        num_inference_steps=2,
        height=64,
        width=64,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    return out.images[0]


def _fresh(base_dir: Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(base_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Capture:
    """Eval hook keeping copies of the live modules' weights at every evaluation, and a sample of
    ``prompt`` from the live modules at the last one (what the saved files must reproduce)."""

    def __init__(self, prompt: str | None = None) -> None:
        self.prompt = prompt
        self.unet: dict[int, dict[str, torch.Tensor]] = {}
        self.text_encoder: dict[int, dict[str, torch.Tensor]] = {}
        self.image: np.ndarray | None = None

    def __call__(self, ctx):
        self.unet[ctx.step] = _copy(ctx.unet)
        self.text_encoder[ctx.step] = _copy(ctx.text_encoder)
        if ctx.final and self.prompt:
            pipe = build_pipeline(ctx.components, unet=ctx.unet, text_encoder=ctx.text_encoder)
            self.image = _sample(pipe, self.prompt)
        return SimpleNamespace(metrics={"eval/score": 0.0}, grid=None)


@pytest.fixture(scope="module")
def base_dir(cache_dir: Path) -> Path:
    from dreambooth_sweep.tiny import ensure_tiny

    return ensure_tiny("sd", cache_dir)


def _embedding_key(state: dict[str, torch.Tensor]) -> str:
    return next(k for k in state if k.endswith("token_embedding.weight"))


def _token_id(base_dir: Path, word: str) -> int:
    from transformers import CLIPTokenizer

    (token_id,) = CLIPTokenizer.from_pretrained(base_dir, subfolder="tokenizer")(
        word, add_special_tokens=False
    ).input_ids
    return token_id


# ----------------------------------------------------------------------------- LoRA


def test_lora_trains_only_adapters_and_loads_with_load_lora_weights(make_cfg, base_dir: Path) -> None:
    prompt = "a photo of sks toy"
    hook = Capture(prompt)
    cfg = make_cfg(
        "method=lora",
        "method.alpha=8",  # ≠ rank: the saved file must carry the scale
        "method.export_kohya=true",
        "train.train_text_encoder=true",
        "train.max_steps=3",
        "train.lr=1e-3",
        *EVAL_AT_END,
    )
    train(cfg, eval_hook=hook)
    for states in (hook.unet, hook.text_encoder):
        changed = _changed(states[0], states[3])
        assert changed, "nothing trained"
        assert all(".lora_" in k for k in changed), sorted(changed - {k for k in changed if ".lora_" in k})[
            :3
        ]

    model = Path(cfg.paths.output_dir) / "model"
    assert sorted(p.name for p in model.iterdir()) == [LORA_FILE, KOHYA_LORA_FILE]
    keys = list(load_file(model / LORA_FILE))
    assert {k.split(".")[0] for k in keys} == {"unet", "text_encoder"}
    assert all("lora" in k and k.endswith(("down.weight", "up.weight")) for k in keys)

    pipe = _fresh(base_dir)
    base_image = _sample(pipe, prompt)
    pipe.load_lora_weights(model, weight_name=LORA_FILE)
    lora_image = _sample(pipe, prompt)
    assert not np.allclose(base_image, lora_image)
    np.testing.assert_allclose(lora_image, hook.image, atol=1e-5)  # alpha=8 came back too

    kohya = load_file(model / KOHYA_LORA_FILE)
    assert {k.split("_")[1] for k in kohya} == {"unet", "te"}
    assert all(k.startswith(("lora_unet_", "lora_te_text_model_encoder_layers_")) for k in kohya)
    assert all(float(v) == 8.0 for k, v in kohya.items() if k.endswith(".alpha"))
    pipe = _fresh(base_dir)
    pipe.load_lora_weights(model, weight_name=KOHYA_LORA_FILE)
    np.testing.assert_allclose(_sample(pipe, prompt), lora_image, atol=1e-5)


def test_lora_with_prior_preservation_runs(make_cfg) -> None:
    cfg = make_cfg(
        "method=lora",
        "prior=on",
        "prior.num_class_images=2",
        "prior.gen_num_inference_steps=2",
        "train.batch_size=2",
        "train.max_steps=2",
    )
    result = train(cfg)
    assert result["final_step"] == 2 and np.isfinite(result["train/loss"])
    assert (Path(cfg.paths.output_dir) / "model" / LORA_FILE).exists()


# ----------------------------------------------------------------------------- textual inversion


def test_textual_inversion_trains_only_the_new_rows(make_cfg, base_dir: Path) -> None:
    prompt = "a photo of <sks> toy"
    hook = Capture(prompt)
    # Weight decay is on (train/default: 1e-2), so every other row would move if it were not put back.
    cfg = make_cfg(
        "method=textual_inversion", NEW_TOKEN, "method.num_vectors=2", "train.max_steps=3", *EVAL_AT_END
    )
    train(cfg, eval_hook=hook)

    assert not _changed(hook.unet[0], hook.unet[3])
    te0, te3 = hook.text_encoder[0], hook.text_encoder[3]
    key = _embedding_key(te3)
    assert _changed(te0, te3) == {key}
    base_rows = load_file(next((base_dir / "text_encoder").glob("*.safetensors")))[key].shape[0]
    new = [base_rows, base_rows + 1]  # <sks>, <sks>_1
    assert te3[key].shape[0] == base_rows + 2
    assert torch.equal(te0[key][:base_rows], te3[key][:base_rows])  # bit-identical
    assert not torch.equal(te0[key][new[0]], te3[key][new[0]]) and not torch.equal(
        te0[key][new[1]], te3[key][new[1]]
    )
    toy = te0[key][:base_rows][_token_id(base_dir, "toy")]
    assert torch.equal(te0[key][new[0]], toy) and torch.equal(
        te0[key][new[1]], toy
    )  # initializer: the class noun

    model = Path(cfg.paths.output_dir) / "model"
    saved = load_file(model / EMBEDDINGS_FILE)
    assert list(saved) == ["<sks>"] and saved["<sks>"].shape == (2, te3[key].shape[1])
    assert torch.equal(saved["<sks>"], te3[key][new])

    pipe = _fresh(base_dir)
    base_image = _sample(pipe, prompt)
    pipe.load_textual_inversion(str(model / EMBEDDINGS_FILE))
    assert {"<sks>", "<sks>_1"} <= set(pipe.tokenizer.added_tokens_encoder)
    ti_image = _sample(pipe, prompt)  # the pipeline spells <sks> out as "<sks> <sks>_1" itself
    assert not np.allclose(base_image, ti_image)
    np.testing.assert_allclose(ti_image, hook.image, atol=1e-5)


# ----------------------------------------------------------------------------- TI → DreamBooth


def _final_weights(cfg) -> dict[str, torch.Tensor]:
    model = Path(cfg.paths.output_dir) / "model"
    (unet_file,) = (model / "unet").glob("*.safetensors")
    return {**load_file(unet_file), "<sks>": load_file(model / EMBEDDINGS_FILE)["<sks>"]}


def test_ti_dreambooth_switches_phase_and_resumes_across_it(make_cfg) -> None:
    common = (
        "method=ti_dreambooth",
        NEW_TOKEN,
        "method.ti_steps=2",
        "train.max_steps=4",
        "train.lr_scheduler=linear",  # one schedule per phase, restored on resume
        "train.checkpoint_every_n_steps=1",
        "train.checkpoints_total_limit=null",
    )
    hook = Capture()
    straight = make_cfg(*common, "eval.enabled=true", "eval.every_n_steps=1", run="straight")
    train(straight, eval_hook=hook)

    # Steps 1-2 learn the embedding with the UNet frozen; steps 3-4 train the UNet with the embedding fixed.
    unet, te = hook.unet, hook.text_encoder
    key = _embedding_key(te[0])
    assert not _changed(unet[0], unet[1]) and not _changed(unet[0], unet[2])
    assert _changed(unet[2], unet[3]) and _changed(unet[3], unet[4])
    assert _changed(te[0], te[1]) == {key} and _changed(te[1], te[2]) == {key}
    assert not _changed(te[2], te[3]) and not _changed(te[3], te[4])
    model = Path(straight.paths.output_dir) / "model"
    assert {"learned_embeds.safetensors", "model_index.json", "tokenizer", "unet"} <= {
        p.name for p in model.iterdir()
    }

    # Resuming before, at and after the switch gives the uninterrupted run's weights.
    expected = _final_weights(straight)
    for step in (1, 2, 3):
        ckpt = Path(straight.paths.output_dir) / "checkpoints" / f"checkpoint-{step}"
        resumed = make_cfg(*common, f"train.resume_from={ckpt}", run=f"resumed-{step}")
        assert train(resumed)["final_step"] == 4
        got = _final_weights(resumed)
        assert all(torch.allclose(expected[k], got[k], atol=1e-6) for k in expected), (
            f"resumed at step {step}"
        )


def test_each_phase_runs_its_own_lr_schedule(make_cfg) -> None:
    class Stub(Part):
        def __init__(self, cfg, lr: float) -> None:
            super().__init__(cfg)
            self.lr, self.param = lr, torch.nn.Parameter(torch.zeros(1))

        def param_groups(self, lr_scale: float):
            return [{"params": [self.param], "lr": self.lr * lr_scale}]

    cfg = make_cfg("train.lr_scheduler=linear", "train.lr_warmup_steps=1", "train.max_steps=6")
    method = Method(cfg, [Phase(Stub(cfg, 1e-3), 0, 2), Phase(Stub(cfg, 3e-5), 2, 6)])
    optimizer = torch.optim.AdamW(method.param_groups())
    scheduler = method.lr_scheduler(optimizer)
    seen = []
    for _ in range(6):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    # Phase 1 (steps 0-1): warm up, then decay over its 2 steps; phase 2 (steps 2-5) starts over.
    np.testing.assert_allclose([lr for lr, _ in seen[:2]], [0.0, 1e-3])
    np.testing.assert_allclose([lr for _, lr in seen[2:]], [0.0, 3e-5, 2e-5, 1e-5])


def test_ti_dreambooth_with_lora_phase_saves_both_files(make_cfg, base_dir: Path) -> None:
    prompt = "a photo of <sks> toy"
    hook = Capture(prompt)
    cfg = make_cfg(
        "method=ti_dreambooth",
        "method.phase2=lora",
        NEW_TOKEN,
        "method.ti_steps=1",
        "train.max_steps=2",
        "train.lr=1e-3",
        *EVAL_AT_END,
    )
    train(cfg, eval_hook=hook)
    model = Path(cfg.paths.output_dir) / "model"
    assert sorted(p.name for p in model.iterdir()) == [EMBEDDINGS_FILE, LORA_FILE]
    pipe = _fresh(base_dir)
    pipe.load_textual_inversion(str(model / EMBEDDINGS_FILE))
    pipe.load_lora_weights(model, weight_name=LORA_FILE)
    np.testing.assert_allclose(_sample(pipe, prompt), hook.image, atol=1e-5)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["method=textual_inversion"], "already in the tokenizer's vocabulary"),  # data.identifier=sks
        (
            ["method=textual_inversion", NEW_TOKEN, "method.initializer_token=xyzzy"],
            "method.initializer_token",
        ),
        (["method=textual_inversion", NEW_TOKEN, "data.class_noun=xyzzy"], "data.class_noun"),
        (["method=textual_inversion", "data.identifier='<SKS>'"], "lower-case"),
        (["method=lora", "method.unet_target_modules=[nope]"], "unet_target_modules"),
    ],
)
def test_bad_tokens_and_targets_are_one_line_config_errors(make_cfg, overrides, needle) -> None:
    with pytest.raises(ConfigError) as info:
        train(make_cfg(*overrides, "train.max_steps=1", "train.save_final=false"))
    message = str(info.value)
    assert needle in message and "\n" not in message
    if "vocabulary" in needle:
        assert "data.identifier='<sks>'" in message


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["method=ti_dreambooth", "method.ti_steps=4", "train.max_steps=4"], "method.ti_steps"),
        (["method=ti_dreambooth", "method.ti_steps=0"], "method.ti_steps"),
        (["method=ti_dreambooth", "method.phase2=half"], "method.phase2"),
        (
            [
                "method=ti_dreambooth",
                "method.ti_steps=2",
                "train.train_text_encoder=true",
                "train.text_encoder_steps=2",
            ],
            "text_encoder_steps",
        ),
        (["method=lora", "method.rank=0"], "method.rank"),
        (["method=lora", "method.alpha=-1"], "method.alpha"),
        (["method=lora", "method.dropout=1.0"], "method.dropout"),
        (["method=textual_inversion", "train.train_text_encoder=true"], "train.train_text_encoder"),
        (["method=textual_inversion", "train.use_ema=true"], "train.use_ema"),
        (["method=textual_inversion", "method.num_vectors=0"], "method.num_vectors"),
        (["method=dreambooth", "method.export_kohya=true"], "export_kohya"),
    ],
)
def test_bad_method_settings_fail_validation(make_cfg, overrides, needle) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")) as info:
        validate(make_cfg(*overrides))
    assert "\n" not in str(info.value)


def _cli(tmp_path: Path, cache_dir: Path, demo_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    base = tiny_overrides(tmp_path, cache_dir, demo_dir, evaluate=True, output_dir=tmp_path / "run")
    cmd = [sys.executable, "-m", "dreambooth_sweep.train", *base, *overrides]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)


def test_cli_identifier_in_vocab_exits_with_one_line(tmp_path: Path, cache_dir: Path, demo_dir: Path) -> None:
    proc = _cli(tmp_path, cache_dir, demo_dir, "method=textual_inversion", "train.max_steps=1")
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "data.identifier" in errors[0]


def test_cli_ti_dreambooth_smoke(tmp_path: Path, cache_dir: Path, demo_dir: Path) -> None:
    proc = _cli(
        tmp_path,
        cache_dir,
        demo_dir,
        "method=ti_dreambooth",
        NEW_TOKEN,
        "method.ti_steps=1",
        "train.max_steps=2",
        "eval.enabled=false",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "model" / EMBEDDINGS_FILE).exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ["method=dreambooth"],
        ["method=lora"],
        ["method=textual_inversion", NEW_TOKEN],
        ["method=ti_dreambooth", NEW_TOKEN, "method.ti_steps=1"],
        ["method=ti_dreambooth", NEW_TOKEN, "method.ti_steps=2", "method.phase2=lora"],
    ],
)
def test_cli_every_method_with_tiny_eval(tmp_path: Path, cache_dir: Path, demo_dir: Path, overrides) -> None:
    proc = _cli(tmp_path, cache_dir, demo_dir, *overrides, "train.max_steps=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "metrics.json").exists() and any((tmp_path / "run" / "model").iterdir())
