"""Shared by the report tests: one real tiny sweep per session (two learning rates, checkpoints at
steps 0, 2, 4), launched in a subprocess exactly as a user would, with the report's Hydra callback
registered by conf/train.yaml; and its report built from the command line.

The fixtures below are imported by each test module; the builders are cached, so the sweep runs once.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dreambooth_sweep import report

ROOT = Path(__file__).resolve().parents[2]
LRS = {1e-4, 1e-5}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]
_BUILT: dict[str, object] = {}


def tiny_sweep(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, demo_dir: Path) -> Path:
    if "sweep" in _BUILT:
        return _BUILT["sweep"]  # type: ignore[return-value]
    root = tmp_path_factory.mktemp("report_sweep")
    cmd = [
        sys.executable, "-m", "dreambooth_sweep.train", "-m",
        "model=tiny", "eval=tiny", "tracking=none", "train.max_steps=4", "eval.every_n_steps=2",
        "train.lr=1e-4,1e-5", "train.num_threads=1",
        f"paths.root_dir={root}", f"paths.cache_dir={cache_dir}", f"hydra.sweep.dir={root / 'sweep'}",
        f"data.instance_dir={demo_dir}", "data.generate_demo=false",
        # smaller than eval=tiny alone: two prompts, one seed, the metrics the report plots, no saved model
        "eval.prompts=custom", "eval.custom_prompts=['a {V} {C} on the beach','a {V} {C} in the snow']",
        "eval.seeds=[0]", "eval.metrics=[dino,clip_i,clip_t]", "train.save_final=false",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    _BUILT["sweep"] = root / "sweep"
    return root / "sweep"


def cli_report(tmp_path_factory: pytest.TempPathFactory, sweep_dir: Path) -> tuple[Path, str]:
    """The report of the finished sweep, built from the command line into its own folder: (page, stdout)."""
    if "cli" not in _BUILT:
        out = tmp_path_factory.mktemp("report") / "out"
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert report.main([str(sweep_dir), "--out", str(out), "--no-mlflow"]) == 0
        _BUILT["cli"] = (out / "index.html", printed.getvalue())
    return _BUILT["cli"]  # type: ignore[return-value]


@pytest.fixture
def sweep_dir(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, demo_dir: Path) -> Path:
    return tiny_sweep(tmp_path_factory, cache_dir, demo_dir)


@pytest.fixture
def cli_run(sweep_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return cli_report(tmp_path_factory, sweep_dir)


@pytest.fixture
def built(cli_run: tuple[Path, str]) -> Path:
    return cli_run[0]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def stored_scores(sweep: Path) -> dict[tuple[int, int], float]:
    """eval/score of every checkpoint, straight from the jobs' eval_history.jsonl (last line per step wins)."""
    scores = {}
    for history in sweep.glob("*/eval_history.jsonl"):
        for line in history.read_text().splitlines():
            row = json.loads(line)
            scores[(int(history.parent.name), row["step"])] = row["eval/score"]
    return scores


def copy_sweep(sweep_dir: Path, dest: Path) -> Path:
    shutil.copytree(sweep_dir, dest, ignore=shutil.ignore_patterns("report", "checkpoints"))
    return dest


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not on PATH (Debian: apt-get install -y chromium)")
    return found
