"""jaxuq.train: the one training engine (``fit``), TrainState and the train step, objectives and
callbacks, torch-equivalent optimisers, orbax checkpoints. The sharding helpers live in
:mod:`jaxuq.sharding` (re-exported here)."""

from jaxuq.sharding import (
    MeshRoles,
    batch_sharding,
    global_batch,
    initialize_distributed,
    is_multiprocess,
    make_mesh,
    member_mesh,
    process_batch_slice,
    replicate,
    replicated,
    split_mesh,
    to_host,
)
from jaxuq.train.callbacks import Callback, JsonlLogger, MetricWriterCallback
from jaxuq.train.checkpoint import Checkpointer, check_writable
from jaxuq.train.config import EnsembleConfig, TrainConfig, tu_deep_ensembles
from jaxuq.train.loop import FitResult, fit, train_chunk
from jaxuq.train.objective import (
    ELBOObjective,
    LossObjective,
    Objective,
    SampledLoss,
    StepContext,
    sample_forwards,
)
from jaxuq.train.optim import RECIPES, cosine_lr, multistep_lr, recipe, torch_adam, torch_adamw, torch_sgd
from jaxuq.train.state import StepSettings, TrainState, create_train_state, train_step

__all__ = [
    "Callback",
    "Checkpointer",
    "ELBOObjective",
    "EnsembleConfig",
    "FitResult",
    "JsonlLogger",
    "LossObjective",
    "MeshRoles",
    "MetricWriterCallback",
    "Objective",
    "RECIPES",
    "SampledLoss",
    "StepContext",
    "StepSettings",
    "TrainConfig",
    "TrainState",
    "batch_sharding",
    "check_writable",
    "cosine_lr",
    "create_train_state",
    "fit",
    "global_batch",
    "initialize_distributed",
    "is_multiprocess",
    "make_mesh",
    "member_mesh",
    "multistep_lr",
    "process_batch_slice",
    "recipe",
    "replicate",
    "replicated",
    "sample_forwards",
    "split_mesh",
    "to_host",
    "torch_adam",
    "torch_adamw",
    "torch_sgd",
    "tu_deep_ensembles",
    "train_chunk",
    "train_step",
]
