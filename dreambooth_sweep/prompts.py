"""Evaluation prompts: the DreamBench templates (Ruiz et al. 2023) and a fixed per-checkpoint subset.

Templates carry two placeholders: ``{V}`` is the rare identifier (``sks``) and ``{C}`` the class noun
(``dog``). DreamBench uses 25 prompts for objects and 25 for live subjects (animals, people); the
two sets share the first ten (scenes) and the last five (properties) and differ in the middle ten
(accessories/outfits for live subjects, more scenes for objects).
"""

from __future__ import annotations

from typing import Any

from dreambooth_sweep.config import ConfigError

__all__ = [
    "DREAMBENCH_LIVE",
    "DREAMBENCH_OBJECT",
    "PROMPT_SETS",
    "eval_prompts",
    "fill",
    "subset_indices",
]

_SCENES = (
    "a {V} {C} in the jungle",
    "a {V} {C} in the snow",
    "a {V} {C} on the beach",
    "a {V} {C} on a cobblestone street",
    "a {V} {C} on top of pink fabric",
    "a {V} {C} on top of a wooden floor",
    "a {V} {C} with a city in the background",
    "a {V} {C} with a mountain in the background",
    "a {V} {C} with a blue house in the background",
    "a {V} {C} on top of a purple rug in a forest",
)

_OBJECT_ONLY = (
    "a {V} {C} with a wheat field in the background",
    "a {V} {C} with a tree and autumn leaves in the background",
    "a {V} {C} with the Eiffel Tower in the background",
    "a {V} {C} floating on top of water",
    "a {V} {C} floating in an ocean of milk",
    "a {V} {C} on top of green grass with sunflowers around it",
    "a {V} {C} on top of a mirror",
    "a {V} {C} on top of the sidewalk in a crowded street",
    "a {V} {C} on top of a dirt road",
    "a {V} {C} on top of a white rug",
)

_LIVE_ONLY = (
    "a {V} {C} wearing a red hat",
    "a {V} {C} wearing a santa hat",
    "a {V} {C} wearing a rainbow scarf",
    "a {V} {C} wearing a black top hat and a monocle",
    "a {V} {C} in a chef outfit",
    "a {V} {C} in a firefighter outfit",
    "a {V} {C} in a police outfit",
    "a {V} {C} wearing pink glasses",
    "a {V} {C} wearing a yellow shirt",
    "a {V} {C} in a purple wizard outfit",
)

_PROPERTIES = (
    "a red {V} {C}",
    "a purple {V} {C}",
    "a shiny {V} {C}",
    "a wet {V} {C}",
    "a cube shaped {V} {C}",
)

DREAMBENCH_OBJECT: tuple[str, ...] = (*_SCENES, *_OBJECT_ONLY, *_PROPERTIES)
DREAMBENCH_LIVE: tuple[str, ...] = (*_SCENES, *_LIVE_ONLY, *_PROPERTIES)
PROMPT_SETS: dict[str, tuple[str, ...]] = {
    "dreambench_object": DREAMBENCH_OBJECT,
    "dreambench_live": DREAMBENCH_LIVE,
}


def fill(template: str, identifier: str, class_noun: str) -> str:
    """Put the identifier and class noun into a template (plain replace: other braces are kept)."""
    return template.replace("{V}", identifier).replace("{C}", class_noun)


def eval_prompts(eval_cfg: Any, identifier: str, class_noun: str) -> list[str]:
    """The full list of evaluation prompts of a run, placeholders filled.

    Args:
        eval_cfg: the ``eval`` config node (``prompts`` names the set; ``custom_prompts`` for ``custom``).
        identifier: the subject's rare token, ``{V}``.
        class_noun: the subject's class, ``{C}``.

    Raises:
        ConfigError: unknown prompt set, or ``custom`` with no prompts.
    """
    name = eval_cfg.prompts
    if name == "custom":
        templates = [str(t) for t in (eval_cfg.custom_prompts or []) if str(t).strip()]
        if not templates:
            raise ConfigError(
                "eval.prompts=custom but eval.custom_prompts is empty: "
                "list them, e.g. \"eval.custom_prompts=['a {V} {C} on the moon']\""
            )
    elif name in PROMPT_SETS:
        templates = list(PROMPT_SETS[name])
    else:
        choices = ", ".join([*PROMPT_SETS, "custom"])
        raise ConfigError(f"unknown eval.prompts={name!r}: choose one of {choices}")
    return [fill(t, identifier, class_noun) for t in templates]


def subset_indices(length: int, n: int | None) -> list[int]:
    """``n`` evenly spaced positions in ``range(length)``, the same ones every call (checkpoints compare).

    With DreamBench's ordering (scenes, accessories/scenes, properties) even spacing picks from every
    part of the list. ``n`` None, or at least ``length``, keeps everything.
    """
    if n is None or n >= length:
        return list(range(length))
    if n <= 0:
        raise ConfigError(f"eval.num_prompts={n} must be positive: use null for all prompts")
    # Centre of each of n equal bins: for 25 prompts and n=4 → 3, 9, 15, 21 (a scene, a scene, an
    # accessory/scene, a property), so a small subset still touches every part of DreamBench.
    return [(2 * i + 1) * length // (2 * n) for i in range(n)]
