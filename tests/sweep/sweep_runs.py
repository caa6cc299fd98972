"""How the sweep tests run the test app (``tests/sweep_app/app.py``) and read its study back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna

APP = Path(__file__).parents[1] / "sweep_app" / "app.py"
LR = "lr=tag(log, interval(0.01, 1.0))"


def app_env(**changes: str | None) -> dict[str, str]:
    """The app's environment: this checkout's package first (a script's folder, not the working dir,
    starts its import path), with ``changes`` set (None: removed)."""
    root = str(Path(__file__).parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def sweep_cmd(tmp_path: Path, *overrides: str, storage: str | None = None) -> list[str]:
    storage = storage or f"sqlite:///{tmp_path / 'optuna.db'}"
    return [
        sys.executable,
        str(APP),
        "-m",
        "hydra/sweeper=optuna",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        f"hydra.sweeper.storage='{storage}'",
        "hydra.sweeper.study_name=test",
        "hydra.sweeper.seed=0",
        *overrides,
    ]


def sweep(
    tmp_path: Path, *overrides: str, storage: str | None = None, ok: bool = True
) -> subprocess.CompletedProcess:
    """Run one sweep of the test app; the study lives in ``tmp_path/optuna.db`` unless told otherwise."""
    cmd = sweep_cmd(tmp_path, *overrides, storage=storage)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=app_env())
    if ok and proc.returncode != 0:
        raise AssertionError(f"sweep failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def load(tmp_path: Path, storage: str | None = None) -> optuna.Study:
    if storage and storage.startswith("journal://"):
        backend = optuna.storages.journal.JournalFileBackend(storage.removeprefix("journal://"))
        return optuna.load_study(study_name="test", storage=optuna.storages.JournalStorage(backend))
    return optuna.load_study(study_name="test", storage=storage or f"sqlite:///{tmp_path / 'optuna.db'}")


def counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that count towards n_trials (not given back as interrupted, surplus or duplicate)."""
    return [t for t in study.trials if not t.user_attrs.get("interrupted")]
