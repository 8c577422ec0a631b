"""Classification losses (TU ``torch_uncertainty/losses/classification.py``, version 0.13.0).

Every loss is a pure function or a frozen, hashable dataclass of its hyper-parameters, called as
``loss(logits [N, C] float, targets [N] int) -> float32`` (a scalar for ``reduction="mean"``/``"sum"``,
``[N]`` for ``"none"``), so it can be ``jaxuq.train.TrainConfig(loss_fn=...)`` and runs under
``jax.jit``/``jax.grad``. Hyper-parameters are checked when the loss is built (``TypeError`` for a
wrong type, ``ValueError`` for a value out of range or NaN/inf, naming the argument, with TU's
messages where TU checks); inputs are checked on their shapes and dtypes only (values are traced).
Array-valued hyper-parameters (class weights) are stored as tuples so the loss stays hashable.

**Losses that read the training step.** A loss with the class attribute ``uses_step_context = True``
(:class:`DECLoss`: TU's ``current_epoch``; :class:`ConflictualLoss`: TU's random class) is called by
``fit``'s objective as ``loss(outputs, targets, ctx=ctx)`` with the step's
:class:`jaxuq.train.StepContext` (``ctx.epoch``: the 0-based epoch, Lightning's ``current_epoch``;
``ctx.key``: the step's key). Only these two attributes are read, so this package needs no
``jaxuq.train`` import.

=============================  ============================================================
TU 0.13.0                      jaxuq
=============================  ============================================================
``nn.CrossEntropyLoss``        :func:`cross_entropy` (``weight``, ``label_smoothing``, ``reduction``)
``DECLoss``                    :class:`DECLoss` (``current_epoch``: a call argument, or ``fit``'s epoch)
``ConfidencePenaltyLoss``      :class:`ConfidencePenaltyLoss`
``ConflictualLoss``            :class:`ConflictualLoss` (``class_index=`` / ``key=`` / ``fit``'s key)
``FocalLoss``                  :class:`FocalLoss`
``BCEWithLogitsLSLoss``        :class:`BCEWithLogitsLSLoss`
``CrossEntropyMaxSupLoss``     :class:`CrossEntropyMaxSupLoss`
=============================  ============================================================

Deviations from TU 0.13.0 (TU is wrong there; each pinned by a test in ``tests/test_losses.py``):

- ``reduction="none"`` always returns ``[N]``. TU's ``DECLoss`` returns ``[N, 1]`` (same values);
  TU's ``ConflictualLoss`` adds a ``[N]`` and an ``[N, 1]`` term into an ``[N, N]`` matrix whose
  diagonal is the per-sample loss (returned here); TU's ``CrossEntropyMaxSupLoss`` (``max_sup > 0``)
  puts the *batch-mean* cross-entropy in every row (here each row has its own cross-entropy).
- ``CrossEntropyMaxSupLoss(max_sup > 0, weight=w)``: TU drops ``w`` from the cross-entropy and
  multiplies the ``[N, 1]`` loss by ``w [C]`` (an ``[N, C]`` broadcast); here the cross-entropy is
  torch's weighted one (as with ``max_sup=0``) and the max-suppression term is unweighted. Without
  ``weight`` and for ``"mean"``/``"sum"`` the values equal TU's.
- ``BCEWithLogitsLSLoss`` with ``label_smoothing > 0`` accepts only ``"none"``/``"mean"``/``"sum"``
  (TU returns the unreduced loss for any other string) and needs ``targets`` shaped like ``logits``
  (TU broadcasts them).
- ``label_smoothing`` must lie in ``[0, 1)`` (TU: ``>= 0``; torch's cross-entropy: ``<= 1``); 1 would
  replace every label by the uniform distribution.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxuq._special import digamma, lgamma, log

__all__ = [
    "BCEWithLogitsLSLoss",
    "ConfidencePenaltyLoss",
    "ConflictualLoss",
    "CrossEntropyMaxSupLoss",
    "DECLoss",
    "FocalLoss",
    "cross_entropy",
]

_REDUCTIONS = ("none", "mean", "sum")


# ------------------------------------------------------------------------------------------ checks
def _reduction(reduction, allow_none: bool = True) -> str:
    """TU's reduction check; ``None`` means ``"none"`` where TU accepts it."""
    if reduction is None and allow_none:
        return "none"
    if not isinstance(reduction, str):
        raise TypeError(f"`reduction` must be one of {_REDUCTIONS}, got {type(reduction).__name__}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction.")
    return reduction


def _real(name: str, value, *, low: float | None = 0.0, high: float | None = None,
          high_open: bool = False, message: str | None = None) -> float:
    """A finite real number (not a bool) in ``[low, high]`` (``[low, high)`` with ``high_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value}")
    too_high = high is not None and (value >= high if high_open else value > high)
    if (low is not None and value < low) or too_high:
        interval = f"[{low}, {high}{')' if high_open else ']'}" if high is not None else f">= {low}"
        raise ValueError(message or f"`{name}` must be {interval}, got {value}")
    return value


def _weights(name: str, value) -> tuple[float, ...] | None:
    """Class/element weights as a hashable tuple of finite floats (``None`` stays ``None``)."""
    if value is None:
        return None
    array_like = isinstance(value, Sequence) or hasattr(value, "__array__")
    if isinstance(value, (str, bytes)) or not array_like:
        raise TypeError(f"`{name}` must be a 1-D sequence or array of floats, got {type(value).__name__}")
    arr = jnp.asarray(value)
    real = jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)
    if arr.ndim != 1 or not real:
        raise ValueError(f"`{name}` must be a 1-D array of floats, got shape {arr.shape} dtype {arr.dtype}")
    out = tuple(float(v) for v in arr.tolist())
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"`{name}` contains NaN or inf")
    return out


def _inputs(logits, targets, name: str = "logits"):
    """float32 ``logits [N, C]`` and integer ``targets [N]`` (shapes/dtypes only; values may be traced)."""
    logits = jnp.asarray(logits)
    if logits.ndim != 2 or not jnp.issubdtype(logits.dtype, jnp.floating):
        raise ValueError(f"`{name}` must be a 2-D float array [N, C], got {logits.shape} {logits.dtype}")
    targets = jnp.asarray(targets)
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise TypeError(f"`targets` must be integer class indices [N], got dtype {targets.dtype}")
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"`targets` must have shape [N] = {logits.shape[:1]}, got {targets.shape}")
    return logits.astype(jnp.float32), targets.astype(jnp.int32)


def _reduce(loss: jax.Array, reduction: str) -> jax.Array:
    if reduction == "mean":
        return jnp.mean(loss)
    if reduction == "sum":
        return jnp.sum(loss)
    return loss


# ----------------------------------------------------------------------------------- cross-entropy
def cross_entropy(logits: jax.Array, labels: jax.Array, *, weight=None, label_smoothing: float = 0.0,
                  reduction: str | None = "mean") -> jax.Array:
    """torch's ``F.cross_entropy(logits [N, C], labels [N], weight, label_smoothing, reduction)``.

    With class weights ``w [C]``: ``l_n = -w[y_n] log p[n, y_n]`` and ``"mean"`` divides the sum by
    ``sum_n w[y_n]`` (torch's weighted mean). Label smoothing ``e`` adds torch's
    ``(e / C) * (-sum_c w_c log p[n, c])`` term (same normalisation) and scales the first by ``1 - e``.
    ``ignore_index`` is not supported: every label must be a class. Returns float32 (``[N]`` for
    ``"none"``).
    """
    reduction = _reduction(reduction)
    label_smoothing = _real("label_smoothing", label_smoothing, high=1.0, high_open=True)
    logits, labels = _inputs(logits, labels)
    c = logits.shape[-1]
    w = None if weight is None else jnp.asarray(weight, jnp.float32)
    if w is not None and w.shape != (c,):
        raise ValueError(f"`weight` must have shape [C] = ({c},), got {w.shape}")
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    w_y = None if w is None else w[labels]
    nll = nll if w_y is None else nll * w_y
    norm = None if (reduction != "mean" or w_y is None) else jnp.sum(w_y)
    nll = _reduce(nll, reduction) if norm is None else jnp.sum(nll) / norm
    if label_smoothing == 0.0:
        return nll
    smooth = -jnp.sum(logp if w is None else logp * w, axis=-1)
    smooth = _reduce(smooth, reduction) if norm is None else jnp.sum(smooth) / norm
    return (1.0 - label_smoothing) * nll + smooth * (label_smoothing / c)


# ------------------------------------------------------------------------------------------ DEC loss
@dataclasses.dataclass(frozen=True)
class DECLoss:
    """TU's Deep Evidential Classification loss (Sensoy et al., 2018) on evidence ``[N, C]``.

    ``alpha = relu(evidence) + 1``, ``S = sum_c alpha_c``. The data term is ``loss_type``:
    ``"log"``: ``sum_c y_c (log S - log alpha_c)``; ``"digamma"``: the same with ``digamma``;
    ``"mse"``: ``sum_c (y_c - alpha_c/S)^2 + alpha_c (S - alpha_c) / (S^2 (S + 1))``. The KL term
    ``KL(Dir(alpha~) || Dir(1))`` with ``alpha~ = (alpha - 1)(1 - y) + 1`` is weighted by
    ``min(1, current_epoch / annealing_step)`` if ``annealing_step`` is set (``reg_weight`` is then
    ignored, as in TU), else by ``reg_weight``, else 0.

    ``current_epoch`` (a call argument, as in TU's ``forward``) may be a Python int or a traced integer
    scalar; it is required when ``annealing_step`` is set. Through ``fit`` it is the step's epoch
    (``ctx.epoch``, 0-based like Lightning's ``current_epoch``, which TU's routine passes). Soft
    (mixup) targets are not supported.
    """

    uses_step_context: ClassVar[bool] = True

    annealing_step: float | None = None
    reg_weight: float | None = None
    loss_type: str = "log"
    reduction: str | None = "mean"

    def __post_init__(self):
        if self.reg_weight is not None:
            _real("reg_weight", self.reg_weight, message=(
                f"The regularization weight should be non-negative, but got {self.reg_weight}."))
        if self.annealing_step is not None:
            step = _real("annealing_step", self.annealing_step, low=None)
            if step <= 0:
                raise ValueError(f"The annealing step should be positive, but got {self.annealing_step}.")
        object.__setattr__(self, "reduction", _reduction(self.reduction))
        if not isinstance(self.loss_type, str):
            raise TypeError(f"`loss_type` must be a str, got {type(self.loss_type).__name__}")
        if self.loss_type not in ("mse", "log", "digamma"):
            raise ValueError(f"{self.loss_type} is not a valid value for mse/log/digamma loss.")

    def _coefficient(self, current_epoch) -> jax.Array:
        if self.annealing_step is None:
            return jnp.float32(0.0 if self.reg_weight is None else self.reg_weight)
        if current_epoch is None:
            raise ValueError("The epoch num should be positive when annealing_step is settled, but got None "
                             "(pass current_epoch=)")
        if isinstance(current_epoch, bool) or not isinstance(current_epoch, (numbers.Integral, jax.Array)):
            raise TypeError(f"`current_epoch` must be an int, got {type(current_epoch).__name__}")
        if isinstance(current_epoch, numbers.Integral) and current_epoch < 0:
            raise ValueError(f"`current_epoch` must be >= 0, got {current_epoch}")
        ratio = jnp.asarray(current_epoch, jnp.float32) / jnp.float32(self.annealing_step)
        return jnp.minimum(jnp.float32(1.0), ratio)

    def _data_term(self, alpha: jax.Array, onehot: jax.Array) -> jax.Array:
        strength = jnp.sum(alpha, axis=-1, keepdims=True)
        if self.loss_type == "mse":
            err = jnp.sum((onehot - alpha / strength) ** 2, axis=-1)
            var = jnp.sum(alpha * (strength - alpha) / (strength * strength * (strength + 1)), axis=-1)
            return err + var
        f = log if self.loss_type == "log" else digamma
        return jnp.sum(onehot * (f(strength) - f(alpha)), axis=-1)

    @staticmethod
    def _kl(alpha: jax.Array, onehot: jax.Array) -> jax.Array:
        c = alpha.shape[-1]
        kl_alpha = (alpha - 1) * (1 - onehot) + 1
        total = jnp.sum(kl_alpha, axis=-1, keepdims=True)
        both = jnp.concatenate([kl_alpha, total], axis=-1)  # one lgamma / digamma for both (compile time)
        lg, dg = lgamma(both), digamma(both)
        first = lg[:, -1] - jnp.sum(lg[:, :-1], axis=-1) - jnp.float32(math.lgamma(c))  # lgamma(ones) = 0
        second = jnp.sum((kl_alpha - 1) * (dg[:, :-1] - dg[:, -1:]), axis=-1)
        return first + second

    def __call__(self, evidence: jax.Array, targets: jax.Array, current_epoch=None, *, ctx=None) -> jax.Array:
        """``evidence [N, C]``, ``targets [N]`` int -> float32 (``[N]`` for ``"none"``); ``ctx``: ``fit``'s
        step context, whose ``epoch`` is the current epoch (give ``current_epoch`` or ``ctx``, not both)."""
        if ctx is not None:
            if current_epoch is not None:
                raise ValueError("DECLoss: give `current_epoch` or `ctx`, not both")
            current_epoch = ctx.epoch
        coef = self._coefficient(current_epoch)
        if jnp.ndim(targets) != 1:
            raise NotImplementedError("DECLoss does not yet support mixup/cutmix.")
        evidence, targets = _inputs(evidence, targets, "evidence")
        onehot = jax.nn.one_hot(targets, evidence.shape[-1], dtype=jnp.float32)
        alpha = jax.nn.relu(evidence) + 1.0
        loss = self._data_term(alpha, onehot) + coef * self._kl(alpha, onehot)
        return _reduce(loss, self.reduction)


# ---------------------------------------------------------------------------- CE + regularisers
@dataclasses.dataclass(frozen=True)
class ConfidencePenaltyLoss:
    """TU's confidence penalty (Pereyra et al., 2017):
    ``CE + reg_weight * (log C + sum_c p_c log(p_c + eps))`` with ``p = softmax(logits)``."""

    reg_weight: float = 1.0
    reduction: str | None = "mean"
    eps: float = 1e-6

    def __post_init__(self):
        object.__setattr__(self, "reduction", _reduction(self.reduction))
        _real("eps", self.eps, message=f"The epsilon value should be non-negative, but got {self.eps}.")
        _real("reg_weight", self.reg_weight, message=(
            f"The regularization weight should be non-negative, but got {self.reg_weight}."))

    def __call__(self, logits: jax.Array, targets: jax.Array) -> jax.Array:
        """``logits [N, C]``, ``targets [N]`` int -> float32 (``[N]`` for ``"none"``)."""
        logits, targets = _inputs(logits, targets)
        probs = jax.nn.softmax(logits, axis=-1)
        ce = cross_entropy(logits, targets, reduction=self.reduction)
        reg = jnp.log(jnp.float32(logits.shape[-1])) + jnp.sum(probs * jnp.log(probs + self.eps), axis=-1)
        return ce + self.reg_weight * _reduce(reg, self.reduction)


@dataclasses.dataclass(frozen=True)
class ConflictualLoss:
    """TU's conflictual loss (Fellaji et al., 2024): ``CE - reg_weight * log p[:, k]`` with one class
    ``k ~ U{0..C-1}`` drawn per call (TU: ``torch.randint`` inside ``forward``).

    The class is ``class_index`` if given (an int or int scalar array: inject TU's draw), else drawn with
    ``key`` (a typed PRNG key), else, through ``fit``, from the step's key: ``key = fold_in(ctx.key,``
    :data:`CLASS_KEY_TAG` ``)``, so each step draws its own class and a run is reproducible from its seed.
    Exactly one of the three is needed.
    """

    uses_step_context: ClassVar[bool] = True
    #: ``fit``'s class key is ``fold_in(ctx.key, CLASS_KEY_TAG)`` (apart from the step's dropout key)
    CLASS_KEY_TAG: ClassVar[int] = 0x636C61

    reg_weight: float = 1.0
    reduction: str | None = "mean"

    def __post_init__(self):
        object.__setattr__(self, "reduction", _reduction(self.reduction))
        _real("reg_weight", self.reg_weight, message=(
            f"The regularization weight should be non-negative, but got {self.reg_weight}."))

    def class_index(self, logits: jax.Array, key: jax.Array) -> jax.Array:
        """The class (int32 scalar) drawn with ``key`` for ``logits [N, C]``: ``U{0..C-1}``."""
        return jax.random.randint(key, (), 0, jnp.shape(logits)[-1], dtype=jnp.int32)

    @classmethod
    def step_key(cls, ctx) -> jax.Array:
        """The key ``fit``'s step ``ctx`` draws the class with."""
        return jax.random.fold_in(ctx.key, cls.CLASS_KEY_TAG)

    def __call__(self, logits: jax.Array, targets: jax.Array, *, key=None, class_index=None,
                 ctx=None) -> jax.Array:
        """``logits [N, C]``, ``targets [N]`` int -> float32 (``[N]`` for ``"none"``)."""
        logits, targets = _inputs(logits, targets)
        given = [n for n, v in (("class_index", class_index), ("key", key), ("ctx", ctx)) if v is not None]
        if len(given) != 1:
            raise ValueError("ConflictualLoss draws a random class each call: give exactly one of "
                             f"`class_index`, `key` or `ctx` (fit passes its step context), got {given}")
        if class_index is not None:
            k = jnp.asarray(class_index)
            if k.ndim != 0 or not jnp.issubdtype(k.dtype, jnp.integer):
                raise TypeError(f"`class_index` must be an integer scalar, got {k.dtype} shape {k.shape}")
        else:
            k = self.class_index(logits, key if key is not None else self.step_key(ctx))
        ce = cross_entropy(logits, targets, reduction=self.reduction)
        reg = -jnp.take(jax.nn.log_softmax(logits, axis=-1), k.astype(jnp.int32), axis=-1)
        return ce + self.reg_weight * _reduce(reg, self.reduction)


@dataclasses.dataclass(frozen=True)
class FocalLoss:
    """TU's focal loss (Lin et al., 2017): ``-alpha[y] (1 - p_y)^gamma log p_y``, then a plain mean/sum
    (the ``alpha`` class weights are not normalised away, as in TU)."""

    gamma: float
    alpha: tuple[float, ...] | None = None
    reduction: str | None = "mean"

    def __post_init__(self):
        object.__setattr__(self, "reduction", _reduction(self.reduction))
        _real("gamma", self.gamma, message=(
            f"The gamma term of the focal loss should be non-negative, but got {self.gamma}."))
        object.__setattr__(self, "alpha", _weights("alpha", self.alpha))

    def __call__(self, logits: jax.Array, targets: jax.Array) -> jax.Array:
        """``logits [N, C]``, ``targets [N]`` int -> float32 (``[N]`` for ``"none"``)."""
        logits, targets = _inputs(logits, targets)
        ce = cross_entropy(logits, targets, weight=self.alpha, reduction="none")
        log_pt = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets[:, None], axis=-1)[:, 0]
        loss = (1 - jnp.exp(log_pt)) ** self.gamma * ce
        return _reduce(loss, self.reduction)


@dataclasses.dataclass(frozen=True)
class BCEWithLogitsLSLoss:
    """TU's binary cross-entropy on logits with label smoothing: targets ``t (1 - e) + e / 2``, loss
    ``-(t log s(x) + (1 - t) log s(-x))`` times ``weight`` (broadcast against the loss), then reduced.

    ``logits`` and ``targets`` have the same shape (any), targets in [0, 1] (int or float). TU's binary
    routine (``num_classes=1``: ``fit`` on a model of output width 1 with 0/1 labels): logits ``[N, 1]``
    and targets ``[N]``, the logits squeezed to ``[N]`` and the targets cast to float as TU's
    ``ClassificationRoutine.training_step`` does.
    """

    label_smoothing: float = 0.0
    weight: tuple[float, ...] | None = None
    reduction: str = "mean"

    def __post_init__(self):
        object.__setattr__(self, "reduction", _reduction(self.reduction, allow_none=False))
        _real("label_smoothing", self.label_smoothing, high=1.0, high_open=True)
        object.__setattr__(self, "weight", _weights("weight", self.weight))

    def __call__(self, logits: jax.Array, targets: jax.Array) -> jax.Array:
        """``logits [...]`` float, ``targets`` of the same shape -> float32 (``[...]`` for ``"none"``)."""
        logits, targets = jnp.asarray(logits), jnp.asarray(targets)
        if not jnp.issubdtype(logits.dtype, jnp.floating):
            raise ValueError(f"`logits` must be a float array, got {logits.dtype}")
        if logits.ndim == 2 and logits.shape[1] == 1 and targets.shape == logits.shape[:1]:
            logits = logits[:, 0]  # TU's binary routine: logits.squeeze(-1), target.float()
        if targets.shape != logits.shape:
            raise ValueError(f"`targets` must have the shape of `logits` {logits.shape}, got {targets.shape}")
        x = logits.astype(jnp.float32)
        t = targets.astype(jnp.float32)
        if self.label_smoothing:
            t = t * (1 - self.label_smoothing) + self.label_smoothing / 2
        loss = (1 - t) * x - jax.nn.log_sigmoid(x)
        if self.weight is not None:
            loss = loss * jnp.asarray(self.weight, jnp.float32)
        return _reduce(loss, self.reduction)


@dataclasses.dataclass(frozen=True)
class CrossEntropyMaxSupLoss:
    """TU's max-suppression cross-entropy (Zhou et al., MaxSup): torch's cross-entropy (``weight``,
    ``label_smoothing``) plus ``max_sup * (max_c z_c - mean_c z_c)`` per sample, then reduced.
    ``max_sup = 0`` is torch's ``CrossEntropyLoss``. The gradient of the max goes to one logit (the
    first maximum), like torch's ``topk``."""

    label_smoothing: float = 0.0
    max_sup: float = 0.0
    weight: tuple[float, ...] | None = None
    reduction: str | None = "mean"

    def __post_init__(self):
        object.__setattr__(self, "reduction", _reduction(self.reduction))
        _real("label_smoothing", self.label_smoothing, high=1.0, high_open=True)
        _real("max_sup", self.max_sup)
        object.__setattr__(self, "weight", _weights("weight", self.weight))

    def __call__(self, logits: jax.Array, targets: jax.Array) -> jax.Array:
        """``logits [N, C]``, ``targets [N]`` int -> float32 (``[N]`` for ``"none"``)."""
        logits, targets = _inputs(logits, targets)
        ce = cross_entropy(logits, targets, weight=self.weight, label_smoothing=self.label_smoothing,
                           reduction=self.reduction)
        if self.max_sup == 0.0:
            return ce
        top1 = jnp.take_along_axis(logits, jnp.argmax(logits, axis=-1)[:, None], axis=-1)[:, 0]
        reg = top1 - jnp.mean(logits, axis=-1)
        return ce + self.max_sup * _reduce(reg, self.reduction)
