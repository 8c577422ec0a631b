"""LeNet on MNIST with TU's tutorial recipe, and (``--compare-tu``) the same run in torch-uncertainty.

Recipe (TU tutorial "From Deep Ensembles to Packed-Ensembles", as the lead's brief fixes it):
SGD lr 0.05 (no momentum, no weight decay, constant LR -- the tutorial's cosine is dropped by
Lightning), batch 128, 3 epochs, RandomCrop(28, padding=4) + Normalize(0.1307, 0.3081), cross-entropy,
test on the 10k MNIST test images. Weights are drawn from torch's default distribution
(U(+-1/sqrt(fan_in)) for weights and biases) with JAX's RNG, so both sides start from the same law.

The TU side is TU 0.13.0's ``lenet`` + ``ClassificationRoutine`` + ``TUTrainer`` (Lightning, CPU) on
TU's ``MNISTDataModule`` (from a temporary, decompressed copy of ``MNIST/raw``).

    python experiments/train_lenet_mnist.py --compare-tu            # 3 seeds each side
    python experiments/train_lenet_mnist.py --seeds 0 --epochs 1 --train-subset 10000 --compare-tu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxuq._io import write_text_atomic
from jaxuq.data import MNIST_NORM, Preprocess, load_mnist
from jaxuq.evaluation import predict
from jaxuq.train import TrainConfig, cross_entropy, fit, torch_sgd

REPO = Path(__file__).resolve().parent.parent


def make_lenet():
    from jaxuq import models

    return models.get("lenet", num_classes=10, in_channels=1), "jaxuq.models lenet"


def torch_default_init(params, key):
    """Redraw every kernel and bias from torch's default U(+-1/sqrt(fan_in)) (fan_in of the layer)."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    fan_in = {}
    for path, leaf in flat:
        if path[-1].key == "kernel":
            fan_in[tuple(path[:-1])] = int(np.prod(leaf.shape[:-1]))
    leaves = []
    for i, (path, leaf) in enumerate(flat):
        bound = 1.0 / np.sqrt(fan_in[tuple(path[:-1])])
        leaves.append(jax.random.uniform(jax.random.fold_in(key, i), leaf.shape, leaf.dtype, -bound, bound))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), leaves)


def run_jaxuq(seed, epochs, batch_size, lr, train, test, quiet=True):
    from jaxuq.train import create_train_state

    model, model_name = make_lenet()
    tx = torch_sgd(lr)
    state = create_train_state(model, tx, jax.random.key(seed), jnp.zeros((1, 28, 28, 1)))
    params = torch_default_init(state.params, jax.random.key(10_000 + seed))
    state = state.replace(params=params, opt_state=tx.init(params))
    pre = Preprocess(*MNIST_NORM, crop=28, padding=4)
    t0 = time.perf_counter()
    cfg = TrainConfig(optimizer=tx, epochs=epochs, batch_size=batch_size, preprocess=pre, seed=seed,
                      quiet=quiet, steps_per_call=10_000)
    res = fit(model, train, cfg, init_state=state)
    train_s = time.perf_counter() - t0
    logits = predict(model, res.state.variables(), test[0], preprocess=pre, batch_size=2048)
    ev = {"accuracy": float((logits.argmax(-1) == np.asarray(test[1])).mean()),
          "loss": float(cross_entropy(jnp.asarray(logits), jnp.asarray(test[1])))}
    n_img = epochs * len(train[0])
    return {
        "seed": seed,
        "test_acc": ev["accuracy"],
        "test_loss": ev["loss"],
        "train_seconds": train_s,
        "images_per_s": n_img / train_s,
        "model": model_name,
        "final_train_loss": res.history[-1]["train_loss"],
    }


def run_tu(seed, epochs, batch_size, lr, train_subset, root):
    import lightning
    import torch
    from torch import nn as tnn
    from torch.utils.data import Subset
    from torch_uncertainty import TUTrainer
    from torch_uncertainty.datamodules import MNISTDataModule
    from torch_uncertainty.models.classification import lenet
    from torch_uncertainty.routines import ClassificationRoutine

    class _DM(MNISTDataModule):
        def setup(self, stage=None):
            super().setup(stage)
            if train_subset and stage in ("fit", None):
                self.train = Subset(self.train, range(train_subset))

    lightning.seed_everything(seed, verbose=False)
    dm = _DM(
        root=root,
        batch_size=batch_size,
        eval_batch_size=2048,
        num_workers=0,
        pin_memory=False,
        persistent_workers=False,
    )
    model = lenet(in_channels=1, num_classes=10)
    routine = ClassificationRoutine(
        model=model,
        num_classes=10,
        loss=tnn.CrossEntropyLoss(),
        optim_recipe=torch.optim.SGD(model.parameters(), lr=lr),
    )
    trainer = TUTrainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    t0 = time.perf_counter()
    trainer.fit(routine, datamodule=dm)
    train_s = time.perf_counter() - t0
    out = trainer.test(routine, datamodule=dm, verbose=False)[0]
    n_train = train_subset or 60_000
    return {
        "seed": seed,
        "test_acc": float(out["test/cls/Acc"]),
        "test_loss": float(out.get("test/cls/NLL", np.nan)),
        "train_seconds": train_s,
        "images_per_s": epochs * n_train / train_s,
    }


def _summary(runs):
    accs = np.array([r["test_acc"] for r in runs])
    return {
        "mean_acc": float(accs.mean()),
        "std_acc": float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
        "runs": runs,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--train-subset", type=int, default=0, help="first k training images (0 = all 60k)")
    p.add_argument("--compare-tu", action="store_true")
    p.add_argument("--out", default=str(REPO / "bench/results/lenet_mnist_parity.json"))
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.train_subset < 0:
        p.error("--epochs and --batch-size must be >= 1, --train-subset >= 0")

    x, y = load_mnist("train", args.data_dir)
    test = load_mnist("test", args.data_dir)
    if args.train_subset:
        x, y = x[: args.train_subset], y[: args.train_subset]
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "jax_backend": jax.default_backend(),
        },
        "recipe": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "optimizer": "SGD",
            "augment": "RandomCrop(28, padding=4)",
            "normalize": MNIST_NORM,
            "train_images": len(x),
            "test_images": len(test[0]),
        },
        "versions": {"jax": jax.__version__},
    }
    jx = []
    for s in args.seeds:
        r = run_jaxuq(s, args.epochs, args.batch_size, args.lr, (x, y), test, quiet=args.quiet)
        print(
            f"jaxuq seed {s}: test acc {100 * r['test_acc']:.2f} %  ({r['train_seconds']:.0f} s, "
            f"{r['images_per_s']:.0f} img/s)",
            flush=True,
        )
        jx.append(r)
    result["jaxuq"] = _summary(jx)
    if args.compare_tu:
        import torch
        import torch_uncertainty

        result["versions"].update(
            torch=torch.__version__,
            torch_uncertainty=torch_uncertainty.__version__
            if hasattr(torch_uncertainty, "__version__")
            else "0.13.0",
        )
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        from experiments._common import torchvision_root

        root = torchvision_root(args.data_dir, ("MNIST",))
        try:
            tu = []
            for s in args.seeds:
                r = run_tu(s, args.epochs, args.batch_size, args.lr, args.train_subset, root)
                print(
                    f"TU    seed {s}: test acc {100 * r['test_acc']:.2f} %  ({r['train_seconds']:.0f} s, "
                    f"{r['images_per_s']:.0f} img/s)",
                    flush=True,
                )
                tu.append(r)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        result["tu"] = _summary(tu)
        result["tu"]["how"] = (
            "TU 0.13.0 lenet + ClassificationRoutine + TUTrainer (Lightning, CPU), MNISTDataModule"
        )
        result["mean_acc_diff_points"] = 100 * (result["jaxuq"]["mean_acc"] - result["tu"]["mean_acc"])
        print(
            f"mean test accuracy: jaxuq {100 * result['jaxuq']['mean_acc']:.2f} %, "
            f"TU {100 * result['tu']['mean_acc']:.2f} %, diff {result['mean_acc_diff_points']:+.2f} points"
        )
    if not args.no_write:
        out = write_text_atomic(args.out, json.dumps(result, indent=2, default=float))
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
