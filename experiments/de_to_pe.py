"""TU tutorial "From Deep Ensembles to Packed-Ensembles" (LeNet / MNIST, FashionMNIST as OOD) in jaxuq.

Three models, each trained with TU's tutorial recipe (SGD lr 0.05, no momentum, constant LR,
RandomCrop(28, 4) + Normalize(0.1307, 0.3081), batch 512) and evaluated on the MNIST test set with the
first FashionMNIST images as OOD (MSP criterion), printing TU's tables:

1. a single LeNet;
2. a deep ensemble of ``--de-members`` LeNets, trained like TU (CE over the ``(m b)`` rows against
   ``RepeatTarget`` -> ``tu_gradient_scaling=True``, LR x M), all members in one jitted step;
3. a Packed-Ensemble ``packed_lenet(M=4, alpha=2)`` trained with CE on ``repeat_target`` (LR x 4).

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

from jaxuq import ensembles as E  # noqa: E402
from jaxuq.data import MNIST_NORM, Preprocess, load_fashion_mnist, load_mnist  # noqa: E402
from jaxuq.evaluate import classification_table  # noqa: E402
from jaxuq.models.packed_lenet import packed_lenet  # noqa: E402
from jaxuq.nn.packed import repeat_target, split_members  # noqa: E402
from jaxuq.report import print_table  # noqa: E402


def _lenet():
    """TU ``lenet(1, 10)``: ``jaxuq.models`` "lenet" if present, else the identical packed M=1, alpha=1."""
    try:
        from jaxuq import models

        return models.get("lenet", in_channels=1, num_classes=10)
    except (ImportError, AttributeError, KeyError, ValueError):
        return packed_lenet(1, 10, num_estimators=1, alpha=1)


def train(module, num_members, images, labels, *, epochs, batch_size, lr, key, loss_fn=None,
          tu_gradient_scaling=False, members=None):
    """Train a stacked ensemble (``num_members`` copies of ``module``) on uint8 ``images [N,28,28,1]``."""
    pre = Preprocess(mean=MNIST_NORM[0], std=MNIST_NORM[1], crop=28, padding=4)
    k_init, k_data = jax.random.split(key)
    tx = optax.sgd(lr)
    state = E.init_train_state(module, tx, k_init, num_members, jnp.zeros((1, 28, 28, 1)))
    step = E.make_train_step(module, tx, members=members, tu_gradient_scaling=tu_gradient_scaling,
                             loss_fn=loss_fn)
    augment = jax.jit(pre.train)
    xd, yd = jnp.asarray(images), jnp.asarray(labels)
    n = xd.shape[0]
    for epoch in range(epochs):
        ke = jax.random.fold_in(k_data, epoch)
        order = jax.random.permutation(ke, n)
        for b in range(-(-n // batch_size)):  # torch DataLoader keeps the last partial batch
            idx = order[b * batch_size : (b + 1) * batch_size]
            xb = augment(jax.random.fold_in(ke, b + 1), xd[idx])
            state, loss = step(state, xb, yd[idx])
        print(f"  epoch {epoch + 1}/{epochs}: loss per member {np.round(np.asarray(loss), 4).tolist()}",
              flush=True)
    return state


def predict(fn, variables, images, batch_size=2048):
    pre = Preprocess(mean=MNIST_NORM[0], std=MNIST_NORM[1])
    outs = [fn(variables, pre.eval(jnp.asarray(images[i : i + batch_size])))
            for i in range(0, images.shape[0], batch_size)]
    return np.concatenate([np.asarray(o) for o in outs], axis=1)  # [M, N, C]


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
    key = jax.random.key(args.seed)
    results, timings = {}, {}
    lenet = _lenet()

    def nparams(variables, m_axis):
        return int(sum(np.prod(a.shape[1:]) * (a.shape[0] if m_axis else 1)
                       for a in jax.tree.leaves(variables)))

    # 1. single LeNet
    t0 = time.perf_counter()
    st = train(lenet, 1, xtr, ytr, epochs=args.epochs, batch_size=args.batch_size, lr=0.05,
               key=jax.random.fold_in(key, 1), members=args.members)
    timings["single"] = time.perf_counter() - t0
    ev = E.make_eval_fn(lenet, members=args.members)
    v = {"params": st.params}
    results["single"] = evaluate("Single LeNet", predict(ev, v, xte), yte, predict(ev, v, xood),
                                 nparams(st.params, False))

    # 2. deep ensemble, TU-style objective and LR x M
    m = args.de_members
    t0 = time.perf_counter()
    st = train(lenet, m, xtr, ytr, epochs=args.epochs, batch_size=args.batch_size, lr=0.05 * m,
               key=jax.random.fold_in(key, 2), tu_gradient_scaling=True, members=args.members)
    timings["deep_ensemble"] = time.perf_counter() - t0
    v = {"params": st.params}
    results["deep_ensemble"] = evaluate(f"Deep ensemble of {m} LeNets", predict(ev, v, xte), yte,
                                        predict(ev, v, xood), nparams(st.params, True))

    # 3. Packed-Ensemble, M = 4, alpha = 2: one model, CE on RepeatTarget(4), LR x 4
    pm = packed_lenet(1, 10, num_estimators=4, alpha=2)

    def packed_loss(logits, y):
        return optax.softmax_cross_entropy_with_integer_labels(logits, repeat_target(y, 4)).mean()

    t0 = time.perf_counter()
    st = train(pm, 1, xtr, ytr, epochs=args.epochs, batch_size=args.batch_size, lr=0.05 * 4,
               key=jax.random.fold_in(key, 3), loss_fn=packed_loss, members=args.members)
    timings["packed"] = time.perf_counter() - t0
    pv = {"params": jax.tree.map(lambda a: a[0], st.params)}
    pev = jax.jit(lambda v_, x: split_members(pm.apply(v_, x), 4))
    results["packed"] = evaluate("Packed-Ensemble (M=4, alpha=2)", predict(pev, pv, xte), yte,
                                 predict(pev, pv, xood), nparams(st.params, False))

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
