"""Shared preamble of the real-data experiments: the CIFAR-10 heads, the real checkpoints and
their preprocessing, batched logits, atomic JSON output.

Everything is read from the data folder (``--data-dir`` or ``$JAXUQ_DATA_DIR``, see
``jaxuq._env``); a missing file is a ``FileNotFoundError`` naming it, never a random fallback.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import jax
import numpy as np

from jaxuq._env import data_file
from jaxuq._io import write_json_atomic  # re-exported: the experiments' JSON writer

__all__ = [
    "CIFAR_TRAIN", "CIFAR_TEST", "RESNET20_CKPT", "TINIEST_CKPT", "RESNET_MEAN", "RESNET_STD",
    "experiment_parser", "load_cifar_heads", "load_model", "normalize", "preprocess", "logits_of",
    "write_json_atomic",
]  # fmt: skip

CIFAR_TRAIN = "cifar10_heads/train_first1000x5.npz"  # 5000 real training images + labels
CIFAR_TEST = "cifar10_heads/test_first1000.npz"  # the first 1000 real test images + labels
RESNET20_CKPT = "checkpoints/resnet_cifar/resnet20-12fca82f.th"
TINIEST_CKPT = "checkpoints/scio_tiniest/tiniest.pt"
# the He et al. CIFAR ResNets (resnet20/56) were trained on x/255 normalised with ImageNet's stats
RESNET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
RESNET_STD = np.array([0.229, 0.224, 0.225], np.float32)


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


def preprocess(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 images ``[N, H, W, 3]`` -> the ResNet checkpoints' input (x/255, then mean/std)."""
    return normalize(images_uint8.astype(np.float32) / 255.0)


@functools.cache
def _jitted_apply(module):
    """One ``jax.jit(module.apply)`` per module configuration (flax modules hash by their fields), so
    repeated ``logits_of`` calls on the same model reuse its traces and compilations."""
    return jax.jit(module.apply)


def logits_of(module, variables, images, batch_size: int = 250, pre=preprocess) -> np.ndarray:
    """``module.apply`` over ``images`` in batches of ``batch_size`` after ``pre``: ``[N, C]``."""
    f = _jitted_apply(module)
    out = [np.asarray(f(variables, pre(images[i : i + batch_size])))
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out)
