"""Shared preamble of the real-data experiments: the CIFAR-10 heads, the real checkpoints and
their preprocessing, batched logits, the torch twin of a checkpoint and TU 0.13.0's test routine
driven on the same tensors (``tu_test``), and the TU-vs-jaxuq comparison of two metric tables.

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
    "CHECKPOINTS", "CIFAR_TRAIN", "CIFAR_TEST", "RESNET20_CKPT", "TINIEST_CKPT", "RESNET_MEAN", "RESNET_STD",
    "checkpoint_of", "experiment_parser", "load_cifar_heads", "load_model", "normalize", "preprocess",
    "logits_of", "table_rows", "tables_text", "torch_model_of", "tu_test", "write_json_atomic",
    "torchvision_root", "tu_lenet_ensemble_table", "ensemble_table", "compare_tables",
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


def experiment_parser(doc: str, out_default: str, checkpoint: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` (description ``doc``) with the options every real-data experiment has:
    ``--data-dir``, ``--out`` (default ``out_default``) and ``--model`` (default: convert
    ``checkpoint``)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="data folder (default: $JAXUQ_DATA_DIR)")
    ap.add_argument("--out", default=out_default, help="output folder (results.json, plots)")
    ap.add_argument(
        "--model",
        default=None,
        help=f"a jaxuq-convert output folder (default: convert {Path(checkpoint).name})",
    )
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
    out = [
        np.asarray(f(variables, pre(images[i : i + batch_size]))) for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out)


def checkpoint_of(name: str) -> str:
    """The data-folder path of model ``name``'s torch checkpoint; ValueError listing the known ones."""
    if name not in CHECKPOINTS:
        raise ValueError(
            f"model {name!r} has no checkpoint under the data folder; known: {', '.join(CHECKPOINTS)} "
            "(the tutorial's hub models, e.g. chenyaofo's cifar100_resnet20, need a network)"
        )
    return CHECKPOINTS[name]


def torch_model_of(name: str, data_dir=None):
    """The torch twin of model ``name`` (``converters.torch_refs``) with its checkpoint's weights, in
    eval mode: what TU's side of an experiment runs."""
    import torch

    from converters.io import read_state_dict
    from converters.torch_refs import torch_model

    sd, _ = read_state_dict(data_file(checkpoint_of(name), data_dir))
    model = torch_model(name)
    model.load_state_dict({k.removeprefix("module."): torch.from_numpy(v) for k, v in sd.items()})
    return model.eval()


def _loader(*arrays, batch_size: int):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    return DataLoader(TensorDataset(*(torch.as_tensor(a) for a in arrays)), batch_size=batch_size)


def tu_test(routine, id_data, ood_images=None, postprocess_data=None, batch_size: int = 512) -> dict:
    """TU 0.13.0's ``TUTrainer.test`` (CPU, fp32, quiet) of ``routine`` on numpy NCHW tensors.

    Args:
      routine: a ``ClassificationRoutine``.
      id_data: ``(images [N, 3, H, W] float32, labels [N])``: test dataloader 0.
      ood_images: ``[N_ood, 3, H, W]`` (dataloader 1, labels -1), when ``routine.eval_ood``.
      postprocess_data: ``(images, labels)`` served by ``postprocess_dataloader()`` (what TU fits a
        routine's ``post_processing`` on at ``on_test_start``).
    Returns:
      ``{key: float}``: the routine's logged test metrics.
    """
    import lightning as L
    import numpy as np
    from torch_uncertainty import TUTrainer

    class _Data(L.LightningDataModule):
        def test_dataloader(self):
            loaders = [_loader(*id_data, batch_size=batch_size)]
            if ood_images is not None:
                loaders.append(_loader(ood_images, np.full(len(ood_images), -1), batch_size=batch_size))
            return loaders

        def postprocess_dataloader(self):
            return _loader(*postprocess_data, batch_size=batch_size)

    trainer = TUTrainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    out = trainer.test(routine, datamodule=_Data(), verbose=False)
    return {k.split("/dataloader_idx")[0]: float(v) for k, v in out[0].items()}


def table_rows(tu: dict | None, jx: dict, published: dict | None = None, prefix: str = "") -> list[dict]:
    """Comparison rows (``experiments._launch.compare_row``) of two TU-style metric tables, in
    ``jx``'s key order; ``tu=None`` (TU not run) gives rows without a TU value."""
    from experiments._launch import compare_row

    published = published or {}
    return [
        compare_row(prefix + k, v, None if tu is None else tu[k], published.get(k)) for k, v in jx.items()
    ]


def tables_text(title: str, table: dict) -> str:
    """TU's printed tables of ``table`` (``jaxuq.report``) as text under ``title``."""
    from experiments._launch import render_text
    from jaxuq.report.table import build_tables

    return render_text(title, *build_tables(table))


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
                            batch_size: int = 2048, test_subset: int | None = None) -> dict[str, float]:
    """TU 0.13.0's own test table for a deep ensemble of ``lenet(1, 10)`` checkpoints, as the "DE -> PE"
    tutorial builds it: each Lightning ``.ckpt``'s ``state_dict`` (``model.`` stripped) into a TU
    ``lenet``, ``deep_ensembles(members)``, ``ClassificationRoutine(is_ensemble=True, eval_ood=True)``
    (MSP), ``TUTrainer(accelerator="cpu").test`` on ``MNISTDataModule(eval_ood=True)`` with the first
    ``ood_subset`` FashionMNIST *train* images as OOD (``test_subset``: the first k MNIST test images
    only). Returns ``{key: float}`` (TU's keys)."""
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
                if test_subset is not None:
                    self.test = Subset(self.test, range(test_subset))

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
