"""The sweet-spot score of a checkpoint and the one rule that picks a run's best checkpoint.

Every place that names a "best" — the trainer's ``metrics.json``, the Optuna trial's value and
``best_step``, the report's tables, heatmaps and picks — calls :func:`best_of` or :class:`BestTracker`,
so they can never disagree. The rule:

- step 0 is the untouched base model: a baseline, never a candidate;
- a NaN score never wins (NaN in, NaN out: a metric that failed is not a perfect one);
- ties keep the earlier step (fewer steps, less overfit for the same score).

Plain Python on purpose (no torch): the report and the sweeper import it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from dreambooth_sweep.errors import ConfigError

__all__ = ["BestTracker", "best_of", "is_better", "sweet_spot_score"]

_T = TypeVar("_T")


def _metric(values: Mapping[str, float], key: str, what: str) -> float:
    if key not in values:
        raise ConfigError(
            f"objective needs {key!r} but the {what} has only {sorted(values)}: add it to eval.metrics or change eval.objective"
        )
    value = values[key]
    return math.nan if value is None else float(value)


def sweet_spot_score(metrics: Mapping[str, float], baseline: Mapping[str, float], objective: Any) -> float:
    """Scalar objective of one checkpoint: subject fidelity, minus a penalty for lost prompt fidelity.

    ``score = metrics[m] - λ · max(0, baseline[p] - metrics[p] - tol)`` with ``m = objective.metric``
    (default ``eval/dino``), ``p = objective.prompt_metric`` (``eval/clip_t``), ``λ = objective.penalty``
    and ``tol = objective.tolerance``. ``baseline`` holds the step-0 (base model) metrics, so prompt
    fidelity may drop by ``tol`` for free, then every further unit costs λ units of fidelity. At
    step 0 the penalty is zero and the score is the base model's subject fidelity. A NaN anywhere in
    the formula gives NaN (``max`` would otherwise drop a NaN penalty silently).

    Raises:
        ConfigError: a metric the objective names was not computed.
    """
    fidelity = _metric(metrics, objective.metric, "metrics")
    drop = _metric(baseline, objective.prompt_metric, "baseline") - _metric(
        metrics, objective.prompt_metric, "metrics"
    )
    if math.isnan(fidelity) or math.isnan(drop):
        return math.nan
    return fidelity - float(objective.penalty) * max(0.0, drop - float(objective.tolerance))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_better(score: Any, best: float | None, *, maximize: bool = True) -> bool:
    """Whether ``score`` beats ``best`` (None: nothing yet). NaN/inf/non-numbers never do; ties do not."""
    if not _finite(score):
        return False
    if best is None:
        return True
    return score > best if maximize else score < best


def best_of(
    items: Iterable[_T],
    *,
    score: Callable[[_T], Any],
    step: Callable[[_T], int],
    maximize: bool = True,
) -> _T | None:
    """The best of ``items`` by ``score``: step 0 and non-finite scores excluded, ties to the earlier step.

    Items with equal score and step keep their order (the first one wins), so a caller that lists
    trials by number breaks the last tie by trial number.
    """
    best: _T | None = None
    best_key: tuple[float, int] | None = None
    for item in items:
        value, at = score(item), int(step(item))
        if at <= 0 or not _finite(value):
            continue
        key = (float(value) if maximize else -float(value), -at)
        if best_key is None or key > best_key:
            best, best_key = item, key
    return best


@dataclass
class BestTracker:
    """The best (score, step) seen so far across a run's checkpoints, by the rule of :func:`best_of`."""

    maximize: bool = True
    best_score: float | None = None
    best_step: int | None = None

    def update(self, step: int, score: float) -> bool:
        """Record a checkpoint's score; True when it is the new best (step 0 never is)."""
        if step <= 0 or not is_better(score, self.best_score, maximize=self.maximize):
            return False
        self.best_score, self.best_step = float(score), int(step)
        return True
