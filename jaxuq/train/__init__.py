"""jaxuq.train: TrainState, jitted steps, torch-equivalent optimisers, orbax checkpoints, data parallel."""

from jaxuq.train.checkpoint import Checkpointer, check_writable
from jaxuq.train.loop import FitResult, evaluate, fit, predict, train_and_evaluate
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
from jaxuq.train.state import TrainState, create_train_state, cross_entropy, make_eval_step, make_train_step

__all__ = [
    "Checkpointer",
    "FitResult",
    "RECIPES",
    "TrainState",
    "batch_sharding",
    "check_writable",
    "cosine_lr",
    "create_train_state",
    "cross_entropy",
    "evaluate",
    "fit",
    "global_batch",
    "initialize_distributed",
    "is_multiprocess",
    "make_eval_step",
    "make_mesh",
    "make_train_step",
    "multistep_lr",
    "predict",
    "process_batch_slice",
    "recipe",
    "replicate",
    "replicated",
    "torch_adam",
    "torch_adamw",
    "torch_sgd",
    "to_host",
    "train_and_evaluate",
]
