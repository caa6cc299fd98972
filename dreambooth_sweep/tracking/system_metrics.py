"""``system/*`` metrics (CPU, memory, GPU) of a run, sampled by MLflow's monitor, logged through the tracker.

MLflow's own ``log_system_metrics`` thread writes straight to the store; sampling here and logging
through :meth:`Tracker.log_metrics` puts the samples in the tracker's queue instead, so they are
buffered through a server outage like every other metric.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["SystemMetrics", "system_metrics_available"]

log = logging.getLogger(__name__)


def system_metrics_available() -> bool:
    """True unless ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`` is false or psutil is missing."""
    flag = os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


class SystemMetrics:
    """A daemon thread logging one aggregated sample per ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``."""

    def __init__(self, monitor: Any, log_metrics: Callable[..., None]) -> None:
        self._monitor, self._log_metrics = monitor, log_metrics
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mlflow-system-metrics", daemon=True)

    @classmethod
    def start(
        cls, run_id: str, uri: str, log_metrics: Callable[[Mapping[str, float], int], None]
    ) -> SystemMetrics | None:
        """Start sampling for ``run_id``; None (and a debug line) where MLflow's monitor is unavailable."""
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(run_id, tracking_uri=uri)
        except Exception as e:
            log.debug("system metrics unavailable: %s", e)
            return None
        sampler = cls(monitor, log_metrics)
        sampler._thread.start()
        return sampler

    def _loop(self) -> None:
        monitor, interval, step = self._monitor, float(self._monitor.sampling_interval), 0
        while True:
            try:
                monitor.collect_metrics()
            except Exception:
                return
            if self._stop.wait(interval):
                return
            values = monitor.aggregate_metrics()
            for m in monitor.monitors:
                m.clear_metrics()
            self._log_metrics({f"system/{k}": v for k, v in values.items()}, step)
            step += 1

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
