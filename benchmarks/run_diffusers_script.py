"""Run diffusers' ``examples/dreambooth/train_dreambooth.py`` in this project's virtual environment.

    .venv/bin/python benchmarks/run_diffusers_script.py PATH/TO/train_dreambooth.py [script args ...]

The script's only dependency this environment lacks is torchvision, for five PIL transforms (resize,
center/random crop, to-tensor, normalise). The project does without torchvision, and PyPI's wheels
for this torch are CUDA builds that cannot load next to the CPU build. So when ``import torchvision``
fails, a stand-in with those five transforms (same semantics on PIL images) is registered — *after*
transformers and diffusers have seen that torchvision is absent, so neither tries to use more of it.
The stand-in imports in milliseconds where torchvision takes a fraction of a second: a head start
for the script, never for us.
"""

from __future__ import annotations

import enum
import runpy
import sys
import types


def _torchvision_stand_in() -> types.ModuleType:
    import numpy as np
    import torch
    from PIL import Image

    class InterpolationMode(enum.Enum):
        BILINEAR = "bilinear"

    class Compose:
        def __init__(self, transforms: list) -> None:
            self.transforms = transforms

        def __call__(self, x):
            for t in self.transforms:
                x = t(x)
            return x

    class Resize:  # shorter side to `size`, aspect kept (torchvision's int-size semantics)
        def __init__(self, size: int, interpolation: InterpolationMode = InterpolationMode.BILINEAR) -> None:
            self.size = size

        def __call__(self, image: Image.Image) -> Image.Image:
            w, h = image.size
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(self.size * long / short)
            size = (self.size, new_long) if w <= h else (new_long, self.size)
            return image.resize(size, Image.Resampling.BILINEAR)

    class CenterCrop:
        def __init__(self, size: int) -> None:
            self.size = size

        def _crop(self, image: Image.Image, left: int, top: int) -> Image.Image:
            return image.crop((left, top, left + self.size, top + self.size))

        def __call__(self, image: Image.Image) -> Image.Image:
            w, h = image.size
            return self._crop(image, round((w - self.size) / 2), round((h - self.size) / 2))

    class RandomCrop(CenterCrop):
        def __call__(self, image: Image.Image) -> Image.Image:
            w, h = image.size
            left = int(torch.randint(0, w - self.size + 1, (1,)))
            top = int(torch.randint(0, h - self.size + 1, (1,)))
            return self._crop(image, left, top)

    class ToTensor:
        def __call__(self, image: Image.Image) -> torch.Tensor:
            arr = np.array(image, dtype=np.uint8)
            return torch.from_numpy(arr).permute(2, 0, 1).float().div(255)

    class Normalize:
        def __init__(self, mean: list[float], std: list[float]) -> None:
            self.mean, self.std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            return (x - self.mean) / self.std

    transforms = types.ModuleType("torchvision.transforms")
    for obj in (InterpolationMode, Compose, Resize, CenterCrop, RandomCrop, ToTensor, Normalize):
        setattr(transforms, obj.__name__, obj)
    package = types.ModuleType("torchvision")
    package.transforms = transforms  # type: ignore[attr-defined]
    package.__version__ = "0.0+stand-in"  # type: ignore[attr-defined]
    return package


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    try:
        import torchvision  # noqa: F401
    except Exception:
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]  # whatever a failed import left behind
        # transformers and diffusers decide "no torchvision" now, before the stand-in exists.
        from diffusers.utils import is_torchvision_available as diffusers_has_torchvision
        from transformers.utils import is_torchvision_available as transformers_has_torchvision

        diffusers_has_torchvision()
        transformers_has_torchvision()
        package = _torchvision_stand_in()
        sys.modules["torchvision"], sys.modules["torchvision.transforms"] = package, package.transforms
        print(
            "run_diffusers_script: torchvision unavailable, using the PIL stand-in for its transforms",
            file=sys.stderr,
        )
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
