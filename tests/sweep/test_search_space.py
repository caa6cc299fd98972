"""Search spaces of the Optuna sweep (dreambooth_sweep/sweep/search_space.py): Hydra syntax and dicts."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from dreambooth_sweep.sweep import SweepError
from dreambooth_sweep.sweep.search_space import format_value, grid_search_space, parse_search_space


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("interval(0.1, 0.5)", FloatDistribution(0.1, 0.5)),
        ("tag(log, interval(1e-6, 1e-5))", FloatDistribution(1e-6, 1e-5, log=True)),
        ("range(1, 5)", IntDistribution(1, 4)),  # Hydra's range excludes stop, like Python's
        ("range(0, 100, 25)", IntDistribution(0, 75, step=25)),
        ("tag(log, range(1, 65))", IntDistribution(1, 64, log=True)),
        ("range(0.1, 0.5, 0.1)", FloatDistribution(0.1, 0.4, step=0.1)),
        ("choice(adamw, adamw8bit)", CategoricalDistribution(["adamw", "adamw8bit"])),
        ("choice(0, 100, 200)", CategoricalDistribution([0, 100, 200])),
        ("a,b,c", CategoricalDistribution(["a", "b", "c"])),
        ({"type": "float", "low": 1e-6, "high": 1e-4, "log": True}, FloatDistribution(1e-6, 1e-4, log=True)),
        ({"type": "float", "low": 0.1, "high": 1.0, "step": 0.1}, FloatDistribution(0.1, 1.0, step=0.1)),
        ({"type": "int", "low": 100, "high": 800, "step": 100}, IntDistribution(100, 800, step=100)),
        ({"type": "categorical", "choices": [True, False]}, CategoricalDistribution([True, False])),
        (["sd15", "sd21"], CategoricalDistribution(["sd15", "sd21"])),
    ],
)
def test_search_space_syntax(spec, expected) -> None:
    space, fixed = parse_search_space({"x": spec})
    assert space == {"x": expected} and fixed == []
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask(space)
        assert expected._contains(expected.to_internal_repr(trial.params["x"]))
        study.tell(trial, 0.0)


def test_nested_params_are_dotted_keys() -> None:
    space, _ = parse_search_space(
        {"train": {"lr": {"type": "float", "low": 0.1, "high": 0.2}, "seed": "range(3)"}}
    )
    assert space == {"train.lr": FloatDistribution(0.1, 0.2), "train.seed": IntDistribution(0, 2)}


def test_command_line_extends_and_overrides_params() -> None:
    params = {
        "train.lr": "interval(1e-6, 1e-5)",
        "prior.loss_weight": "choice(0.5, 1.0)",
        "train.max_steps": 400,
    }
    args = ["prior.loss_weight=1.0", "train.seed=range(0, 3)", "model=tiny", "+extra='a b'"]
    space, fixed = parse_search_space(params, args)
    assert set(space) == {"train.lr", "train.seed"}  # a fixed value on the command line wins
    assert fixed == ["train.max_steps=400", "prior.loss_weight=1.0", "model=tiny", "+extra='a b'"]


@pytest.mark.parametrize(
    "spec",
    [
        "shuffle(choice(a, b))",
        "tag(log, choice(1, 2))",
        "tag(cosine, interval(0, 1))",
        "tag(log, interval(0, 1))",  # log needs low > 0
        {"type": "normal", "low": 0, "high": 1},
        {"type": "float", "low": 0},
        {"type": "int", "low": 0, "high": 4, "stepp": 2},
    ],
)
def test_bad_search_space_is_one_clear_error(spec) -> None:
    with pytest.raises(SweepError, match=r"^x: ") as info:
        parse_search_space({"x": spec})
    assert "\n" not in str(info.value)


def test_grid_search_space() -> None:
    space, _ = parse_search_space({"a": "choice(x, y)", "b": "range(1, 4)", "c": "range(0.5, 1.1, 0.25)"})
    assert grid_search_space(space) == {"a": ["x", "y"], "b": [1, 2, 3], "c": [0.5, 0.75, 1.0]}
    with pytest.raises(SweepError, match="GridSampler needs discrete values"):
        grid_search_space(parse_search_space({"d": "interval(0, 1)"})[0])


@pytest.mark.parametrize(
    "value",
    [1e-06, 0.1 + 0.2, -3.5e300, 7, True, None, "adamw", "a photo of sks dog", "1e-6", "true", "null",
     "sqlite:////tmp/x.db?timeout=3", "it's", 'say "hi"', "both ' and \"", "back\\slash\\", "a,b", "${x}"],
)  # fmt: skip
def test_format_value_round_trips_through_hydra(value) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    override = OverridesParser.create().parse_override(f"key={format_value(value)}")
    assert not override.is_sweep_override()
    assert override.value() == value and type(override.value()) is type(value)
