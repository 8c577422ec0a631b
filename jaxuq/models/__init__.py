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

from jaxuq.models.io import load, save
from jaxuq.models.registry import factory, get, names, register

__all__ = ["factory", "get", "load", "names", "save", "register"]
