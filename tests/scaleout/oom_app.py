"""The training CLI with a simulated CUDA out-of-memory error, for tests only.

    DBS_TEST_OOM_LR=2e-4 python tests/scaleout/oom_app.py [the usual overrides]

Any optimizer step at that learning rate raises ``torch.OutOfMemoryError`` as CUDA would; everything
else is ``python -m dreambooth_sweep.train``. The package itself has no fault-injection switch.
"""

from __future__ import annotations

import math
import os

import torch

OOM_LR = float(os.environ["DBS_TEST_OOM_LR"])
_real_step = torch.optim.AdamW.step


def _step(self: torch.optim.AdamW, *args: object, **kwargs: object) -> object:
    if any(math.isclose(group["lr"], OOM_LR, rel_tol=1e-9) for group in self.param_groups):
        raise torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.77 GiB total capacity) [simulated]"
        )
    return _real_step(self, *args, **kwargs)


torch.optim.AdamW.step = _step  # type: ignore[method-assign]

if __name__ == "__main__":
    import runpy

    runpy.run_module("dreambooth_sweep.train", run_name="__main__", alter_sys=True)  # = python -m
