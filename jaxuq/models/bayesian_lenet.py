"""TU 0.13.0 ``bayesian_lenet`` (``models/classification/lenet.py``): LeNet with Bayesian layers, NHWC.

The graph, names and options of :class:`jaxuq.models.lenet.LeNet`, with ``BayesConv`` for ``conv1``/``conv2``
and ``BayesDense`` for ``fc1``-``fc3`` (``jaxuq.nn.bayesian``; parameters ``weight_mu``, ``weight_sigma``,
``bias_mu``, ``bias_sigma`` per layer). The prior/init arguments left at ``None`` take each layer's
own default, as TU's factory does (conv: prior_sigma_2 0.002, sigma_init -6; dense: 0.4, -7).

One ``apply`` is one weight sample (``rngs={"bayes": key}``): ``x [N, H, W, C] -> [N, num_classes]``.
TU wraps the network in ``StochasticModel(num_samples)``, whose evaluation concatenates ``num_samples``
forwards into ``[(S N), C]``; here ``jaxuq.sampling.BayesSampler(model.num_samples)`` gives ``[S, N, C]``
and ``jaxuq.sampling.elbo_value`` trains it. ``frozen=True`` (TU ``StochasticModel.freeze()``) uses the
means.
"""

from __future__ import annotations

from jaxuq.models.lenet import LeNet
from jaxuq.nn.bayesian import BayesConv, BayesDense

__all__ = ["BayesianLeNet", "bayesian_lenet"]

_PRIOR_KEYS = ("prior_sigma_1", "prior_sigma_2", "prior_pi", "mu_init", "sigma_init")


class BayesianLeNet(LeNet):
    num_samples: int = 16
    prior_sigma_1: float | None = None
    prior_sigma_2: float | None = None
    prior_pi: float | None = None
    mu_init: float | None = None
    sigma_init: float | None = None
    frozen: bool = False

    def layers(self):
        kw = {k: getattr(self, k) for k in _PRIOR_KEYS if getattr(self, k) is not None}
        kw["frozen"] = self.frozen
        return (lambda f, fan_in, name: BayesConv(f, 5, groups=self.groups, name=name, **kw),
                lambda f, fan_in, name: BayesDense(f, name=name, **kw))


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
