"""Search spaces of the Optuna sweep: Hydra sweep syntax or explicit dicts → Optuna distributions.

    train.lr='tag(log, interval(1e-7, 1e-5))'      → FloatDistribution(1e-7, 1e-5, log=True)
    train.max_steps='range(400, 1201, 400)'        → IntDistribution(400, 1200, step=400)
    prior=on,off / choice(on, off)                 → CategoricalDistribution(["on", "off"])
    {type: float, low: 1e-7, high: 1e-5, log: true} (in ``hydra.sweeper.params``) → the same as the first

:func:`format_value` writes a sampled value back as an override Hydra parses to exactly that value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from dreambooth_sweep.sweep.errors import SweepError

__all__ = [
    "distribution_from_dict",
    "distribution_from_override",
    "format_value",
    "grid_search_space",
    "parse_search_space",
]


@cache
def _parser() -> OverridesParser:
    return OverridesParser.create()


def _categorical(key: str, choices: Sequence[Any]) -> CategoricalDistribution:
    choices = list(choices)
    if not choices or any(c is not None and not isinstance(c, bool | int | float | str) for c in choices):
        raise SweepError(
            f"{key}: choices must be a non-empty list of numbers, strings, booleans or null, got {choices}"
        )
    return CategoricalDistribution(choices)


def distribution_from_override(override: Override) -> BaseDistribution | None:
    """The distribution of a sweep override (``choice``, ``range``, ``interval``, ``a,b,c``); None if fixed."""
    if not override.is_sweep_override():
        return None
    key, sweep, text = override.get_key_element(), override.value(), override.get_value_string()
    tags = set(sweep.tags)
    if tags - {"log"}:
        raise SweepError(f"{key}: unknown tag(s) {sorted(tags - {'log'})}; only tag(log, ...) is understood")
    log_scale = "log" in tags
    if getattr(sweep, "shuffle", False):
        raise SweepError(f"{key}: shuffle() means nothing to Optuna; drop it")
    if isinstance(sweep, ChoiceSweep):
        if log_scale:
            raise SweepError(f"{key}: tag(log, ...) applies to interval() or range(), not to a choice")
        return _categorical(key, list(override.sweep_iterator()))
    if isinstance(sweep, RangeSweep):
        # Hydra's range() excludes `stop`, like Python's (and the basic sweeper): range(1, 5) is 1..4.
        values = list(override.sweep_iterator())
        if not values:
            raise SweepError(f"{key}: {text} is empty")
        low, high, step = min(values), max(values), abs(sweep.step)
        if all(isinstance(v, int) for v in values) and isinstance(step, int):
            if log_scale and step != 1:
                raise SweepError(f"{key}: tag(log, range(...)) needs step 1")
            return IntDistribution(low, high, log=log_scale, step=step)
        if log_scale:
            raise SweepError(f"{key}: use tag(log, interval(low, high)) for a log-scale float")
        return FloatDistribution(float(low), float(high), step=float(step))
    if isinstance(sweep, IntervalSweep):  # always float: Hydra converts the bounds
        try:
            return FloatDistribution(sweep.start, sweep.end, log=log_scale)
        except ValueError as e:
            raise SweepError(f"{key}: {text}: {e}") from None
    raise SweepError(f"{key}: unsupported sweep {text!r}")


def distribution_from_dict(key: str, spec: Mapping[str, Any]) -> BaseDistribution:
    """``{type: float|int, low, high, log, step}`` or ``{type: categorical, choices: [...]}``."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    fields = {
        "float": {"low", "high", "log", "step"},
        "int": {"low", "high", "log", "step"},
        "categorical": {"choices"},
    }
    if kind not in fields:
        raise SweepError(f"{key}: type must be one of float, int, categorical, got {kind!r}")
    if set(spec) - fields[kind]:
        raise SweepError(f"{key}: unknown field(s) {sorted(set(spec) - fields[kind])} for type {kind}")
    if kind == "categorical":
        return _categorical(key, spec.get("choices") or [])
    if "low" not in spec or "high" not in spec:
        raise SweepError(f"{key}: type {kind} needs low and high")
    low, high, log_scale, step = spec["low"], spec["high"], bool(spec.get("log")), spec.get("step")
    try:
        if kind == "int":
            return IntDistribution(int(low), int(high), log=log_scale, step=int(step or 1))
        return FloatDistribution(
            float(low), float(high), log=log_scale, step=None if step is None else float(step)
        )
    except (ValueError, TypeError) as e:
        raise SweepError(f"{key}: {e}") from None


def parse_search_space(
    params: Mapping[str, Any] | None, arguments: Sequence[str] = ()
) -> tuple[dict[str, BaseDistribution], list[str]]:
    """Split ``hydra.sweeper.params`` and the command-line overrides into a search space and fixed overrides.

    Command-line overrides win over ``params`` for the same key. Returns the distributions by
    override key, and the fixed overrides (``key=value``) to pass to every job as they are.
    """
    if isinstance(params, DictConfig):
        params = OmegaConf.to_container(params, resolve=True)  # type: ignore[assignment]
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for key, spec in _flatten(params or {}).items():
        if isinstance(spec, Mapping):
            space[key] = distribution_from_dict(key, spec)
        elif isinstance(spec, list | tuple):
            space[key] = _categorical(key, spec)
        else:
            line = f"{key}={spec if isinstance(spec, str) else format_value(spec)}"
            dist = distribution_from_override(_parser().parse_override(line))
            if dist is None:
                fixed[key] = line
            else:
                space[key] = dist
    for override in _parser().parse_overrides(list(arguments)):
        key = override.get_key_element()
        dist = distribution_from_override(override)
        if dist is None:
            fixed[key] = override.input_line or f"{key}={override.get_value_string()}"
            space.pop(key, None)
        else:
            space[key] = dist
            fixed.pop(key, None)
    return space, list(fixed.values())


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{train: {lr: ...}}`` → ``{"train.lr": ...}`` (what ``+hydra.sweeper.params.train.lr=..`` makes)."""
    flat: dict[str, Any] = {}
    for key, spec in params.items():
        if isinstance(spec, Mapping) and "type" not in spec:
            flat.update(_flatten(spec, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = spec
    return flat


def grid_search_space(space: Mapping[str, BaseDistribution]) -> dict[str, list[Any]]:
    """Every value of each (discrete) distribution, for :class:`optuna.samplers.GridSampler`."""
    grid: dict[str, list[Any]] = {}
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            grid[key] = list(dist.choices)
        elif isinstance(dist, IntDistribution):
            grid[key] = list(range(dist.low, dist.high + 1, dist.step))
        elif isinstance(dist, FloatDistribution) and dist.step is not None:
            grid[key] = [
                dist.low + i * dist.step for i in range(round((dist.high - dist.low) / dist.step) + 1)
            ]
        else:
            raise SweepError(
                f"GridSampler needs discrete values: give {key} as choice(), range() or a float with a step"
            )
    return grid


def format_value(value: Any) -> str:
    """An override value that Hydra parses back to exactly ``value`` (floats by repr, strings quoted if needed)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    # Inside quotes Hydra reads a backslash as an escape only before a quote (or the closing quote).
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", re.sub(r"(\\+)$", r"\1\1", text))
    for candidate in (text, f"'{text}'", f'"{text}"', f"'{escaped}'"):
        try:
            parsed = _parser().parse_override(f"key={candidate}")
        except Exception:
            continue
        if not parsed.is_sweep_override() and isinstance(parsed.value(), str) and parsed.value() == text:
            return candidate
    raise ValueError(f"cannot write {text!r} as a Hydra override value")
