"""Real services on 127.0.0.1 for tests: a PostgreSQL server (Debian's ``postgresql`` package), an
``mlflow server``, and worker processes that can be killed as a group.

PostgreSQL refuses to run as root: as root the binaries run as the ``postgres`` user (``runuser``),
in a temporary folder that user owns. Without the binaries :func:`postgres_skip_reason` says why, and
the tests that need them skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from conftest import tiny_overrides as shared_tiny_overrides

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin_dir() -> Path | None:
    """Folder holding initdb/pg_ctl/psql: Debian's /usr/lib/postgresql/<newest>/bin, else the PATH."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def postgres_skip_reason() -> str | None:
    """Why a real PostgreSQL cannot be started here, or None when it can."""
    if postgres_bin_dir() is None:
        return "PostgreSQL binaries not found (apt-get install postgresql; CI installs them)"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root and runuser (util-linux) is missing"
    try:  # the driver SQLAlchemy picks for postgresql:// (psycopg 3 from SQLAlchemy 2.1, psycopg2 before)
        from sqlalchemy.dialects import postgresql

        postgresql.dialect.import_dbapi()
    except ImportError as e:
        return f"no PostgreSQL driver for SQLAlchemy ({e}): pip install 'psycopg[binary]' psycopg2-binary"
    return None


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1:<random port>, password login for user ``dbs``."""

    user = "dbs"
    password = "pw-s3cret-42"  # tests check this string never reaches MLflow or the logs

    def __init__(self) -> None:
        bin_dir = postgres_bin_dir()
        assert bin_dir is not None, postgres_skip_reason()
        self.bin = bin_dir
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        # Not under pytest's tmp (mode 0700, owned by root): the postgres user must reach it.
        self.root = Path(tempfile.mkdtemp(prefix="dbs-postgres-"))
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self.data = self.root / "data"
        self.log = self.root / "server.log"

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / tool), *args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(
                f"{tool} failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}"
            )
        return done

    def sql(self, statement: str, db: str = "postgres") -> str:
        """Run SQL as the superuser over the Unix socket (trusted, no password)."""
        args = ["-h", str(self.root), "-p", str(self.port), "-U", "postgres", "-d", db]
        return self._run("psql", *args, "-v", "ON_ERROR_STOP=1", "-tAc", statement).stdout

    def start(self) -> PostgresServer:
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--no-sync",
            "--auth-local=trust", "--auth-host=scram-sha-256",
        )  # fmt: skip
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start"
        )
        self.sql(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'")
        for db in ("optuna", "mlflow"):
            self.create_database(db)
        return self

    def create_database(self, name: str) -> str:
        """A new empty database owned by ``dbs``; returns its URL."""
        self.sql(f"CREATE DATABASE {name} OWNER {self.user}")
        return self.url(name)

    def url(self, db: str) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


class MlflowServer:
    """``mlflow server`` on 127.0.0.1:<random port> over any backend store."""

    def __init__(self, backend_uri: str, artifacts: Path, log: Path) -> None:
        self.backend_uri, self.artifacts, self.log = backend_uri, artifacts, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        cmd = [
            PY, "-m", "mlflow", "server",
            "--backend-store-uri", self.backend_uri,
            "--default-artifact-root", str(self.artifacts),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=env, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + "/health", timeout=1).ok:
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log.read_text()[-3000:]}")
            time.sleep(0.3)
        raise TimeoutError(f"mlflow server did not start: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


def worker_env(**extra: str) -> dict[str, str]:
    """Environment of a worker process: offline, quiet, no system-metrics thread."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false",
        "HYDRA_FULL_ERROR": "1",
        **extra,
    }


class Worker:
    """A ``python -m dreambooth_sweep.train ...`` process in its own session (killable as a group)."""

    def __init__(self, args: list[str], log: Path, *, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._out = open(log, "w")  # noqa: SIM115 - closed in wait()/kill()
        self.proc = subprocess.Popen(
            [PY, "-m", "dreambooth_sweep.train", *args],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env or worker_env(),
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._out.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the whole process group (the worker and anything it started)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def close(self) -> None:
        self.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(10)
        self._out.close()


def tiny_overrides(root: Path, cache_dir: Path, demo_dir: Path, *, steps: int = 2) -> list[str]:
    """The shared tiny run (conftest.tiny_overrides), tracked, one thread per worker, no final save."""
    extra = ("train.save_final=false", "train.num_threads=1")
    return shared_tiny_overrides(root, cache_dir, demo_dir, *extra, steps=steps, tracking=True)
