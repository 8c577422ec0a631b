"""``TrainConfig``: every setting of ``jaxuq.train.fit`` in one frozen dataclass.

Each field's metadata gives its torch-uncertainty / Lightning equivalent (``TrainConfig.describe()``
prints the table). Unknown keys are errors with a did-you-mean::

    cfg = TrainConfig(epochs=3, batch_size=128, optimizer="tutorial_lenet_mnist")
    cfg = cfg.replace(num_members=8)                  # a typo raises ValueError naming the valid keys
    cfg = TrainConfig.from_dict({"epochs": 3, ...})    # idem
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from typing import Any

from jaxuq.data.pipeline import Preprocess

__all__ = ["TrainConfig"]

LOWERINGS = ("vmap", "map", "unroll")


def _f(default, tu: str, **kw):
    return dataclasses.field(default=default, metadata={"tu": tu}, **kw)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (single model, stacked deep ensemble or Packed-Ensemble)."""

    epochs: int = _f(1, "Trainer(max_epochs)")
    batch_size: int = _f(128, "DataModule(batch_size)")
    optimizer: Any = _f(
        "tutorial_lenet_mnist",
        "routine optim_recipe: a jaxuq.train.RECIPES name, an optax transformation, or f(steps_per_epoch)",
    )
    preprocess: Preprocess = _f(Preprocess(), "DataModule train/test transforms (on device here)")
    seed: int = _f(0, "lightning.seed_everything(seed)")
    loss_fn: Callable | None = _f(None, "routine loss (None: CrossEntropyLoss, mean)")
    format_batch: Callable | None = _f(
        None, "routine format_batch_fn, e.g. RepeatTarget(M) for Packed-Ensembles"
    )
    compute_dtype: str = _f("float32", "Trainer(precision='bf16-mixed') for 'bfloat16'")
    drop_last: bool = _f(False, "DataLoader(drop_last)")
    # ensembles
    num_members: int | None = _f(None, "deep_ensembles(num_estimators); None: one model, no member axis")
    members: str | None = _f(None, "(none) member lowering 'vmap'|'map'|'unroll'; None: per backend")
    member_shuffle: bool = _f(
        True, "(none) per-member data orders; TU deep_ensembles: one shared order (False)"
    )
    tu_gradient_scaling: bool = _f(False, "deep_ensembles + RepeatTarget: CE over (m b) rows -> grads / M")
    # engine
    on_device: bool = _f(True, "(none) uint8 training set kept on device; False: host chunks prefetched")
    steps_per_call: int = _f(100, "(none) steps per jitted lax.scan chunk")
    checkpoint_every: int | None = _f(None, "ModelCheckpoint(every_n_train_steps); epoch ends always")
    max_to_keep: int = _f(2, "ModelCheckpoint(save_top_k) (latest k, not best k)")
    on_nonfinite: str = _f("stop", "(none) 'stop': error at the first NaN/inf loss; 'skip': drop that update")
    eval_batch_size: int = _f(1024, "DataModule(eval_batch_size)")
    quiet: bool = _f(False, "Trainer(enable_progress_bar=False)")

    def __post_init__(self):
        if self.epochs < 0 or self.batch_size <= 0:
            raise ValueError(f"epochs must be >= 0 and batch_size > 0, got {self.epochs}, {self.batch_size}")
        if self.num_members is not None and self.num_members < 1:
            raise ValueError(f"num_members must be None or >= 1, got {self.num_members}")
        if self.members not in (None, *LOWERINGS):
            raise ValueError(f"members must be one of {LOWERINGS} or None, got {self.members!r}")
        if self.on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {self.on_nonfinite!r}")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', got {self.compute_dtype!r}")
        if int(self.checkpoint_every or self.steps_per_call) <= 0:
            raise ValueError("checkpoint_every/steps_per_call must be positive")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def check_keys(cls, keys) -> None:
        """Raise ValueError for a key that is not a setting, with a did-you-mean and the valid keys."""
        valid = cls.keys()
        for k in keys:
            if k not in valid:
                near = difflib.get_close_matches(k, valid, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise ValueError(f"unknown TrainConfig key {k!r}{hint}; valid keys: {', '.join(valid)}")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        cls.check_keys(d)
        return cls(**d)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def describe(cls) -> str:
        """Markdown table: key, default, TU/Lightning equivalent."""
        rows = ["| key | default | TU / Lightning |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            rows.append(f"| `{f.name}` | `{f.default!r}` | {f.metadata['tu']} |")
        return "\n".join(rows)


_generated_init = TrainConfig.__init__


def _checked_init(self, *args, **kwargs):  # TrainConfig(typo=...) and dataclasses.replace(cfg, typo=...)
    TrainConfig.check_keys(kwargs)
    _generated_init(self, *args, **kwargs)


TrainConfig.__init__ = _checked_init
