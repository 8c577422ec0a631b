"""Test-time augmentation (TTA): TU 0.13.0's views layout and its ``Zero`` majority vote
(``torch_uncertainty/methods/zero.py``, Farina et al. 2024, "zero-temperature" averaging).

TU's ``TTADataset`` repeats every sample ``num_tta`` times in a row, so a batch of ``B`` samples
reaches the model as ``[(B V), ...]``, sample-major (rows ``b*V .. b*V+V-1`` are sample ``b``'s
views), each view through the (random) test transform. :func:`tta_views` builds that batch with an
explicit key; :func:`zero_vote` turns the model's ``[(B V), C]`` logits into TU's ``[B, C]`` output.

Deviation from TU 0.13.0 (README; ``tests/test_tta_parity.py``): TU ranks the views by
``entr(outputs).sum(-1)`` on the *logits* its models return (``-inf`` for any negative logit), not
on probabilities; jaxuq ranks them by the entropy of ``softmax(logits)``, Zero's definition. The
two agree when TU's model outputs probabilities (tested); the votes (argmax) are the same.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import entr

from jaxuq._validate import check_int, check_real

__all__ = ["tta_views", "zero_vote"]


def tta_views(augment, key, images, num_tta: int):
    """``[(B V), ...]`` views of ``images [B, ...]``, sample-major like TU's ``TTADataset``, each
    through ``augment(key, x)`` (e.g. a :class:`jaxuq.data.Preprocess`'s ``train``) with view keys
    ``split(key, V)``."""
    v = check_int(num_tta, "num_tta", minimum=1)
    x = jnp.asarray(images)
    views = jax.vmap(lambda k: augment(k, x))(jax.random.split(key, v))  # [V, B, ...]
    return jnp.swapaxes(views, 0, 1).reshape(x.shape[0] * v, *views.shape[2:])


def zero_vote(logits, num_tta: int, filter_views: float = 0.1, eps: float = 1e-8) -> jax.Array:
    """TU's ``Zero.eval_forward`` on ``logits [(B V), C]`` (sample-major views): ``[B, C]`` float32
    ``log(votes / V + eps)``.

    The ``int(filter_views * V)`` views with the lowest predictive entropy vote for their argmax
    class; while the top count is shared by several classes, the next most confident views vote
    too, one at a time (TU's loop). Views are ranked with a stable sort.
    """
    v = check_int(num_tta, "num_tta", minimum=1)
    f = check_real(filter_views, "filter_views", low=0.0, high=1.0, low_open=True)
    if v < 1 / f:
        raise ValueError(f"`num_tta` must be >= 1/filter_views = {1 / f}, got {v}")
    e = check_real(eps, "eps", low=0.0, low_open=True)
    x = jnp.asarray(logits, jnp.float32)
    if x.ndim != 2 or x.shape[0] % v:
        raise ValueError(f"`logits` must be [(B V), C] with V = num_tta = {v} dividing the rows, "
                         f"got {x.shape}")
    x = x.reshape(-1, v, x.shape[-1])
    c = x.shape[-1]
    kept = int(filter_views * num_tta)
    ent = jnp.sum(entr(jax.nn.softmax(x, axis=-1)), axis=-1)  # [B, V]
    votes = jnp.take_along_axis(jnp.argmax(x, -1), jnp.argsort(ent, axis=-1, stable=True), axis=-1)

    def one(vs):
        counts = jnp.sum(jax.nn.one_hot(vs[:kept], c, dtype=jnp.float32), axis=0)

        def extra(i, carry):
            cnt, active = carry
            active = active & (jnp.sum(cnt == jnp.max(cnt)) > 1)
            return cnt + jnp.where(active, jax.nn.one_hot(vs[i], c, dtype=jnp.float32), 0.0), active

        return jax.lax.fori_loop(kept, v, extra, (counts, jnp.asarray(True)))[0]

    return jnp.log(jax.vmap(one)(votes) / v + e)
