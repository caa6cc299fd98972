"""The store (tracking/store.py): the default URI, failing fast on a server that is not there, the
experiment and its kind tag."""

# ruff: noqa: F811  (the fixtures imported from tracking_helpers are test arguments here)

from __future__ import annotations

import http.server
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from tracking_helpers import _cwd_in_tmp, client, free_port, root, run_cfg  # noqa: F401 (fixtures)

from dreambooth_sweep.config import ConfigError
from dreambooth_sweep.tracking import default_uri, start_tracking
from dreambooth_sweep.tracking.tags import EXPERIMENT_KIND, TAG_EXPERIMENT_KIND

UNREACHABLE = "start it (mlflow server ...), fix tracking.uri, or set tracking=none"


def test_default_uri_is_absolute_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_uri("outputs") == f"sqlite:///{tmp_path.resolve()}/outputs/mlflow.db"


@pytest.fixture
def answering_503() -> Iterator[str]:
    """What a proxy or load balancer in front of a dead MLflow server says: 503 to everything."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.fixture
def silent_host() -> Iterator[str]:
    """A host that takes the connection and never answers (a hung server, a black-holing firewall)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)  # the kernel completes the handshakes; nobody ever reads
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.mark.parametrize("where", ["refused", "answers_503", "silent"])
def test_unreachable_server_fails_fast_with_one_line(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """Fails before the block runs, within seconds, with the one-line error — even with MLflow's own
    retries switched on by the user (7 retries with backoff: minutes if they reached the start-up)."""
    uri = {
        "refused": lambda: f"http://127.0.0.1:{free_port()}",
        "answers_503": lambda: request.getfixturevalue("answering_503"),
        "silent": lambda: request.getfixturevalue("silent_host"),
    }[where]()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    cfg = run_cfg(tmp_path, tmp_path, "x", **{"tracking.uri": uri})
    start = time.monotonic()
    with pytest.raises(ConfigError, match="is unreachable") as err, start_tracking(cfg):
        pytest.fail("the block must not run")
    took = time.monotonic() - start
    print(f"{where}: ConfigError after {took:.1f} s")
    assert took < 30  # generous: the probe gives up after CHECK_TIMEOUT_S
    assert "\n" not in str(err.value) and UNREACHABLE in str(err.value)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"  # the user's setting is back


def test_experiment_opens_on_the_training_runs_list(root: Path, tmp_path: Path, client: MlflowClient) -> None:
    """MLflow 3 opens an experiment without a kind in its GenAI view: ours carry the kind tag, new
    ones from creation, existing ones (made by an older version or by hand) once we use them."""
    with start_tracking(run_cfg(root, tmp_path, "kind-new"), system_metrics=False):
        pass
    assert client.get_experiment_by_name("kind-new").tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND

    old = client.create_experiment("kind-old", artifact_location=(tmp_path / "a").as_uri())
    mine = client.create_experiment("kind-mine", tags={TAG_EXPERIMENT_KIND: "genai_development"})
    for name in ("kind-old", "kind-mine"):
        with start_tracking(run_cfg(root, tmp_path, name), system_metrics=False):
            pass
    assert client.get_experiment(old).tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND
    assert client.get_experiment(mine).tags[TAG_EXPERIMENT_KIND] == "genai_development"  # the user's choice
