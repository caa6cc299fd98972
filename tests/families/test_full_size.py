"""The GPU benchmark's random SDXL and FLUX.1 are the real architectures, parameter for parameter, and
``make bench-gpu``'s family rows skip with a message without a GPU and run their plumbing on tiny models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dreambooth_sweep.families.full_size import flux_modules, sdxl_modules

ROOT = Path(__file__).resolve().parents[2]


def _counts(modules: dict) -> dict[str, int]:
    return {name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()}


def test_sdxl_architecture_has_sdxl_base_parameter_counts() -> None:
    with torch.device("meta"):
        counts = _counts(sdxl_modules(vocab_size=300))
    # stabilityai/stable-diffusion-xl-base-1.0: UNet, CLIP ViT-L, OpenCLIP ViT-bigG (+ projection), VAE
    assert counts == {
        "unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840, "vae": 83_653_863,
    }  # fmt: skip


def test_flux_architecture_has_flux_dev_parameter_counts() -> None:
    with torch.device("meta"):
        counts = _counts(flux_modules(vocab_size=300, t5_vocab_size=400))
    # black-forest-labs/FLUX.1-dev: transformer, CLIP ViT-L, T5 v1.1 XXL encoder, 16-channel VAE
    assert counts == {
        "transformer": 11_901_408_320, "text_encoder": 123_060_480, "text_encoder_2": 4_762_310_656,
        "vae": 83_819_683,
    }  # fmt: skip


def _bench(args: list[str], timeout: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "benchmarks/bench_gpu.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without CUDA prints")
def test_family_rows_skip_with_a_message_without_a_gpu(tmp_path: Path) -> None:
    proc = _bench(["--configs", "sdxl-lora-1024,flux-lora-512,flux-lora-1024", "--work", str(tmp_path)], 120)
    assert proc.returncode == 0 and "no CUDA device here: skipped" in proc.stdout
    assert "SDXL/FLUX figures need a GPU" in proc.stdout and not (tmp_path / "bench_gpu.json").exists()


def test_family_rows_run_their_plumbing_on_tiny_models(tmp_path: Path, tiny_family) -> None:
    tiny_family("flux")
    proc = _bench(
        ["--model", "tiny", "--cpu", "--steps", "2", "--configs", "flux-lora-512", "--work", str(tmp_path)],
        900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert rows["flux-lora-512"]["final_step"] == 2 and rows["flux-lora-512"]["perf/train_steps_per_s"] > 0
