"""DreamBench prompt sets, custom prompts and the fixed per-checkpoint subset."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dreambooth_sweep.config import ConfigError
from dreambooth_sweep.prompts import DREAMBENCH_LIVE, DREAMBENCH_OBJECT, eval_prompts, subset_indices


def _cfg(prompts: str, custom: list[str] | None = None) -> SimpleNamespace:
    return SimpleNamespace(prompts=prompts, custom_prompts=custom or [])


def test_dreambench_sets_have_25_prompts_in_the_papers_order() -> None:
    assert len(DREAMBENCH_OBJECT) == len(DREAMBENCH_LIVE) == 25
    assert len(set(DREAMBENCH_OBJECT)) == len(set(DREAMBENCH_LIVE)) == 25
    # live = the first ten object prompts, ten outfits/accessories, then the five property prompts
    assert DREAMBENCH_LIVE[:10] == DREAMBENCH_OBJECT[:10]
    assert DREAMBENCH_LIVE[20:] == DREAMBENCH_OBJECT[20:]
    assert DREAMBENCH_OBJECT[0] == "a {V} {C} in the jungle"
    assert DREAMBENCH_OBJECT[9] == "a {V} {C} on top of a purple rug in a forest"
    assert DREAMBENCH_OBJECT[10] == "a {V} {C} with a wheat field in the background"
    assert DREAMBENCH_OBJECT[19] == "a {V} {C} on top of a white rug"
    assert DREAMBENCH_LIVE[10] == "a {V} {C} wearing a red hat"
    assert DREAMBENCH_LIVE[19] == "a {V} {C} in a purple wizard outfit"
    assert DREAMBENCH_OBJECT[20:] == (
        "a red {V} {C}",
        "a purple {V} {C}",
        "a shiny {V} {C}",
        "a wet {V} {C}",
        "a cube shaped {V} {C}",
    )
    assert all("{V}" in p and "{C}" in p for p in (*DREAMBENCH_OBJECT, *DREAMBENCH_LIVE))


@pytest.mark.parametrize("name", ["dreambench_object", "dreambench_live"])
def test_placeholders_are_filled(name: str) -> None:
    prompts = eval_prompts(_cfg(name), "sks", "dog")
    assert len(prompts) == 25
    assert all("{" not in p and "sks dog" in p for p in prompts)
    assert prompts[0] == "a sks dog in the jungle"
    assert prompts[-1] == "a cube shaped sks dog"


def test_custom_prompts_and_errors() -> None:
    assert eval_prompts(_cfg("custom", ["a {V} {C} on the moon", "{C}"]), "aawxbc", "figurine") == [
        "a aawxbc figurine on the moon",
        "figurine",
    ]
    with pytest.raises(ConfigError, match="custom_prompts is empty"):
        eval_prompts(_cfg("custom", []), "sks", "dog")
    with pytest.raises(ConfigError, match="unknown eval.prompts='dreambench_animal'") as err:
        eval_prompts(_cfg("dreambench_animal"), "sks", "dog")
    assert "\n" not in str(err.value)


def test_subset_is_deterministic_evenly_spread_and_all_when_large() -> None:
    prompts = eval_prompts(_cfg("dreambench_live"), "sks", "dog")
    four = [prompts[i] for i in subset_indices(len(prompts), 4)]
    assert subset_indices(25, 4) == subset_indices(25, 4) == [3, 9, 15, 21]
    assert any("outfit" in p for p in four) and four[-1].startswith("a purple")  # every part of the set
    assert subset_indices(25, None) == subset_indices(25, 25) == subset_indices(25, 99) == list(range(25))
    assert subset_indices(5, 2) == [1, 3] and subset_indices(3, 1) == [1]
    for n in range(1, 26):
        idx = subset_indices(25, n)
        assert len(set(idx)) == n and idx == sorted(idx)
    with pytest.raises(ConfigError, match="num_prompts=0"):
        subset_indices(len(prompts), 0)
