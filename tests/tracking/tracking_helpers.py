"""Shared by tests/tracking/: the shrunk run config, a real `mlflow server` subprocess, fixtures.

Test modules import the fixtures they use from here (pytest finds fixtures in a module's namespace).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient
from omegaconf import DictConfig, OmegaConf

from dreambooth_sweep.config import load_config
from dreambooth_sweep.tracking import default_uri
from dreambooth_sweep.tracking.tags import ROLE_PARENT, TAG_PARENT, TAG_ROLE

APP = Path(__file__).parents[1] / "tracking_app" / "app.py"
PY = sys.executable


def run_cfg(root: Path, out: Path, experiment: str, **dotlist: object) -> DictConfig:
    """The run config as the app composes it, shrunk; all paths in tmp."""
    cfg = load_config()
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


def children_of(client: MlflowClient, parent_id: str) -> list:
    exp = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp], f"tags.`{TAG_PARENT}` = '{parent_id}'")


def parents_in(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], f"tags.`{TAG_ROLE}` = '{ROLE_PARENT}'")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` (or `mlflow ui`) on 127.0.0.1 over a given or a tmp SQLite store; killable and
    restartable."""

    def __init__(self, tmp: Path, backend: str | None = None, command: str = "server") -> None:
        self.tmp, self.port = tmp, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.backend = backend or f"sqlite:///{tmp / 'server.db'}"
        self.command = command
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [
            PY, "-m", "mlflow", self.command,
            "--backend-store-uri", self.backend,
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        if self.command == "server":
            cmd += ["--artifacts-destination", str(self.tmp / "server-artifacts")]
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


@pytest.fixture(autouse=True)
def _cwd_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything written relative to the working directory (a stray ./mlruns) stays in tmp."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedded store shared by a module's in-process tests (each uses its own experiment)."""
    return tmp_path_factory.mktemp("project")


@pytest.fixture
def client(root: Path) -> MlflowClient:
    return MlflowClient(default_uri(root / "outputs"))


@pytest.fixture
def server(tmp_path: Path):
    srv = Server(tmp_path)
    srv.start()
    yield srv
    srv.kill()
