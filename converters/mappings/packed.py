"""Mapping for TU Packed-Ensembles checkpoints (``packed_lenet``, ``packed_resnet``) -> jaxuq Flax.

The mapping is driven by the Flax template (``jax.eval_shape`` of ``module.init``): each Flax leaf
names its torch key by a fixed rule, so the table is exhaustive and strict:

==============================================  ===============================  ==================
Flax leaf                                       torch key                        transform
==============================================  ===============================  ==================
``params/<path>/conv/kernel`` [kh,kw,i/G,o]     ``<path>.conv.weight`` (o,i/G,kh,kw)  ``transpose(2,3,1,0)``
``params/<path>/conv/bias``                     ``<path>.conv.bias``             --
``params/<packed dense>/kernel`` [G,o,i]        ``<path>.weight`` (G,o,i)        identity
``params/<dense>/kernel`` [i,o]                 ``<path>.weight`` (o,i)          ``.T``
``params/<bn>/scale`` / ``bias``                ``<path>.weight`` / ``.bias``    --
``batch_stats/<bn>/mean`` / ``var``             ``<path>.running_mean`` / ``running_var``  --
==============================================  ===============================  ==================

Path rule: Flax names ``layer1_0`` / ``shortcut_1`` are torch's ``layer1.0`` / ``shortcut.1``
(``<name>_<int>`` -> ``<name>.<int>``). ``num_batches_tracked`` is ignored. The same rule serves any
jaxuq model whose names mirror torch (plain LeNet / ResNet included).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["ARCHS", "build", "flax_leaf_to_torch", "torch_to_flax"]

_IDX = re.compile(r"^(.*)_(\d+)$")


def _torch_module_path(names: tuple[str, ...]) -> str:
    parts = []
    for n in names:
        m = _IDX.match(n)
        parts.extend([m.group(1), m.group(2)] if m else [n])
    return ".".join(parts)


def flax_leaf_to_torch(collection: str, names: tuple[str, ...], ndim: int) -> tuple[str, Any]:
    """Return ``(torch_key, transform)`` for the Flax leaf ``collection/names...``."""
    *mod, leaf = names
    base = _torch_module_path(tuple(mod))
    if collection == "params":
        if leaf == "kernel":
            if ndim == 4:
                return f"{base}.weight", lambda t: np.transpose(t, (2, 3, 1, 0))
            if ndim == 3:
                return f"{base}.weight", lambda t: t
            if ndim == 2:
                return f"{base}.weight", lambda t: np.transpose(t)
            raise ValueError(f"no torch layout for a {ndim}-d kernel at {'/'.join(names)}")
        if leaf == "scale":
            return f"{base}.weight", lambda t: t
        if leaf == "bias":
            return f"{base}.bias", lambda t: t
    if collection == "batch_stats":
        if leaf == "mean":
            return f"{base}.running_mean", lambda t: t
        if leaf == "var":
            return f"{base}.running_var", lambda t: t
    raise ValueError(f"no torch key rule for Flax leaf {collection}/{'/'.join(names)}")


def torch_to_flax(state_dict: Mapping[str, Any], template: Any, source: str = "<state_dict>") -> dict:
    """Convert a torch state dict (name -> array) to Flax variables shaped like ``template``.

    Strict: raises ValueError naming ``source`` with every missing key, unexpected key (besides
    ``num_batches_tracked``) and shape mismatch. Arrays come back as float32 numpy arrays.
    """
    import jax  # noqa: PLC0415

    sd = {k: np.asarray(v) for k, v in state_dict.items()}
    flat = jax.tree_util.tree_flatten_with_path(template)[0]
    used, errors, out = set(), [], []
    for path, leaf in flat:
        keys = tuple(getattr(p, "key", getattr(p, "name", str(p))) for p in path)
        tkey, fn = flax_leaf_to_torch(keys[0], keys[1:], len(leaf.shape))
        if tkey not in sd:
            errors.append(f"missing torch key {tkey!r} (for {'/'.join(keys)}, shape {tuple(leaf.shape)})")
            out.append(None)
            continue
        used.add(tkey)
        arr = fn(sd[tkey])
        if tuple(arr.shape) != tuple(leaf.shape):
            errors.append(
                f"{tkey!r}: torch shape {tuple(sd[tkey].shape)} -> {tuple(arr.shape)}, "
                f"expected {tuple(leaf.shape)} for {'/'.join(keys)}"
            )
        if not np.all(np.isfinite(arr)):
            errors.append(f"{tkey!r}: contains non-finite values")
        out.append(np.ascontiguousarray(arr, dtype=np.float32))
    extra = sorted(k for k in sd if k not in used and not k.endswith("num_batches_tracked"))
    errors.extend(f"unexpected torch key {k!r} {tuple(sd[k].shape)}" for k in extra)
    if errors:
        raise ValueError(f"{source}: cannot convert ({len(errors)} problems):\n  " + "\n  ".join(errors))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), out)


def _packed_lenet(**kw):
    from jaxuq.models.packed_lenet import packed_lenet  # noqa: PLC0415

    return packed_lenet(**kw), (1, 28, 28, kw.get("in_channels", 1))


def _packed_resnet(**kw):
    from jaxuq.models.packed_resnet import packed_resnet  # noqa: PLC0415

    size = 32 if kw.get("style", "imagenet") == "cifar" else 64
    return packed_resnet(**kw), (1, size, size, kw["in_channels"])


ARCHS = {"packed_lenet": _packed_lenet, "packed_resnet": _packed_resnet}


def build(model_name: str, state_dict: Mapping[str, Any], source: str = "<state_dict>", **kwargs):
    """Build ``model_name`` (``packed_lenet`` / ``packed_resnet``) with TU's ``kwargs`` and load
    ``state_dict``: returns ``(module, variables)``."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    if model_name not in ARCHS:
        raise ValueError(f"unknown packed model {model_name!r}; known: {sorted(ARCHS)}")
    module, shape = ARCHS[model_name](**kwargs)
    template = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(shape, jnp.float32)))
    return module, torch_to_flax(state_dict, template, source)
