"""Model families: one module per architecture behind the :class:`ModelFamily` interface.

=========  ==============================  ===========================================
family     model_index.json ``_class_name``  module
=========  ==============================  ===========================================
``sd``     StableDiffusionPipeline           :mod:`~dreambooth_sweep.families.sd`
``sdxl``   StableDiffusionXLPipeline         :mod:`~dreambooth_sweep.families.sdxl`
``sd3``    StableDiffusion3Pipeline          :mod:`~dreambooth_sweep.families.sd3`
``flux``   FluxPipeline                      :mod:`~dreambooth_sweep.families.flux`
=========  ==============================  ===========================================
"""

from __future__ import annotations

from dreambooth_sweep.errors import ConfigError
from dreambooth_sweep.families.base import Components, Conditioning, ModelFamily, Noised, read_model_index

__all__ = [
    "FAMILIES",
    "Components",
    "Conditioning",
    "ModelFamily",
    "Noised",
    "detect_family",
    "family_named",
]


def _families() -> dict[str, ModelFamily]:
    from dreambooth_sweep.families.flux import FluxFamily
    from dreambooth_sweep.families.sd import SDFamily
    from dreambooth_sweep.families.sd3 import SD3Family
    from dreambooth_sweep.families.sdxl import SDXLFamily

    return {f.name: f for f in (SDFamily(), SDXLFamily(), SD3Family(), FluxFamily())}


FAMILIES: dict[str, ModelFamily] = _families()


def family_named(name: str) -> ModelFamily:
    if name not in FAMILIES:
        raise ConfigError(f"unknown model family {name!r}: choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def detect_family(source: str, revision: str | None = None) -> ModelFamily:
    """The family of the pipeline at ``source`` (hub id or folder), from its ``model_index.json``."""
    try:
        index = read_model_index(source, revision)
    except Exception as exc:
        from dreambooth_sweep.families.base import load_error

        # the family is not known yet: "Stable Diffusion" names the whole lineage here
        raise load_error("the Stable Diffusion model", source, exc) from exc
    cls = str(index.get("_class_name"))
    for family in FAMILIES.values():
        if cls in family.pipeline_names:
            return family
    known = ", ".join(n for f in FAMILIES.values() for n in f.pipeline_names)
    raise ConfigError(
        f"{source!r} is a {cls} (model_index.json _class_name): not a supported model family; "
        f"supported pipelines: {known}"
    )
