"""What every entry point shares: where a run writes, CPU threads, precision, the untouched training
state around an evaluation, and the Hydra entry wrapper that turns errors into one line.

``train`` and ``evaluate`` both stand on this floor, so neither imports the other for it.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from dreambooth_sweep.errors import ConfigError, compose_error_line

__all__ = [
    "conf_dir",
    "resolve_output_dir",
    "rng_state",
    "run_hydra_entry",
    "run_task",
    "set_cpu_threads",
    "set_rng_state",
    "untouched_training_state",
    "weight_dtype",
]


def conf_dir() -> str:
    """The Hydra config tree: ``conf/`` of the source checkout, else the copy shipped in the wheel.

    A source checkout (``make install`` is an editable install) uses the top-level ``conf/``, the
    user's editable source; a wheel (``pip install .``) carries the same tree as package data in
    ``dreambooth_sweep/conf``. Absolute, so the entry points work however they are imported.
    """
    package = Path(__file__).resolve().parent
    source = package.parent / "conf"
    if (source / "train.yaml").is_file():
        return str(source)
    return str(package / "conf")


def resolve_output_dir(cfg: DictConfig) -> Path:
    """This run's folder: ``paths.output_dir``, else Hydra's run dir, else a fresh timestamped dir."""
    from hydra.core.hydra_config import HydraConfig

    if cfg.paths.output_dir:
        out = Path(cfg.paths.output_dir)
    elif HydraConfig.initialized():
        out = Path(HydraConfig.get().runtime.output_dir)
    else:
        out = Path(cfg.paths.log_dir) / "runs" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    return out


def set_cpu_threads(requested: int | None) -> None:
    """One torch thread per core at most: oversubscribed threads make tiny forwards 100× slower."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, min(requested or cores, cores)))


def weight_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype of frozen weights under ``train.mixed_precision`` (no | fp16 | bf16)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def rng_state() -> dict[str, Any]:
    """Every global RNG stream (Python, numpy, torch, CUDA), to put back with :func:`set_rng_state`."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def untouched_training_state(*modules: torch.nn.Module) -> Iterator[None]:
    """Evaluation inside leaves RNG streams, train/eval flags and gradients exactly as they were."""
    rng = rng_state()
    modes = [[m.training for m in module.modules()] for module in modules]
    try:
        with torch.no_grad():
            yield
    finally:
        for module, flags in zip(modules, modes, strict=True):
            for m, flag in zip(module.modules(), flags, strict=True):
                m.training = flag
        set_rng_state(rng)


def _log_to_files(level: int, message: str, exc_info: bool = False) -> None:
    """Write ``message`` into the run's log files (Hydra's ``<run dir>/train.log``) only: the console
    gets its own line from the caller, so the terminal shows the error once."""
    logger = logging.getLogger("dreambooth_sweep")
    record = logger.makeRecord(
        logger.name, level, __file__, 0, message, None, sys.exc_info() if exc_info else None
    )
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def run_task(task: Callable[[DictConfig], dict[str, float]], cfg: DictConfig) -> dict[str, float]:
    """The body of a ``@hydra.main``: run ``task``; a :class:`ConfigError` ends a single run as one
    ``error:`` line and exit 2, while in a sweep it propagates so the sweeper records the failed job.

    Either way the error is also written to the run's log file, so a failed run's folder says why.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf.errors import MissingMandatoryValue

    try:
        try:
            return task(cfg)
        except MissingMandatoryValue as exc:  # a required value (??? in its YAML) nobody gave
            key = exc.full_key
            raise ConfigError(
                f"{key} has no value: set it, e.g. {key}=<value> (`--cfg job` prints every key)"
            ) from exc
    except ConfigError as exc:
        _log_to_files(logging.ERROR, f"error: {exc}")
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # a bug or a library error: its traceback goes to the console as usual
        _log_to_files(logging.ERROR, f"failed: {type(exc).__name__}: {exc}", exc_info=True)
        raise


def command_line_error(argv: list[str], entry: str) -> str | None:
    """The one-line problem and fix for Hydra flags that cannot go together, else None."""
    from hydra._internal.utils import get_args_parser  # the parser @hydra.main uses (hydra-core 1.3)

    args, _ = get_args_parser().parse_known_args(argv)
    if args.help or args.hydra_help:
        return None
    modes = [
        flag
        for flag, on in (
            ("--run", args.run),
            ("--multirun", args.multirun),
            ("--cfg", args.cfg is not None),
            ("--info", args.info is not None),
            ("--shell-completion", args.shell_completion),
        )
        if on
    ]
    if "--cfg" in modes and "--multirun" in modes:
        return (
            "--cfg cannot be combined with -m/--multirun (Hydra prints one job's config, not a sweep's): "
            f"drop -m and give each swept key one value, e.g. `python -m {entry} --cfg job train.lr=1e-5`; "
            "`--cfg hydra` shows the sweeper's settings"
        )
    if len(modes) > 1:
        return (
            f"{' and '.join(modes)} cannot be combined: Hydra takes one of them per command, drop the others"
        )
    if args.resolve and "--cfg" not in modes:
        return "--resolve only works with --cfg: add --cfg job (or hydra, all), e.g. --cfg job --resolve"
    return None


def run_hydra_entry(main: Any, entry: str) -> None:
    """Run a ``@hydra.main`` function so composition errors end as one ``error:`` line and exit 2.

    ``HYDRA_FULL_ERROR=1`` set by the user keeps Hydra's full report and traceback.
    """
    import atexit
    import gc

    from hydra.errors import ConfigCompositionException, HydraException
    from omegaconf.errors import OmegaConfBaseException

    # At exit, skip the interpreter's last garbage collections over the millions of objects torch,
    # diffusers and transformers create at import: about 2 s per process (runs, closes and flushes
    # happen before this; only the final cycle collection of module objects is skipped).
    atexit.register(gc.freeze)
    usage = command_line_error(sys.argv[1:], entry)
    if usage is not None:  # Hydra would raise a bare ValueError with a traceback
        print(f"error: {usage}", file=sys.stderr)
        sys.exit(2)
    if os.environ.get("HYDRA_FULL_ERROR"):
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let composition errors reach us instead of Hydra's printer
    try:
        main()
    except (ConfigCompositionException, OmegaConfBaseException) as exc:
        print(f"error: {compose_error_line(exc, entry)}", file=sys.stderr)
        sys.exit(2)
    except HydraException as exc:  # e.g. the sweeper's SweepError: already "problem: fix" on one line
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(2)
    finally:
        # An in-process caller (``dreambooth-sweep score-checkpoints``, tests) must not keep the switch:
        # processes it starts later would inherit it and print full tracebacks.
        os.environ.pop("HYDRA_FULL_ERROR", None)
