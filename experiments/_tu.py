"""The torch-uncertainty 0.13.0 side of the experiments: the torch twin of a checkpoint, TU's test
routine driven on given tensors (:func:`tu_test`), a quiet CPU ``TUTrainer`` and its test table, and
TU's own table of a deep ensemble of LeNet checkpoints (:func:`tu_lenet_ensemble_table`).

torch, lightning and torch-uncertainty are imported inside the functions: importing this module needs
none of them (``make run`` installs no TU).
"""

from __future__ import annotations

import gzip
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from converters.io import read_state_dict
from experiments._inputs import checkpoint_of
from jaxuq._env import data_dir as _data_dir
from jaxuq._env import data_file

__all__ = [
    "torch_loader", "torch_model_of", "torchvision_root", "tu_cqr", "tu_lenet_ensemble_table",
    "tu_regression_fit", "tu_regression_table", "tu_test", "tu_test_table", "tu_trainer",
]  # fmt: skip


def torch_model_of(name: str, data_dir=None):
    """The torch twin of model ``name`` (``converters.torch_refs``) with its checkpoint's weights, in
    eval mode: what TU's side of an experiment runs."""
    import torch

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


def torchvision_root(data_dir=None, datasets=("MNIST", "FashionMNIST")) -> Path:
    """A temporary folder in torchvision's layout (``<name>/raw/*-ubyte``, decompressed) built from the
    data folder's ``<name>/raw/*.gz``: what TU's datamodules read with ``download=False``. The caller
    removes it (``shutil.rmtree``)."""
    tmp = Path(tempfile.mkdtemp(prefix="jaxuq_torchvision_"))
    for name in datasets:
        raw = tmp / name / "raw"
        raw.mkdir(parents=True)
        for f in (_data_dir(data_dir) / name / "raw").glob("*.gz"):
            with gzip.open(f, "rb") as fi, open(raw / f.name[:-3], "wb") as fo:
                shutil.copyfileobj(fi, fo)
    return tmp


def _tu_lenet_ensemble_routine(ckpt_paths):
    """TU's ``deep_ensembles`` of ``lenet(1, 10)`` members loaded from Lightning ``.ckpt`` files
    (``model.`` stripped) in a ``ClassificationRoutine(is_ensemble=True, eval_ood=True)`` (MSP)."""
    import torch
    from torch import nn as tnn
    from torch_uncertainty.methods import deep_ensembles
    from torch_uncertainty.models.classification import lenet
    from torch_uncertainty.routines import ClassificationRoutine

    members = []
    for p in ckpt_paths:
        sd = torch.load(p, map_location="cpu", weights_only=True)["state_dict"]
        m = lenet(in_channels=1, num_classes=10)
        m.load_state_dict({k.replace("model.", "", 1): v for k, v in sd.items()})
        members.append(m)
    ensemble = deep_ensembles(members, num_estimators=None, task="classification")
    return ClassificationRoutine(model=ensemble, num_classes=10, loss=tnn.CrossEntropyLoss(),
                                 is_ensemble=True, eval_ood=True, optim_recipe=None)


def tu_lenet_ensemble_table(
    ckpt_paths, data_dir=None, ood_subset: int = 10_000, batch_size: int = 2048,
    test_subset: int | None = None,
) -> dict[str, float]:
    """TU 0.13.0's own test table for a deep ensemble of ``lenet(1, 10)`` checkpoints, as the "DE -> PE"
    tutorial builds it (:func:`_tu_lenet_ensemble_routine`), ``TUTrainer(accelerator="cpu").test`` on
    ``MNISTDataModule(eval_ood=True)`` with the first ``ood_subset`` FashionMNIST *train* images as OOD
    (``test_subset``: the first k MNIST test images only). Returns ``{key: float}`` (TU's keys)."""
    from torch.utils.data import Subset
    from torch_uncertainty.datamodules import MNISTDataModule

    class _DM(MNISTDataModule):
        def setup(self, stage=None):
            super().setup(stage)
            if stage in ("test", None):
                self.ood = Subset(self.ood, range(ood_subset))
                if test_subset is not None:
                    self.test = Subset(self.test, range(test_subset))

    routine = _tu_lenet_ensemble_routine(ckpt_paths)
    root = torchvision_root(data_dir)
    try:
        dm = _DM(root=root, batch_size=batch_size, eval_batch_size=batch_size, eval_ood=True, num_workers=0,
                 pin_memory=False, persistent_workers=False)
        return tu_test_table(tu_trainer(), routine, dm)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------------------- regression
def tu_regression_fit(model, x, y, loss, steps: int, lr: float, family: str | None = None) -> list[float]:
    """TU's ``RegressionRoutine.training_step`` (``Independent(dist(**out), 1)`` on ``y.unsqueeze(-1)``
    for a ``family`` head) full-batch with ``torch.optim.Adam(lr)`` for ``steps`` steps, in place; the
    per-step losses."""
    import torch
    from torch.distributions import Independent
    from torch_uncertainty.utils.distributions import get_dist_class

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).unsqueeze(-1)
    model.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        out = model(xt)
        value = loss(Independent(get_dist_class(family)(**out), 1) if family else out, yt)
        value.backward()
        opt.step()
        losses.append(value.item())
    return losses


def tu_regression_table(models: list, x, y, family: str | None, batch_size: int = 256) -> dict[str, float]:
    """TU 0.13.0's ``RegressionRoutine`` test table (``test_step`` per batch, then its collections'
    ``compute()``) of one torch model or the ``deep_ensembles`` of several, on ``x [N, 1]``, ``y [N]``."""
    import torch
    from torch_uncertainty.methods import deep_ensembles
    from torch_uncertainty.routines import RegressionRoutine

    many = len(models) > 1
    model = deep_ensembles(models, task="regression", probabilistic=family is not None,
                           reset_model_parameters=False) if many else models[0]
    routine = RegressionRoutine(model, output_dim=1, dist_family=family, is_ensemble=many).eval()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            routine.test_step((xt[i:i + batch_size], yt[i:i + batch_size]), i // batch_size)
    res = routine.test_metrics.compute()
    if family is not None:
        res |= routine.test_prob_metrics.compute()
    return {k: float(v) for k, v in res.items()}


def tu_cqr(alpha: float, cal_quantiles, cal_y, test_quantiles) -> tuple[float, np.ndarray]:
    """TU's ``ConformalRegCQR`` fitted on fixed calibration quantiles ``[N, 2]`` (a lookup model):
    ``(q_hat, test intervals [M, 2])``."""
    import torch
    from torch_uncertainty.post_processing import ConformalRegCQR

    table = torch.from_numpy(np.concatenate([cal_quantiles, test_quantiles]).astype(np.float32))

    class Lookup(torch.nn.Module):
        def forward(self, idx):
            return table[idx[:, 0].long()]

    cqr = ConformalRegCQR(alpha=alpha, model=Lookup())
    n = len(cal_quantiles)
    cqr.fit(torch_loader(np.arange(n, dtype=np.float32)[:, None], cal_y.astype(np.float32), batch_size=256))
    test_idx = torch.arange(n, n + len(test_quantiles), dtype=torch.float32)[:, None]
    return float(cqr.q_hat), cqr(test_idx).numpy()
