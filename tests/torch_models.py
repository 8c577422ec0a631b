"""Torch-side helpers for the model/converter parity tests.

The plain torch definitions (He et al. CIFAR ResNet, scio's Tiniest) live in
``converters/torch_refs.py`` (the converter's ``--verify`` uses them too); they are re-exported here.
Tests that import this module must have called ``require("torch")`` first.
"""

from __future__ import annotations

import types

import numpy as np
import torch
from torch import nn

from converters.torch_refs import ResNetCifar, Tiniest, torch_model

__all__ = ["ResNetCifar", "Tiniest", "randomize_", "torch_model", "state_dict_numpy"]


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Make a random-init model's normalisation layers non-trivial (in place): BN/LN affine and BN
    running statistics random, scio's ``rs`` random; convs/linears keep torch's random init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | nn.LayerNorm):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.num_batches_tracked.fill_(7)
        for name, p in model.named_parameters():
            if name.endswith(".rs"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
    return model


def state_dict_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


class _SeededNumpy:
    """Stands in for the ``np`` of TU's masksembles module: ``np.random.default_rng()`` (OS entropy in
    TU) returns ``default_rng((seed, k))`` for its k-th call, so TU's masks are reproducible in tests."""

    def __init__(self, seed: int):
        self.calls = 0

        def default_rng(*args):
            if args:
                return np.random.default_rng(*args)
            self.calls += 1
            return np.random.default_rng((seed, self.calls))

        self.random = types.SimpleNamespace(default_rng=default_rng)

    def __getattr__(self, name):
        return getattr(np, name)


def seed_tu_masks(monkeypatch, seed: int = 0) -> None:
    """Make TU 0.13.0's Masksembles masks deterministic for the rest of the test (see :class:`_SeededNumpy`)."""
    from torch_uncertainty.layers import masksembles

    monkeypatch.setattr(masksembles, "np", _SeededNumpy(seed))
