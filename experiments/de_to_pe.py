"""TU tutorial "From Deep Ensembles to Packed-Ensembles" (LeNet / MNIST, FashionMNIST as OOD) in jaxuq.

Three models, each trained with TU's tutorial recipe (SGD lr 0.05, no momentum, constant LR,
RandomCrop(28, 4) + Normalize(0.1307, 0.3081), batch 512) and evaluated on the MNIST test set with the
first FashionMNIST images as OOD (MSP criterion), printing TU's tables:

1. a single LeNet;
2. a deep ensemble of ``--de-members`` LeNets, trained like TU (CE over the ``(m b)`` rows against
   ``RepeatTarget`` -> ``tu_gradient_scaling=True``, LR x M), all members in one jitted step;
3. a Packed-Ensemble ``packed_lenet(M=4, alpha=2)`` trained with CE on ``RepeatTarget(4)`` (LR x 4).

All three are trained by the one engine, ``jaxuq.train.fit``.

The default size is CPU-bounded (20,000 training images, 2 epochs); ``--full`` runs the tutorial's
60,000 images x 3 epochs. Real data only (``JAXUQ_DATA_DIR`` or ``--data-dir``).

    python experiments/de_to_pe.py                    # CPU-sized
    python experiments/de_to_pe.py --full --de-members 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from jaxuq.evaluate import classification_table  # noqa: E402

from jaxuq.data import MNIST_NORM, Preprocess, load_fashion_mnist, load_mnist  # noqa: E402
from jaxuq.ensembles import default_members  # noqa: E402
from jaxuq.evaluation import predict
from jaxuq.models.packed_lenet import packed_lenet  # noqa: E402
from jaxuq.report import print_table  # noqa: E402
from jaxuq.train import RepeatTarget, TrainConfig, fit  # noqa: E402

PRE = Preprocess(mean=MNIST_NORM[0], std=MNIST_NORM[1], crop=28, padding=4)


def _lenet():
    """TU ``lenet(1, 10)``: ``jaxuq.models`` "lenet" if present, else the identical packed M=1, alpha=1."""
    try:
        from jaxuq import models

        return models.get("lenet", in_channels=1, num_classes=10)
    except (ImportError, AttributeError, KeyError, ValueError):
        return packed_lenet(1, 10, num_estimators=1, alpha=1)


def train(module, images, labels, *, epochs, batch_size, lr, seed, members=None, **config):
    """Train with ``jaxuq.train.fit`` (TU's tutorial recipe) on uint8 ``images [N,28,28,1]``;
    ``config``: more TrainConfig keys (``num_members``, ``tu_gradient_scaling``, ``format_batch``)."""
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer=optax.sgd(lr), seed=seed,
                      preprocess=PRE, members=members, member_shuffle=False, **config)
    return fit(module, (images, labels), cfg).state


def _logits(module, state, images, members=None):
    """Logits ``[M, N, C]`` (one model: M = 1; Packed: its M members)."""
    out = predict(module, state.variables(), images, preprocess=PRE, batch_size=2048, members=members)
    return out if out.ndim == 3 else out[None]


def evaluate(name, logits_id, labels, logits_ood, n_params):
    p_id = jax.nn.softmax(jnp.asarray(logits_id), -1)
    p_ood = jax.nn.softmax(jnp.asarray(logits_ood), -1)
    msp = lambda p: -jnp.max(jnp.mean(p, 0), -1)  # noqa: E731  TU's default MSP criterion
    res = classification_table(
        probs=p_id, labels=labels, ood_scores=jnp.concatenate([msp(p_id), msp(p_ood)]), ood_probs=p_ood,
        params=n_params,
    )
    print(f"\n== {name} ==")
    print_table(res)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--full", action="store_true", help="tutorial size: 60,000 images, 3 epochs")
    ap.add_argument("--train-subset", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--test-subset", type=int, default=10_000)
    ap.add_argument("--ood-subset", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--de-members", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--members", choices=["vmap", "map", "unroll"], default=None,
                    help="member lowering (default: per backend)")
    ap.add_argument("--json", default=None, help="write the three tables to this JSON file")
    args = ap.parse_args(argv)
    if args.full:
        args.train_subset, args.epochs = 60_000, 3

    xtr, ytr = load_mnist("train", data_dir=args.data_dir)
    xte, yte = load_mnist("test", data_dir=args.data_dir)
    xood, _ = load_fashion_mnist("train", data_dir=args.data_dir)
    xtr, ytr = xtr[: args.train_subset], ytr[: args.train_subset].astype(np.int32)
    xte, yte = xte[: args.test_subset], yte[: args.test_subset]
    xood = xood[: args.ood_subset]
    print(f"MNIST train {xtr.shape[0]} x {args.epochs} epochs, test {xte.shape[0]}, "
          f"FashionMNIST OOD {xood.shape[0]}, backend {jax.default_backend()}")
    results, timings = {}, {}
    lenet = _lenet()
    kw = dict(epochs=args.epochs, batch_size=args.batch_size, members=args.members)

    def nparams(state):
        return int(sum(a.size for a in jax.tree.leaves(state.params)))

    # 1. single LeNet
    t0 = time.perf_counter()
    st = train(lenet, xtr, ytr, lr=0.05, seed=10 * args.seed + 1, **kw)
    timings["single"] = time.perf_counter() - t0
    results["single"] = evaluate("Single LeNet", _logits(lenet, st, xte), yte, _logits(lenet, st, xood),
                                 nparams(st))

    # 2. deep ensemble, TU-style objective (CE over the (m b) rows of one shared batch) and LR x M
    m = args.de_members
    lowering = args.members or default_members()
    t0 = time.perf_counter()
    st = train(lenet, xtr, ytr, lr=0.05 * m, seed=10 * args.seed + 2, num_members=m, tu_gradient_scaling=True,
               **kw)
    timings["deep_ensemble"] = time.perf_counter() - t0
    logits_id, logits_ood = _logits(lenet, st, xte, lowering), _logits(lenet, st, xood, lowering)
    name = f"Deep ensemble of {m} LeNets"
    results["deep_ensemble"] = evaluate(name, logits_id, yte, logits_ood, nparams(st))

    # 3. Packed-Ensemble, M = 4, alpha = 2: one model, CE on RepeatTarget(4), LR x 4
    pm = packed_lenet(1, 10, num_estimators=4, alpha=2)
    t0 = time.perf_counter()
    st = train(pm, xtr, ytr, lr=0.05 * 4, seed=10 * args.seed + 3, format_batch=RepeatTarget(4), **kw)
    timings["packed"] = time.perf_counter() - t0
    results["packed"] = evaluate("Packed-Ensemble (M=4, alpha=2)", _logits(pm, st, xte), yte,
                                 _logits(pm, st, xood), nparams(st))

    keys = ["test/cls/Acc", "test/cls/NLL", "test/cal/ECE", "ood/AUROC", "ood/FPR95", "test/cplx/params"]
    print("\n| model | " + " | ".join(k.split("/")[-1] for k in keys) + " | train s |")
    print("|---" * (len(keys) + 2) + "|")
    for name, res in results.items():
        print(f"| {name} | " + " | ".join(
            f"{int(res[k]):,}" if k.endswith("params") else f"{res.get(k, float('nan')):.4g}" for k in keys)
              + f" | {timings[name]:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "train_s": timings},
                                              indent=2, default=float))
    return results


if __name__ == "__main__":
    main()
