"""What the family tests share: an eval hook that samples the live modules, fresh pipelines, samples."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from dreambooth_sweep.models import build_pipeline


def sample(pipe, comps_or_none, prompt: str, **extra) -> np.ndarray:
    """One 64 px image from ``pipe`` with a fixed generator (through the family when given comps)."""
    kwargs = dict(num_inference_steps=2, height=64, width=64, generator=torch.Generator().manual_seed(0))
    kwargs.update(extra)
    if comps_or_none is not None:
        images = comps_or_none.family.sample(pipe, comps_or_none, [prompt], **kwargs)
        return np.asarray(images[0], dtype=np.float32)
    image = pipe(prompt, output_type="pil", **kwargs).images[0]
    return np.asarray(image, dtype=np.float32)


def fresh(cls_name: str, folder: Path):
    import diffusers

    pipe = getattr(diffusers, cls_name).from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Capture:
    """Eval hook: copies of every live module's weights per evaluation, and a sample of ``prompt``
    from the live modules at the last one (what the saved files must reproduce)."""

    def __init__(self, prompt: str | None = None, **sample_kwargs) -> None:
        self.prompt = prompt
        self.sample_kwargs = sample_kwargs
        self.weights: dict[int, dict[str, dict[str, torch.Tensor]]] = {}
        self.image: np.ndarray | None = None

    def __call__(self, ctx):
        live = ctx.live()
        self.weights[ctx.step] = {
            name: {k: v.detach().clone() for k, v in module.state_dict().items()}
            for name, module in live.items()
        }
        if ctx.final and self.prompt:
            pipe = build_pipeline(ctx.components, None, **live)  # the pipeline's own sampler
            self.image = sample(pipe, ctx.components, self.prompt, **self.sample_kwargs)
        return SimpleNamespace(metrics={"eval/score": 0.0}, grid=None)

    def changed(self, name: str, a: int, b: int) -> set[str]:
        x, y = self.weights[a][name], self.weights[b][name]
        return {k for k in x if not torch.equal(x[k], y[k])}
