"""jaxuq.data: readers for standard files, downloads, device-side pipeline, OOD sets."""

from jaxuq.data.formats import MIMOBatchFormat, RepeatTarget, repeat_target
from jaxuq.data.ood import darker, fashion_mnist_ood, svhn_ood, synthetic_shifts, uniform_noise, vertical_flip
from jaxuq.data.pipeline import (
    CIFAR10_NORM,
    MNIST_NORM,
    Preprocess,
    epoch_permutation,
    normalize,
    numpy_batches,
    prefetch_to_device,
    random_crop,
    random_flip,
    train_val_split,
)
from jaxuq.data.readers import (
    DataFileError,
    load_cifar10,
    load_cifar100,
    load_cifar_batch,
    load_fashion_mnist,
    load_mnist,
    load_npz,
    load_svhn,
    read_idx,
)

__all__ = [
    "CIFAR10_NORM",
    "MNIST_NORM",
    "DataFileError",
    "MIMOBatchFormat",
    "Preprocess",
    "RepeatTarget",
    "darker",
    "epoch_permutation",
    "fashion_mnist_ood",
    "load_cifar10",
    "load_cifar100",
    "load_cifar_batch",
    "load_fashion_mnist",
    "load_mnist",
    "load_npz",
    "load_svhn",
    "normalize",
    "numpy_batches",
    "prefetch_to_device",
    "random_crop",
    "random_flip",
    "read_idx",
    "repeat_target",
    "svhn_ood",
    "synthetic_shifts",
    "train_val_split",
    "uniform_noise",
    "vertical_flip",
]
