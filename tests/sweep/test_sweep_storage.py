"""Optuna storages from URLs (dreambooth_sweep/sweep/storage.py): job overrides, unreachable servers."""

from __future__ import annotations

import subprocess
import time

import pytest
from omegaconf import OmegaConf
from sweep_runs import LR, app_env, sweep_cmd

from dreambooth_sweep.sweep import STORAGE_ENV, SweepError, job_storage_override, open_storage
from dreambooth_sweep.tracking.secrets import mask_text

UNREACHABLE = "postgresql://u:secret@127.0.0.1:9/db"  # port 9 (discard): nothing listens


def test_storage_password_goes_to_the_environment_not_to_job_overrides() -> None:
    url, env = "postgresql://u:secret@127.0.0.1:1/db", {}
    override = job_storage_override(url, env)
    assert "secret" not in override and env == {STORAGE_ENV: url}
    assert override == "sweep.storage=${oc.env:DBS_SWEEP_STORAGE}"
    cfg = OmegaConf.create({"storage": override.partition("=")[2]})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(STORAGE_ENV, url)
        assert cfg.storage == url  # what the job reads
    env = {}
    assert job_storage_override("sqlite:////tmp/o.db", env) == "sweep.storage=sqlite:////tmp/o.db"
    assert env == {}
    assert mask_text(url) == "postgresql://u:***@127.0.0.1:1/db"


def test_an_unreachable_storage_is_one_masked_error_at_once() -> None:
    start = time.monotonic()
    with pytest.raises(SweepError) as info:
        open_storage(UNREACHABLE)
    message = str(info.value)
    assert "\n" not in message and "secret" not in message
    assert message.startswith("cannot open the Optuna storage postgresql://u:***@127.0.0.1:9/db: ")
    assert time.monotonic() - start < 30  # refused connections are not retried like table races


def test_an_unreachable_storage_ends_the_sweep_with_one_line_and_exit_2(tmp_path) -> None:
    cmd = sweep_cmd(tmp_path, LR, storage=UNREACHABLE)
    env = app_env(HYDRA_FULL_ERROR=None)  # what a user sees
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "secret" not in proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert (
        len(errors) == 1 and "cannot open the Optuna storage postgresql://u:***@127.0.0.1:9/db" in errors[0]
    )
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) <= 3, proc.stderr
