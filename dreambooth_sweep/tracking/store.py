"""Where runs are stored: the tracking URI, connecting to it, and the experiment a run goes into.

``tracking.uri: null`` is the embedded store, the SQLite file ``<paths.log_dir>/mlflow.db``
(:func:`default_uri`; ``make ui`` opens the same file), with artifacts beside it in
``<paths.log_dir>/mlartifacts/<experiment>`` (set when the experiment is created, so nothing lands in a
stray ``./mlruns``). Any other URI is used as given. SQLite is fine for one process at a time;
parallel or multi-node sweeps should use ``mlflow server`` on PostgreSQL.

**An http(s) server is checked before anything else**: ``GET <uri>/health`` with a
``CHECK_TIMEOUT_S`` timeout; refused, timed out, or answered 5xx (a proxy in front of a dead server)
fails at once with one line (:class:`ConfigError`). The start-up calls after it (experiment, parent
run, the new run) run with MLflow's HTTP retries off and a ``STARTUP_REQUEST_TIMEOUT_S`` timeout,
whatever ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` says, so a bad URI never costs MLflow's minutes of
backoff before the error. Later (mid-run) calls go through the sender, which does its own retrying;
for them MLflow's retries are turned off too unless the user set them
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``, ``MLFLOW_HTTP_REQUEST_TIMEOUT=60``, only where unset).

Experiments this package creates or uses carry the tag ``mlflow.experimentKind`` =
``custom_model_development``, so MLflow 3's UI opens them on the training-runs list, not the GenAI view.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dreambooth_sweep.errors import ConfigError
from dreambooth_sweep.files import file_lock
from dreambooth_sweep.tracking.secrets import mask_text, masked_line
from dreambooth_sweep.tracking.tags import EXPERIMENT_KIND, TAG_EXPERIMENT_KIND

__all__ = [
    "CHECK_TIMEOUT_S",
    "STARTUP_REQUEST_TIMEOUT_S",
    "check_reachable",
    "connect",
    "default_uri",
    "experiment_id",
    "is_http",
    "lock_file",
    "resolve_uri",
    "server_answers",
    "setup_error",
    "startup_limits",
]

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 4.0  # the reachability probe of an http tracking server at start
STARTUP_REQUEST_TIMEOUT_S = 15  # each start-up request after the probe (MLflow's own default: 120 s)
_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
_TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"


def default_uri(log_dir: str | os.PathLike[str]) -> str:
    """The embedded store: ``sqlite:///<absolute log_dir>/mlflow.db`` (what ``make ui`` opens)."""
    return f"sqlite:///{Path(log_dir).expanduser().resolve() / 'mlflow.db'}"


def resolve_uri(cfg: Any) -> str:
    """``tracking.uri``, or the embedded default under ``paths.log_dir`` when it is null."""
    uri = cfg.tracking.uri
    return str(uri) if uri else default_uri(cfg.paths.log_dir)


def lock_file(log_dir: Path) -> Path:
    """The lock every process sharing ``paths.log_dir`` takes around store set-up and parent runs."""
    return log_dir / "mlflow.lock"


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _artifact_root(uri: str, log_dir: Path) -> Path | None:
    """Where new experiments keep artifacts: beside a SQLite file, under log_dir for other databases,
    and wherever the server says for http(s) and other remote stores (None)."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
    if re.match(r"^(postgresql|mysql|mssql)(\+\w+)?://", uri):
        return log_dir / "mlartifacts"
    return None


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "experiment"


# --- reaching the store ------------------------------------------------------------------------------


def check_reachable(uri: str, timeout: float = CHECK_TIMEOUT_S) -> None:
    """Raise a one-line :class:`ConfigError` unless the server at ``uri`` answers ``/health``.

    Refused, timed out, or a 5xx answer (what a proxy or load balancer says for a dead server) all
    count as unreachable. Other answers (a 401 from an auth proxy, a 404 from a server without the
    endpoint) pass: the start-up calls, bounded by :func:`startup_limits`, tell those apart fast.
    """
    import requests

    try:
        answer = requests.get(uri.rstrip("/") + "/health", timeout=timeout)
    except requests.RequestException as e:
        reason = type(e).__name__
    else:
        if answer.status_code < 500:
            return
        reason = f"HTTP {answer.status_code} at /health"
    raise ConfigError(
        f"MLflow tracking server {mask_text(uri)} is unreachable ({reason}): "
        "start it (mlflow server ...), fix tracking.uri, or set tracking=none"
    )


def server_answers(uri: str, timeout: float = 2.0) -> bool:
    """True when the server at ``uri`` answers ``/health`` at all (the sender's outage check)."""
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout)
        return True
    except requests.RequestException:
        return False


@contextlib.contextmanager
def startup_limits(uri: str) -> Iterator[None]:
    """MLflow's HTTP retries off and a short request timeout for the ``with`` block (http stores).

    MLflow reads both variables on every request, so setting them around the start-up calls bounds
    exactly those calls; the user's own values are back afterwards for everything else.
    """
    if not is_http(uri):
        yield
        return
    saved = {k: os.environ.get(k) for k in (_RETRIES, _TIMEOUT)}
    os.environ[_RETRIES] = "0"
    os.environ[_TIMEOUT] = str(STARTUP_REQUEST_TIMEOUT_S)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        # Mid-run calls: the sender retries itself, without minutes of backoff and a urllib3
        # warning per attempt.
        os.environ.setdefault(_RETRIES, "0")
        os.environ.setdefault(_TIMEOUT, "60")


def connect(uri: str, log_dir: Path) -> Any:
    """An MlflowClient for ``uri``; an unreachable http server fails here, fast, with one line.

    Call it inside :func:`startup_limits`. A database store creates or migrates its schema on first
    use; parallel jobs on one machine (joblib, submitit_local) would race doing so ("table
    _alembic_tmp_... already exists"), so the first query runs under the file lock in ``log_dir``.
    """
    if is_http(uri):
        check_reachable(uri)
    else:
        log_dir.mkdir(parents=True, exist_ok=True)
    from mlflow import MlflowClient

    try:
        if is_http(uri):
            return MlflowClient(tracking_uri=uri)
        with file_lock(lock_file(log_dir)):
            client = MlflowClient(tracking_uri=uri)  # opens the store: creates/migrates the schema
            client.search_experiments(max_results=1)
        return client
    except Exception as e:
        raise setup_error(uri, e) from e


def setup_error(uri: str, exc: Exception) -> ConfigError:
    """The one-line error for a store that failed during start-up."""
    if isinstance(exc, ConfigError):
        return exc
    return ConfigError(
        f"MLflow tracking at {mask_text(uri)} failed to start ({masked_line(exc, 300)}): "
        "fix tracking.uri or set tracking=none"
    )


# --- the experiment ----------------------------------------------------------------------------------


def experiment_id(client: Any, name: str, uri: str, log_dir: Path) -> str:
    """Get or create the experiment (call under the lock); restores a deleted one of the same name.

    A new experiment gets its artifact location (see the module docstring) and the experiment kind
    tag; an existing one without the kind tag gets it too (an experiment the user tagged keeps theirs).
    """
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            log.warning("MLflow experiment %r was deleted; restoring it", name)
            client.restore_experiment(exp.experiment_id)
        if TAG_EXPERIMENT_KIND not in (exp.tags or {}):
            _set_kind(client, exp.experiment_id)
        return exp.experiment_id
    root = _artifact_root(uri, log_dir)
    location = (root / _slug(name)).as_uri() if root is not None else None
    try:
        return client.create_experiment(
            name, artifact_location=location, tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND}
        )
    except Exception:
        # Another machine (no shared lock file) created it a moment ago: use theirs.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _set_kind(client: Any, exp_id: str) -> None:
    try:
        client.set_experiment_tag(exp_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
    except Exception as e:  # only the UI's first view depends on it
        log.warning("MLflow: could not tag experiment %s with its kind: %s", exp_id, masked_line(e, 300))
