"""The benchmarks run (their figures are read by people, never asserted): `make bench`, `make bench-gpu`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], timeout: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_gpu_bench_plumbing_runs_on_the_tiny_model(tmp_path: Path) -> None:
    """Same trainer processes and table as on a GPU, tiny model on the CPU: every row gets its figures."""
    proc = _run(
        ["benchmarks/bench_gpu.py", "--model", "tiny", "--cpu", "--steps", "3", "--configs", "16gb,lora",
         "--work", str(tmp_path)],
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert set(rows) == {"16gb", "lora"}
    for figures in rows.values():
        assert figures["final_step"] == 3 and figures["perf/train_steps_per_s"] > 0
    table = [line for line in proc.stdout.splitlines() if line.startswith(("| 16gb ", "| lora "))]
    assert len(table) == 2 and all("failed" not in line for line in table)


def test_gpu_bench_refuses_unknown_configs_and_full_size_on_cpu(tmp_path: Path) -> None:
    bad = _run(["benchmarks/bench_gpu.py", "--configs", "16gb,nope", "--work", str(tmp_path)], timeout=120)
    assert bad.returncode == 2 and "unknown --configs nope" in bad.stderr
    cpu = _run(["benchmarks/bench_gpu.py", "--cpu", "--work", str(tmp_path)], timeout=120)
    assert cpu.returncode == 2 and "--model tiny" in cpu.stderr


@pytest.mark.slow
def test_cpu_bench_runs_without_a_diffusers_checkout(tmp_path: Path) -> None:
    """`make bench` without DIFFUSERS: our columns only, the script's skipped with a message."""
    proc = _run(
        ["benchmarks/bench.py", "--steps", "3", "--grid-steps", "2", "--repeats", "1", "--eval-every", "2",
         "--work", str(tmp_path)],
        timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "no diffusers checkout given" in proc.stdout
    raw = json.loads((tmp_path / "bench.json").read_text())
    assert {len(row["ours"]) for row in raw["rows"].values()} == {1} and raw["eval"]["train_step_s"] > 0
