"""MC-BatchNorm (Teye et al., 2018; TU 0.13.0 ``post_processing/mc_batch_norm.py``, ``layers/...``).

TU's ``MCBatchNorm(model, num_estimators, mc_batch_size).fit(loader)`` runs the model in eval mode on the
first ``num_estimators`` calibration batches of ``mc_batch_size`` images (the loader's order); in each,
every BatchNorm layer normalises with that batch's mean and unbiased variance and keeps them as its
statistics set m (a direct replacement, TU's documented choice). Prediction runs the model once per set:
``[(M B), C]`` in TU, ``[M, B, C]`` here.

Here the M sets are one stacked ``batch_stats`` tree (leaves ``[M, C]``), computed by one ``vmap`` over the
M calibration batches (:func:`mc_batch_norm_fit`). Evaluation is the one forward pass with the sampler
:class:`jaxuq.forward.StackedBatchStats` (sample m: the shared parameters with statistics set m, mapped
over the sets)::

    stats = mc_batch_norm_fit(model, variables, cal_images, num_estimators=M, mc_batch_size=32)
    v = {**variables, "batch_stats": stats}
    logits = jaxuq.predict(model, v, images, sampler=StackedBatchStats(M))     # [M, N, C]
    table = jaxuq.evaluate(model, v, (images, labels), sampler=StackedBatchStats(M))

- Batches: ``key=None`` takes the images in order (TU with an unshuffled loader); a key draws one
  permutation first (a shuffled loader). As in TU's DataLoader (``drop_last=False``) the M-th batch may
  be a partial last batch; fewer images than that is an error.
- Every :class:`jaxuq.nn.BatchNorm` the model calls is converted (TU converts every ``BatchNorm2d``).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxuq._validate import check_int
from jaxuq.nn.norm import MC_ACCUMULATE, BatchNorm
from jaxuq.sampling import find_layers, flag_tree

__all__ = ["mc_batch_norm_fit"]


@partial(jax.jit, static_argnames=("model",))
def _batch_stats(model, variables, flags, batches):
    """Stacked ``batch_stats`` ``[K, ...]`` of K calibration batches ``[K, b, ...]``."""

    def one(xb):
        _, upd = model.apply({**variables, MC_ACCUMULATE: flags}, xb, train=False, mutable=["batch_stats"])
        return upd["batch_stats"]

    return jax.vmap(one)(batches)


def mc_batch_norm_fit(model, variables, images, num_estimators: int = 16, mc_batch_size: int = 32, key=None,
                      preprocess=None):
    """TU ``MCBatchNorm.fit``: the M statistics sets, a ``batch_stats`` tree with leaves ``[M, C]``
    (predict with ``sampler=StackedBatchStats(M)``, module doc).

    ``images``: calibration inputs ``[N, H, W, C]`` (float, or uint8 through ``preprocess.eval``).
    ``variables`` must hold the model's ``params`` and ``batch_stats``.
    """
    m = check_int(num_estimators, "num_estimators", minimum=1)
    bs = check_int(mc_batch_size, "mc_batch_size", minimum=1)
    n = len(images)
    if n <= (m - 1) * bs:
        raise ValueError(
            f"mc_batch_norm_fit: {n} calibration images give {-(-n // bs)} batch(es) of {bs}; "
            f"{m} estimators need more than {(m - 1) * bs} images (TU: the dataset is too small)"
        )
    sample = jnp.asarray(images[:1]) if preprocess is None else preprocess.eval(jnp.asarray(images[:1]))
    layers = find_layers(model, variables, sample, BatchNorm)
    if not layers:
        raise ValueError(f"mc_batch_norm_fit: {type(model).__name__} has no jaxuq.nn.BatchNorm layer")
    order = np.arange(n) if key is None else np.asarray(jax.random.permutation(key, n))
    order = order[: m * bs]
    x = jnp.asarray(np.asarray(images)[order])
    x = x if preprocess is None else preprocess.eval(x)
    flags = flag_tree((p for p, _ in layers), "accumulate")
    full = min(m, len(order) // bs)
    stats = _batch_stats(model, variables, flags, x[: full * bs].reshape((full, bs) + x.shape[1:]))
    if full < m:  # TU's partial last batch
        last = _batch_stats(model, variables, flags, x[full * bs:][None])
        stats = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), stats, last)
    return stats
