"""MIMO (Havasi et al., ICLR 2021) input and output heads, exact to TU 0.13.0
(``torch_uncertainty/models/classification/{resnet,wideresnet}/mimo.py``).

A MIMO network is a plain network with ``M * in_channels`` inputs and ``M * num_classes`` outputs:
member ``m`` reads channels ``[m*C_in, (m+1)*C_in)`` and writes logits ``[m*C, (m+1)*C)``.

- :func:`mimo_inputs`: TU's ``rearrange(x, "(m b) c h w -> b (m c) h w")`` on NHWC, after TU's eval-time
  ``x.repeat(M, 1, 1, 1)`` when ``train`` is False (at training time the batch format
  :class:`jaxuq.data.formats.MIMOBatchFormat` has already stacked ``M`` shuffled copies).
- :func:`mimo_outputs`: TU's ``rearrange(out, "b (m d) -> (m b) d")``: ``[(M B), C]`` member-major.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxuq.nn.batch_ensemble import repeat_inputs

__all__ = ["mimo_inputs", "mimo_outputs"]


def mimo_inputs(x, num_estimators: int, train: bool):
    """``x [B, H, W, C]`` (eval: repeated to ``[M*B, ...]`` first) or ``[M*B, H, W, C]`` (train) ->
    ``[B, H, W, M*C]`` with channel ``m*C + c`` taken from row ``m*B + b``."""
    m = int(num_estimators)
    if not train:
        x = repeat_inputs(x, m)
    if x.shape[0] % m:
        raise ValueError(f"MIMO: the batch ({x.shape[0]} rows) must be a multiple of num_estimators={m}")
    b = x.shape[0] // m
    x = x.reshape(m, b, *x.shape[1:])
    return jnp.moveaxis(x, 0, -2).reshape(b, *x.shape[2:-1], m * x.shape[-1])


def mimo_outputs(y, num_estimators: int):
    """``y [B, M*D] -> [M*B, D]`` (member-major rows)."""
    m = int(num_estimators)
    b, md = y.shape
    return jnp.moveaxis(y.reshape(b, m, md // m), 1, 0).reshape(m * b, md // m)
