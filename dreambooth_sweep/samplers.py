"""Inference samplers by the short names configs use (the one table; ``config.py`` reads it too).

DDPM-trained families (SD-1.x/2.x, SDXL) take the eight :data:`SCHEDULERS`; flow-matching families
(SD3.x, FLUX.1) take :data:`FLOW_SCHEDULERS`. Every sampler is built from the pipeline's own scheduler
config, so the noise schedule (betas, prediction type, shift) always matches the model.
"""

from __future__ import annotations

from typing import Any

from dreambooth_sweep.errors import ConfigError

__all__ = ["FLOW_SCHEDULERS", "SCHEDULERS", "make_scheduler"]

# short name -> (diffusers class name, extra config)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
}
FLOW_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {}),
}


def make_scheduler(name: str | None, scheduler_config: dict[str, Any]) -> Any:
    """An inference sampler by short name (``ddim``, ``pndm``, ..., ``flow_euler``).

    ``None`` gives the pipeline's own sampler class.
    """
    import diffusers

    if name is None:  # the pipeline's own sampler (PNDM for SD-1.5)
        cls_name, extra = scheduler_config.get("_class_name", "PNDMScheduler"), {}
    elif name in SCHEDULERS:
        cls_name, extra = SCHEDULERS[name]
    elif name in FLOW_SCHEDULERS:
        cls_name, extra = FLOW_SCHEDULERS[name]
    else:
        raise ConfigError(
            f"unknown scheduler {name!r}: choose one of {', '.join([*SCHEDULERS, *FLOW_SCHEDULERS])}"
        )
    cls = getattr(diffusers, cls_name)
    flow = scheduler_config.get("_class_name", "").startswith("FlowMatch")
    if flow != cls_name.startswith("FlowMatch"):
        kind = "a flow-matching" if flow else "a DDPM-trained"
        fits = FLOW_SCHEDULERS if flow else SCHEDULERS
        raise ConfigError(
            f"scheduler {name or cls_name!r} does not fit {kind} model: choose one of {', '.join(fits)}"
        )
    # SD checkpoints are trained without sample clipping; diffusers' DDIM/DDPM default to clipping
    # when a (PNDM) config does not say, which would silently distort their samples.
    base = scheduler_config if flow else {"clip_sample": False, **scheduler_config}
    return cls.from_config({**base, **extra})
