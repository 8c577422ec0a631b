"""Named datasets with TU's default transforms (datamodules of TU 0.13.0)."""

from __future__ import annotations

import numpy as np

from jaxuq.data.pipeline import CIFAR10_NORM, MNIST_NORM, Preprocess
from jaxuq.data.readers import (
    load_cifar10,
    load_cifar100,
    load_fashion_mnist,
    load_mnist,
    load_npz,
    load_svhn,
)

__all__ = ["load_dataset", "default_preprocess", "DATASETS"]

CIFAR100_NORM = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))


def _heads(split: str, data_dir):
    name = "train_first1000x5.npz" if split == "train" else "test_first1000.npz"
    return load_npz(f"cifar10_heads/{name}", data_dir=data_dir)


DATASETS = {
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "svhn": load_svhn,
    # The real heads of CIFAR-10 in the shared data folder (5000 train / 1000 test images).
    "cifar10_heads": _heads,
}


def load_dataset(name: str, split: str, data_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, H, W, C], labels int64 [N])`` of a named dataset split."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    return DATASETS[name](split=split, data_dir=data_dir)


def default_preprocess(name: str, basic_augment: bool = True) -> Preprocess:
    """TU's train transform: MNIST RandomCrop(28, 4) + Normalize(0.1307, 0.3081); CIFAR
    RandomCrop(32, 4) + RandomHorizontalFlip + Normalize(mean, std). Eval: Normalize only."""
    if name in ("mnist", "fashion_mnist"):
        return Preprocess(*MNIST_NORM, crop=28 if basic_augment else None, padding=4)
    if name in ("cifar10", "cifar10_heads", "svhn"):
        return Preprocess(*CIFAR10_NORM, crop=32 if basic_augment else None, padding=4, flip=basic_augment)
    if name == "cifar100":
        return Preprocess(*CIFAR100_NORM, crop=32 if basic_augment else None, padding=4, flip=basic_augment)
    raise KeyError(f"no default preprocessing for {name!r}")
