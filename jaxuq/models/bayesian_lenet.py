"""TU 0.13.0 ``bayesian_lenet`` (``models/classification/lenet.py``): LeNet with Bayesian layers, NHWC.

The graph, names and options of :class:`jaxuq.models.lenet.LeNet`, with ``BayesConv`` for ``conv1``/``conv2``
and ``BayesDense`` for ``fc1``-``fc3`` (``jaxuq.nn.bayesian``; parameters ``weight_mu``, ``weight_sigma``,
``bias_mu``, ``bias_sigma`` per layer). The prior/init arguments left at ``None`` take each layer's
own default, as TU's factory does (conv: prior_sigma_2 0.002, sigma_init -6; dense: 0.4, -7).

One ``apply`` is one weight sample (``rngs={"bayes": key}``): ``x [N, H, W, C] -> [N, num_classes]``.
TU wraps the network in ``StochasticModel(num_samples)``, whose evaluation concatenates ``num_samples``
forwards into ``[(S N), C]``; here ``jaxuq.predict`` / ``jaxuq.evaluate`` with
``sampler=jaxuq.sampling.BayesSampler(model.num_samples)`` give ``[S, N, C]``, and ``fit`` trains it
with ``TrainConfig(objective=jaxuq.train.ELBOObjective(ELBOLoss(...)))``. ``frozen=True`` (TU
``StochasticModel.freeze()``) uses the means.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from jaxuq.models.lenet import LeNet
from jaxuq.nn.bayesian import BayesConv, BayesDense

__all__ = ["BayesKind", "BayesianLeNet", "bayesian_lenet"]

_PRIOR_KEYS = ("prior_sigma_1", "prior_sigma_2", "prior_pi", "mu_init", "sigma_init")


@dataclasses.dataclass(frozen=True)
class BayesKind:
    """The layer kind of :class:`BayesianLeNet` (the ``conv``/``dense`` builders of
    :class:`jaxuq.models._kinds.Kind`): TU's ``BayesConv2d``/``BayesLinear`` with the prior arguments
    ``priors`` (each layer's own default where absent) and ``frozen``."""

    priors: tuple[tuple[str, float], ...] = ()
    frozen: bool = False
    fuses_max_pool: ClassVar[bool] = False  # Bayesian convs are never fused with their pool

    def conv(self, cin, cout, k, stride=1, pad=0, *, bias, name, groups=1, **_):
        return BayesConv(cout, k, stride, pad, groups=groups, use_bias=bias, frozen=self.frozen, name=name,
                         **dict(self.priors))

    def dense(self, cin, cout, *, name, bias=True, **_):
        return BayesDense(cout, use_bias=bias, frozen=self.frozen, name=name, **dict(self.priors))


class BayesianLeNet(LeNet):
    num_samples: int = 16
    prior_sigma_1: float | None = None
    prior_sigma_2: float | None = None
    prior_pi: float | None = None
    mu_init: float | None = None
    sigma_init: float | None = None
    frozen: bool = False

    def kind(self) -> BayesKind:
        priors = tuple((k, getattr(self, k)) for k in _PRIOR_KEYS if getattr(self, k) is not None)
        return BayesKind(priors, self.frozen)


def bayesian_lenet(
    in_channels: int,
    num_classes: int,
    num_samples: int = 16,
    prior_sigma_1: float | None = None,
    prior_sigma_2: float | None = None,
    prior_pi: float | None = None,
    mu_init: float | None = None,
    sigma_init: float | None = None,
    activation: str = "relu",
    norm: str = "none",
    groups: int = 1,
    dropout_rate: float = 0.0,
    frozen: bool = False,
) -> BayesianLeNet:
    """TU ``bayesian_lenet`` (same arguments; ``activation`` by name, ``norm`` in {"none", "batchnorm"});
    ``frozen``: TU's ``freeze()`` (the posterior means, no sampling)."""
    priors = dict(prior_sigma_1=prior_sigma_1, prior_sigma_2=prior_sigma_2, prior_pi=prior_pi,
                  mu_init=mu_init, sigma_init=sigma_init)
    return BayesianLeNet(in_channels, num_classes, activation, norm, groups, dropout_rate,
                         num_samples=num_samples, frozen=frozen, **priors)
