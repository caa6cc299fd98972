"""One source per config value: the YAML under conf/ holds every value, the dataclasses only types.

Every option of every group (and every experiment and smoke file, for ``train`` and ``evaluate``) is
composed; each schema field must get its value from YAML, and no dataclass field may carry a value
of its own. Exceptions, each on purpose:

- ``sweep.*`` (:class:`SweepContext`): filled in by the sweeper for each job, never by a user; it
  keeps ``None`` defaults and no YAML may set it.
- ``data.instance_dir`` / ``data.class_noun``: the user's subject; ``???`` in ``data/base.yaml``
  (required), so ``data=subject`` leaves them to the command line.
- The Optuna sweeper plugin's settings (``OptunaSweeperConf``) live in its dataclass, as Hydra's own
  sweeper plugins do (``hydra/sweeper=optuna`` works with no sweep file); ``sweeps/*.yaml`` may set
  them, but never to the value the plugin already has.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from conftest import CONF_DIR, ROOT, compose_config
from omegaconf import MISSING, OmegaConf

from dreambooth_sweep.config import RunConfig, SweepContext
from dreambooth_sweep.evaluate import EvaluateConfig

GROUPS = ["model", "method", "data", "prior", "train", "eval", "tracking", "paths", "smoke", "experiment"]
REQUIRED = {"data.instance_dir", "data.class_noun"}
SCHEMAS = {"train": RunConfig, "evaluate": EvaluateConfig}


def _fields(schema: type, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    """Every leaf field of a (nested) schema as (dotted key, field)."""
    out = []
    for f in dataclasses.fields(schema):
        kind = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            out.extend(_fields(kind, f"{prefix}{f.name}."))
        else:
            out.append((f"{prefix}{f.name}", f))
    return out


def _has_value(f: dataclasses.Field) -> bool:
    if f.default_factory is not dataclasses.MISSING:
        return True  # a list/dict factory is a value
    return f.default is not dataclasses.MISSING and f.default != MISSING


def _sweep_owned(key: str) -> bool:
    return key.startswith("sweep.")


@pytest.mark.parametrize("config_name", sorted(SCHEMAS))
def test_schema_fields_carry_types_only(config_name: str) -> None:
    with_values = [key for key, f in _fields(SCHEMAS[config_name]) if _has_value(f)]
    assert with_values == [f"sweep.{f.name}" for f in dataclasses.fields(SweepContext)], (
        "these schema fields hold a value; move it (with its comment) into conf/: "
        + ", ".join(k for k in with_values if not _sweep_owned(k))
    )


def _options() -> list[tuple[str, str, str]]:
    cases = [(name, "", "") for name in SCHEMAS]
    for name in SCHEMAS:
        for group in GROUPS:
            # a group's base file is not a choice: it is composed through every option extending it
            cases += [
                (name, group, p.stem) for p in sorted((CONF_DIR / group).glob("*.yaml")) if p.stem != "base"
            ]
    return cases


@pytest.mark.parametrize(("config_name", "group", "choice"), _options())
def test_every_schema_field_gets_its_value_from_yaml(config_name: str, group: str, choice: str) -> None:
    cfg = compose_config([f"{group}={choice}"] if group else [], config_name=config_name)
    missing = set()
    for key, _ in _fields(SCHEMAS[config_name]):
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if OmegaConf.is_missing(node, leaf):
            missing.add(key)
    assert missing <= REQUIRED, f"no YAML value for {sorted(missing - REQUIRED)} with {group}={choice}"
    if (group, choice) not in {("data", "subject")}:
        assert not missing, f"{sorted(missing)} left ??? by {group or config_name}={choice}"


def _yaml_keys(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix[:-1]: data}
    out: dict[str, Any] = {}
    for k, v in data.items():
        if k != "defaults":
            out.update(_yaml_keys(v, f"{prefix}{k}."))
    return out


def _raw(path: Path) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)  # type: ignore[return-value]


def test_no_yaml_sets_what_the_sweeper_fills_in() -> None:
    for path in [*CONF_DIR.rglob("*.yaml"), *(ROOT / "sweeps").glob("*.yaml")]:
        raw = _raw(path)
        assert "sweep" not in raw, f"{path}: sweep.* is filled in by the sweeper for each job"


def _parent(path: Path) -> Path | None:
    """The option a group file extends (its first same-group defaults entry), if any."""
    entries = _raw(path).get("defaults", [])
    first = entries[0] if entries else None
    return path.parent / f"{first}.yaml" if isinstance(first, str) and first != "_self_" else None


@pytest.mark.parametrize(
    "path",
    [p for p in sorted(CONF_DIR.glob("*/*.yaml")) if _parent(p)],
    ids=lambda p: f"{p.parent.name}/{p.stem}",
)
def test_an_option_does_not_restate_what_it_extends(path: Path) -> None:
    parent = _parent(path)
    assert parent is not None and parent.is_file(), f"{path} extends a missing {parent}"
    own, inherited = _yaml_keys(_raw(path)), _yaml_keys(_raw(parent))
    same = sorted(k for k, v in own.items() if k in inherited and inherited[k] == v)
    assert not same, f"{path.name} restates {same} from {parent.name}: one place per value"


def test_sweep_files_do_not_restate_the_sweeper_plugins_defaults() -> None:
    from hydra_plugins.dreambooth_sweep_optuna.config import OptunaSweeperConf

    defaults = {
        f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(OptunaSweeperConf)
    }
    for path in sorted((ROOT / "sweeps").glob("*.yaml")):
        sweeper = _raw(path).get("hydra", {}).get("sweeper", {})
        same = sorted(k for k, v in sweeper.items() if k in defaults and defaults[k] == v)
        assert not same, f"{path.name} restates the plugin's defaults {same}"
