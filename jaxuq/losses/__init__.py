"""jaxuq.losses: training losses with torch-uncertainty 0.13.0's semantics (``torch_uncertainty/losses``).

A loss is a pure function (or a frozen, hashable dataclass holding its hyper-parameters) of the
model outputs and the targets, ``loss(outputs, targets) -> float32 scalar``, mean-reduced like
torch's default. Classification losses take logits and class labels, the regression losses
(``jaxuq.losses.regression``) a head's parameter dict or predictions and float targets.
``jaxuq.train.TrainConfig(loss_fn=...)`` takes any of them. The Bayesian ELBO
(``jaxuq.losses.bayesian``) also reads the KL terms of several forward samples.
"""

from jaxuq.losses.bayesian import ELBOLoss, kl_divergence
from jaxuq.losses.classification import (
    BCEWithLogitsLSLoss,
    ConfidencePenaltyLoss,
    ConflictualLoss,
    CrossEntropyMaxSupLoss,
    DECLoss,
    FocalLoss,
    cross_entropy,
)
from jaxuq.losses.regression import BetaNLL, DERLoss, DistributionNLLLoss, PinballLoss

__all__ = [
    "BCEWithLogitsLSLoss",
    "BetaNLL",
    "DERLoss",
    "DistributionNLLLoss",
    "PinballLoss",
    "ConfidencePenaltyLoss",
    "ConflictualLoss",
    "CrossEntropyMaxSupLoss",
    "DECLoss",
    "ELBOLoss",
    "FocalLoss",
    "cross_entropy",
    "kl_divergence",
]
