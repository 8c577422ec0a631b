"""Shared preamble of the real-data experiments: the CIFAR-10 heads, the real checkpoints and
their preprocessing, atomic JSON output (batched logits: ``jaxuq.evaluation.predict``).

Everything is read from the data folder (``--data-dir`` or ``$JAXUQ_DATA_DIR``, see
``jaxuq._env``); a missing file is a ``FileNotFoundError`` naming it, never a random fallback.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from jaxuq._env import data_file
from jaxuq._io import write_json_atomic  # re-exported: the experiments' JSON writer
from jaxuq.data.pipeline import Preprocess

__all__ = [
    "CIFAR_TRAIN", "CIFAR_TEST", "RESNET20_CKPT", "TINIEST_CKPT", "RESNET_MEAN", "RESNET_STD",
    "RESNET_PREPROCESS", "experiment_parser", "load_cifar_heads", "load_model", "normalize",
    "write_json_atomic",
]  # fmt: skip

CIFAR_TRAIN = "cifar10_heads/train_first1000x5.npz"  # 5000 real training images + labels
CIFAR_TEST = "cifar10_heads/test_first1000.npz"  # the first 1000 real test images + labels
RESNET20_CKPT = "checkpoints/resnet_cifar/resnet20-12fca82f.th"
TINIEST_CKPT = "checkpoints/scio_tiniest/tiniest.pt"
# the He et al. CIFAR ResNets (resnet20/56) were trained on x/255 normalised with ImageNet's stats
RESNET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
RESNET_STD = np.array([0.229, 0.224, 0.225], np.float32)
#: uint8 images -> the ResNet checkpoints' input (x/255, then mean/std), on device
RESNET_PREPROCESS = Preprocess(mean=tuple(RESNET_MEAN.tolist()), std=tuple(RESNET_STD.tolist()))


def experiment_parser(doc: str, out_default: str, checkpoint: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` (description ``doc``) with the options every real-data experiment has:
    ``--data-dir``, ``--out`` (default ``out_default``) and ``--model`` (default: convert
    ``checkpoint``)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="data folder (default: $JAXUQ_DATA_DIR)")
    ap.add_argument("--out", default=out_default, help="output folder (results.json, plots)")
    ap.add_argument("--model", default=None,
                    help=f"a jaxuq-convert output folder (default: convert {Path(checkpoint).name})")
    return ap


def load_cifar_heads(data_dir=None):
    """``(train, test)``: the two ``np.load`` archives of ``cifar10_heads`` (``images`` uint8
    ``[N, 32, 32, 3]``, ``labels`` ``[N]``); FileNotFoundError naming the missing file."""
    return np.load(data_file(CIFAR_TRAIN, data_dir)), np.load(data_file(CIFAR_TEST, data_dir))


def load_model(name: str, checkpoint: str, data_dir=None, model_dir=None):
    """``(module, variables)`` of model ``name``: a ``jaxuq-convert`` output folder when
    ``model_dir`` is given (``jaxuq.models.load``), else the torch ``checkpoint`` (relative to the
    data folder) converted in memory by the converter."""
    from jaxuq import models

    if model_dir is not None:
        module, variables, _ = models.load(model_dir)
        return module, variables
    from converters import convert_checkpoint  # the only place that reads torch files

    return models.get(name), convert_checkpoint(name, data_file(checkpoint, data_dir))


def normalize(images01: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] ``[N, H, W, 3]`` -> the ResNet checkpoints' input."""
    return (np.asarray(images01, np.float32) - RESNET_MEAN) / RESNET_STD
