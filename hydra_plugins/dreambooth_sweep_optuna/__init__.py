"""Hydra sweeper backed by Optuna (ask/tell, RDB or journal storage, resume, pruning from the jobs).

``hydra/sweeper=optuna`` selects it; :mod:`.config` lists its settings and
:mod:`dreambooth_sweep.sweep` is the job side that reports checkpoint scores to the trial.
"""
