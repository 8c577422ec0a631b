"""The inputs of the real-data experiments: the CIFAR-10 heads, the real checkpoints (converted in
memory) and their preprocessing, and the seeded calibration / evaluation split.

Everything is read from the data folder (``--data-dir`` or ``$JAXUQ_DATA_DIR``, see
``jaxuq._env``); a missing file is a ``FileNotFoundError`` naming it, never a random fallback.
"""

from __future__ import annotations

import numpy as np

from converters import convert_checkpoint
from jaxuq import models
from jaxuq._env import data_file
from jaxuq.data.pipeline import Preprocess, train_val_split

__all__ = [
    "CHECKPOINTS", "CIFAR_TRAIN", "CIFAR_TEST", "RESNET20_CKPT", "TINIEST_CKPT", "RESNET_MEAN", "RESNET_STD",
    "RESNET_PREPROCESS", "calibration_split", "checkpoint_of", "load_cifar_heads", "load_model", "normalize",
]  # fmt: skip

CIFAR_TRAIN = "cifar10_heads/train_first1000x5.npz"  # 5000 real training images + labels
CIFAR_TEST = "cifar10_heads/test_first1000.npz"  # the first 1000 real test images + labels
RESNET20_CKPT = "checkpoints/resnet_cifar/resnet20-12fca82f.th"
TINIEST_CKPT = "checkpoints/scio_tiniest/tiniest.pt"
CHECKPOINTS = {
    "resnet20": RESNET20_CKPT,
    "resnet56": "checkpoints/resnet_cifar/resnet56-4bfd9763.th",
    "tiniest": TINIEST_CKPT,
}  # model name -> torch checkpoint under the data folder
# the He et al. CIFAR ResNets (resnet20/56) were trained on x/255 normalised with ImageNet's stats
RESNET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
RESNET_STD = np.array([0.229, 0.224, 0.225], np.float32)
#: uint8 images -> the ResNet checkpoints' input (x/255, then mean/std), on device
RESNET_PREPROCESS = Preprocess(mean=tuple(RESNET_MEAN.tolist()), std=tuple(RESNET_STD.tolist()))


def load_cifar_heads(data_dir=None):
    """``(train, test)``: the two ``np.load`` archives of ``cifar10_heads`` (``images`` uint8
    ``[N, 32, 32, 3]``, ``labels`` ``[N]``); FileNotFoundError naming the missing file."""
    return np.load(data_file(CIFAR_TRAIN, data_dir)), np.load(data_file(CIFAR_TEST, data_dir))


def load_model(name: str, checkpoint: str, data_dir=None, model_dir=None):
    """``(module, variables)`` of model ``name``: a ``jaxuq-convert`` output folder when
    ``model_dir`` is given (``jaxuq.models.load``), else the torch ``checkpoint`` (relative to the
    data folder) converted in memory by the converter (torch reads the file)."""
    if model_dir is not None:
        module, variables, _ = models.load(model_dir)
        return module, variables
    return models.get(name), convert_checkpoint(name, data_file(checkpoint, data_dir))


def normalize(images01: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] ``[N, H, W, 3]`` -> the ResNet checkpoints' input."""
    return (np.asarray(images01, np.float32) - RESNET_MEAN) / RESNET_STD


def checkpoint_of(name: str) -> str:
    """The data-folder path of model ``name``'s torch checkpoint; ValueError listing the known ones."""
    if name not in CHECKPOINTS:
        raise ValueError(
            f"model {name!r} has no checkpoint under the data folder; known: {', '.join(CHECKPOINTS)} "
            "(the tutorial's cifar100_resnet20 is in jaxuq.models and the converter, but its weights come "
            "from torch.hub and its data is CIFAR-100: both need a network)"
        )
    return CHECKPOINTS[name]


def calibration_split(n: int, cal_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(calibration indices, evaluation indices)`` of ``range(n)``, each sorted: the library's split
    :func:`jaxuq.data.train_val_split` ``(n, 1 - cal_fraction, seed)``, whose train part calibrates.
    ``n - max(1, round(n * (1 - cal_fraction)))`` images calibrate (100 of 1000 at 0.1)."""
    if not 0 < cal_fraction < 1:
        raise ValueError(f"cal_fraction must be in (0, 1); got {cal_fraction}")
    return train_val_split(n, 1 - cal_fraction, seed)
