"""Model zoo with a name-based registry.

Models are built by name so that a checkpoint can store just
``{"name": ..., "kwargs": ...}`` (see ``model.bitswitch_arch``) and rebuild the
exact architecture later without pickling code.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from .factory import build_factory_model, import_factory, is_factory

__all__ = ["accepted_kwargs", "available", "build", "load_state_dict_strict", "load_weights", "register"]

_Factory = Callable[..., nn.Module]
_F = TypeVar("_F", bound=_Factory)
_REGISTRY: dict[str, _Factory] = {}


def register(name: str) -> Callable[[_F], _F]:
    """Decorator registering a model class or factory under ``name``."""

    def deco(factory: _F) -> _F:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return deco


def available() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(_REGISTRY)


def _accepted_kwargs(factory: _Factory) -> list[str] | None:
    """Keyword names ``factory`` accepts, or ``None`` if it takes ``**kwargs``."""
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [
        p.name
        for p in params
        if p.kind
        in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]


def accepted_kwargs(name: str) -> list[str] | None:
    """Keyword names model ``name`` accepts (``None``: any), so callers can fill in only what it takes.

    ``name`` may be a ``package.module:factory`` (imported: see :mod:`.factory`).
    """
    if is_factory(name):
        return _accepted_kwargs(import_factory(name))
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}")
    return _accepted_kwargs(_REGISTRY[name])


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model and tag it with ``bitswitch_arch`` for checkpoints.

    Raises ``ValueError`` for an unknown name or keyword, listing the valid choices,
    so typos in configs fail loudly instead of being silently ignored. A ``package.module:factory``
    is imported and called (:func:`.factory.build_factory_model`).
    """
    if is_factory(name):
        accepted = accepted_kwargs(name)
        unknown = sorted(k for k in kwargs if accepted is not None and k not in accepted)
        if unknown:
            raise ValueError(f"unknown argument(s) {', '.join(map(repr, unknown))} for model factory {name!r}; accepted: {', '.join(accepted or []) or '(none)'}")
        return build_factory_model(name, **kwargs)
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}")
    factory = _REGISTRY[name]
    accepted = _accepted_kwargs(factory)
    if accepted is not None:
        unknown = sorted(k for k in kwargs if k not in accepted)
        if unknown:
            raise ValueError(
                f"unknown argument(s) {', '.join(map(repr, unknown))} for model {name!r}; "
                f"accepted: {', '.join(accepted) or '(none)'}"
            )
    model = factory(**kwargs)
    model.bitswitch_arch = {"name": name, "kwargs": dict(kwargs)}
    return model


# Importing the modules registers their models.
from . import efficientnet_lite, llama, mobilenetv2, resnet, resnet_cifar, small, transformer  # noqa: F401
from .weights import load_state_dict_strict, load_weights
