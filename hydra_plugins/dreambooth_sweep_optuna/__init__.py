"""Hydra sweeper backed by Optuna (ask/tell, RDB or journal storage, resume, pruning from the jobs).

``hydra/sweeper=optuna`` selects it; :mod:`.config` lists its settings and
:mod:`dreambooth_sweep.sweep` does the work (sweeper, job side, search spaces, storages).
"""
