"""MLflow tracking against real stores: a SQLite file in tmp, and a real `mlflow server` subprocess."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import requests
from mlflow import MlflowClient
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from dreambooth_sweep import tracking
from dreambooth_sweep.config import ConfigError, RunConfig
from dreambooth_sweep.tracking import (
    NullTracker,
    default_uri,
    ensure_parent_run,
    flatten_params,
    mask_secrets,
    plan_run,
    start_tracking,
)

APP = Path(__file__).parent / "tracking_app" / "app.py"
PY = sys.executable


def run_cfg(root: Path, out: Path, experiment: str, **dotlist: object) -> DictConfig:
    """The run config as the app composes it, shrunk; all paths in tmp."""
    cfg = OmegaConf.structured(RunConfig)
    cfg.model.name = "tiny"
    cfg.model.pretrained = "tiny"
    cfg.data.instance_dir = str(root / "data" / "dog")
    cfg.data.class_noun = "dog"
    cfg.paths.root_dir = str(root)
    cfg.paths.output_dir = str(out)
    cfg.tracking.experiment = experiment
    cfg.tracking.log_every_n_steps = 5
    cfg.train.max_steps = 12
    for key, value in dotlist.items():
        OmegaConf.update(cfg, key, value)
    return cfg


@pytest.fixture(autouse=True)
def _cwd_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything written relative to the working directory (a stray ./mlruns) stays in tmp."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedded store shared by the in-process tests (each uses its own experiment)."""
    return tmp_path_factory.mktemp("project")


@pytest.fixture
def client(root: Path) -> MlflowClient:
    return MlflowClient(default_uri(root / "outputs"))


def children_of(client: MlflowClient, parent_id: str) -> list:
    exp = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'")


def parents_in(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.`dbs.role` = 'parent'")


# --- pure helpers ----------------------------------------------------------------------------------


def test_default_uri_is_absolute_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_uri("outputs") == f"sqlite:///{tmp_path.resolve()}/outputs/mlflow.db"


def test_secrets_are_masked_and_params_flattened() -> None:
    cfg = {
        "hub": {"hf_token": "hf_abc", "api_key": "k", "placeholder_token": "<sks>", "tokenizer": "clip"},
        "db": "postgresql://user:hunter2@db:5432/optuna",
        "overrides": ["db.password=pw1", "train.lr=1e-6"],
        "long": "x" * 7000,
        "train": {"lr": 1e-6, "seeds": [0, 1]},
    }
    masked = mask_secrets(cfg)
    assert masked["hub"] == {
        "hf_token": "***",
        "api_key": "***",
        "placeholder_token": "<sks>",
        "tokenizer": "clip",
    }
    assert masked["db"] == "postgresql://user:***@db:5432/optuna"
    assert masked["overrides"] == ["db.password=***", "train.lr=1e-6"]
    params = flatten_params(cfg)
    assert params["hub.hf_token"] == "***"
    assert params["train.lr"] == "1e-06"
    assert params["train.seeds"] == "[0, 1]"
    assert len(params["long"]) == 6000


def test_plan_single_run_and_optuna_trial(tmp_path: Path) -> None:
    cfg = run_cfg(tmp_path, tmp_path, "exp")
    plan = plan_run(cfg)
    assert (plan.experiment, plan.sweep_id, plan.run_name) == ("exp", None, None)
    assert ensure_parent_run(cfg) is None  # not a sweep: no parent, nothing touched
    assert not (tmp_path / "outputs").exists()
    cfg.sweep.study_name, cfg.sweep.trial_number = "lr-study", 7
    plan = plan_run(cfg)
    assert (plan.experiment, plan.sweep_id, plan.run_name) == ("lr-study", "optuna:lr-study", "trial-7")


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
    assert tags["method"] == "dreambooth" and tags["model"] == "tiny" and tags["subject"] == "dog"
    assert tags["identifier"] == "sks" and tags["stage"] == "done" and tags["dbs.role"] == "single"
    assert "mlflow.parentRunId" not in tags
    assert tags["output_dir"] == str(tmp_path.resolve())

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
    assert tags["mlflow.loggedImages"].lower() == "true"

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
        (lambda: (_ for _ in ()).throw(RuntimeError("boom\nsecond line")), RuntimeError, "FAILED", "error"),
        (lambda: (_ for _ in ()).throw(KeyboardInterrupt()), KeyboardInterrupt, "KILLED", "error"),
        (_sigterm, tracking.Terminated, "KILLED", "error"),
        (
            lambda: (_ for _ in ()).throw(optuna.TrialPruned("pruned at step 4")),
            optuna.TrialPruned,
            "FINISHED",
            "pruned",
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
        assert run.data.tags["error"] == "RuntimeError: boom second line"
    if tag == "pruned":
        assert run.data.tags["pruned"] == "true"
        assert "error" not in run.data.tags


# --- sweeps: parent and children -------------------------------------------------------------------


def test_optuna_trials_share_one_parent_with_the_best_summary(root, tmp_path, client) -> None:
    study = "study-parent-summary"
    run_ids = []
    for trial, score in [(0, 0.3), (1, 0.5), (2, 0.4)]:
        cfg = run_cfg(
            root, tmp_path / str(trial), "ignored", **{"sweep.study_name": study, "sweep.trial_number": trial}
        )
        with start_tracking(cfg, system_metrics=False) as tracker:
            tracker.log_metrics({"eval/dino": score}, step=10)
            tracker.log_summary({"best/score": score, "best/step": 10 * (trial + 1)})
            run_ids.append(tracker.run_id)
            parent_id = tracker.parent_run_id

    (parent,) = parents_in(client, study)  # experiment named after the study
    assert parent.info.run_id == parent_id and parent.info.run_name == study
    assert parent.info.status == "FINISHED"
    kids = children_of(client, parent_id)
    assert sorted(r.info.run_name for r in kids) == ["trial-0", "trial-1", "trial-2"]
    assert {r.data.tags["optuna.trial_number"] for r in kids} == {"0", "1", "2"}
    assert all(r.data.tags["optuna.study_name"] == study for r in kids)
    best = parent.data
    assert best.metrics["best/score"] == pytest.approx(0.5)
    assert best.metrics["best/step"] == 20 and best.metrics["best/trial"] == 1
    assert best.tags["best.run_id"] == run_ids[1] and best.tags["best.run_name"] == "trial-1"
    assert [m.step for m in client.get_metric_history(parent_id, "sweep/score")] == [0, 1, 2]


def test_given_parent_run_id_is_used(root, tmp_path, client) -> None:
    exp = client.create_experiment("given-parent", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp, run_name="made-by-the-sweeper")
    cfg = run_cfg(root, tmp_path, "elsewhere", **{"sweep.parent_run_id": parent.info.run_id})
    with start_tracking(cfg, system_metrics=False) as tracker:
        pass
    run = client.get_run(tracker.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.info.experiment_id == exp


def test_parallel_workers_create_one_parent(root, client) -> None:
    """Processes starting together find-or-create the same parent (file lock in paths.log_dir)."""
    code = (
        "import sys; from omegaconf import OmegaConf; from dreambooth_sweep.config import RunConfig;"
        "from dreambooth_sweep.tracking import ensure_parent_run;"
        "cfg = OmegaConf.structured(RunConfig); cfg.paths.log_dir = sys.argv[1]; cfg.sweep.study_name = 'race';"
        "print(ensure_parent_run(cfg))"
    )
    log_dir = str(root / "outputs")
    procs = [subprocess.Popen([PY, "-c", code, log_dir], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    ids = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(ids) == 1
    assert len(parents_in(client, "race")) == 1


def test_hydra_multirun_parent_children_and_resume(tmp_path: Path) -> None:
    """A 2-job grid gives one parent and two children; re-running the same sweep reuses the parent."""
    args = [
        PY,
        str(APP),
        "-m",
        "train.lr=1e-6,2e-6",
        "train.max_steps=3",
        "model.name=tiny",
        "model.pretrained=tiny",
        f"data.instance_dir={tmp_path}/data/cat",
        "data.class_noun=cat",
        f"paths.root_dir={tmp_path}",
        f"hydra.sweep.dir={tmp_path}/outputs/multirun/grid",
    ]
    env = {**os.environ, "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"}
    for _ in range(2):
        done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        client = MlflowClient(default_uri(tmp_path / "outputs"))
        (parent,) = parents_in(client, "dreambooth-sweep/grid")
        assert parent.info.run_name == "grid"
    kids = children_of(client, parent.info.run_id)
    assert sorted(r.info.run_name for r in kids) == ["job-0", "job-0", "job-1", "job-1"]
    assert all(r.info.status == "FINISHED" for r in kids)
    assert all("train.lr=" in r.data.tags["hydra.overrides"] for r in kids)
    assert parent.data.metrics["best/score"] == pytest.approx(2.0)
    assert parent.data.tags["best.run_name"] == "job-1"
    assert parent.info.status == "FINISHED"
    assert not (tmp_path / "mlruns").exists()


# --- a real tracking server ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` on 127.0.0.1 with a SQLite backend in tmp; killable and restartable."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.port = tmp, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [
            PY, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.tmp / 'server.db'}",
            "--artifacts-destination", str(self.tmp / "server-artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        log = open(self.tmp / "server.log", "a")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/health", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            assert self.proc.poll() is None, (self.tmp / "server.log").read_text()[-2000:]
            time.sleep(0.2)
        raise TimeoutError("mlflow server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


def wait_for_log(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, f"no log record with {text!r}"
        time.sleep(0.1)


@pytest.fixture
def server(tmp_path: Path):
    srv = Server(tmp_path)
    srv.start()
    yield srv
    srv.kill()


def test_unreachable_server_fails_fast_with_one_line(tmp_path: Path) -> None:
    cfg = run_cfg(tmp_path, tmp_path, "x", **{"tracking.uri": f"http://127.0.0.1:{free_port()}"})
    start = time.monotonic()
    with pytest.raises(ConfigError, match="is unreachable") as err, start_tracking(cfg):
        pytest.fail("the block must not run")
    assert time.monotonic() - start < 10
    assert "\n" not in str(err.value) and "tracking=none" in str(err.value)


def test_server_run_survives_losing_the_server(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracking, "RETRY_INTERVAL_S", 0.5)
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
