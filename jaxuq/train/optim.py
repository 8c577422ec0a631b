"""optax optimisers and schedules with torch / Lightning semantics (TU's ``optim_recipes``).

- torch ``SGD(lr, momentum, weight_decay, nesterov)`` adds ``wd * p`` to the gradient before the
  momentum buffer (dampening 0; the first step sets ``buf = g``, which equals optax's zero-initialised
  trace): ``optax.chain(add_decayed_weights(wd), sgd(lr, momentum, nesterov))``.
- torch ``Adam(lr, betas, eps=1e-8, weight_decay)`` (L2, not decoupled): ``add_decayed_weights`` then
  ``adam``. ``AdamW`` maps to ``optax.adamw``.
- Lightning steps LR schedulers once per **epoch**: the LR during 0-based epoch ``e`` is the torch
  scheduler's value after ``e`` calls of ``scheduler.step()``. Schedules here are optax schedules of
  the update count, ``e = count // steps_per_epoch``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import optax

__all__ = [
    "torch_sgd",
    "torch_adam",
    "torch_adamw",
    "constant_lr",
    "multistep_lr",
    "optim_abnn",
    "cosine_lr",
    "RECIPES",
    "recipe",
]

Schedule = Callable[[int], float] | float


def torch_sgd(lr: Schedule, momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
    """torch.optim.SGD (dampening 0)."""
    if nesterov and momentum <= 0:
        raise ValueError("nesterov=True needs momentum > 0 (as in torch)")
    parts = []
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.sgd(lr, momentum=momentum or None, nesterov=nesterov))
    return optax.chain(*parts)


def torch_adam(lr: Schedule, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
    """torch.optim.Adam (L2 weight decay added to the gradient, no amsgrad)."""
    parts = []
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.adam(lr, b1=betas[0], b2=betas[1], eps=eps))
    return optax.chain(*parts)


def torch_adamw(lr: Schedule, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2):
    """torch.optim.AdamW (decoupled decay ``p -= lr * wd * p``)."""
    return optax.adamw(lr, b1=betas[0], b2=betas[1], eps=eps, weight_decay=weight_decay)


def constant_lr(lr: float) -> Callable:
    return lambda count: jnp.asarray(lr, jnp.float32)


def multistep_lr(lr: float, milestones: Sequence[int], gamma: float, steps_per_epoch: int) -> Callable:
    """torch MultiStepLR stepped per epoch: ``lr * gamma ** #{m in milestones : m <= epoch}``."""
    ms = jnp.asarray(sorted(milestones), jnp.int32)

    def schedule(count):
        epoch = count // steps_per_epoch
        return lr * gamma ** jnp.sum(epoch >= ms).astype(jnp.float32)

    return schedule


def cosine_lr(lr: float, t_max: int, steps_per_epoch: int, eta_min: float = 0.0) -> Callable:
    """torch CosineAnnealingLR stepped per epoch (closed form; torch's recursion agrees up to rounding)."""

    def schedule(count):
        epoch = (count // steps_per_epoch).astype(jnp.float32)
        return eta_min + (lr - eta_min) * (1 + jnp.cos(math.pi * epoch / t_max)) / 2

    return schedule


def _sgd_recipe(lr, momentum, wd, nesterov, milestones, gamma):
    def make(steps_per_epoch: int):
        return torch_sgd(multistep_lr(lr, milestones, gamma, steps_per_epoch), momentum, wd, nesterov)

    return make


def _adam_recipe(lr, wd, milestones, gamma):
    def make(steps_per_epoch: int):
        return torch_adam(multistep_lr(lr, milestones, gamma, steps_per_epoch), weight_decay=wd)

    return make


def _imagenet_recipe(steps_per_epoch: int):
    return torch_sgd(cosine_lr(0.256, 90, steps_per_epoch), 0.875, 3.0517578125e-5, False)


# TU 0.13.0 optim_recipes (doc section G); each maps steps_per_epoch -> optax transformation.
RECIPES: dict[str, Callable[[int], optax.GradientTransformation]] = {
    "optim_cifar10_resnet18": _sgd_recipe(0.1, 0.9, 5e-4, True, [25, 50], 0.1),
    "optim_cifar100_resnet18": _sgd_recipe(0.1, 0.9, 5e-4, True, [25, 50], 0.1),
    "optim_cifar10_resnet34": _sgd_recipe(0.1, 0.9, 1e-4, True, [100, 150], 0.1),
    "optim_cifar100_resnet34": _sgd_recipe(0.1, 0.9, 1e-4, True, [100, 150], 0.1),
    "optim_cifar10_resnet50": _sgd_recipe(0.1, 0.9, 5e-4, True, [60, 120, 160], 0.2),
    "optim_cifar100_resnet50": _sgd_recipe(0.1, 0.9, 5e-4, True, [60, 120, 160], 0.2),
    "optim_cifar10_wideresnet": _sgd_recipe(0.1, 0.9, 5e-4, True, [60, 120, 160], 0.2),
    "optim_cifar10_vgg16": _adam_recipe(5e-3, 1e-6, [25, 50], 0.1),
    "optim_cifar100_vgg16": _sgd_recipe(0.05, 0.9, 1e-4, True, [60, 120, 160], 0.2),
    "optim_imagenet_resnet50": _imagenet_recipe,
    # Tutorials: LeNet/MNIST plain SGD 0.05 (the tutorial's cosine is dropped by Lightning, see doc G);
    # ResNet-18/CIFAR-10 OOD tutorial: Adam 1e-3, no scheduler.
    "tutorial_lenet_mnist": lambda spe: torch_sgd(0.05),
    "tutorial_resnet18_cifar10_adam": lambda spe: torch_adam(1e-3),
}


def optim_abnn(lr: float, momentum: float = 0.9, weight_decay: float = 1e-4, nesterov: bool = True):
    """TU ``optim_abnn(model, lr)``: SGD (nesterov, momentum 0.9, weight decay 1e-4) with MultiStepLR
    milestones [1, 4], gamma 0.1; returns ``steps_per_epoch -> optax transformation``."""
    return _sgd_recipe(lr, momentum, weight_decay, nesterov, [1, 4], 0.1)


def recipe(name: str, steps_per_epoch: int) -> optax.GradientTransformation:
    if name not in RECIPES:
        raise KeyError(f"unknown optimisation recipe {name!r}; known: {sorted(RECIPES)}")
    return RECIPES[name](steps_per_epoch)
