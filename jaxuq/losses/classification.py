"""Classification losses (TU ``torch_uncertainty/losses/classification.py``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["cross_entropy"]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy (torch ``CrossEntropyLoss()``): logits [N, C], labels [N] int."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1))
