"""Shared preamble of the real-data experiments: the CIFAR-10 heads, the real checkpoints and
their preprocessing (batched logits: ``jaxuq.evaluation.predict``), the torch twin of a checkpoint
and TU 0.13.0's test routine driven on the same tensors (``tu_test``), and the TU-vs-jaxuq comparison
of two metric tables.

Everything is read from the data folder (``--data-dir`` or ``$JAXUQ_DATA_DIR``, see
``jaxuq._env``); a missing file is a ``FileNotFoundError`` naming it, never a random fallback.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxuq._env import data_file
from jaxuq._io import write_json_atomic  # re-exported: the experiments' JSON writer
from jaxuq.data.pipeline import Preprocess

__all__ = [
    "CHECKPOINTS", "CIFAR_TRAIN", "CIFAR_TEST", "RESNET20_CKPT", "TINIEST_CKPT", "RESNET_MEAN", "RESNET_STD",
    "RESNET_PREPROCESS", "checkpoint_of", "compare_tables", "ensemble_table", "load_cifar_heads",
    "load_model",
    "max_diff", "mixed_ties", "normalize", "parity_summary", "saturated", "score_plot", "split",
    "table_rows", "tables_text", "torch_loader", "torch_model_of", "torchvision_root",
    "tu_lenet_ensemble_table", "tu_quirk_rows", "tu_test", "tu_test_table", "tu_trainer", "write_json_atomic",
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


def checkpoint_of(name: str) -> str:
    """The data-folder path of model ``name``'s torch checkpoint; ValueError listing the known ones."""
    if name not in CHECKPOINTS:
        raise ValueError(
            f"model {name!r} has no checkpoint under the data folder; known: {', '.join(CHECKPOINTS)} "
            "(the tutorial's cifar100_resnet20 is in jaxuq.models and the converter, but its weights come "
            "from torch.hub and its data is CIFAR-100: both need a network)"
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


def torch_loader(*arrays, batch_size: int):
    """A torch ``DataLoader`` (no shuffle) over numpy ``arrays``."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    return DataLoader(TensorDataset(*(torch.as_tensor(a) for a in arrays)), batch_size=batch_size)


def tu_test(
    routine, id_data, ood_images=None, postprocess_data=None, batch_size: int = 512, seed: int = 0
) -> dict:
    """TU 0.13.0's ``TUTrainer.test`` (CPU, fp32, quiet) of ``routine`` on numpy NCHW tensors.

    Args:
      routine: a ``ClassificationRoutine``.
      id_data: ``(images [N, 3, H, W] float32, labels [N])``: test dataloader 0.
      ood_images: ``[N_ood, 3, H, W]`` (dataloader 1, labels -1), when ``routine.eval_ood``.
      postprocess_data: ``(images, labels)`` served by ``postprocess_dataloader()`` (what TU fits a
        routine's ``post_processing`` on at ``on_test_start``); torch is reseeded with ``seed`` right
        before, so what the fit draws (DEUP's initial weights) is reproducible.
    Returns:
      ``{key: float}``: the routine's logged test metrics.
    """
    import lightning as L
    import torch

    class _Data(L.LightningDataModule):
        def test_dataloader(self):
            loaders = [torch_loader(*id_data, batch_size=batch_size)]
            if ood_images is not None:
                loaders.append(torch_loader(ood_images, np.full(len(ood_images), -1), batch_size=batch_size))
            return loaders

        def postprocess_dataloader(self):
            torch.manual_seed(seed)
            return torch_loader(*postprocess_data, batch_size=batch_size)

    return tu_test_table(tu_trainer(devices=1), routine, _Data())


def tu_trainer(**kwargs):
    """TU 0.13.0's ``TUTrainer`` on the CPU, quiet (no logger, checkpoints, progress bar, model
    summary or accelerator banners); ``kwargs`` add to / override those settings."""
    import logging

    from torch_uncertainty import TUTrainer

    for name in ("lightning.pytorch", "lightning.fabric"):  # no accelerator banners and tips
        logging.getLogger(name).setLevel(logging.ERROR)
    settings = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                    enable_checkpointing=False)
    return TUTrainer(**(settings | kwargs))


def tu_test_table(trainer, routine, datamodule) -> dict[str, float]:
    """``trainer.test(routine, datamodule)``'s logged metrics of every dataloader as one
    ``{TU key: float}`` (``/dataloader_idx_k`` suffixes dropped)."""
    res: dict[str, float] = {}
    for d in trainer.test(routine, datamodule=datamodule, verbose=False):
        res.update({k.split("/dataloader_idx")[0]: float(v) for k, v in d.items()})
    return res


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


def mixed_ties(values, labels) -> bool:
    """Whether some group of equal ``values`` holds both labels: there TU's value depends on the
    tie order (unstable sort) and ours does not."""
    v, lab = np.asarray(values), np.asarray(labels)
    order = np.argsort(v, kind="stable")
    v, lab = v[order], lab[order]
    starts = np.r_[True, v[1:] != v[:-1]]
    group = np.cumsum(starts) - 1
    lo, hi = np.full(group[-1] + 1, 2), np.full(group[-1] + 1, -1)
    np.minimum.at(lo, group, lab)
    np.maximum.at(hi, group, lab)
    return bool((lo != hi).any())


def _sigmoid_mixed(s_id, s_ood, batch_size: int) -> bool:
    """Whether TU's per-batch sigmoid (torchmetrics squashes a batch with any score outside [0, 1])
    applies to some test batches and not to others, which reorders the scores."""
    flags = [
        bool(((b < 0) | (b > 1)).any())
        for s in (s_id, s_ood)
        for b in np.split(s, range(batch_size, len(s), batch_size))
    ]
    return len(set(flags)) > 1


def tu_quirk_rows(scores, z, y, batch_size: int) -> set[str]:
    """Comparison rows where TU's value depends on its quirks and ours does not (README, deviations
    from TU): ``ood/{AUROC, AUPR}`` of a criterion/OOD set whose batches TU sigmoids only in part, or
    whose scores, after TU's float32 sigmoid, tie across ID and OOD; ``ood/SCOD_*`` when raw scores
    tie across ID and OOD (TU's unstable sort); ``test/sc/*`` when equal ID confidences mix right
    and wrong. ``scores``: ``{criterion: (id [N], {ood set: [M]})}``; ``z``, ``y``: ID logits, labels."""
    out = set()
    for c, (s_id, s_oods) in scores.items():
        for o, s_ood in s_oods.items():
            s = np.concatenate([s_id, s_ood]).astype(np.float32)
            is_ood = np.r_[np.zeros(len(s_id), int), np.ones(len(s_ood), int)]
            sig = (1 / (1 + np.exp(-s))).astype(np.float32)
            if _sigmoid_mixed(s_id, s_ood, batch_size) or mixed_ties(sig, is_ood) or mixed_ties(s, is_ood):
                out |= {f"{c}/{o}: ood/AUROC", f"{c}/{o}: ood/AUPR"}
            if mixed_ties(s, is_ood):
                out |= {f"{c}/{o}: ood/SCOD_{k}" for k in ("AUGRC", "AURC", "Cov_5Risk", "Risk_80Cov")}
    p = np.asarray(jax.nn.softmax(jnp.asarray(z), -1))
    if mixed_ties(p.max(-1), p.argmax(-1) != y):
        out |= {f"test/sc/{k}" for k in ("AUGRC", "AURC", "Cov_5Risk", "Risk_80Cov")}
    return out


def saturated(logits) -> dict:
    """How many float32 max-softmax values are exactly 1 (ties MSP cannot order) per set."""
    z, z_oods = logits
    return {
        name: int((np.asarray(jax.nn.softmax(jnp.asarray(v), -1)).max(-1) == 1.0).sum())
        for name, v in {"ID": z, **z_oods}.items()
    }


def max_diff(rows) -> float | None:
    """The largest ``abs_diff`` of comparison rows (None when TU was not run)."""
    return max((r["abs_diff"] for r in rows if r["abs_diff"] is not None), default=None)


def split(n: int, cal_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(calibration indices, evaluation indices)`` of ``range(n)``: a seeded permutation
    (``numpy.random.default_rng(seed)``) whose first ``round(n * cal_fraction)`` calibrate."""
    if not 0 < cal_fraction < 1:
        raise ValueError(f"cal_fraction must be in (0, 1); got {cal_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    k = round(n * cal_fraction)
    return perm[:k], perm[k:]


def score_plot(scores: dict, path) -> None:
    """scio-style histograms + ROC curves of OOD criteria ``{name: (id [N], {ood set: [M]})}``
    (higher = more OOD; plotted as confidence = -score)."""
    from jaxuq.report.plots import summary_plot

    names = list(scores)
    oods = list(next(iter(scores.values()))[1])
    summary_plot(
        [-scores[c][0] for c in names], [[-scores[c][1][o] for c in names] for o in oods], names, oods, path
    )


def parity_summary(rows: list[dict], same_rows: list[dict], quirky: set[str]) -> tuple[str, dict]:
    """The text line and results entries summing up a TU-vs-jaxuq comparison: max |Δ| end to end,
    on the rows free of TU's quirks (``tu_quirk_rows``), and of TU run on jaxuq's own logits."""
    free = [r for r in rows if not r["tu_quirk"]]
    res = {
        "max_abs_diff": max_diff(rows),
        "max_abs_diff_quirk_free": max_diff(free),
        "max_abs_diff_same_logits": max_diff(same_rows),
        "tu_quirk_rows": sorted(quirky),
    }
    if res["max_abs_diff"] is None:
        return "", res

    def fmt(v):
        return "-" if v is None else f"{v:.1e}"

    text = (
        f"max |Δ| TU vs jaxuq: {fmt(res['max_abs_diff'])} over {len(rows)} rows; "
        f"{fmt(res['max_abs_diff_quirk_free'])} without the {len(quirky)} rows where TU's value depends on "
        f"its per-batch sigmoid or tie order (README: deviations from TU): {sorted(quirky) or 'none'}; "
        f"TU on jaxuq's own logits: {fmt(res['max_abs_diff_same_logits'])}\n"
    )
    return text, res


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


def tu_lenet_ensemble_table(
    ckpt_paths, data_dir=None, ood_subset: int = 10_000, batch_size: int = 2048,
    test_subset: int | None = None,
) -> dict[str, float]:
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
    routine = ClassificationRoutine(
        model=ensemble,
        num_classes=10,
        loss=tnn.CrossEntropyLoss(),
        is_ensemble=True,
        eval_ood=True,
        optim_recipe=None,
    )
    root = torchvision_root(data_dir)
    try:
        dm = _DM(
            root=root,
            batch_size=batch_size,
            eval_batch_size=batch_size,
            eval_ood=True,
            num_workers=0,
            pin_memory=False,
            persistent_workers=False,
        )
        return tu_test_table(tu_trainer(), routine, dm)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def ensemble_table(module, variables, images, labels, ood_images, preprocess, batch_size: int = 2048,
                   lowering=None) -> dict[str, float]:
    """jaxuq's side of :func:`tu_lenet_ensemble_table`: a stacked ensemble (``variables`` leaves
    ``[M, ...]``) on ``images [N, H, W, C]`` (uint8) with ``ood_images`` as OOD, ``preprocess`` a
    :class:`jaxuq.data.Preprocess`, MSP criterion -> :func:`jaxuq.evaluate` with TU's complexity
    numbers (FLOPs of the first batch, all members; parameter count)."""
    import jaxuq
    from jaxuq.ensembles import apply_members, default_lowering
    from jaxuq.metrics import count_flops

    lowering = lowering or default_lowering()
    first = preprocess.eval(jnp.asarray(images[:batch_size]))
    flops = count_flops(lambda x: apply_members(module, variables, x, lowering=lowering), first)
    return jaxuq.evaluate(module, variables, (images, np.asarray(labels)), ood_data=ood_images,
                          preprocess=preprocess, batch_size=batch_size, lowering=lowering, flops=flops,
                          progress=False)


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
