"""jaxuq.models: the Flax model zoo (NHWC, torch-mirrored submodule names) and its checkpoints.

Registry (lazy: a model's module is imported only when it is asked for)::

    from jaxuq import models
    models.names()                      # ['lenet', 'packed_lenet', 'packed_resnet', 'resnet', ...]
    m = models.get("resnet", in_channels=3, num_classes=10, arch=18, style="cifar")
    variables = m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    logits = m.apply(variables, x, train=False)                      # [N, C]
    logits, upd = m.apply(variables, x, train=True, mutable=["batch_stats"],
                          rngs={"dropout": key})                       # train mode (BN batch stats)
    module, variables, meta = models.load("out/resnet20")            # a jaxuq-convert checkpoint

Every model's ``__call__(x, train: bool = False)`` takes ``x: [N, H, W, C]`` and returns logits
``[N, num_classes]``. Models with the ensemble members in the batch (packed, batched, masked, mimo forms) have
a field ``num_estimators`` and the class attribute ``members_in_batch = True``, and return TU's
``[M*N, num_classes]`` member-major (``jaxuq.predict``/``evaluate`` split it into ``[M, N, C]``). BatchNorm is
:class:`jaxuq.nn.BatchNorm` (torch parity, ``batch_stats`` collection); dropout uses the ``'dropout'`` rng.
"""

from __future__ import annotations

import importlib

import flax.linen as nn

__all__ = ["factory", "get", "load", "names", "save", "register"]

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
    full = mod_name if "." in mod_name else f"{__name__}.{mod_name}"
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


def load(path):
    """``(module, variables, meta)`` from a checkpoint directory written by ``jaxuq-convert``/:func:`save`."""
    from jaxuq.models.io import load as _load  # noqa: PLC0415

    return _load(path)


def save(path, variables, meta: dict, force: bool = False):
    """Atomically write ``variables`` + ``meta`` (see :func:`jaxuq.models.io.save`)."""
    from jaxuq.models.io import save as _save  # noqa: PLC0415

    return _save(path, variables, meta, force=force)
