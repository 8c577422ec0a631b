"""The torch-uncertainty 0.13.0 side of the MNIST experiments (``de_to_pe``, ``train_lenet_mnist``).

TU's own objects run the tutorial: ``TUTrainer`` + ``ClassificationRoutine`` + ``MNISTDataModule`` (CPU)
on a temporary, decompressed copy of ``MNIST/raw`` and ``FashionMNIST/raw`` in torchvision's layout.
torch is imported inside the functions only: importing this module needs no torch.
"""

from __future__ import annotations

import shutil
import time
import warnings

from experiments._tu import torchvision_root, tu_test_table, tu_trainer

SCHEDULER_NOTE = (
    "The tutorial's optim_recipe returns {'optimizer': SGD, 'scheduler': CosineAnnealingLR(T_max=10)}; "
    "Lightning 2.6 reads only 'lr_scheduler' and drops the unknown key with a warning "
    "(lightning/pytorch/core/optimizer.py, _configure_optimizers), so the LR stays constant. The TU side "
    "runs that very dict; jaxuq uses a constant LR."
)
SUBSTITUTED = [
    "CPU instead of the tutorial's GPU, num_workers=0 instead of 8/4",
    "TU's MNISTDataModule instead of the tutorial's hand-built DataLoaders (same transforms); its "
    "FashionMNIST OOD set (all 60,000 train images) subset to the tutorial's first 10,000",
    "TU's lenet / packed_lenet factories instead of the tutorial's LeNet / PackedLeNet classes (same "
    "layers, parameters and torch-default initialisation)",
    "no per-epoch validation on the test set (it does not change training)",
    "hub: a local stand-in of ENSTA-U2IS/tutorial-models trained by TU 0.13.0 here (see the data README)",
]


def _datamodule(root, config: dict, eval_ood: bool):
    from torch.utils.data import Subset
    from torch_uncertainty.datamodules import MNISTDataModule

    n_tr, n_te, n_ood = config["train_images"], config["test_images"], config.get("ood_images")

    class _DM(MNISTDataModule):  # the tutorial's subsets (first k images of each set)
        def setup(self, stage=None):
            super().setup(stage)
            if stage in ("fit", None):
                self.train = Subset(self.train, range(n_tr))
            if stage in ("test", None):
                self.test = Subset(self.test, range(n_te))
                if eval_ood:
                    self.ood = Subset(self.ood, range(n_ood))

    return _DM(root=root, batch_size=config["batch_size"], eval_batch_size=config["eval_batch_size"],
               eval_ood=eval_ood, num_workers=0, pin_memory=False, persistent_workers=False)


def optim_recipe(model, lr: float, lr_mult: float = 1.0):
    """The tutorial's ``optim_recipe`` (base LR 0.05 there), returned dict and all."""
    import torch

    optimizer = torch.optim.SGD(model.parameters(), lr=lr * lr_mult)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    return {"optimizer": optimizer, "scheduler": scheduler}


def _model_and_routine(name: str, config: dict, eval_ood: bool):
    from torch import nn
    from torch_uncertainty.methods import deep_ensembles  # 0.13.0 (the tutorial: .models)
    from torch_uncertainty.models.classification import lenet, packed_lenet
    from torch_uncertainty.routines import ClassificationRoutine
    from torch_uncertainty.transforms import RepeatTarget

    lr = config["lr"]
    kw = {"num_classes": 10, "loss": nn.CrossEntropyLoss(), "eval_ood": eval_ood}
    if name == "single":
        model = lenet(in_channels=1, num_classes=10)
        return ClassificationRoutine(model=model, optim_recipe=optim_recipe(model, lr), **kw)
    if name == "de":
        m = config["de_members"]
        model = deep_ensembles(lenet(in_channels=1, num_classes=10), num_estimators=m, task="classification",
                               reset_model_parameters=True)
        return ClassificationRoutine(model=model, is_ensemble=True, format_batch_fn=RepeatTarget(m),
                                     optim_recipe=optim_recipe(model, lr, float(m)), **kw)
    if name == "packed":
        m = config["packed_members"]
        model = packed_lenet(1, 10, num_estimators=m, alpha=config["alpha"], gamma=config["gamma"])
        return ClassificationRoutine(model=model, is_ensemble=True, format_batch_fn=RepeatTarget(m),
                                     optim_recipe=optim_recipe(model, lr, float(m)), **kw)
    raise ValueError(f"unknown model {name!r}")


def run_tu(name: str, config: dict, seed: int, root, eval_ood: bool = True) -> dict:
    """Train and test model ``name`` with TU: ``{"seed", "train_s", "table"}`` (TU's metric keys)."""
    import lightning

    lightning.seed_everything(seed, verbose=False)
    dm = _datamodule(root, config, eval_ood)
    routine = _model_and_routine(name, config, eval_ood)
    trainer = tu_trainer(max_epochs=config["epochs"], num_sanity_val_steps=0, limit_val_batches=0)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(routine, datamodule=dm)
    train_s = time.perf_counter() - t0
    return {"seed": seed, "train_s": train_s, "table": tu_test_table(trainer, routine, dm)}


def run_tu_models(config: dict, seeds: list[int], eval_ood: bool = True) -> dict:
    """``{model: [run_tu(...) for seed]}`` for ``config["models"]``; progress printed per run."""
    out = {}
    root = torchvision_root(config["data_dir"])
    try:
        for name in config["models"]:
            out[name] = []
            for s in seeds:
                r = run_tu(name, config, s, root, eval_ood)
                print(f"TU {name} seed {s}: acc {100 * r['table']['test/cls/Acc']:.2f} % "
                      f"({r['train_s']:.0f} s)", flush=True)
                out[name].append(r)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out
