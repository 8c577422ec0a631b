"""Variational Bayesian layers (TU 0.13.0 ``layers/bayesian/{bayes_linear,bayes_conv,sampler}.py``).

Bayes-by-Backprop (Blundell et al., 2015): every weight has a Gaussian posterior ``N(mu, sigma^2)`` with
``sigma = log1p(exp(rho))``, and a prior that is a mixture of two centred Gaussians,
``pi N(0, sigma_1^2) + (1 - pi) N(0, sigma_2^2)``. Each forward pass draws ``w = mu + sigma * eps``,
``eps ~ N(0, 1)``, and records the one-sample KL estimate ``log q(w) - log p(w)``.

Parameters (TU's ``state_dict`` names, Flax layouts): ``weight_mu``/``weight_sigma`` (``weight_sigma``
holds rho, as in TU) — dense ``[in, out]``, conv ``[kh, kw, in/groups, out]`` (HWIO) — and
``bias_mu``/``bias_sigma`` ``[out]``. TU's init: ``mu ~ N(mu_init, 0.1^2)``, ``rho ~ N(sigma_init, 0.1^2)``
(drawn with JAX's RNG). TU's defaults differ by layer: ``BayesDense`` (``BayesLinear``) prior_sigma_2 0.4,
sigma_init -7; ``BayesConv`` (``BayesConv2d``) prior_sigma_2 0.002, sigma_init -6; both prior_sigma_1
0.1, prior_pi 1.

Randomness: ``eps`` comes from the ``'bayes'`` rng stream (``RNG``), or, when the variables carry a
collection ``EPS`` (``bayes_eps/<layer path>/{weight,bias}``, arrays shaped like the mu's), from there —
the injection path the parity tests and the lockstep tool use. The layer ``sow``s ``log_posterior`` and
``log_prior`` (float32 scalars, weight + bias) into the collection ``KL`` when it is mutable;
``jaxuq.losses.bayesian.kl_divergence`` reads them. Every ``eps`` drawn from the rng is ``sow``n into
``NOISE`` (``bayes_noise/<layer path>/{weight,bias}``, one array per call) when that collection is
mutable, so the draws of a training step can be handed to TU (as ``jaxuq.nn.Dropout`` sows its masks).

``frozen=True`` (TU ``freeze()``) uses the means and records nothing; so does ``model.init``. TU's
frozen layers keep the values of their last unfrozen forward and its ``KLDiv`` still counts them; here
a frozen layer contributes no KL term.

Deviation from TU 0.13.0 (pinned by ``tests/test_bayesian.py``): TU's ``TrainableDistribution.log_posterior``
adds 0.5 per weight inside the sum, ``-sum(log sqrt(2 pi) + log sigma + (w - mu)^2 / (2 sigma^2) + 0.5)``,
so its "log q(w)" is ``log q(w) - n/2``: a constant (no effect on gradients) that biases the KL estimate
and the ELBO value. :func:`gaussian_log_posterior` is the Gaussian log-density itself.

TU's prior follows ``torch.distributions``: ``Categorical(probs=[pi, 1 - pi])`` clamps the probabilities to
``[eps, 1 - eps]`` (float32 eps) before the log, so ``prior_pi=1`` still gives the second component weight
1.2e-7; :func:`mixture_log_prior` does the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxuq.nn.conv import conv_general_dilated

__all__ = ["EPS", "KL", "NOISE", "RNG", "BayesConv", "BayesDense", "gaussian_log_posterior",
           "mixture_log_prior"]

RNG = "bayes"  # rng stream of the weight noise
EPS = "bayes_eps"  # variables collection: injected noise, EPS/<layer path>/{weight, bias}
KL = "bayes_kl"  # sow collection: KL/<layer path>/{log_posterior, log_prior}
NOISE = "bayes_noise"  # sow collection: the eps drawn from the rng, NOISE/<layer path>/{weight, bias}

_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))


def gaussian_log_posterior(w, mu, sigma):
    """``sum log N(w; mu, sigma^2)`` (float32 scalar) over all elements."""
    return -jnp.sum(_LOG_SQRT_2PI + jnp.log(sigma) + ((w - mu) ** 2) / (2 * sigma**2))


def mixture_log_prior(w, sigma_1: float, sigma_2: float, pi: float):
    """``sum log(pi N(w; 0, sigma_1^2) + (1 - pi) N(w; 0, sigma_2^2))`` with torch's numerics (the mixture
    weights clamped to ``[eps, 1 - eps]``, ``MixtureSameFamily.log_prob``)."""
    probs = jnp.asarray([pi, 1 - pi], jnp.float32)
    probs = probs / probs.sum()
    eps = jnp.finfo(jnp.float32).eps
    log_mix = jax.nn.log_softmax(jnp.log(jnp.clip(probs, eps, 1 - eps)))
    sig = jnp.asarray([sigma_1, sigma_2], jnp.float32)
    lp = -(w[..., None] ** 2) / (2 * sig**2) - jnp.log(sig) - _LOG_SQRT_2PI
    return jnp.sum(jax.nn.logsumexp(lp + log_mix, axis=-1))


def _normal_init(mean: float):
    def init(key, shape, dtype=jnp.float32):
        return mean + 0.1 * jax.random.normal(key, shape, dtype)

    return init


class _Sampled:
    """Parameters and sampling shared by the Bayesian layers (a mixin: the fields are the layer's)."""

    def _noise(self, name: str, shape):
        where = "/".join(self.path) or type(self).__name__
        if self.has_variable(EPS, name):
            eps = jnp.asarray(self.get_variable(EPS, name), jnp.float32)
            if eps.shape != tuple(shape):
                raise ValueError(
                    f"{where}: injected {EPS}/{name} has shape {eps.shape}, expected {tuple(shape)}"
                )
            return eps
        if not self.has_rng(RNG):
            raise ValueError(
                f"Bayesian layer {where} samples its weights but no {RNG!r} rng was given: pass "
                f"rngs={{{RNG!r}: key}} (or freeze the layer, or inject {EPS!r} noise)"
            )
        eps = jax.random.normal(self.make_rng(RNG), shape, jnp.float32)
        self.sow(NOISE, name, eps)
        return eps

    def _draw(self, name: str, mu, rho, prior):
        sigma = jnp.log1p(jnp.exp(rho))
        w = mu + sigma * self._noise(name, mu.shape)
        return w, gaussian_log_posterior(w, mu, sigma), mixture_log_prior(w, *prior)

    def weights(self, w_shape: Sequence[int], features: int):
        """``(w, b)``: the means when frozen or initialising, else a sample (recording the KL terms)."""
        w_mu = self.param("weight_mu", _normal_init(self.mu_init), tuple(w_shape), jnp.float32)
        w_rho = self.param("weight_sigma", _normal_init(self.sigma_init), tuple(w_shape), jnp.float32)
        b_mu = b_rho = None
        if self.use_bias:
            b_mu = self.param("bias_mu", _normal_init(self.mu_init), (features,), jnp.float32)
            b_rho = self.param("bias_sigma", _normal_init(self.sigma_init), (features,), jnp.float32)
        if self.frozen or self.is_initializing():
            return w_mu, b_mu
        prior = (self.prior_sigma_1, self.prior_sigma_2, self.prior_pi)
        w, lq, lp = self._draw("weight", w_mu, w_rho, prior)
        b = None
        if self.use_bias:
            b, lq_b, lp_b = self._draw("bias", b_mu, b_rho, prior)
            lq, lp = lq + lq_b, lp + lp_b
        self.sow(KL, "log_posterior", lq)
        self.sow(KL, "log_prior", lp)
        return w, b


class BayesDense(_Sampled, nn.Module):
    """TU ``BayesLinear(in, features)``: ``x [..., in] -> [..., features]`` with sampled weights."""

    features: int
    use_bias: bool = True
    prior_sigma_1: float = 0.1
    prior_sigma_2: float = 0.4
    prior_pi: float = 1.0
    mu_init: float = 0.0
    sigma_init: float = -7.0
    frozen: bool = False

    @nn.compact
    def __call__(self, x):
        w, b = self.weights((x.shape[-1], self.features), self.features)
        out = x @ w
        return out + b if b is not None else out


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class BayesConv(_Sampled, nn.Module):
    """TU ``BayesConv2d(in, features, kernel_size, stride, padding, dilation, groups)`` on NHWC
    (``padding_mode="zeros"``): ``x [N, H, W, in] -> [N, H', W', features]`` with sampled weights."""

    features: int
    kernel_size: int | Sequence[int]
    strides: int | Sequence[int] = 1
    padding: int | Sequence[int] = 0
    dilation: int | Sequence[int] = 1
    groups: int = 1
    use_bias: bool = True
    prior_sigma_1: float = 0.1
    prior_sigma_2: float = 0.002
    prior_pi: float = 1.0
    mu_init: float = 0.0
    sigma_init: float = -6.0
    frozen: bool = False

    @nn.compact
    def __call__(self, x):
        kh, kw = _pair(self.kernel_size)
        if x.shape[-1] % self.groups or self.features % self.groups:
            raise ValueError(
                f"BayesConv: groups {self.groups} must divide the input channels {x.shape[-1]} and the "
                f"features {self.features}"
            )
        w, b = self.weights((kh, kw, x.shape[-1] // self.groups, self.features), self.features)
        ph, pw = _pair(self.padding)
        out = conv_general_dilated(
            x, w, _pair(self.strides), ((ph, ph), (pw, pw)), rhs_dilation=_pair(self.dilation),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=self.groups,
        )
        return out + b if b is not None else out
