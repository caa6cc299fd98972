"""The sender (tracking/sender.py) against a real `mlflow server` that is killed and restarted mid-run."""

# ruff: noqa: F811  (the fixtures imported from tracking_helpers are test arguments here)

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image
from tracking_helpers import Server, _cwd_in_tmp, run_cfg, server, wait_for_log  # noqa: F401 (fixtures)

from dreambooth_sweep.tracking import sender, start_tracking


def test_server_run_survives_losing_the_server(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sender, "RETRY_INTERVAL_S", 0.5)
    caplog.set_level(logging.WARNING, logger="dreambooth_sweep.tracking")
    cfg = run_cfg(
        tmp_path, tmp_path, "remote", **{"tracking.uri": server.url, "tracking.log_every_n_steps": 1}
    )
    client = MlflowClient(server.url)

    # 1. Logged through the server, visible through the client; server killed mid-run and restarted:
    #    training goes on, calls stay fast, buffered values arrive once the server is back.
    with start_tracking(cfg, system_metrics=False, flush_timeout=60) as tracker:
        for step in range(1, 6):
            tracker.log_train(step, {"train/loss": 1.0 / step})
        tracker.log_image(Image.new("RGB", (8, 8)), key="samples", step=5)
        assert tracker.flush(timeout=30)
        assert len(client.get_metric_history(tracker.run_id, "train/loss")) == 5

        server.kill()
        slowest = 0.0
        for step in range(6, 16):
            t0 = time.perf_counter()
            tracker.log_train(step, {"train/loss": 1.0 / step})
            tracker.log_metrics({"eval/dino": 0.5}, step=step)
            slowest = max(slowest, time.perf_counter() - t0)
            time.sleep(0.1)  # a training step
        assert slowest < 0.25  # appends to a queue: never waits on the network
        wait_for_log(caplog, "unreachable")
        server.start()
        tracker.log_summary({"best/score": 0.5, "best/step": 15})
        run_id = tracker.run_id

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == list(range(1, 16))
    assert len(client.get_metric_history(run_id, "eval/dino")) == 10
    assert run.data.params["train.lr"] == "2e-06"
    assert any(a.path.endswith(".png") for a in client.list_artifacts(run_id, "images"))
    assert any("is back" in r.getMessage() for r in caplog.records)

    # 2. The server never comes back: the run ends after flush_timeout with a warning, no exception.
    caplog.clear()
    with start_tracking(cfg, system_metrics=False, flush_timeout=1) as tracker:
        tracker.log_train(1, {"train/loss": 1.0})
        assert tracker.flush(timeout=30)
        server.kill()
        start = time.monotonic()
        for step in range(2, 6):
            tracker.log_train(step, {"train/loss": 1.0 / step})
    assert time.monotonic() - start < 15
    assert any("not delivered" in r.getMessage() for r in caplog.records)
