"""Hydra's entry point for the Optuna sweeper (``hydra/sweeper=optuna``).

Hydra imports every module under ``hydra_plugins`` in every run, single runs included, to discover
plugins, and may execute a plugin module more than once. This one stays thin and holds no state or
exception classes: the sweeper's work (:class:`dreambooth_sweep.sweep.sweeper.OptunaSearch`), and
Optuna itself, are imported only when a sweep starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

__all__ = ["OptunaSweeper"]


class OptunaSweeper(Sweeper):
    """Hydra sweeper over an Optuna study; :mod:`.config` says what each setting means."""

    def __init__(self, **settings: Any) -> None:
        self._settings = settings
        self._sweeper: Sweeper | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from dreambooth_sweep.sweep.sweeper import OptunaSearch

        self._sweeper = OptunaSearch(**self._settings)
        self._sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        if self._sweeper is None:
            raise RuntimeError("OptunaSweeper.sweep() called before setup()")
        return self._sweeper.sweep(arguments)
