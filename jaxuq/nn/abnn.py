"""ABNN (Franchi et al. 2024, "Make me a BNN"): TU 0.13.0's ``BatchNormAdapter2d``
(``torch_uncertainty/layers/bayesian/abnn.py``) applied to every BatchNorm of a model, as TU's
``post_processing.abnn._replace_bn_layers`` does.

Each BatchNorm keeps its parameters and running statistics but multiplies its normalised output by
fresh Gaussian noise, in training **and** evaluation (TU draws ``randn_like`` in every forward)::

    y = scale * n * (1 + alpha * eps) + bias,   n = (x - mean) / sqrt(var + 1e-5),   eps ~ N(0, 1) [x's shape]

:class:`ABNN` wraps any jaxuq model: ``ABNN(model, alpha)`` has exactly the wrapped model's
variables (``nn.share_scope``), so a trained model's variables load as they are, and
``jaxuq.train.fit`` trains it (the noise comes from the ``"dropout"`` rng stream, which the train
step already provides). Every BatchNorm call draws its own noise from that stream; without the
stream (e.g. a plain eval forward) the call raises, because ABNN has no deterministic mode in TU.
``noise=[eps_1, ...]`` (one array per BatchNorm call, in call order, NHWC) injects it instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxuq.nn.norm import BatchNorm

__all__ = ["ABNN"]


class ABNN(nn.Module):
    """``model`` with every :class:`jaxuq.nn.BatchNorm` turned into TU's ``BatchNormAdapter2d``.

    Attributes: ``model`` (a Flax module with ``__call__(x, train)``), ``alpha`` (noise scale,
    TU's ``alpha``; 0 gives back the model). Output: the model's (e.g. logits ``[N, C]``).
    """

    model: nn.Module
    alpha: float

    def setup(self):
        nn.share_scope(self, self.model)

    def __call__(self, x, train: bool = False, noise: Sequence[jax.Array] | None = None):
        if self.alpha < 0:
            raise ValueError(f"ABNN: `alpha` must be >= 0, got {self.alpha}")
        calls = []

        def interceptor(next_fun, args, kwargs, context):
            m = context.module
            if not (isinstance(m, BatchNorm) and context.method_name == "__call__"):
                return next_fun(*args, **kwargs)
            y = next_fun(*args, **kwargs)
            i = len(calls)
            calls.append(m.path)
            if noise is not None:
                if i >= len(noise):
                    raise ValueError(f"ABNN: `noise` has {len(noise)} arrays, the model calls BatchNorm "
                                     "more often")
                eps = jnp.asarray(noise[i], jnp.float32)
                if eps.shape != y.shape:
                    raise ValueError(f"ABNN: noise[{i}] has shape {eps.shape}, BatchNorm {m.path} "
                                     f"outputs {y.shape}")
            elif self.is_initializing() or self.alpha == 0:
                return y
            elif not self.has_rng("dropout"):
                raise ValueError("ABNN draws BatchNorm noise in every forward pass (as TU): pass "
                                 "rngs={'dropout': key} to apply, or `noise`")
            else:
                eps = jax.random.normal(self.make_rng("dropout"), y.shape, jnp.float32)
            bias = m.get_variable("params", "bias") if m.use_bias else 0.0
            return (y + self.alpha * eps * (y - bias)).astype(y.dtype)  # scale*n*(1 + alpha eps) + bias

        with nn.intercept_methods(interceptor):
            out = self.model(x, train=train)
        if noise is not None and len(calls) != len(noise):
            raise ValueError(f"ABNN: `noise` has {len(noise)} arrays for {len(calls)} BatchNorm calls")
        return out
