"""Hydra override lines in (a job's ``overrides.yaml``) and out (the copyable reproduce command).

The reproduce command is what a user pastes into a shell to retrain a trial up to a checkpoint:

- the sweeper's own overrides (``sweep.*``, ``hydra.*``) and ``train.max_steps`` are dropped, the
  checkpoint's step is appended as ``train.max_steps=<step>``;
- ``--config-dir`` is relative to the folder the sweep was launched from when it lies inside it
  (the command is run from there, as the report says);
- values drawn from a continuous range (Optuna ``FloatDistribution`` without a step) are rounded to
  two significant digits (``train.lr=9.3e-4``): no run depends on the third digit of a learning
  rate, and a 17-digit float cannot be read at a glance. Grid and choice values stay exact; the
  exact values are in ``trials.csv``;
- every URL password and secret ``key=value`` is masked (``***``), as everywhere in the report.
"""

from __future__ import annotations

import functools
import math
import shlex
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from dreambooth_sweep.report.model import Trial, is_internal, override_key
from dreambooth_sweep.tracking.secrets import mask_text

__all__ = ["load_yaml", "parse_overrides", "reproduce_command", "round_sig", "select"]


@functools.cache
def _parser() -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def parse_overrides(lines: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Override lines -> ({key: value}, [keys of sweep overrides such as ``a=1,2``])."""
    values: dict[str, Any] = {}
    swept: list[str] = []
    for line in lines:
        try:
            ov = _parser().parse_override(line)
        except Exception:  # not Hydra syntax after all: keep the raw text
            key, _, value = line.partition("=")
            values[key.lstrip("+~")] = value
            continue
        if ov.is_delete():
            continue
        if ov.is_sweep_override():
            swept.append(ov.key_or_group)
        else:
            values[ov.key_or_group] = ov.value()
    return values, swept


def load_yaml(path: Path) -> Any:
    try:
        return OmegaConf.load(path)
    except Exception:
        return None


def select(cfg: Any, key: str, default: Any = None) -> Any:
    """``OmegaConf.select`` that never raises; containers come back plain, interpolations unresolved."""
    if cfg is None:
        return default
    try:
        value = OmegaConf.select(cfg, key, default=default, throw_on_resolution_failure=False)
    except Exception:
        return default
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=False)
    return value


def round_sig(value: float, digits: int = 2) -> str:
    """``0.000927161`` -> ``9.3e-4``; ``0.3517`` -> ``0.35``; ``12.7`` -> ``13.0`` (a Hydra float either way)."""
    if value == 0 or not math.isfinite(value):
        return repr(float(value))
    if abs(value) < 1e-2 or abs(value) >= 1e4:
        mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    text = f"{float(f'{value:.{digits}g}'):f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _shell_quote(arg: str) -> str:
    """Like ``shlex.quote``, but Hydra's single-quoted values go in readable double quotes."""
    if "'" in arg and not any(c in arg for c in '"$`\\!'):
        return f'"{arg}"'
    return shlex.quote(arg)


def _relative_config_args(args: Sequence[str], cwd: str | None) -> list[str]:
    out = list(args)
    for i, arg in enumerate(out[:-1]):
        if arg == "--config-dir" and cwd:
            path = Path(out[i + 1].removeprefix("file://"))
            if path.is_absolute() and path.is_relative_to(cwd):
                out[i + 1] = path.relative_to(cwd).as_posix() or "."
    return out


def _rounded(line: str, continuous: Collection[str]) -> str:
    head, _, text = line.partition("=")
    if override_key(line) not in continuous:
        return line
    try:
        value = float(text)
    except ValueError:  # a sweep syntax or an interpolation: as it was
        return line
    return f"{head}={round_sig(value)}"


def reproduce_command(trial: Trial, step: int, continuous: Collection[str] = ()) -> str:
    """``python -m dreambooth_sweep.train <the trial's overrides> train.max_steps=<step>`` (see above)."""
    args = [
        _rounded(o, continuous)
        for o in trial.overrides
        if not is_internal(o) and override_key(o) != "train.max_steps"
    ]
    config = _relative_config_args(trial.config_args, trial.cwd)
    parts = ["python -m dreambooth_sweep.train", *map(_shell_quote, [*config, *args])]
    return mask_text(" ".join([*parts, f"train.max_steps={step}"]))
