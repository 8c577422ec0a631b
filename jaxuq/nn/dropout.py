"""Dropout with torch semantics that MC Dropout can switch on at evaluation time.

``Dropout(rate)`` is ``torch.nn.Dropout(p=rate)``; ``Dropout(rate, broadcast_dims=(1, 2))`` on NHWC is
``torch.nn.Dropout2d`` (one draw per sample and channel). Kept elements are scaled by ``1 / (1 - rate)``.

When is it stochastic?

- ``train=True``: always (rate > 0), with the ``'dropout'`` rng stream — the training behaviour.
- ``train=False``: only when the variables carry a flag ``MC_FLAGS/<layer path>/on`` (set by
  :class:`jaxuq.sampling.MCDropout` for the layers it selects, e.g. only the last one) and then with
  the ``'mc_dropout'`` rng stream. BatchNorm and every unflagged dropout stay in eval mode, as in TU's
  ``mc_dropout`` (which puts the selected ``nn.Dropout`` modules in train mode inside an eval model).

Every mask drawn is ``sow``-n into the collection ``MASKS`` (``dropout_masks/<path>/mask``: one bool
array per call, ``[N, 1, 1, C]`` for Dropout2d, ``x.shape`` otherwise) when that collection is
mutable, so a test or a lockstep tool can hand the very same masks to torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["MASKS", "MC_FLAGS", "MC_RNG", "Dropout"]

MC_RNG = "mc_dropout"  # rng stream of MC Dropout at evaluation time
MC_FLAGS = "mc_dropout"  # variables collection: MC_FLAGS/<layer path>/on marks a layer as active at eval
MASKS = "dropout_masks"  # sow collection of the drawn keep-masks (bool)


def check_rate(rate) -> float:
    """``rate`` as a float in ``[0, 1)``, or a TypeError / ValueError naming it."""
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise TypeError(f"dropout rate must be a float in [0, 1), got {type(rate).__name__} {rate!r}")
    if not (math.isfinite(rate) and 0.0 <= rate < 1.0):
        raise ValueError(f"dropout rate must be in [0, 1), got {rate!r}")
    return float(rate)


class Dropout(nn.Module):
    """torch ``nn.Dropout(p=rate)`` (``broadcast_dims=()``) or ``nn.Dropout2d`` (``(1, 2)`` on NHWC).

    ``__call__(x [N, ...], train)`` -> same shape. See the module docstring for when it draws.
    """

    rate: float
    broadcast_dims: Sequence[int] = ()

    @nn.compact
    def __call__(self, x, train: bool = False):
        rate = check_rate(self.rate)
        mc = not train and self.has_variable(MC_FLAGS, "on")
        if rate == 0.0 or not (train or mc):
            return x
        stream = "dropout" if train else MC_RNG
        if not self.has_rng(stream):
            mode = "training" if train else "MC Dropout evaluation"
            where = "/".join(self.path) or "Dropout"
            raise ValueError(
                f"dropout layer {where} is active ({mode}) but no {stream!r} rng was given: "
                f"pass rngs={{{stream!r}: key}} to apply"
            )
        keep = 1.0 - rate
        shape = list(x.shape)
        for d in self.broadcast_dims:
            shape[d] = 1
        mask = jax.random.bernoulli(self.make_rng(stream), keep, shape)
        self.sow(MASKS, "mask", mask)
        return jax.lax.select(jnp.broadcast_to(mask, x.shape), x / keep, jnp.zeros_like(x))
