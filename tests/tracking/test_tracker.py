"""The tracker (tracking/tracker.py) against a real SQLite store: what a run records, how it ends."""

# ruff: noqa: F811  (the fixtures imported from tracking_helpers are test arguments here)

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from PIL import Image
from tracking_helpers import _cwd_in_tmp, client, root, run_cfg  # noqa: F401 (fixtures)

from dreambooth_sweep.tracking import NullTracker, Terminated, start_tracking
from dreambooth_sweep.tracking.tags import (
    ROLE_SINGLE,
    TAG_ERROR,
    TAG_IDENTIFIER,
    TAG_LOGGED_IMAGES,
    TAG_METHOD,
    TAG_MODEL,
    TAG_OUTPUT_DIR,
    TAG_PARENT,
    TAG_PRUNED,
    TAG_ROLE,
    TAG_SUBJECT,
)


def test_none_backend_is_a_null_tracker(tmp_path: Path) -> None:
    cfg = run_cfg(tmp_path, tmp_path, "exp", **{"tracking.backend": "none"})
    with start_tracking(cfg) as tracker:
        assert isinstance(tracker, NullTracker)
        tracker.log_train(1, {"train/loss": 1.0})
        tracker.log_image(Image.new("RGB", (4, 4)), key="samples", step=1)
        tracker.log_summary({"best/score": 1.0})
        assert tracker.run_id is None
    assert not (tmp_path / "outputs").exists()


# --- a plain run -----------------------------------------------------------------------------------


def test_plain_run(root: Path, tmp_path: Path, client: MlflowClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    cfg = run_cfg(root, tmp_path, "plain", **{"sweep.storage": "postgresql://optuna:hunter2@db:5432/optuna"})
    weights = tmp_path / "pytorch_lora_weights.safetensors"
    weights.write_bytes(b"\0" * 16)
    (tmp_path / "model" / "unet").mkdir(parents=True)
    (tmp_path / "model" / "unet" / "config.json").write_text("{}")

    with start_tracking(cfg, system_metrics=True) as tracker:
        for step in range(1, 13):
            tracker.log_train(step, {"train/loss": 1.0 / step, "train/lr": 2e-6})
            if step % 4 == 0:
                tracker.log_metrics({"eval/dino": step / 100}, step=step)
                tracker.log_image(Image.new("RGB", (16, 16), (20 * step, 0, 0)), key="samples", step=step)
        tracker.set_tags({"stage": "done"})
        tracker.log_artifact(weights, artifact_path="weights")
        tracker.log_artifact(tmp_path / "model", artifact_path="weights/model")
        tracker.log_summary({"best/score": 0.12, "best/step": 12})
        time.sleep(0.5)  # one system-metrics sample
        run_id = tracker.run_id

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    params, tags = run.data.params, run.data.tags
    assert params["train.lr"] == "2e-06" and params["model.name"] == "tiny"
    assert params["sweep.storage"] == "postgresql://optuna:***@db:5432/optuna"
    assert params["data.instance_prompt"] == "a photo of sks dog"  # resolved
    assert tags[TAG_METHOD] == "dreambooth" and tags[TAG_MODEL] == "tiny" and tags[TAG_SUBJECT] == "dog"
    assert tags[TAG_IDENTIFIER] == "sks" and tags["stage"] == "done" and tags[TAG_ROLE] == ROLE_SINGLE
    assert TAG_PARENT not in tags
    assert tags[TAG_OUTPUT_DIR] == str(tmp_path.resolve())

    def steps(key: str) -> list[int]:
        return sorted(m.step for m in client.get_metric_history(run_id, key))

    assert steps("train/loss") == [1, 5, 10, 12]  # step 1, every 5, and the last step
    assert steps("eval/dino") == [4, 8, 12]
    assert run.data.metrics["best/score"] == pytest.approx(0.12)
    assert any(k.startswith("system/") for k in run.data.metrics)

    config_yaml = Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path / "dl"))).read_text()
    assert "lr: 2.0e-06" in config_yaml and "hunter2" not in config_yaml

    images = [a.path for a in client.list_artifacts(run_id, "images")]
    image_steps = {int(m.group(1)) for p in images if (m := re.search(r"samples\+step\+(\d+)\+.*\.png$", p))}
    assert image_steps == {4, 8, 12}
    assert tags[TAG_LOGGED_IMAGES].lower() == "true"

    assert {a.path for a in client.list_artifacts(run_id, "weights")} == {
        "weights/pytorch_lora_weights.safetensors",
        "weights/model",
    }
    assert [a.path for a in client.list_artifacts(run_id, "weights/model/unet")] == [
        "weights/model/unet/config.json"
    ]
    location = client.get_experiment(run.info.experiment_id).artifact_location
    assert location == (root / "outputs" / "mlartifacts" / "plain").resolve().as_uri()
    assert not (tmp_path / "mlruns").exists()


# --- how a run ends --------------------------------------------------------------------------------


def _sigterm() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler raises before this ends


@pytest.mark.parametrize(
    ("raise_", "expected_exc", "status", "tag"),
    [
        (lambda: (_ for _ in ()).throw(RuntimeError("boom\nsecond line")), RuntimeError, "FAILED", TAG_ERROR),
        (lambda: (_ for _ in ()).throw(KeyboardInterrupt()), KeyboardInterrupt, "KILLED", TAG_ERROR),
        (_sigterm, Terminated, "KILLED", TAG_ERROR),
        (
            lambda: (_ for _ in ()).throw(optuna.TrialPruned("pruned at step 4")),
            optuna.TrialPruned,
            "FINISHED",
            TAG_PRUNED,
        ),
    ],
    ids=["exception", "keyboard_interrupt", "sigterm", "pruned"],
)
def test_run_status_on_exit(root, tmp_path, client, raise_, expected_exc, status, tag) -> None:
    cfg = run_cfg(root, tmp_path, "status")
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(expected_exc), start_tracking(cfg, system_metrics=False) as tracker:
        tracker.log_train(1, {"train/loss": 1.0})
        raise_()
    assert signal.getsignal(signal.SIGTERM) == before  # handler restored
    run = client.get_run(tracker.run_id)
    assert run.info.status == status
    assert tag in run.data.tags
    if status == "FAILED":
        assert run.data.tags[TAG_ERROR] == "RuntimeError: boom second line"
    if tag == TAG_PRUNED:
        assert run.data.tags[TAG_PRUNED] == "true"
        assert TAG_ERROR not in run.data.tags
