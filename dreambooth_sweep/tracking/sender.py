"""The background thread that delivers a run's log calls, and buffers them through a server outage.

Every tracker call only appends an item to an in-memory deque (microseconds, no lock, no wake-up);
this thread wakes every ``BATCH_WINDOW_S`` (or at once on flush/close) and delivers what piled up, in
order, consecutive metrics/params/tags merged into one ``log_batch`` call.

**Why not MLflow's own async logging.** MLflow 3 has one (``mlflow.config.enable_async_logging()``,
``MlflowClient.log_batch(..., synchronous=False)``; ``mlflow/utils/async_logging/``): a queue per
process, a thread that merges metrics/params/tags into ``log_batch`` calls, and a separate queue for
``log_image``/artifacts. It covers the batching and the off-the-hot-path part, and we would use it for
that alone. It does not cover an outage: a batch that fails (after MLflow's HTTP retries, minutes of
backoff per request) is logged as an error and its data is gone, the two queues keep no order between
metrics, images and the run's final status, and nothing bounds how long the end of a run waits. So
this sender is kept for exactly that, buffering through a lost server:

* the server stops answering mid-run: training goes on; one warning; items stay queued in memory (up
  to ``MAX_QUEUED``, then new ones are dropped with one warning); delivery is retried every
  ``RETRY_INTERVAL_S`` and resumes in order when the server is back;
* at the end the run waits for the server at most ``flush_timeout`` seconds, then gives up with one
  warning that counts the lost items (the run then stays RUNNING on the server);
* a request the server *rejects* (e.g. a changed param) is dropped with a warning, never retried;
  database stores (sqlite://, postgresql://) have no server to wait for: a failing write is retried a
  few times with backoff, then dropped.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from dreambooth_sweep.tracking.params import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH
from dreambooth_sweep.tracking.secrets import mask_text, masked_line
from dreambooth_sweep.tracking.store import is_http, server_answers

__all__ = ["BATCH_WINDOW_S", "MAX_QUEUED", "RETRY_INTERVAL_S", "Op", "Sender"]

log = logging.getLogger(__name__)

RETRY_INTERVAL_S = 2.0  # delay between delivery attempts while the server is unreachable
BATCH_WINDOW_S = 0.5  # metrics are gathered this long into one log_batch call
MAX_QUEUED = 100_000  # items kept in memory while the server is away (one log_train call = 1 item)

# MLflow error codes that mean "try again later" rather than "this request is wrong".
_TRANSIENT_CODES = {
    "INTERNAL_ERROR",
    "TEMPORARILY_UNAVAILABLE",
    "IO_ERROR",
    "SERVICE_UNDER_MAINTENANCE",
    "DEADLINE_EXCEEDED",
    "REQUEST_LIMIT_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "ABORTED",
    "COULD_NOT_ACQUIRE_LOCK",
    "UNPARSEABLE_HTTP_ERROR",
}


@dataclass
class Op:
    """One queued log call: a ``log_batch`` (mergeable) or any other client call."""

    kind: str  # batch | call
    run_id: str = ""
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)  # key, value, ms, step
    params: list[Any] = field(default_factory=list)
    tags: list[Any] = field(default_factory=list)
    fn: Any = None  # kind == call: fn(client) does the work
    what: str = ""  # for warnings


def _is_transient(exc: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code in _TRANSIENT_CODES
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | TypeError | ValueError):
        return False
    return isinstance(exc, OSError) or type(exc).__module__.startswith(("requests", "urllib3", "sqlalchemy"))


class Sender(threading.Thread):
    """Delivers queued items to MLflow in order; buffers and retries while the server is away."""

    def __init__(self, client: Any, uri: str) -> None:
        super().__init__(name="mlflow-sender", daemon=True)
        self.client, self.uri = client, uri
        self.buf: collections.deque[Op] = collections.deque()
        self.hurry = threading.Event()  # set by flush()/close(): deliver now
        self.abandon = threading.Event()  # set when the end of the run stops waiting for the server
        self.closing = False
        self.offline_since: float | None = None
        self.busy = False  # an item is being delivered
        self.dropped = self.rejected = self.undelivered = 0

    # producer side ---------------------------------------------------------------------------------
    def submit(self, op: Op) -> None:
        if len(self.buf) >= MAX_QUEUED:
            if not self.dropped:
                log.warning(
                    "MLflow buffer full (%d items): dropping new log calls until it drains", MAX_QUEUED
                )
            self.dropped += 1
            return
        self.buf.append(op)

    def pending(self) -> int:
        return len(self.buf) + self.busy

    # consumer side ---------------------------------------------------------------------------------
    def _take(self) -> Op:
        """The next item; consecutive batch items of one run merged into one log_batch call."""
        op = self.buf.popleft()
        if op.kind != "batch":
            return op
        merged = Op("batch", op.run_id, list(op.metrics), list(op.params), list(op.tags), what="metrics")
        while self.buf:
            nxt = self.buf[0]
            fits = (
                nxt.kind == "batch"
                and nxt.run_id == merged.run_id
                and len(merged.metrics) + len(nxt.metrics) <= MAX_METRICS_PER_BATCH
                and len(merged.params) + len(nxt.params) + len(merged.tags) + len(nxt.tags)
                <= MAX_PARAMS_TAGS_PER_BATCH
            )
            if not fits:
                break
            self.buf.popleft()
            merged.metrics += nxt.metrics
            merged.params += nxt.params
            merged.tags += nxt.tags
        return merged

    def run(self) -> None:
        while True:
            if not self.buf:
                if self.closing:
                    return
                self.hurry.wait(BATCH_WINDOW_S)
                if not self.closing:
                    self.hurry.clear()
                continue
            self.busy = True
            self._deliver(self._take())
            self.busy = False
            if self.abandon.is_set():
                self.undelivered += len(self.buf)
                self.buf.clear()
                return

    def _send(self, op: Op) -> None:
        if op.kind == "batch":
            from mlflow.entities import Metric

            metrics = [Metric(*m) for m in op.metrics]  # (key, value, timestamp, step) tuples
            self.client.log_batch(op.run_id, metrics=metrics, params=op.params, tags=op.tags)
        else:
            op.fn(self.client)

    def _deliver(self, op: Op) -> None:
        attempts = 0
        while True:
            try:
                self._send(op)
            except Exception as e:
                if self.abandon.is_set():
                    self.undelivered += 1
                    return
                if not _is_transient(e):
                    self.rejected += 1
                    log.warning("MLflow rejected %s: %s (dropped)", op.what or op.kind, masked_line(e, 300))
                    return
                if is_http(self.uri) and not server_answers(self.uri):
                    if self.offline_since is None:
                        self.offline_since = time.monotonic()
                        log.warning(
                            "MLflow server %s is unreachable: training continues, log calls are buffered "
                            "in memory and retried every %g s",
                            mask_text(self.uri),
                            RETRY_INTERVAL_S,
                        )
                    self.abandon.wait(RETRY_INTERVAL_S)
                    continue
                attempts += 1
                if attempts > 3:
                    self.rejected += 1
                    log.warning(
                        "MLflow failed %s 4 times: %s (dropped)", op.what or op.kind, masked_line(e, 300)
                    )
                    return
                self.abandon.wait(0.5 * 2**attempts)
                continue
            if self.offline_since is not None:
                log.warning(
                    "MLflow server %s is back after %.0f s: delivering buffered log calls",
                    mask_text(self.uri),
                    time.monotonic() - self.offline_since,
                )
                self.offline_since = None
            return

    def close(self, flush_timeout: float) -> None:
        """Deliver everything queued; give up after the server has been away ``flush_timeout`` s."""
        self.closing = True
        self.hurry.set()
        started = time.monotonic()
        while self.is_alive():
            self.join(0.1)
            if self.offline_since is not None:
                away = time.monotonic() - max(self.offline_since, started)
                if away > flush_timeout:
                    self.abandon.set()
                    self.join(10)
                    break
        if self.undelivered or self.abandon.is_set():
            log.warning(
                "MLflow server %s unreachable for %.0f s at the end of the run: %d log call(s) not "
                "delivered; the run stays RUNNING there",
                mask_text(self.uri),
                flush_timeout,
                max(self.undelivered, 1),
            )
