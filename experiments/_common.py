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
    "write_json_atomic", "torchvision_root", "tu_lenet_ensemble_table", "ensemble_table",
    "compare_tables",
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


# ------------------------------------------------------------------ TU 0.13.0 as the reference table
def torchvision_root(data_dir=None, datasets=("MNIST", "FashionMNIST")) -> Path:
    """A temporary folder in torchvision's layout (``<name>/raw/*-ubyte``, decompressed) built from the
    data folder's ``<name>/raw/*.gz``: what TU's datamodules read with ``download=False``. The caller
    removes it (``shutil.rmtree``)."""
    import gzip
    import shutil
    import tempfile

    from jaxuq._env import data_dir as _data_dir

    tmp = Path(tempfile.mkdtemp(prefix="jaxuq_torchvision_"))
    for name in datasets:
        raw = tmp / name / "raw"
        raw.mkdir(parents=True)
        for f in (_data_dir(data_dir) / name / "raw").glob("*.gz"):
            with gzip.open(f, "rb") as fi, open(raw / f.name[:-3], "wb") as fo:
                shutil.copyfileobj(fi, fo)
    return tmp


def tu_lenet_ensemble_table(ckpt_paths, data_dir=None, ood_subset: int = 10_000,
                            batch_size: int = 2048) -> dict[str, float]:
    """TU 0.13.0's own test table for a deep ensemble of ``lenet(1, 10)`` checkpoints, as the "DE -> PE"
    tutorial builds it: each Lightning ``.ckpt``'s ``state_dict`` (``model.`` stripped) into a TU
    ``lenet``, ``deep_ensembles(members)``, ``ClassificationRoutine(is_ensemble=True, eval_ood=True)``
    (MSP), ``TUTrainer(accelerator="cpu").test`` on ``MNISTDataModule(eval_ood=True)`` with the first
    ``ood_subset`` FashionMNIST *train* images as OOD. Returns ``{key: float}`` (TU's keys)."""
    import shutil

    import torch
    from torch import nn as tnn
    from torch.utils.data import Subset
    from torch_uncertainty import TUTrainer
    from torch_uncertainty.datamodules import MNISTDataModule
    from torch_uncertainty.methods import deep_ensembles
    from torch_uncertainty.models.classification import lenet
    from torch_uncertainty.routines import ClassificationRoutine

    class _DM(MNISTDataModule):
        def setup(self, stage=None):
            super().setup(stage)
            if stage in ("test", None):
                self.ood = Subset(self.ood, range(ood_subset))

    members = []
    for p in ckpt_paths:
        sd = torch.load(p, map_location="cpu", weights_only=True)["state_dict"]
        m = lenet(in_channels=1, num_classes=10)
        m.load_state_dict({k.replace("model.", "", 1): v for k, v in sd.items()})
        members.append(m)
    ensemble = deep_ensembles(members, num_estimators=None, task="classification")
    routine = ClassificationRoutine(model=ensemble, num_classes=10, loss=tnn.CrossEntropyLoss(),
                                    is_ensemble=True, eval_ood=True, optim_recipe=None)
    root = torchvision_root(data_dir)
    try:
        dm = _DM(root=root, batch_size=batch_size, eval_batch_size=batch_size, eval_ood=True,
                 num_workers=0, pin_memory=False, persistent_workers=False)
        trainer = TUTrainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)
        out = trainer.test(routine, datamodule=dm, verbose=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    res: dict[str, float] = {}
    for d in out:
        res.update({k.split("/dataloader_idx")[0]: float(v) for k, v in d.items()})
    return res


def ensemble_table(module, variables, images, labels, ood_images, pre, batch_size: int = 2048,
                   members=None) -> dict[str, float]:
    """jaxuq's side of :func:`tu_lenet_ensemble_table`: a stacked ensemble (``variables`` leaves
    ``[M, ...]``) on ``images [N, H, W, C]`` (uint8) with ``ood_images`` as OOD, ``pre`` the
    preprocessing (uint8 -> model input), MSP criterion -> :func:`jaxuq.evaluate.classification_table`
    with TU's complexity numbers (FLOPs of the first batch, all members; parameter count)."""
    import jax.numpy as jnp

    from jaxuq.ensembles import make_eval_fn
    from jaxuq.evaluate import classification_table
    from jaxuq.metrics import count_flops, count_params

    f = make_eval_fn(module, members=members)

    def probs(x):  # [M, N, C]
        out = [f(variables, pre(jnp.asarray(x[i : i + batch_size]))) for i in range(0, len(x), batch_size)]
        return jax.nn.softmax(jnp.concatenate(out, axis=1), axis=-1)

    p_id, p_ood = probs(images), probs(ood_images)
    msp = lambda p: -jnp.max(jnp.mean(p, 0), -1)  # noqa: E731 - TU's default "msp" criterion
    first = pre(jnp.asarray(images[:batch_size]))
    return classification_table(
        probs=p_id, labels=np.asarray(labels), ood_scores=jnp.concatenate([msp(p_id), msp(p_ood)]),
        ood_probs=p_ood, flops=count_flops(lambda x: f(variables, x), first),
        params=count_params(variables["params"]),
    )


def compare_tables(ours: dict, ref: dict, tol: float = 1e-5) -> dict:
    """Key-by-key comparison of two metric tables: ``{"missing": keys of ref not in ours, "extra": ...,
    "diffs": {key: (ours, ref, |Δ|)}, "bad": keys with |Δ| > tol (NaN only equals NaN),
    "max_abs_diff": float}``."""
    common = sorted(set(ours) & set(ref))
    diffs = {}
    for k in common:
        a, b = float(ours[k]), float(ref[k])
        d = 0.0 if (np.isnan(a) and np.isnan(b)) or a == b else abs(a - b)
        diffs[k] = (a, b, d)
    finite = [d for _, _, d in diffs.values() if np.isfinite(d)]
    return {
        "missing": sorted(set(ref) - set(ours)),
        "extra": sorted(set(ours) - set(ref)),
        "diffs": diffs,
        "bad": [k for k, (_, _, d) in diffs.items() if not d <= tol],
        "max_abs_diff": max(finite, default=0.0),
    }
