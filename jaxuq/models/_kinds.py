"""The layer kind of a model family: which conv/dense layers a graph is built from and how its batch
holds the ensemble members. One block definition per architecture takes a :class:`Kind`, as TU's
``{std,batched,masked,mimo,packed}.py`` files differ only in these layers (plus a few stem quirks that
each model lists in a table).

=========  ==========================================  ==============================================
kind       layers                                      members in the batch
=========  ==========================================  ==============================================
std        ``conv`` (jaxuq.nn.Conv), ``nn.Dense``      none
batched    ``BatchConv``, ``BatchDense``               input repeated M times at eval (and in training
                                                       with ``repeat_training_inputs``)
masked     ``MaskedConv``, ``MaskedDense``             as batched
packed     ``PackedConv``, ``PackedDense``             the last layer emits ``[(M B), C]``
mimo       plain layers, ``M * in`` inputs and          ``mimo_inputs`` / ``mimo_outputs``
           ``M * C`` outputs
=========  ==========================================  ==============================================
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import numpy as np

from jaxuq._validate import check_int
from jaxuq.models._common import conv, torch_inits
from jaxuq.nn.batch_ensemble import BatchConv, BatchDense, repeat_inputs
from jaxuq.nn.masksembles import MaskedConv, MaskedDense, check_scale
from jaxuq.nn.mimo import mimo_inputs, mimo_outputs
from jaxuq.nn.packed import PackedConv, PackedDense

__all__ = ["KINDS", "Kind", "count", "validated"]

KINDS = ("std", "batched", "masked", "packed", "mimo")


def count(value, name: str) -> int:
    """A positive integer argument (``num_estimators``, ``gamma``): ``check_int(value, name, minimum=1)``."""
    return check_int(value, name, minimum=1)


def validated(module):
    """``module`` after building its :class:`Kind` once, so that a factory refuses bad arguments
    (``scale``, ``alpha``, ``gamma``, ``num_estimators``) when it is called, not at the first apply."""
    module.kind()
    return module


@dataclasses.dataclass(frozen=True)
class Kind:
    """A hashable layer-kind spec (see the module table). ``torch_init``: plain layers drawn with torch's
    default law (``jaxuq.nn.init``) instead of Flax's; the ensemble layers always use TU's law.
    ``seed``: masked layers draw their masks from ``np.random.default_rng((seed, index))``, ``index``
    being the layer's rank in TU's construction order."""

    name: str = "std"
    num_estimators: int = 1
    alpha: float = 1.0
    gamma: int = 1
    scale: float | None = None
    seed: int = 0
    repeat_training_inputs: bool = False
    torch_init: bool = True
    linear_implementation: str = "conv1d"

    def __post_init__(self):
        if self.name not in KINDS:
            raise ValueError(f"unknown layer kind {self.name!r}; known: {KINDS}")
        count(self.num_estimators, "num_estimators")
        if self.name == "masked":
            check_scale(self.scale)
        if self.name == "packed":
            if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float | np.number):
                raise TypeError(f"alpha must be a number, got {type(self.alpha).__name__}")
            if not (math.isfinite(self.alpha) and self.alpha > 0):
                raise ValueError(f"alpha must be a finite number > 0, got {self.alpha}")
            count(self.gamma, "gamma")

    @property
    def fold(self) -> int:
        """Factor on the network's input channels and classes (MIMO: M)."""
        return self.num_estimators if self.name == "mimo" else 1

    def width(self, channels: int) -> int:
        """Channels of a BatchNorm after a ``channels``-wide layer (packed: ``int(alpha * channels)``)."""
        return int(channels * self.alpha) if self.name == "packed" else channels

    def conv(self, cin: int, cout: int, k: int, stride: int = 1, pad: int = 0, *, bias: bool, name: str,
             groups: int = 1, plain: bool = False, gamma: int | None = None, first: bool = False,
             index: int = 0, max_pool: int = 0, relu: bool = False, **init) -> nn.Module:
        """A ``k x k`` conv ``cin -> cout`` of this kind (``plain``: a plain conv whatever the kind);
        ``max_pool``: followed by (a ReLU if ``relu``, then) that non-overlapping max pool, fused
        (:class:`jaxuq.nn.ConvMaxPool`) where the kind allows (:attr:`fuses_max_pool`; others refuse it)."""
        m = self.num_estimators
        if max_pool and not (plain or self.fuses_max_pool):
            raise ValueError(f"{self.name} convolutions do not take max_pool; pool their output")
        if plain or self.name in ("std", "mimo"):
            return conv(cout, k, stride, pad, bias=bias, groups=groups, name=name, max_pool=max_pool,
                        relu=relu, **(init or torch_inits(self.torch_init, cin // groups * k * k)))
        if self.name == "batched":
            return BatchConv(cin, cout, k, m, stride, pad, groups=groups, use_bias=bias, name=name)
        if self.name == "masked":
            return MaskedConv(cin, cout, k, m, self.scale, stride, pad, groups=groups, use_bias=bias,
                              seed=(self.seed, index), name=name)
        return PackedConv(cin, cout, k, self.alpha, m, gamma=self.gamma if gamma is None else gamma,
                          stride=stride, padding=pad, groups=groups, bias=bias, first=first,
                          max_pool=max_pool, relu=relu, name=name)

    @property
    def fuses_max_pool(self) -> bool:
        """Whether :meth:`conv` takes ``max_pool`` (plain and packed convolutions: a
        :class:`jaxuq.nn.ConvMaxPool` inside)."""
        return self.name in ("std", "mimo", "packed")

    def dense(self, cin: int, cout: int, *, name: str, bias: bool = True, last: bool = False,
              first: bool = False, gamma: int | None = None, index: int = 0, **init) -> nn.Module:
        """A dense layer ``cin -> cout`` of this kind (packed: ``first`` reads the plain input, ``last``
        emits ``[(M B), cout]``)."""
        m = self.num_estimators
        if self.name in ("std", "mimo"):
            return nn.Dense(cout, use_bias=bias, name=name, **(init or torch_inits(self.torch_init, cin)))
        if self.name == "batched":
            return BatchDense(cin, cout, m, use_bias=bias, name=name)
        if self.name == "masked":
            return MaskedDense(cin, cout, m, self.scale, use_bias=bias, seed=(self.seed, index), name=name)
        return PackedDense(cin, cout, self.alpha, m, gamma=self.gamma if gamma is None else gamma, bias=bias,
                           first=first, last=last, implementation=self.linear_implementation, name=name)

    def inputs(self, x, train: bool):
        """TU's input handling: the eval-time repetition (batched/masked; also in training with
        ``repeat_training_inputs``) or MIMO's stacking of the members' inputs into channels."""
        if self.name in ("batched", "masked") and (not train or self.repeat_training_inputs):
            return repeat_inputs(x, self.num_estimators)
        if self.name == "mimo":
            return mimo_inputs(x, self.num_estimators, train)
        return x

    def outputs(self, y):
        """MIMO: ``[B, M*C] -> [(M B), C]``; other kinds: unchanged."""
        return mimo_outputs(y, self.num_estimators) if self.name == "mimo" else y
