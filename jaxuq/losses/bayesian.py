"""Bayesian losses (TU 0.13.0 ``torch_uncertainty/losses/bayesian.py``: ``KLDiv``, ``ELBOLoss``).

Pure functions of what the forward samples produced; running the samples (one ``vmap`` over keys)
is :class:`jaxuq.train.ELBOObjective` (``fit``'s objective).

- :func:`kl_divergence` (TU ``KLDiv``): the **mean over the Bayesian layers** of each layer's one-sample
  estimate ``log q(w) - log p(w)``, read from the terms the layers ``sow`` (``jaxuq.nn.bayesian.KL``).
  TU averages, it does not sum: its docstring defines ``KL = 1/L sum_l KL_l`` and its code divides by the
  number of layers. (The textbook ELBO sums; with TU's definition the KL weight is effectively 1/L of
  the given one.)
- :class:`ELBOLoss` (TU ``ELBOLoss``): ``1/S sum_s [inner(f_{w_s}(x), y) + kl_weight * KL_s]`` over
  ``S = num_samples`` weight samples, each with its own KL estimate, as TU's loop adds them.
  TU's ``dist_family`` (regression distributions) is not offered.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from jaxuq.losses.classification import cross_entropy

__all__ = ["ELBOLoss", "kl_divergence"]

_TERMS = ("log_posterior", "log_prior")


def _layer_terms(tree):
    """``(log_posterior, log_prior)`` of every layer call recorded in a sown collection ``tree``."""
    if not isinstance(tree, Mapping):
        return
    if all(k in tree for k in _TERMS):
        lq, lp = tree["log_posterior"], tree["log_prior"]
        lq, lp = (lq, lp) if isinstance(lq, tuple) else ((lq,), (lp,))
        yield from zip(lq, lp, strict=True)
    for k, v in tree.items():
        if k not in _TERMS:
            yield from _layer_terms(v)


def kl_divergence(terms) -> jax.Array:
    """TU ``KLDiv``: mean over the Bayesian layers of ``log_posterior - log_prior`` (float32 scalar).

    ``terms``: the sown collection (``state["bayes_kl"]`` of ``model.apply(..., mutable=["bayes_kl"])``),
    ``{layer: {"log_posterior": (v,), "log_prior": (v,)}}`` at any nesting depth.
    """
    pairs = list(_layer_terms(terms))
    if not pairs:
        raise ValueError(
            "kl_divergence: no KL terms found (no Bayesian layer sampled in this forward pass: the model has "
            "none, every layer is frozen, or the collection was not mutable)"
        )
    total = sum((jnp.asarray(lq, jnp.float32) - jnp.asarray(lp, jnp.float32) for lq, lp in pairs),
                jnp.zeros((), jnp.float32))
    return total / len(pairs)


@dataclasses.dataclass(frozen=True)
class ELBOLoss:
    """TU ``ELBOLoss(model, inner_loss, kl_weight, num_samples)`` as a hashable configuration.

    ``loss(outputs [S, B, C], targets [B], kl [S]) -> float32`` with ``S = num_samples``:
    ``mean_s(inner_loss(outputs[s], targets) + kl_weight * kl[s])``.
    """

    kl_weight: float
    num_samples: int
    inner_loss: Callable = cross_entropy

    def __post_init__(self):
        if isinstance(self.inner_loss, type):
            raise TypeError(f"inner_loss must be a loss function or instance, not a class: {self.inner_loss}")
        if not callable(self.inner_loss):
            raise TypeError(f"inner_loss must be callable, got {type(self.inner_loss).__name__}")
        if isinstance(self.kl_weight, bool) or not isinstance(self.kl_weight, int | float):
            raise TypeError(f"kl_weight must be a number, got {type(self.kl_weight).__name__}")
        if not math.isfinite(self.kl_weight) or self.kl_weight < 0:
            raise ValueError(f"kl_weight must be finite and >= 0, got {self.kl_weight}")
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int):
            raise TypeError(f"num_samples must be an int, got {type(self.num_samples).__name__}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")

    def __call__(self, outputs, targets, kl) -> jax.Array:
        if outputs.shape[0] != self.num_samples or jnp.shape(kl) != (self.num_samples,):
            raise ValueError(
                f"ELBOLoss: expected outputs [S={self.num_samples}, B, ...] and kl [S], got "
                f"{tuple(outputs.shape)} and {tuple(jnp.shape(kl))}"
            )
        inner = jax.vmap(lambda o: self.inner_loss(o, targets))(outputs)
        return jnp.mean(inner + self.kl_weight * jnp.asarray(kl, jnp.float32))
