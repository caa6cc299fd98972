"""What the sweeper does to trials in the shared storage: tell, stamp alive, fail stale, give back.

Every worker of a study runs these against the same storage, so each works from what is stored
(heartbeats, states, parameters), never from one process's memory. :func:`outcome` is the one
summary of a finished trial (the sweeper's log line).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, Trial, TrialState

from dreambooth_sweep.errors import one_line

__all__ = [
    "TRIED",
    "Heartbeat",
    "count_finished",
    "derive_seed",
    "drop_traceback",
    "fail_stale_trials",
    "interrupt",
    "live_running",
    "outcome",
    "params_key",
    "space_size",
    "tell",
]

log = logging.getLogger(__name__)

# States whose parameters a new trial should not repeat (FAIL may be worth a retry).
TRIED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


def tell(study: optuna.Study, trial: Trial | int, **kwargs: Any) -> None:
    """``study.tell`` that skips finished trials and survives GridSampler's ``study.stop()``."""
    try:
        study.tell(trial, skip_if_finished=True, **kwargs)
    except RuntimeError as e:
        # GridSampler calls study.stop() after the last grid point, which only works inside
        # study.optimize (optuna#5141); the trial's state was saved before that.
        if "Study.stop" not in str(e):
            raise


def derive_seed(*parts: object) -> int:
    """A 32-bit sampler seed from the configured seed and what sets this draw apart in the study."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big")


def params_key(params: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """A hashable form of a trial's parameters."""
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def space_size(space: Mapping[str, BaseDistribution]) -> int | None:
    """How many points a discrete search space has; None if any dimension is continuous."""
    size = 1
    for dist in space.values():
        if isinstance(dist, CategoricalDistribution):
            size *= len(dist.choices)
        elif isinstance(dist, IntDistribution):
            size *= (dist.high - dist.low) // (1 if dist.log else dist.step) + 1
        elif isinstance(dist, FloatDistribution) and dist.step is not None:
            size *= round((dist.high - dist.low) / dist.step) + 1
        else:
            return None
    return size


def count_finished(study: optuna.Study) -> int:
    """Finished trials that count towards ``n_trials`` (interrupted ones do not)."""
    trials = study.get_trials(deepcopy=False)
    return sum(t.state.is_finished() and not t.user_attrs.get("interrupted") for t in trials)


def live_running(study: optuna.Study, heartbeat_interval: float) -> list[FrozenTrial]:
    """RUNNING trials whose sweeper is alive: a recent heartbeat, or none yet but just asked."""
    now, grace = time.time(), 3 * heartbeat_interval
    live = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.user_attrs.get("heartbeat")
        if beat is None and t.datetime_start is not None:
            beat = t.datetime_start.timestamp()  # a naive local time, as Optuna stores it
        if beat is not None and now - beat <= grace:
            live.append(t)
    return live


def fail_stale_trials(
    study: optuna.Study, storage: optuna.storages.BaseStorage, study_id: int, heartbeat_interval: float
) -> None:
    """Fail RUNNING trials whose sweeper stopped beating (it was killed); other workers' trials go on."""
    now, grace = time.time(), 3 * heartbeat_interval
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.user_attrs.get("heartbeat")
        if beat is not None and now - beat > grace:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_user_attr(trial_id, "interrupted", True)
            storage.set_trial_user_attr(
                trial_id, "fail_reason", f"interrupted: silent for {now - beat:.0f} s"
            )
            tell(study, t.number, state=TrialState.FAIL)
            log.warning(
                "trial %d: its sweeper went silent %.0f s ago; failed as interrupted", t.number, now - beat
            )


def interrupt(study: optuna.Study, trials: Sequence[Trial], reason: str) -> None:
    """Fail trials that could not run to an end; they do not count towards n_trials."""
    for trial in trials:
        try:
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("fail_reason", reason)
            tell(study, trial, state=TrialState.FAIL)
        except Exception as e:
            log.warning(
                "could not mark trial %d as interrupted: %s", trial.number, one_line(e, with_type=True)
            )


def drop_traceback(exc: BaseException) -> None:
    """Let go of the frames of a job's exception (and its causes): they hold what ``train()`` held,
    its model and optimizer, and with them GPU memory for the rest of an in-process sweep."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if exc.__traceback__ is not None:
            traceback.clear_frames(exc.__traceback__)
            exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]


class Heartbeat:
    """Stamps the batch's trials as alive every ``interval`` seconds while their jobs run."""

    def __init__(self, trials: Sequence[Trial], interval: float) -> None:
        self.trials, self.interval = trials, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="optuna-sweeper-heartbeat", daemon=True)

    def __enter__(self) -> None:
        self.beat()
        self.thread.start()

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)  # a daemon: never wait long on a beat stuck behind a lock

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        now = time.time()
        for trial in self.trials:
            try:
                trial.set_user_attr("heartbeat", now)
            except Exception as e:  # finished elsewhere meanwhile; its job will find out when it reports
                log.debug("heartbeat of trial %d: %s", trial.number, e)


def outcome(trial: FrozenTrial) -> str:
    """What a finished trial's summary line says: its value(s), or a pruned trial's best checkpoint."""
    step, best = trial.user_attrs.get("best_step"), trial.user_attrs.get("best_score")
    if trial.state == TrialState.PRUNED:
        # Optuna's value of a pruned trial is its last report, not its best checkpoint
        at = trial.user_attrs.get("pruned_at_step")
        best_text = "no scored checkpoint" if best is None else f"best {best:.6g} at step {step}"
        return best_text + ("" if at is None else f", pruned at step {at}")
    value = ", ".join(f"{v:.6g}" for v in trial.values) if trial.values else "-"
    return value + ("" if step is None else f" (best step {step})")
