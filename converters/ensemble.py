"""Deep-ensemble checkpoints: split a TU ``deep_ensembles`` state dict into members, stack members.

TU's ``_DeepEnsembles`` stores member ``i``'s tensors as ``core_models.{i}.<key>`` (a Lightning
checkpoint of a routine adds ``model.`` in front). ``split_deep_ensembles`` undoes that;
``stack_members`` stacks converted Flax variable trees on a new leading member axis ``[M, ...]``
(the layout ``jaxuq.ensembles`` consumes).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

__all__ = ["is_deep_ensembles_state_dict", "split_deep_ensembles", "stack_members"]

_KEY = re.compile(r"^(?:model\.)?core_models\.(\d+)\.(.+)$")


def is_deep_ensembles_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """True when every key is ``[model.]core_models.{i}.<key>``."""
    return bool(state_dict) and all(_KEY.match(k) for k in state_dict)


def split_deep_ensembles(state_dict: Mapping[str, Any], source: str = "<state_dict>") -> list[dict[str, Any]]:
    """``{"core_models.{i}.<key>": t}`` -> ``[ {<key>: t} for i in 0..M-1 ]``.

    Raises ValueError (naming ``source`` and the key) on keys outside the pattern, on missing member
    indices, or when members do not have the same keys and shapes.
    """
    members: dict[int, dict[str, Any]] = {}
    for k, v in state_dict.items():
        m = _KEY.match(k)
        if m is None:
            raise ValueError(f"{source}: key {k!r} is not of the form 'core_models.{{i}}.<key>'")
        members.setdefault(int(m.group(1)), {})[m.group(2)] = v
    if not members:
        raise ValueError(f"{source}: empty state dict")
    idx = sorted(members)
    if idx != list(range(len(idx))):
        raise ValueError(f"{source}: member indices {idx} are not 0..{len(idx) - 1}")
    ref = members[0]
    for i in idx[1:]:
        if set(members[i]) != set(ref):
            diff = sorted(set(members[i]) ^ set(ref))
            raise ValueError(f"{source}: member {i} keys differ from member 0: {diff[:5]}")
        for k in ref:
            if tuple(np.shape(members[i][k])) != tuple(np.shape(ref[k])):
                raise ValueError(
                    f"{source}: core_models.{i}.{k} has shape {tuple(np.shape(members[i][k]))}, "
                    f"member 0 has {tuple(np.shape(ref[k]))}"
                )
    return [members[i] for i in idx]


def stack_members(trees: Sequence[Any]):
    """Stack M identical-structure pytrees of arrays into one with a leading member axis ``[M, ...]``."""
    if len(trees) == 0:
        raise ValueError("stack_members: no members")
    s0 = jax.tree.structure(trees[0])
    for i, t in enumerate(trees[1:], 1):
        if jax.tree.structure(t) != s0:
            raise ValueError(f"stack_members: member {i} has a different tree structure than member 0")
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)
