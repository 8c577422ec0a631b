"""Randomness injection into torch / torch-uncertainty 0.13.0 (test and lockstep instruments; no wheel).

Where TU draws random numbers inside ``forward``, jaxuq draws them (or the caller does) and these
context managers make torch use the very same numbers, so a parity check is exact, not statistical:

- :func:`dropout_masks`: ``torch.nn.functional.dropout`` / ``dropout2d`` in training mode multiply by the
  next given keep-mask and scale by ``1 / (1 - p)`` (torch's own arithmetic); in eval mode (or p = 0) they
  return the input and consume nothing — as :class:`jaxuq.nn.Dropout` draws nothing then.
- :func:`bayes_noise`: TU's ``TrainableDistribution.sample`` (every Bayesian layer's ``randn``) takes
  ``eps`` from a callback instead of ``torch.randn``.

torch is imported inside the functions: importing this module needs no torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import numpy as np

__all__ = ["bayes_noise", "dropout_masks", "masks_nhwc_to_torch"]


def masks_nhwc_to_torch(mask: np.ndarray) -> np.ndarray:
    """A jaxuq keep-mask in torch's layout: Dropout2d ``[N, 1, 1, C]`` -> ``[N, C, 1, 1]``; others as is."""
    mask = np.asarray(mask)
    return np.transpose(mask, (0, 3, 1, 2)) if mask.ndim == 4 else mask


@contextlib.contextmanager
def dropout_masks(masks: Iterable):
    """Within the block, torch dropout in training mode uses ``masks`` (numpy/torch keep-masks in torch's
    layout, in call order). Yields the list of masks not yet used; on a clean exit, all must be used."""
    import torch
    import torch.nn.functional as F

    queue = [torch.as_tensor(np.array(m)) for m in masks]
    orig = F.dropout, F.dropout2d

    def fake(input, p=0.5, training=True, inplace=False):  # noqa: A002 - torch's signature
        if not training or p == 0:
            return input
        if not queue:
            raise RuntimeError("dropout_masks: torch drew more dropout masks than were given")
        mask = queue.pop(0)
        if mask.dim() == 4 and input.dim() == 4 and mask.shape[2:] == (1, 1):
            pass  # Dropout2d: [N, C, 1, 1] broadcasts over H, W
        elif mask.shape != input.shape:
            raise RuntimeError(f"dropout_masks: mask {tuple(mask.shape)} for input {tuple(input.shape)}")
        return input * (mask.to(input.dtype) / (1 - p))

    F.dropout, F.dropout2d = fake, fake
    try:
        yield queue
    finally:
        F.dropout, F.dropout2d = orig
    if queue:
        raise RuntimeError(f"dropout_masks: {len(queue)} mask(s) left unused")


@contextlib.contextmanager
def bayes_noise(eps_of: Callable):
    """Within the block, each ``TrainableDistribution.sample()`` of TU's Bayesian layers uses
    ``eps_of(sampler)`` (a tensor shaped like ``sampler.mu``) instead of ``torch.randn``."""
    import torch
    from torch_uncertainty.layers.bayesian.sampler import TrainableDistribution

    orig = TrainableDistribution.sample

    def sample(self):
        w_sample = torch.as_tensor(np.array(eps_of(self)), dtype=self.mu.dtype)
        if w_sample.shape != self.mu.shape:
            raise RuntimeError(f"bayes_noise: eps {tuple(w_sample.shape)} for mu {tuple(self.mu.shape)}")
        self.sigma = torch.log1p(torch.exp(self.rho)).to(self.mu.device)
        self.weight = self.mu + self.sigma * w_sample
        return self.weight

    TrainableDistribution.sample = sample
    try:
        yield
    finally:
        TrainableDistribution.sample = orig
