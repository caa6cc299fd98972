"""Bad input catalogue: each case fails with one line naming the problem and the fix, before anything is
trained (or, for a full disk, without losing what was saved), and the CLI exits non-zero.

Most cases run in-process through ``train(cfg)`` (a ``ConfigError``); a few go through
``python -m dreambooth_sweep.train`` to pin the exit code and the single ``error:`` line. Cases tested
elsewhere are listed, not repeated:

| input                                              | behaviour                                   | test |
|----------------------------------------------------|---------------------------------------------|------|
| corrupt/truncated JPEG, empty file, non-image, PNG claiming 10^10 pixels | named with the reason and skipped; a folder with nothing readable is a ConfigError | here |
| good and bad files mixed                           | trains on the good ones, one warning names the bad | here |
| photo smaller than data.resolution                 | upscaled (as data.preprocess does), warning names it | here |
| RGBA / CMYK / greyscale / 16-bit / palette         | converted to RGB, never rejected            | test_data.py::test_modes_are_converted_not_rejected |
| missing / empty instance_dir                       | ConfigError                                 | test_data.py::test_bad_instance_dirs_fail_with_one_line |
| unknown key, wrong type                            | fails at compose time, names the key        | here (CLI), test_config.py::test_typos_and_wrong_types_fail_at_compose_time |
| out-of-range values, unknown scheduler/optimizer   | ConfigError before loading                  | here, test_config.py::test_bad_values_get_one_line_errors |
| empty search space, unknown sampler/pruner         | SweepError, one line                        | here (CLI), sweep/test_sweeper.py::test_bad_settings_exit_with_a_one_line_error |
| Optuna storage unreachable (bad URL, no server)    | SweepError, one line, password masked, exit 2 | sweep/test_sweep_storage.py::test_an_unreachable_storage_ends_the_sweep_with_one_line_and_exit_2 |
| unreachable model id / not a pipeline folder       | ConfigError                                 | here, test_train.py::test_unloadable_model_is_a_config_error |
| tracking server unreachable at start               | ConfigError before training, exit 2         | here (CLI), tracking/test_store.py::test_unreachable_server_fails_fast_with_one_line |
| disk full while saving a checkpoint / the model    | ConfigError, earlier checkpoints and model intact | here |
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image
from scaleout.services import PY, free_port, tiny_overrides, worker_env

from dreambooth_sweep import data as data_lib
from dreambooth_sweep import train as train_mod
from dreambooth_sweep.config import ConfigError
from dreambooth_sweep.train import train


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's calling card)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _truncated_jpeg() -> bytes:
    image = Image.effect_noise((64, 64), 60).convert("RGB")
    path = Path(__file__).parent / ".tmp-noise.jpg"  # never left behind: written and read here
    try:
        image.save(path, quality=95)
        whole = path.read_bytes()
    finally:
        path.unlink(missing_ok=True)
    return whole[: len(whole) // 2]  # cut in the middle of the scan


BAD_FILES = {
    "truncated.jpg": (_truncated_jpeg, "corrupt or truncated"),
    "empty.png": (lambda: b"", "empty file"),
    "notes.jpg": (lambda: b"shopping list: eggs, milk\n", "not an image"),
    "bomb.png": (lambda: _png_claiming(100_000, 100_000), "decompression-bomb"),
}


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    assert ": " in text, f"no fix in {text!r}"
    return text


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """These inputs must be rejected before any model is loaded."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was noticed")

    monkeypatch.setattr(train_mod, "load_components", refuse)


# --- photos -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_folder_of_only_bad_files_is_one_clear_error(
    name: str, tmp_path: Path, make_cfg, no_model_load
) -> None:
    make, reason = BAD_FILES[name]
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / name).write_bytes(make())
    with pytest.raises(ConfigError) as info:
        train(make_cfg(f"data.instance_dir={photos}"))
    text = _one_line(info.value)
    assert (
        "data.instance_dir" in text and name in text and reason in text and "add jpg/png/webp photos" in text
    )


def test_mixed_good_and_bad_files_train_on_the_good(tmp_path: Path, demo_dir: Path, make_cfg) -> None:
    photos = tmp_path / "photos"
    shutil.copytree(demo_dir, photos)
    for name, (make, _) in BAD_FILES.items():
        (photos / name).write_bytes(make())
    with pytest.warns(UserWarning, match="skipped unreadable files") as record:
        result = train(make_cfg(f"data.instance_dir={photos}", "train.max_steps=1", "train.save_final=false"))
    assert result["final_step"] == 1
    (warning,) = [str(r.message) for r in record if "skipped" in str(r.message)]
    for name, (_, reason) in BAD_FILES.items():
        assert f"{name} (" in warning and reason in warning


def test_photos_below_the_resolution_are_upscaled_with_a_warning(
    tmp_path: Path, demo_dir: Path, make_cfg
) -> None:
    photos = tmp_path / "photos"
    shutil.copytree(demo_dir, photos)
    Image.new("RGB", (20, 30), "red").save(photos / "tiny.png")
    cfg = make_cfg(f"data.instance_dir={photos}")  # model=tiny: data.resolution=64
    with pytest.warns(UserWarning, match=r"smaller than data.resolution=64 px.*tiny\.png \(20x30\)"):
        images = data_lib.load_instance_images(cfg.data)
    assert len(images) == len(list(demo_dir.iterdir())) + 1  # kept, not rejected
    assert data_lib.preprocess(images[-1], 64).shape == (3, 64, 64)


# --- settings -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.lr=-1e-6", "train.lr"),
        ("train.max_steps=0", "train.max_steps"),
        ("data.resolution=100", "multiple of 8"),
        ("eval.scheduler=warp", "eval.scheduler"),
        ("train.lr_scheduler=exponential", "lr_scheduler"),
    ],
)
def test_out_of_range_and_unknown_values_fail_before_loading(
    override, needle, make_cfg, no_model_load
) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        train(make_cfg(override))
    _one_line(info.value)


def test_unreachable_model_id_is_one_line(make_cfg) -> None:
    # HF_HUB_OFFLINE=1 in the tests: the hub is as unreachable as on a machine without network.
    with pytest.raises(
        ConfigError, match="cannot load the Stable Diffusion model from 'nobody/no-such-model'"
    ) as info:
        train(make_cfg("model.pretrained=nobody/no-such-model"))
    assert "check the hub id" in _one_line(info.value)


# --- a full disk --------------------------------------------------------------------------------------


def _checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def _assert_complete(ckpt: Path) -> None:
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == int(
        ckpt.name.split("-")[1]
    )
    torch.load(ckpt / "noise_generator.pt", weights_only=True)
    assert any(ckpt.glob("*.safetensors"))


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        # what torch.save itself raises when the disk fills mid-file
        RuntimeError(
            "[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file data/0: file write failed"
        ),
    ],
    ids=["oserror", "torch"],
)
def test_disk_full_while_checkpointing(error, make_cfg, monkeypatch) -> None:
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if "checkpoint-4" in str(f):
            raise error
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    cfg = make_cfg("train.checkpoint_every_n_steps=2", "train.max_steps=6")
    with pytest.raises(ConfigError) as info:
        train(cfg)
    text = _one_line(info.value)
    assert (
        text.startswith("disk full while saving checkpoint-4")
        and "free space or change paths.log_dir" in text
    )
    out = Path(cfg.paths.output_dir)
    assert _checkpoints(out) == ["checkpoint-2"]  # the half-written checkpoint-4 is gone, checkpoint-2 intact
    _assert_complete(out / "checkpoints" / "checkpoint-2")


def test_disk_full_while_saving_the_model_keeps_the_previous_one(make_cfg, monkeypatch) -> None:
    from diffusers import ModelMixin

    cfg = make_cfg("train.max_steps=1")
    train(cfg)  # a first run saved model/
    model = Path(cfg.paths.output_dir) / "model"
    before = {p.relative_to(model): p.read_bytes() for p in model.rglob("*") if p.is_file()}

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ModelMixin, "save_pretrained", full)
    with pytest.raises(ConfigError, match="^disk full while saving the final model") as info:
        train(make_cfg("train.max_steps=2"))  # the same run dir
    _one_line(info.value)
    assert {p.relative_to(model): p.read_bytes() for p in model.rglob("*") if p.is_file()} == before
    assert not (model.parent / ".model.tmp").exists()


@contextlib.contextmanager
def _small_disk(path: Path, size_bytes: int):
    """A tmpfs of ``size_bytes`` at ``path``; skips where mounting is not allowed (unprivileged CI)."""
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.skipif(shutil.which("mount") is None, reason="no mount command")
def test_a_really_full_disk(tmp_path: Path, make_cfg) -> None:
    """The same on a real full filesystem: the errors torch/safetensors raise there are recognised."""
    probe = make_cfg(
        "train.checkpoint_every_n_steps=1", "train.max_steps=1", "train.save_final=false", run="probe"
    )
    train(probe)
    size = sum(
        p.stat().st_size for p in Path(probe.paths.output_dir, "checkpoints").rglob("*") if p.is_file()
    )
    with _small_disk(tmp_path / "disk", int(size * 1.6)) as disk:  # room for one checkpoint, not two
        cfg = make_cfg(
            f"paths.output_dir={disk / 'run'}",
            "train.checkpoint_every_n_steps=1",
            "train.checkpoints_total_limit=null",
            "train.max_steps=3",
        )
        with pytest.raises(ConfigError, match="^disk full while saving checkpoint-2") as info:
            train(cfg)
        _one_line(info.value)
        assert _checkpoints(disk / "run") == ["checkpoint-1"]
        _assert_complete(disk / "run" / "checkpoints" / "checkpoint-1")


# --- through the CLI: exit code and one error line ----------------------------------------------------


def test_cli_errors_exit_non_zero_with_one_line(tmp_path: Path, cache_dir: Path, demo_dir: Path) -> None:
    """Four failures of ``python -m dreambooth_sweep.train``, started together (each start costs seconds):
    our own ConfigError, the sweeper's SweepError, Hydra's compose error and Hydra flags that cannot go
    together (Hydra's own bare ValueError), each one ``error:`` line
    (exit 2). None prints a traceback, and nothing is trained."""
    base = tiny_overrides(tmp_path, cache_dir, demo_dir)
    cases = {
        "tracking": ([*base, f"tracking.uri=http://127.0.0.1:{free_port()}"], 2, "is unreachable"),
        "sweep": (
            ["-m", *base, "hydra/sweeper=optuna", f"hydra.sweep.dir={tmp_path / 'm'}"],
            2,
            "search space is empty",
        ),
        "typo": ([*base, "train.learning_rate=1e-6"], 2, "Could not override 'train.learning_rate'"),
        "cfg_multirun": (["-m", "--cfg", "job", *base], 2, "--cfg cannot be combined with -m/--multirun"),
    }
    env = worker_env()
    del env["HYDRA_FULL_ERROR"]  # what a user sees
    procs = {
        name: subprocess.Popen(
            [PY, "-m", "dreambooth_sweep.train", *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        for name, (args, _, _) in cases.items()
    }  # fmt: skip
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=300)
        _, code, needle = cases[name]
        assert proc.returncode == code, f"{name}: {proc.returncode}\n{stderr[-3000:]}"
        assert "Traceback" not in stderr, f"{name}:\n{stderr[-3000:]}"
        hits = [line for line in stderr.splitlines() if needle in line]
        assert len(hits) == 1, f"{name}:\n{stderr[-3000:]}"
        if name == "tracking":  # ours: exactly one "error:" line, problem then fix
            errors = [line for line in stderr.splitlines() if line.startswith("error:")]
            assert (
                errors == hits
                and "start it (mlflow server ...), fix tracking.uri, or set tracking=none" in hits[0]
            )
        if name == "typo":  # Hydra's multi-line report is folded into one "error:" line with the real fix
            errors = [line for line in stderr.splitlines() if line.startswith("error:")]
            assert errors == hits and "check the key's spelling" in hits[0] and "+train" not in hits[0]
    assert not list(tmp_path.glob("outputs/**/metrics.json"))  # nothing trained


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-m", "--cfg", "job", "train.lr=1e-5,2e-5"], "--cfg cannot be combined with -m/--multirun"),
        (["--multirun", "--cfg=hydra"], "--cfg cannot be combined with -m/--multirun"),
        (["-m", "--info"], "--multirun and --info cannot be combined"),
        (["--resolve", "train.lr=1e-5"], "--resolve only works with --cfg"),
    ],
)
def test_hydra_flags_that_cannot_go_together(argv: list[str], message: str) -> None:
    from dreambooth_sweep.runtime import command_line_error

    line = command_line_error(argv, "dreambooth_sweep.train")
    assert line is not None and line.startswith(message) and "\n" not in line


@pytest.mark.parametrize(
    "argv", [["--cfg", "job", "--resolve"], ["-m", "train.lr=1e-5,2e-5"], ["--help"], []]
)
def test_hydra_flags_that_go_together_pass(argv: list[str]) -> None:
    from dreambooth_sweep.runtime import command_line_error

    assert command_line_error(argv, "dreambooth_sweep.train") is None
