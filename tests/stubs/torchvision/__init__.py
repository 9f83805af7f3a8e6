"""A minimal import stand-in for torchvision, for tests only.

timm imports torchvision at load time (transforms, datasets, FrozenBatchNorm2d), but there is no
CPU build of torchvision for this machine and bitswitch never needs it. The tests that build timm
model definitions put this folder first on ``sys.path`` (see ``tests/conftest.py::timm``); every
name resolves to a placeholder that raises if it is ever *used*, so a timm code path that really
needs torchvision fails loudly instead of running on a fake.
"""

import sys
import types
from enum import Enum

__version__ = "0.0.0+bitswitch-test-stub"


class _Unavailable:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("torchvision is a test import stand-in here; this code path needs the real package")


class InterpolationMode(Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"  # transformers' image_utils maps PIL's NEAREST to it when torchvision is importable
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def _module(name: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__getattr__ = lambda attr: _Unavailable if not attr.startswith("__") else (_ for _ in ()).throw(AttributeError(attr))  # type: ignore[method-assign]
    sys.modules[name] = mod
    return mod


transforms = _module("torchvision.transforms")
transforms.functional = _module("torchvision.transforms.functional")
transforms.functional.InterpolationMode = InterpolationMode
transforms.InterpolationMode = InterpolationMode
datasets = _module("torchvision.datasets")
ops = _module("torchvision.ops")
ops.misc = _module("torchvision.ops.misc")
utils = _module("torchvision.utils")
models = _module("torchvision.models")
models.feature_extraction = _module("torchvision.models.feature_extraction")


def __getattr__(attr: str) -> types.ModuleType:
    """Any other submodule (transformers imports ``torchvision.io`` when torchvision looks installed)."""
    if attr.startswith("__"):
        raise AttributeError(attr)
    return _module(f"torchvision.{attr}")
