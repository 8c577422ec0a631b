"""The model registry: name -> ``"module:factory"``, imported on first :func:`get` (lazy)."""

from __future__ import annotations

import importlib

import flax.linen as nn

__all__ = ["factory", "get", "names", "register"]

# name -> "module:factory" (module relative to jaxuq.models). Imported on first get().
_REGISTRY: dict[str, str] = {
    "lenet": "lenet:lenet",
    "resnet": "resnet:resnet",
    "resnet_cifar": "resnet_cifar:resnet_cifar",
    "resnet20": "resnet_cifar:resnet20",
    "resnet32": "resnet_cifar:resnet32",
    "resnet44": "resnet_cifar:resnet44",
    "resnet56": "resnet_cifar:resnet56",
    "resnet110": "resnet_cifar:resnet110",
    "tiniest": "tiniest:tiniest",
    "chenyaofo_resnet": "chenyaofo_resnet:chenyaofo_resnet",
    **{f"cifar{c}_resnet{d}": f"chenyaofo_resnet:cifar{c}_resnet{d}"
       for c in (10, 100) for d in (20, 32, 44, 56)},
    "packed_lenet": "lenet:packed_lenet",
    "batchensemble_lenet": "lenet:batchensemble_lenet",
    "packed_resnet": "resnet:packed_resnet",
    "batched_resnet": "resnet:batched_resnet",
    "masked_resnet": "resnet:masked_resnet",
    "mimo_resnet": "resnet:mimo_resnet",
    **{f"{form}wideresnet28x10": f"wideresnet:{form}wideresnet28x10"
       for form in ("", "batched_", "masked_", "mimo_", "packed_")},
    "vgg": "vgg:vgg",
    "packed_vgg": "vgg:packed_vgg",
    "bayesian_lenet": "bayesian_lenet:bayesian_lenet",
    **{f"{form}mlp": f"mlp:{form}mlp" for form in ("", "packed_", "batched_", "mimo_", "bayesian_")},
}


def names() -> list[str]:
    """All registered model names (whether or not their module is importable)."""
    return sorted(_REGISTRY)


def register(name: str, target: str) -> None:
    """Register ``name`` -> ``"package.module:factory"`` (absolute) or ``"module:factory"``
    (relative to jaxuq.models)."""
    if ":" not in target:
        raise ValueError(f"register({name!r}): target must be 'module:factory', got {target!r}")
    _REGISTRY[name] = target


def get(name: str, **kwargs) -> nn.Module:
    """Build the model ``name`` with ``kwargs`` (the factory's keyword arguments)."""
    return factory(name)(**kwargs)


def factory(name: str):
    """The factory function registered as ``name`` (its signature lists the model's arguments)."""
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(names())}") from None
    mod_name, fn_name = target.split(":")
    full = mod_name if "." in mod_name else f"jaxuq.models.{mod_name}"
    try:
        mod = importlib.import_module(full)
    except ModuleNotFoundError as e:
        if e.name != full:
            raise
        raise ValueError(
            f"model {name!r} is registered to {full}:{fn_name}, but {full} is not available"
        ) from e
    try:
        return getattr(mod, fn_name)
    except AttributeError:
        raise ValueError(f"model {name!r}: {full} has no factory {fn_name!r}") from None
