"""TU 0.13.0's multi-layer perceptrons (``torch_uncertainty/models/mlp.py``) in Flax: ``mlp``,
``packed_mlp``, ``batched_mlp``, ``mimo_mlp`` and ``bayesian_mlp``, one graph over the layer kind.

Graph (TU's ``_MLP``): [kind's input handling] -> flatten from ``flatten_start_dim`` -> for each hidden
width: ``layers_i`` (Linear of the kind) -> Dropout (``fc_dropout``; ``last_fc_dropout`` after the last
hidden layer) -> activation -> ``final_layer``: a Linear with ``num_outputs`` outputs, or with
``dist_family`` a distribution head (:class:`jaxuq.nn.distributions.DistDense`, its base layer of the same
kind) returning TU's parameter dict ``{name: [B, num_outputs]}``. Names follow TU's state dict
(``layers.0.weight`` -> ``layers_0/kernel``, ``final_layer.base_layer.weight`` ->
``final_layer/base_layer/kernel``); linear layers use torch's default initialisation law.

Forms (``x: [B, in_features]``; the members-in-batch forms have ``num_estimators`` and
``members_in_batch = True`` and return TU's ``[(M B), ...]`` member-major):

- ``mlp``: ``[B, D]`` or the dict.
- ``packed_mlp`` (``PackedLinear``; first layer ``first``, ``final_layer`` ``last``).
- ``batched_mlp`` (``BatchLinear``): TU repeats the input ``M`` times in training too, so training needs
  ``RepeatTarget(M)``.
- ``mimo_mlp``: the plain MLP with ``M * in_features`` inputs and ``M * num_outputs`` outputs (MIMO's
  stacking at evaluation; in training ``MIMOBatchFormat`` stacks the members' inputs).
- ``bayesian_mlp`` (``BayesLinear``): one ``apply`` is one weight sample (``rngs={"bayes": key}``); TU's
  ``StochasticModel(num_samples)`` is ``jaxuq.sampling.BayesSampler(model.num_samples)``.

Deviation: TU's ``_MLP`` with ``hidden_dims=[]`` ignores ``dist_family`` (a plain Linear, whose tensor
output its routine then refuses); here the head is built on the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax

from jaxuq._validate import check_int
from jaxuq.distributions import check_family
from jaxuq.models._common import activation as _act
from jaxuq.models._kinds import Kind, count, validated
from jaxuq.models.bayesian_lenet import BayesKind
from jaxuq.nn import Dropout
from jaxuq.nn.distributions import DistDense, check_dist_args

__all__ = ["MLP", "BatchedMLP", "BayesianMLP", "MIMOMLP", "PackedMLP", "batched_mlp", "bayesian_mlp",
           "mimo_mlp", "mlp", "packed_mlp"]


class _BayesMLPKind(BayesKind):
    """:class:`BayesKind` with the plain input/output handling of :class:`Kind`."""

    fold: ClassVar[int] = 1

    def inputs(self, x, train: bool):
        return x

    def outputs(self, y):
        return y


class MLP(nn.Module):
    in_features: int
    num_outputs: int
    hidden_dims: tuple[int, ...]
    activation: str = "relu"
    dropout_rate: float = 0.0
    dist_family: str | None = None
    dist_args: tuple = ()
    flatten_start_dim: int = -1

    def kind(self):
        return Kind("std")

    @nn.compact
    def __call__(self, x, train: bool = False):
        """``x [B, in_features]`` -> ``[B, num_outputs]`` or ``{name: [B, num_outputs]}`` (members in the
        batch: ``[(M B), ...]``)."""
        kind, act = self.kind(), _act(self.activation)
        x = kind.inputs(x, train)
        start = self.flatten_start_dim % x.ndim
        x = x.reshape(x.shape[:start] + (-1,))
        dims = (self.in_features * kind.fold, *self.hidden_dims)
        if x.shape[-1] != dims[0]:
            raise ValueError(f"{type(self).__name__}: expected {dims[0]} input features, got shape {x.shape}")
        drops = (Dropout(self.dropout_rate, name="fc_dropout"),
                 Dropout(self.dropout_rate, name="last_fc_dropout"))
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            x = kind.dense(cin, cout, name=f"layers_{i}", first=i == 0)(x)
            x = act(drops[i == len(self.hidden_dims) - 1](x, train))
        out_dim, first = self.num_outputs * kind.fold, not self.hidden_dims
        if self.dist_family is None:
            out = kind.dense(dims[-1], out_dim, name="final_layer", first=first, last=True)(x)
        else:
            out = DistDense(self.dist_family, out_dim, self.dist_args, kind=kind, in_features=dims[-1],
                            first=first, name="final_layer")(x)
        return jax.tree.map(kind.outputs, out)


class PackedMLP(MLP):
    """TU ``packed_mlp``: ``[(M B), ...]``."""

    num_estimators: int = 4
    alpha: float = 2.0
    gamma: int = 1
    members_in_batch: ClassVar[bool] = True

    def kind(self) -> Kind:
        return Kind("packed", self.num_estimators, alpha=self.alpha, gamma=self.gamma)


class BatchedMLP(MLP):
    """TU ``batched_mlp``: the input repeated ``M`` times (training too, as TU): ``[(M B), ...]``."""

    num_estimators: int = 4
    members_in_batch: ClassVar[bool] = True

    def kind(self) -> Kind:
        return Kind("batched", self.num_estimators, repeat_training_inputs=True)


class MIMOMLP(MLP):
    """TU ``mimo_mlp``: ``[(M B), ...]``."""

    num_estimators: int = 2
    members_in_batch: ClassVar[bool] = True

    def kind(self) -> Kind:
        return Kind("mimo", self.num_estimators)


class BayesianMLP(MLP):
    """TU ``bayesian_mlp`` (the core of its ``StochasticModel``): one weight sample per ``apply``."""

    num_samples: int = 16
    frozen: bool = False

    def kind(self) -> _BayesMLPKind:
        return _BayesMLPKind((), self.frozen)


def _common(in_features, num_outputs, hidden_dims, dist_family, dist_args, flatten_start_dim) -> dict:
    """The checked shared arguments (TypeError / ValueError naming the argument)."""
    if isinstance(hidden_dims, str) or not isinstance(hidden_dims, Sequence):
        raise TypeError(f"`hidden_dims` must be a sequence of ints, got {type(hidden_dims).__name__}")
    out = {"in_features": check_int(in_features, "in_features", 1),
           "num_outputs": check_int(num_outputs, "num_outputs", 1),
           "hidden_dims": tuple(check_int(h, "hidden_dims", 1) for h in hidden_dims),
           "flatten_start_dim": check_int(flatten_start_dim, "flatten_start_dim")}
    if dist_family is None:
        if dist_args:
            raise ValueError("`dist_args` needs a `dist_family`")
        return out | {"dist_family": None, "dist_args": ()}
    family = check_family(dist_family)
    return out | {"dist_family": family, "dist_args": check_dist_args(family, dist_args)}


def mlp(in_features: int, num_outputs: int, hidden_dims: Sequence[int], activation: str = "relu",
        dropout_rate: float = 0.0, dist_family: str | None = None, dist_args: dict | None = None,
        flatten_start_dim: int = -1) -> MLP:
    """TU ``mlp`` (``activation`` by name; ``dist_args``: TU's head arguments, e.g.
    ``{"min_scale": 1e-3}``)."""
    kw = _common(in_features, num_outputs, hidden_dims, dist_family, dist_args, flatten_start_dim)
    return MLP(activation=activation, dropout_rate=dropout_rate, **kw)


def packed_mlp(in_features: int, num_outputs: int, hidden_dims: Sequence[int], num_estimators: int = 4,
               alpha: float = 2, gamma: int = 1, activation: str = "relu", dropout_rate: float = 0.0,
               dist_family: str | None = None, dist_args: dict | None = None,
               flatten_start_dim: int = -1) -> PackedMLP:
    """TU ``packed_mlp``."""
    kw = _common(in_features, num_outputs, hidden_dims, dist_family, dist_args, flatten_start_dim)
    m = count(num_estimators, "num_estimators")
    return validated(PackedMLP(activation=activation, dropout_rate=dropout_rate, **kw, alpha=alpha,
                               num_estimators=m, gamma=count(gamma, "gamma")))


def batched_mlp(in_features: int, num_outputs: int, hidden_dims: Sequence[int], num_estimators: int = 4,
                activation: str = "relu", dropout_rate: float = 0.0, dist_family: str | None = None,
                dist_args: dict | None = None, flatten_start_dim: int = -1) -> BatchedMLP:
    """TU ``batched_mlp``."""
    kw = _common(in_features, num_outputs, hidden_dims, dist_family, dist_args, flatten_start_dim)
    return BatchedMLP(activation=activation, dropout_rate=dropout_rate, **kw,
                      num_estimators=count(num_estimators, "num_estimators"))


def mimo_mlp(in_features: int, num_outputs: int, hidden_dims: Sequence[int], num_estimators: int,
             activation: str = "relu", dropout_rate: float = 0.0, dist_family: str | None = None,
             dist_args: dict | None = None, flatten_start_dim: int = -1) -> MIMOMLP:
    """TU ``mimo_mlp``."""
    kw = _common(in_features, num_outputs, hidden_dims, dist_family, dist_args, flatten_start_dim)
    return MIMOMLP(activation=activation, dropout_rate=dropout_rate, **kw,
                   num_estimators=count(num_estimators, "num_estimators"))


def bayesian_mlp(in_features: int, num_outputs: int, hidden_dims: Sequence[int], num_samples: int = 16,
                 activation: str = "relu", dropout_rate: float = 0.0, dist_family: str | None = None,
                 dist_args: dict | None = None, flatten_start_dim: int = -1,
                 frozen: bool = False) -> BayesianMLP:
    """TU ``bayesian_mlp`` (TU's ``BayesLinear`` defaults); ``frozen``: TU's ``freeze()`` (the means)."""
    kw = _common(in_features, num_outputs, hidden_dims, dist_family, dist_args, flatten_start_dim)
    return BayesianMLP(activation=activation, dropout_rate=dropout_rate, **kw,
                       num_samples=check_int(num_samples, "num_samples", 1), frozen=frozen)
