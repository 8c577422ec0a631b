"""``TrainConfig``: every setting of ``jaxuq.train.fit`` in one frozen dataclass, with the ensemble
settings in one block (``EnsembleConfig``), and the :func:`tu_deep_ensembles` preset.

Each field's metadata gives its torch-uncertainty / Lightning equivalent (``TrainConfig.describe()``
prints the table). Unknown keys are errors with a did-you-mean::

    cfg = TrainConfig(epochs=3, batch_size=128, optimizer="tutorial_lenet_mnist")
    cfg = cfg.replace(ensemble=EnsembleConfig(num_members=8))   # a typo raises ValueError naming the keys
    cfg = TrainConfig.from_dict({"epochs": 3, "ensemble": {"num_members": 8}})
    cfg = tu_deep_ensembles(8, lr=0.05, config=cfg)            # TU's deep_ensembles + RepeatTarget recipe
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxuq.data.pipeline import Preprocess
from jaxuq.ensembles import check_lowering
from jaxuq.train.optim import torch_sgd

__all__ = ["EnsembleConfig", "TrainConfig", "resolve_compute_dtype", "tu_deep_ensembles"]


def _f(default, tu: str, **kw):
    if default is dataclasses.MISSING:  # a required field
        return dataclasses.field(metadata={"tu": tu}, **kw)
    return dataclasses.field(default=default, metadata={"tu": tu}, **kw)


def _default(f: dataclasses.Field) -> str:
    return "(required)" if f.default is dataclasses.MISSING else f"`{f.default!r}`"


def _type_error(name: str, want: str, value) -> TypeError:
    return TypeError(f"{name} must be {want}, got {type(value).__name__}")


def _int(value, name: str, lo: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(name, "an int or None" if allow_none else "an int", value)
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")


def _bool(value, name: str) -> None:
    if not isinstance(value, bool):
        raise _type_error(name, "a bool", value)


def _check_keys(cls, keys, hints: dict | None = None) -> None:
    """ValueError for a key that is not a field of ``cls``, with a did-you-mean and the valid keys."""
    valid, hints = [f.name for f in dataclasses.fields(cls)], hints or {}
    for k in keys:
        if k not in valid:
            near = difflib.get_close_matches(k, [*valid, *hints], n=1)
            hint = f" (did you mean {hints.get(near[0], near[0])!r}?)" if near else ""
            raise ValueError(f"unknown {cls.__name__} key {k!r}{hint}; valid keys: {', '.join(valid)}")


@dataclasses.dataclass(frozen=True)
class EnsembleConfig:
    """A stacked deep ensemble of ``num_members`` copies of the model (members on axis 0)."""

    num_members: int = _f(dataclasses.MISSING, "deep_ensembles(num_estimators)")
    lowering: str | None = _f(None, "(none) member lowering vmap / map / unroll; None: per backend")
    shared_order: bool = _f(False, "(none) one data order for all members (TU deep_ensembles); False: "
                                   "one order per member")
    tu_gradient_scaling: bool = _f(False, "deep_ensembles + RepeatTarget: CE over (m b) rows -> grads / M")
    shared_augmentation: bool = _f(False, "(none) one augmented batch for all members (TU deep_ensembles: "
                                          "the DataLoader's batch); False: each member its own crops")

    def __post_init__(self):
        _int(self.num_members, "ensemble.num_members", 1)
        check_lowering(self.lowering, "ensemble.lowering")
        _bool(self.shared_order, "ensemble.shared_order")
        _bool(self.tu_gradient_scaling, "ensemble.tu_gradient_scaling")
        _bool(self.shared_augmentation, "ensemble.shared_augmentation")
        if self.shared_augmentation and not self.shared_order:
            raise ValueError("ensemble.shared_augmentation needs ensemble.shared_order=True (one batch to "
                             "augment for all members)")


# the flat settings EnsembleConfig replaced, for the did-you-mean of an old key
_MOVED = {"num_members": "ensemble.num_members", "members": "ensemble.lowering",
          "member_shuffle": "ensemble.shared_order", "tu_gradient_scaling": "ensemble.tu_gradient_scaling",
          "lowering": "ensemble.lowering"}


def resolve_compute_dtype(compute_dtype: str, backend: str | None = None) -> str:
    """``"auto"`` -> ``"float32"`` on CPU, where XLA:CPU emulates bf16 convolutions and products and
    training is slower than in fp32 (bench/results/train.md: LeNet 8,823 vs 18,892 img/s), else
    ``"bfloat16"``; any other value is returned as it is."""
    if compute_dtype != "auto":
        return compute_dtype
    return "float32" if (backend or jax.default_backend()) == "cpu" else "bfloat16"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (single model, stacked deep ensemble or Packed-Ensemble)."""

    epochs: int = _f(1, "Trainer(max_epochs)")
    batch_size: int = _f(128, "DataModule(batch_size)")
    optimizer: Any = _f(
        "tutorial_lenet_mnist",
        "routine optim_recipe: a jaxuq.train.RECIPES name, an optax transformation, or f(steps_per_epoch)",
    )
    preprocess: Preprocess | None = _f(Preprocess(), "DataModule train/test transforms (on device here); "
                                                     "None: inputs used as they are")
    seed: int = _f(0, "lightning.seed_everything(seed)")
    loss_fn: Callable | None = _f(None, "routine loss (None: CrossEntropyLoss, mean)")
    objective: Any = _f(None, "(none) a jaxuq.train.Objective for losses that need more than one forward")
    format_batch: Callable | None = _f(
        None, "routine format_batch_fn, e.g. RepeatTarget(M) for Packed-Ensembles"
    )
    compute_dtype: str = _f("float32", "Trainer(precision='bf16-mixed') for 'bfloat16'; 'auto': float32 on "
                                       "CPU (bf16 is emulated there, slower), else bfloat16")
    drop_last: bool = _f(False, "DataLoader(drop_last)")
    ensemble: EnsembleConfig | None = _f(None, "deep_ensembles(...); None: one model, no member axis")
    on_device: bool = _f(True, "(none) training set kept on device; False: host chunks prefetched")
    steps_per_call: int = _f(100, "(none) steps per jitted lax.scan chunk")
    checkpoint_every: int | None = _f(None, "ModelCheckpoint(every_n_train_steps); epoch ends always")
    max_to_keep: int = _f(2, "ModelCheckpoint(save_top_k) (latest k, not best k)")
    on_nonfinite: str = _f("stop", "(none) 'stop': error at the first NaN/inf loss; 'skip': drop that update")
    eval_batch_size: int = _f(1024, "DataModule(eval_batch_size)")
    quiet: bool = _f(False, "Trainer(enable_progress_bar=False)")
    record_steps: bool = _f(False, "(none) every step's loss in the epoch record (train_loss_steps: [S] or "
                                   "[S][M]; the lockstep tool)")

    def __post_init__(self):
        if isinstance(self.ensemble, dict):
            _check_keys(EnsembleConfig, self.ensemble)
            object.__setattr__(self, "ensemble", EnsembleConfig(**self.ensemble))
        if self.ensemble is not None and not isinstance(self.ensemble, EnsembleConfig):
            raise _type_error("ensemble", "an EnsembleConfig, a dict or None", self.ensemble)
        if not (isinstance(self.compute_dtype, str) and self.compute_dtype == "auto"):
            object.__setattr__(self, "compute_dtype", jnp.dtype(self.compute_dtype).name)  # jnp.bfloat16 too
        _int(self.epochs, "epochs", 0)
        for name in ("batch_size", "steps_per_call", "max_to_keep", "eval_batch_size"):
            _int(getattr(self, name), name, 1)
        _int(self.checkpoint_every, "checkpoint_every", 1, allow_none=True)
        _int(self.seed, "seed", -(2**63))
        for name in ("drop_last", "on_device", "quiet", "record_steps"):
            _bool(getattr(self, name), name)
        if self.on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {self.on_nonfinite!r}")
        if self.compute_dtype not in ("float32", "bfloat16", "auto"):
            raise ValueError(
                f"compute_dtype must be 'float32', 'bfloat16' or 'auto', got {self.compute_dtype!r}"
            )
        if self.preprocess is not None and not isinstance(self.preprocess, Preprocess):
            raise _type_error("preprocess", "a jaxuq.data.Preprocess or None", self.preprocess)
        if self.loss_fn is not None and self.objective is not None:
            raise ValueError("give loss_fn or objective, not both (an objective computes its own loss)")
        for name in ("loss_fn", "objective", "format_batch"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise _type_error(name, "callable", getattr(self, name))

    @property
    def num_members(self) -> int | None:
        """``ensemble.num_members``, or None for one model."""
        return None if self.ensemble is None else self.ensemble.num_members

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def check_keys(cls, keys) -> None:
        """Raise ValueError for a key that is not a setting, with a did-you-mean and the valid keys."""
        _check_keys(cls, keys, _MOVED)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        cls.check_keys(d)
        return cls(**d)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def describe(cls) -> str:
        """Markdown table: key, default, TU/Lightning equivalent (``ensemble.*``: EnsembleConfig's)."""
        rows = ["| key | default | TU / Lightning |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            rows.append(f"| `{f.name}` | {_default(f)} | {f.metadata['tu']} |")
        for f in dataclasses.fields(EnsembleConfig):
            rows.append(f"| `ensemble.{f.name}` | {_default(f)} | {f.metadata['tu']} |")
        return "\n".join(rows)


_generated_init = TrainConfig.__init__


def _checked_init(self, *args, **kwargs):  # TrainConfig(typo=...) and dataclasses.replace(cfg, typo=...)
    TrainConfig.check_keys(kwargs)
    _generated_init(self, *args, **kwargs)


TrainConfig.__init__ = _checked_init


def tu_deep_ensembles(num_members: int, lr: float, config: TrainConfig | None = None, *,
                      optimizer: Callable = torch_sgd) -> TrainConfig:
    """TU 0.13.0's ``deep_ensembles(model, num_estimators=M)`` trained by its ``ClassificationRoutine``
    with ``format_batch_fn=RepeatTarget(M)``, as the DE->PE tutorial does, in one line.

    TU stacks the members' outputs to ``[(M B), C]`` and takes one cross-entropy over the ``M * B``
    rows against the repeated targets: every member sees the same batches in the same order
    (``shared_order``), augmented once by the DataLoader (``shared_augmentation``: the same crops for
    every member; each member still draws its own dropout masks, as TU's members do), and gets ``1/M``
    of its own gradient (``tu_gradient_scaling``), which the
    tutorial compensates with a learning rate ``M`` times the single model's. Returns ``config`` (default
    ``TrainConfig()``) with that ensemble block (its lowering kept) and ``optimizer(lr * M)``
    (``optimizer``: a factory ``f(lr) -> optax transformation``, default :func:`torch_sgd`).
    """
    _int(num_members, "num_members", 1)
    if isinstance(lr, bool) or not isinstance(lr, int | float):
        raise _type_error("lr", "a number", lr)
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be finite and > 0, got {lr!r}")
    base = config if config is not None else TrainConfig()
    lowering = base.ensemble.lowering if base.ensemble is not None else None
    ensemble = EnsembleConfig(num_members, lowering=lowering, shared_order=True, tu_gradient_scaling=True,
                              shared_augmentation=True)
    return base.replace(ensemble=ensemble, optimizer=optimizer(lr * num_members))
