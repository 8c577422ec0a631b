"""Samplers: M predictions of one network from M random draws, one ``vmap`` where TU loops.

A *sampler* (:class:`jaxuq.forward.Sampler`) is a hashable object with ``num_samples: int`` and
``draw(variables, key) -> (variables_m, rngs_m)``; :func:`jaxuq.forward.forward` (below
:func:`jaxuq.predict` and :func:`jaxuq.evaluate`, ``sampler=, key=``) maps
``model.apply(variables_m, x, train=False, rngs=rngs_m)`` over ``num_samples`` keys split from one key,
giving ``[M, B, C]``, so the evaluation path sees an ensemble (``test/ens_*`` keys).

- :class:`MCDropout` / :func:`mc_dropout` — TU ``mc_dropout(model, num_estimators, last_layer, on_batch)``:
  the selected :class:`jaxuq.nn.Dropout` layers draw masks at evaluation (``'mc_dropout'`` rng), BatchNorm
  and the other layers stay in eval mode.
- :class:`BayesSampler` — TU ``StochasticModel``'s evaluation: every forward draws new weights in the
  Bayesian layers (``jaxuq.nn.bayesian``, ``'bayes'`` rng).
- MC-BatchNorm's M statistics sets are :class:`jaxuq.forward.StackedBatchStats` (index-based, no key);
  training a Bayesian network is :class:`jaxuq.train.ELBOObjective` for ``fit``.

Layout: TU returns ``[(M B), C]`` (``torch.cat`` of the samples, or one forward on the input repeated
M times with ``on_batch=True``); here every sampler gives ``[M, B, C]``, whichever ``on_batch``.
``on_batch`` only chooses how the samples are lowered when the caller names no ``lowering``
(the sampler's ``lowering``): ``True`` -> ``"vmap"`` (all M at once, more memory), ``False`` ->
``"map"`` (one at a time). Both give the same numbers from the same key.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxuq._validate import check_int
from jaxuq.nn.bayesian import RNG as BAYES_RNG
from jaxuq.nn.dropout import MC_FLAGS, MC_RNG, Dropout

__all__ = ["BayesSampler", "MCDropout", "find_layers", "flag_tree", "mc_dropout"]


def find_layers(model, variables, x, cls) -> list[tuple[tuple[str, ...], object]]:
    """``[(path, module)]`` of the ``cls`` layers that ``model.apply(variables, x, train=False)`` calls,
    in first-call order (traced with ``jax.eval_shape``: nothing is computed)."""
    found: dict = {}

    def record(mdl, method_name):
        if isinstance(mdl, cls) and method_name == "__call__":
            found.setdefault(tuple(mdl.path), mdl)
        return False

    jax.eval_shape(lambda v, a: model.apply(v, a, train=False, capture_intermediates=record), variables, x)
    return list(found.items())


def flag_tree(paths, leaf: str = "on") -> dict:
    """``{a: {b: {leaf: True}}}`` for the module paths ``(a, b)``: a collection that switches those
    layers on (MC Dropout's MC_FLAGS with ``"on"``, MC-BatchNorm's accumulate flags)."""
    tree: dict = {}
    for path in paths:
        node = tree
        for name in path:
            node = node.setdefault(name, {})
        node[leaf] = jnp.ones((), jnp.bool_)
    return tree


@dataclasses.dataclass(frozen=True)
class MCDropout:
    """MC Dropout sampler: the dropout layers at ``layers`` (module paths) draw masks at evaluation.

    Build it with :func:`mc_dropout`, which finds the layers. ``draw`` adds the ``mc_dropout`` flags
    to the variables and returns ``rngs={"mc_dropout": key}``.
    """

    num_estimators: int
    layers: tuple[tuple[str, ...], ...]
    on_batch: bool = True

    def __post_init__(self):
        check_int(self.num_estimators, "num_estimators", minimum=1)
        if not self.layers:
            raise ValueError("MCDropout needs at least one dropout layer path")

    @property
    def num_samples(self) -> int:
        return self.num_estimators

    @property
    def lowering(self) -> str:
        """TU's ``on_batch``: ``"vmap"`` (all samples at once) or ``"map"`` (one after the other)."""
        return "vmap" if self.on_batch else "map"

    def draw(self, variables, key):
        return {**variables, MC_FLAGS: flag_tree(self.layers)}, {MC_RNG: key}


def mc_dropout(model, variables, x, num_estimators: int, last_layer: bool = False,
               on_batch: bool = True) -> MCDropout:
    """TU ``mc_dropout(model, num_estimators, last_layer, on_batch)`` as a sampler for ``model``.

    ``x``: a sample input ``[B, ...]`` (only its shape is used) to find the :class:`jaxuq.nn.Dropout`
    layers. ``last_layer``: only the last one called (TU: the last registered dropout module; the same
    layer for TU's models). Raises ValueError when the model has no dropout layer or when every
    selected layer has rate 0 (TU's checks), TypeError/ValueError for ``num_estimators`` not an int >= 1.
    """
    check_int(num_estimators, "num_estimators", minimum=1)
    layers = find_layers(model, variables, x, Dropout)
    if not layers:
        raise ValueError(
            f"mc_dropout: {type(model).__name__} has no jaxuq.nn.Dropout layer; MC Dropout needs a model "
            "built with dropout layers (e.g. dropout_rate > 0)"
        )
    if last_layer:
        layers = layers[-1:]
    if not any(mdl.rate > 0 for _, mdl in layers):
        rates = {"/".join(p): mdl.rate for p, mdl in layers}
        raise ValueError(f"mc_dropout: at least one dropout layer must have a rate > 0, got {rates}")
    return MCDropout(num_estimators, tuple(p for p, _ in layers), bool(on_batch))


@dataclasses.dataclass(frozen=True)
class BayesSampler:
    """TU ``StochasticModel`` evaluation: each of the ``num_samples`` forwards draws new weights in the
    Bayesian layers (``rngs={"bayes": key}``). ``on_batch`` as for :class:`MCDropout`."""

    num_samples: int
    on_batch: bool = True

    def __post_init__(self):
        check_int(self.num_samples, "num_samples", minimum=1)

    @property
    def lowering(self) -> str:
        return "vmap" if self.on_batch else "map"

    def draw(self, variables, key):
        return variables, {BAYES_RNG: key}
