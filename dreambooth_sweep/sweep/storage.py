"""Optuna storages from URLs: one opener for the sweeper, its jobs, the tracker and the report.

``journal:///path.log`` is a journal file, anything else an SQLAlchemy URL (``sqlite:///abs.db``,
``postgresql://user:pw@host/db``). A URL that cannot be opened is one :class:`SweepError` line with
its password masked. Jobs get the sweep's URL through :func:`job_storage_override`, which keeps a
password out of Hydra's logs and saved configs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dreambooth_sweep.errors import one_line
from dreambooth_sweep.sweep.errors import SweepError
from dreambooth_sweep.tracking.secrets import mask_text

if TYPE_CHECKING:
    import optuna

__all__ = [
    "JOURNAL_PREFIX",
    "STORAGE_ENV",
    "job_storage",
    "job_storage_override",
    "open_storage",
    "release_job_storages",
]

log = logging.getLogger(__name__)

JOURNAL_PREFIX = "journal://"
# Where jobs read a storage URL that carries a password (see job_storage_override).
STORAGE_ENV = "DBS_SWEEP_STORAGE"
# Errors of workers creating Optuna's tables in a fresh database at the same instant (SQLite: "table
# studies already exists", PostgreSQL: a duplicate pg_type row), or of a briefly locked SQLite file.
# Only these are retried: a server that refuses the connection fails at once.
_RACES = ("already exists", "duplicate key", "uniqueviolation", "database is locked")


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Optuna storage for a URL: ``journal:///path.log`` is a journal file, anything else an RDB URL.

    SQLite files are switched to write-ahead logging, so a job reading the study never blocks the
    sweeper's writes, and wait up to a minute for a lock instead of SQLAlchemy's 5 s. (WAL needs a
    local disk; several machines share PostgreSQL or a journal file instead.)

    Raises:
        SweepError: the storage cannot be opened (no server, bad URL, missing driver), one line.
    """
    import optuna
    import sqlalchemy.exc

    try:
        if url.startswith(JOURNAL_PREFIX):
            path = Path(url.removeprefix(JOURNAL_PREFIX)).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
        storage = _rdb_storage(url, engine_kwargs)
    except Exception as e:
        cause = getattr(e, "orig", None) or e  # the driver's own message, without SQLAlchemy's wrapping
        raise SweepError(
            f"cannot open the Optuna storage {mask_text(url)}: {mask_text(one_line(cause, 300, with_type=True))}: "
            "check that its server runs and the URL (user, password, host, port, database), "
            "or use sqlite:///path.db or journal:///path.log"
        ) from None
    if not url.startswith("sqlite"):
        return storage
    # WAL is a property of the file: set once, kept. Busy elsewhere right now: the next opener sets it.
    with contextlib.suppress(sqlalchemy.exc.OperationalError), storage.engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    return storage


def _rdb_storage(
    url: str, engine_kwargs: dict[str, Any] | None, attempts: int = 5
) -> optuna.storages.RDBStorage:
    """``RDBStorage(url)``, retried when workers race to create a fresh database's tables."""
    import optuna
    import sqlalchemy.exc

    for attempt in range(1, attempts + 1):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except sqlalchemy.exc.SQLAlchemyError as e:
            if attempt == attempts or not any(race in str(e).lower() for race in _RACES):
                raise
            log.debug("opening the Optuna storage (attempt %d of %d): %s", attempt, attempts, e)
            time.sleep(0.2 + random.uniform(0, 1))
    raise AssertionError("unreachable")


def job_storage_override(url: str, environ: MutableMapping[str, str] = os.environ) -> str:
    """The ``sweep.storage`` override of every job.

    Hydra writes overrides to its launcher log line and to each job's ``.hydra/*.yaml``: a URL with a
    password goes to the environment variable ``DBS_SWEEP_STORAGE`` instead (set here in ``environ``,
    which in-process and local launchers pass on to their jobs; a remote launcher's workers need it
    set themselves), and the override is the literal interpolation ``${oc.env:DBS_SWEEP_STORAGE}``.
    """
    from dreambooth_sweep.sweep.search_space import format_value

    if mask_text(url) == url:
        return f"sweep.storage={format_value(url)}"
    environ[STORAGE_ENV] = url
    return f"sweep.storage=${{oc.env:{STORAGE_ENV}}}"


_job_storages: dict[str, optuna.storages.BaseStorage] = {}


def job_storage(url: str) -> optuna.storages.BaseStorage:
    """The storage a job reports to: one per URL and process (local launchers run many jobs in one)."""
    if url not in _job_storages:
        _job_storages[url] = open_storage(url)
    return _job_storages[url]


def release_job_storages() -> None:
    """Roll back and close this process's job-side connections.

    A job interrupted in the middle of a write (Ctrl-C under an in-process launcher) can leave its
    SQLite transaction open; the sweeper calls this before it marks the trial, or it would wait on
    that lock.
    """
    if not _job_storages:
        return
    import optuna

    for storage in _job_storages.values():
        if isinstance(storage, optuna.storages.RDBStorage):
            storage.scoped_session.remove()
            storage.engine.dispose()
    _job_storages.clear()
