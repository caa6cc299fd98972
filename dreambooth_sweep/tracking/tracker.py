"""The tracker of one training run: what the trainer calls, from opening the run to its end status.

Usage (the trainer)::

    with start_tracking(cfg) as tracker:           # cfg: the composed RunConfig
        tracker.log_train(step, {"train/loss": loss, "train/lr": lr})  # throttled
        tracker.log_metrics({"eval/dino": 0.61}, step=step)            # always logged
        tracker.log_image(grid, key="samples", step=step)               # UI step slider
        tracker.log_artifact(lora_file, artifact_path="weights")
        tracker.log_summary({"best/score": 0.58, "best/step": 300})

``tracking=none`` gives a :class:`NullTracker` with the same methods doing nothing.

Opening connects to the store (:mod:`~dreambooth_sweep.tracking.store`: an unreachable server fails
here, within seconds, with one line), places the run (:mod:`~dreambooth_sweep.tracking.runs`) and
starts its :class:`~dreambooth_sweep.tracking.sender.Sender`: every call below only queues an item
(microseconds), so pass plain floats (a CUDA tensor would force a device sync). Leaving the block (or
:meth:`Tracker.flush`) delivers everything queued.

:meth:`Tracker.log_summary` on a child also updates the parent's ``best/*`` values when the child
beats them, and logs ``sweep/score`` at step = trial number. A parent is RUNNING while a child runs
and FINISHED when its last running child ends.

**End of run.** Leaving the ``with`` block sets FINISHED; an exception sets FAILED with tag ``error``
(one line, ``Type: message``); KeyboardInterrupt or SIGTERM sets KILLED; ``optuna.TrialPruned`` is a
normal outcome: FINISHED with tag ``pruned=true``. Exceptions always propagate. A process killed
outright cannot end its run; later jobs close it (:mod:`~dreambooth_sweep.tracking.stale`). At the end
the run waits for a lost server at most ``flush_timeout`` seconds (default ``FLUSH_TIMEOUT_S``, env
``DBS_TRACKING_FLUSH_TIMEOUT``).

**Secrets.** Values of keys naming a token/password/secret/api_key, and passwords inside URLs
(``postgresql://user:pw@host``), are written as ``***`` in params, tags and ``config.yaml``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dreambooth_sweep.errors import ConfigError
from dreambooth_sweep.files import file_lock
from dreambooth_sweep.tracking.params import (
    MAX_KEY,
    MAX_PARAMS_TAGS_PER_BATCH,
    config_container,
    flatten_params,
    tag_value,
)
from dreambooth_sweep.tracking.runs import locate, plan_run, run_tags
from dreambooth_sweep.tracking.secrets import mask_secrets, mask_text, masked_line
from dreambooth_sweep.tracking.sender import Op, Sender
from dreambooth_sweep.tracking.stale import finish_parent_if_idle
from dreambooth_sweep.tracking.store import (
    connect,
    is_http,
    lock_file,
    resolve_uri,
    setup_error,
    startup_limits,
)
from dreambooth_sweep.tracking.system_metrics import SystemMetrics, system_metrics_available
from dreambooth_sweep.tracking.tags import (
    TAG_BEST_RUN_ID,
    TAG_BEST_RUN_NAME,
    TAG_ERROR,
    TAG_PRUNED,
    UI_QUERY,
)

if TYPE_CHECKING:
    from omegaconf import DictConfig

__all__ = ["FLUSH_TIMEOUT_S", "NullTracker", "Terminated", "Tracker", "start_tracking"]

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 60.0  # how long the end of a run waits for a lost server before giving up


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM while a tracked run is open, so the run is marked KILLED."""


class NullTracker:
    """``tracking=none``: the same methods, doing nothing."""

    run_id: str | None = None
    parent_run_id: str | None = None

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, *exc: object) -> bool:
        return False

    def log_config(self, cfg: DictConfig | Mapping[str, Any]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_train(self, step: int, values: Mapping[str, float]) -> None:
        pass

    def log_metrics(self, values: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_image(self, image: Any, key: str, step: int = 0) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        pass

    def log_summary(
        self, values: Mapping[str, Any], *, score_key: str = "best/score", maximize: bool = True
    ) -> None:
        pass

    def flush(self, timeout: float | None = None) -> bool:
        return True


def _image_key(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_\-./ ]", "_", key) or "image"


class Tracker:
    """One MLflow run; created by :func:`start_tracking`, opened by ``with``."""

    def __init__(
        self,
        cfg: DictConfig,
        *,
        flush_timeout: float | None = None,
        system_metrics: bool | None = None,
    ) -> None:
        self.cfg = cfg
        self.uri = resolve_uri(cfg)
        self.log_dir = Path(cfg.paths.log_dir).expanduser().resolve()
        self.plan = plan_run(cfg)
        env_timeout = os.environ.get("DBS_TRACKING_FLUSH_TIMEOUT")
        self.flush_timeout = (
            flush_timeout if flush_timeout is not None else float(env_timeout or FLUSH_TIMEOUT_S)
        )
        self.system_metrics = system_metrics_available() if system_metrics is None else system_metrics
        self.every = max(1, int(cfg.tracking.log_every_n_steps))
        self.max_steps = int(cfg.train.max_steps)
        self.run_id: str | None = None
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None
        self._client: Any = None
        self._sender: Sender | None = None
        self._params: dict[str, str] = {}
        self._warned: set[str] = set()
        self._system: SystemMetrics | None = None
        self._old_sigterm: Any = None

    @property
    def lock_path(self) -> Path:
        return lock_file(self.log_dir)

    # opening ---------------------------------------------------------------------------------------
    def __enter__(self) -> Tracker:
        self._open()
        return self

    def _open(self) -> None:
        with startup_limits(self.uri):  # a bad URI fails in seconds, not after MLflow's retries
            self._client = connect(self.uri, self.log_dir)
            try:
                self.experiment_id, self.parent_run_id = locate(
                    self._client, self.plan, self.uri, self.log_dir, self.cfg.sweep.storage
                )
                self._create_run()
            except Exception as e:
                raise setup_error(self.uri, e) from e
        if is_http(self.uri):
            log.info(
                "MLflow run: %s/#/experiments/%s/runs/%s?%s",
                mask_text(self.uri.rstrip("/")),
                self.experiment_id,
                self.run_id,
                UI_QUERY,
            )
        self._sender = Sender(self._client, self.uri)
        self._sender.start()
        self.log_config(self.cfg)
        if self.system_metrics:
            self._system = SystemMetrics.start(self.run_id or "", self.uri, self.log_metrics)
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            self._old_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)

    def _create_run(self) -> None:
        client = self._client
        run = client.create_run(
            self.experiment_id,
            run_name=self.plan.run_name,
            tags=run_tags(self.cfg, self.plan, self.parent_run_id),
        )
        self.run_id = run.info.run_id
        if self.parent_run_id and client.get_run(self.parent_run_id).info.status != "RUNNING":
            client.update_run(self.parent_run_id, status="RUNNING")

    # logging ---------------------------------------------------------------------------------------
    def _submit(self, op: Op) -> None:
        if self._sender is not None:
            self._sender.submit(op)

    def _warn_once(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)

    def log_config(self, cfg: DictConfig | Mapping[str, Any]) -> None:
        """Resolved config as ``config.yaml`` plus flattened params (secrets masked). Also done on enter."""
        from mlflow.entities import Param
        from omegaconf import OmegaConf

        try:
            container = mask_secrets(config_container(cfg))
            text = OmegaConf.to_yaml(OmegaConf.create(container))
            params = flatten_params(container)
        except Exception as e:
            self._warn_once("config", "could not log the config to MLflow: %s", masked_line(e))
            return
        new = []
        for k, v in params.items():
            if k not in self._params:
                self._params[k] = v
                new.append(Param(k, v))
            elif self._params[k] != v:
                self._warn_once(f"param:{k}", "MLflow params are immutable: %s keeps %r", k, self._params[k])
        for i in range(0, len(new), MAX_PARAMS_TAGS_PER_BATCH):
            self._submit(Op("batch", self.run_id or "", params=new[i : i + MAX_PARAMS_TAGS_PER_BATCH]))
        run_id = self.run_id
        self._submit(Op("call", fn=lambda c: c.log_text(run_id, text, "config.yaml"), what="config.yaml"))

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Extra params (flattened, masked, logged once each)."""
        from mlflow.entities import Param

        new = []
        for k, v in flatten_params(params).items():
            if k not in self._params:
                self._params[k] = v
                new.append(Param(k, v))
        for i in range(0, len(new), MAX_PARAMS_TAGS_PER_BATCH):
            self._submit(Op("batch", self.run_id or "", params=new[i : i + MAX_PARAMS_TAGS_PER_BATCH]))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        masked = mask_secrets(dict(tags))
        items = [RunTag(str(k)[:MAX_KEY], tag_value(v)) for k, v in masked.items() if v is not None]
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self._submit(Op("batch", self.run_id or "", tags=items[i : i + MAX_PARAMS_TAGS_PER_BATCH]))

    def should_log_train(self, step: int) -> bool:
        """True at step 1, every ``tracking.log_every_n_steps`` steps, and at ``train.max_steps``."""
        return step == 1 or step % self.every == 0 or step == self.max_steps

    def log_train(self, step: int, values: Mapping[str, float]) -> None:
        """Per-step training values, logged only where :meth:`should_log_train` says so."""
        if self.should_log_train(step):
            self.log_metrics(values, step=step)

    def log_metrics(self, values: Mapping[str, float], step: int | None = None) -> None:
        """Metrics at ``step`` (always logged). Values that are not numbers are skipped with a warning."""
        ts = int(time.time() * 1000)
        metrics = []
        for k, v in values.items():
            try:
                metrics.append((str(k)[:MAX_KEY], float(v), ts, int(step or 0)))
            except (TypeError, ValueError):
                self._warn_once(f"metric:{k}", "metric %s=%r is not a number: not logged", k, v)
        if metrics:
            self._submit(Op("batch", self.run_id or "", metrics=metrics, what="metrics"))

    def log_image(self, image: Any, key: str, step: int = 0) -> None:
        """A PIL image (or HxWxC uint8 array) at ``step`` under ``key`` (``images/`` in the artifacts)."""
        ts = int(time.time() * 1000)
        with contextlib.suppress(AttributeError):
            image = image.copy()  # the caller may reuse its buffer before delivery
        run_id, key = self.run_id, _image_key(key)
        self._submit(
            Op(
                "call",
                fn=lambda c: c.log_image(
                    run_id, image, key=key, step=int(step), timestamp=ts, synchronous=True
                ),
                what=f"image {key}@{step}",
            )
        )

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Upload a file to ``<artifact_path>/<file name>``, or a directory's contents to
        ``<artifact_path>/`` (default: the directory's name), as MLflow's log_artifact(s) do.

        The upload happens in the background: keep the files in place until the run ends (or call
        :meth:`flush`).
        """
        p = Path(path)
        run_id = self.run_id
        if p.is_dir():
            dest = artifact_path or p.name

            def fn(c: Any) -> None:
                c.log_artifacts(run_id, str(p), dest)
        else:

            def fn(c: Any) -> None:
                c.log_artifact(run_id, str(p), artifact_path)

        self._submit(Op("call", fn=fn, what=f"artifact {p}"))

    def log_summary(
        self, values: Mapping[str, Any], *, score_key: str = "best/score", maximize: bool = True
    ) -> None:
        """Final values of this run; on a child run, also the parent's best-so-far.

        Numbers become metrics (step 0), anything else tags. When this run is a child and
        ``values[score_key]`` beats the parent's (higher if ``maximize``), the parent gets all numeric
        values plus ``best/trial`` and tags ``best.run_id``/``best.run_name``. The parent also logs
        ``sweep/score`` at step = trial number, one point per trial.
        """
        numbers = {k: v for k, v in values.items() if _is_number(v)}
        others = {k: v for k, v in values.items() if not _is_number(v)}
        if numbers:
            self.log_metrics(numbers, step=0)
        if others:
            self.set_tags(others)
        if not self.parent_run_id or not _is_number(values.get(score_key)):
            return
        parent_id, run_id, run_name, trial = (
            self.parent_run_id,
            self.run_id,
            self.plan.run_name,
            self.plan.trial,
        )
        lock = self.lock_path

        def update_parent(c: Any) -> None:
            from mlflow.entities import Metric, RunTag

            ts = int(time.time() * 1000)
            score = float(values[score_key])
            with file_lock(lock):
                held = c.get_run(parent_id).data.metrics.get(score_key)
                metrics = [Metric("sweep/score", score, ts, int(trial or 0))]
                tags = []
                if held is None or (score > held if maximize else score < held):
                    metrics += [Metric(k, float(v), ts, 0) for k, v in numbers.items()]
                    if trial is not None:
                        metrics.append(Metric("best/trial", float(trial), ts, 0))
                    tags = [RunTag(TAG_BEST_RUN_ID, run_id or ""), RunTag(TAG_BEST_RUN_NAME, run_name or "")]
                c.log_batch(parent_id, metrics=metrics, tags=tags)

        self._submit(Op("call", fn=update_parent, what="parent summary"))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is delivered (or ``timeout`` s); True if it was."""
        if self._sender is None:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._sender.pending() > 0 and self._sender.is_alive():
            self._sender.hurry.set()
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    # closing ---------------------------------------------------------------------------------------
    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        try:
            self._close(exc)
        except Exception as e:  # tracking must never turn a finished run into a crash
            log.warning("MLflow: closing run %s failed: %s", self.run_id, masked_line(e))
        return False

    def _close(self, exc: BaseException | None) -> None:
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None
        if self._system is not None:
            self._system.stop()
        status, tags = _outcome(exc)
        if tags:
            self.set_tags(tags)
        run_id, parent_id, end = self.run_id, self.parent_run_id, int(time.time() * 1000)
        lock = self.lock_path

        def terminate(c: Any) -> None:
            c.set_terminated(run_id, status=status, end_time=end)
            if parent_id:
                finish_parent_if_idle(c, parent_id, lock)

        self._submit(Op("call", fn=terminate, what=f"status {status}"))
        if self._sender is not None:
            self._sender.close(self.flush_timeout)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(f"received signal {signal.Signals(signum).name}")


def _outcome(exc: BaseException | None) -> tuple[str, dict[str, str]]:
    """Run status and extra tags for how the block ended."""
    if exc is None:
        return "FINISHED", {}
    with contextlib.suppress(ImportError):
        import optuna

        if isinstance(exc, optuna.TrialPruned):
            return "FINISHED", {TAG_PRUNED: "true"}
    if isinstance(exc, KeyboardInterrupt):
        return "KILLED", {TAG_ERROR: masked_line(exc)}
    if isinstance(exc, SystemExit) and exc.code in (None, 0):
        return "FINISHED", {}
    return "FAILED", {TAG_ERROR: masked_line(exc)}


def _is_number(v: Any) -> bool:
    """Ints, floats, numpy/torch scalars; not bools or strings (those become tags)."""
    if isinstance(v, bool | str | bytes) or v is None:
        return False
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def start_tracking(
    cfg: DictConfig,
    *,
    flush_timeout: float | None = None,
    system_metrics: bool | None = None,
) -> Tracker | NullTracker:
    """The tracker for this run: use it as ``with start_tracking(cfg) as tracker:``.

    Args:
        cfg: the composed run config (``tracking``, ``paths``, ``sweep``, ``model``, ``data`` ... groups).
        flush_timeout: seconds the end of the run waits for an unreachable server (default
            ``FLUSH_TIMEOUT_S`` or env ``DBS_TRACKING_FLUSH_TIMEOUT``).
        system_metrics: log ``system/*`` CPU/GPU/memory metrics (default: when psutil is importable and
            ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`` is not false).

    Returns:
        A :class:`Tracker`, or a :class:`NullTracker` when ``tracking.backend`` is ``none`` or in the
        processes of a multi-GPU launch other than rank 0 (env ``RANK``): one MLflow run per trial.
    """
    backend = str(cfg.tracking.backend).lower()
    if backend not in ("mlflow", "none"):
        raise ConfigError(f"unknown tracking.backend={backend!r}: choose mlflow or none")
    if backend == "none" or _process_rank() != 0:  # one run per trial, however many GPUs train it
        return NullTracker()
    return Tracker(cfg, flush_timeout=flush_timeout, system_metrics=system_metrics)


def _process_rank() -> int:
    """This process's rank in a multi-process launch (``accelerate launch``, torchrun, MPI); 0 alone."""
    for var in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0
