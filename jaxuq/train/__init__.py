"""jaxuq.train: the one training engine (``fit``), TrainState and steps, torch-equivalent optimisers,
orbax checkpoints, data- and member-parallel sharding."""

from jaxuq.train.checkpoint import Checkpointer, check_writable
from jaxuq.train.config import TrainConfig
from jaxuq.train.loop import Callback, FitResult, fit, train_and_evaluate, train_chunk
from jaxuq.train.optim import RECIPES, cosine_lr, multistep_lr, recipe, torch_adam, torch_adamw, torch_sgd
from jaxuq.train.sharding import (
    batch_sharding,
    global_batch,
    initialize_distributed,
    is_multiprocess,
    make_mesh,
    process_batch_slice,
    replicate,
    replicated,
    to_host,
)
from jaxuq.train.state import (
    RepeatTarget,
    StepSettings,
    TrainState,
    create_train_state,
    cross_entropy,
    eval_step,
    train_step,
)

__all__ = [
    "Callback",
    "Checkpointer",
    "FitResult",
    "RECIPES",
    "RepeatTarget",
    "StepSettings",
    "TrainConfig",
    "TrainState",
    "batch_sharding",
    "check_writable",
    "cosine_lr",
    "create_train_state",
    "cross_entropy",
    "eval_step",
    "fit",
    "global_batch",
    "initialize_distributed",
    "is_multiprocess",
    "make_mesh",
    "multistep_lr",
    "process_batch_slice",
    "recipe",
    "replicate",
    "replicated",
    "torch_adam",
    "torch_adamw",
    "torch_sgd",
    "to_host",
    "train_and_evaluate",
    "train_chunk",
    "train_step",
]
