"""TU's DEUP tutorial ("DEUP: Direct Epistemic Uncertainty Prediction") in JAX.

    JAXUQ_DATA_DIR=../shared/data python -m experiments.deup --out runs/deup

Part 1, synthetic walkthrough (as the tutorial): seed 0, 100 calibration samples ``N(0, 1)`` of
dimension 8 with uniform labels in 5 classes, an untrained MLP ``8 - 32 - ReLU - 5`` (torch's
default init), DEUP with ``num_folds=5, hidden_dim=32, max_epochs=30``; prints the epistemic
scores ``g(x)`` of 10 fresh samples and the base model's likelihood shape. The tensors come from
``jax.random`` (no torch here), so the numbers are not the tutorial's; tests/
test_calibration_deup_experiment.py runs TU's DEUP on these same tensors and weights.

Part 2, CIFAR-10 (the tutorial's ResNet-18 hub checkpoint and SVHN are not available here; the
closest real setup is used instead): the real ResNet-20 checkpoint
(``checkpoints/resnet_cifar/resnet20-12fca82f.th``) on the 1000 real CIFAR-10 test images of
``cifar10_heads``. DEUP (``hidden_dim=64, max_epochs=50``, TU's other defaults) is fitted on the
first half (the calibration split, like the tutorial's ``postprocess_set="val"``) and the tables
are computed on the second half. OOD set: scio's synthetic shifts of those evaluation images
(vertical flip, darker x0.5, uniform noise; ``jaxuq.data.synthetic_shifts``), pooled into one
OOD set in place of SVHN. TU's full table is printed once with the ``deup`` criterion and once
with ``msp``; only the OOD Detection group differs. A per-shift AUROC/AUPR/FPR95 table follows.
Complexity: FLOPs of the first evaluation batch (``--batch-size``, TU's is 256) and parameters.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments import _common
from experiments._common import RESNET20_CKPT, RESNET_PREPROCESS, load_cifar_heads, write_json_atomic
from jaxuq.calibration import deup_fit, deup_score
from jaxuq.data import synthetic_shifts
from jaxuq.evaluation import classification_table, predict
from jaxuq.metrics import aupr, auroc, count_flops, count_params, fpr95
from jaxuq.nn.packed import torch_uniform_init
from jaxuq.ood.criteria import deup, msp
from jaxuq.report import print_table

CKPT = RESNET20_CKPT


class TutorialMLP(nn.Module):
    """``nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))`` with
    torch's default init; ``x: [N, in_dim]`` -> logits ``[N, n_classes]``."""

    hidden: int = 32
    n_classes: int = 5

    @nn.compact
    def __call__(self, x):
        def dense(n, fan_in, name):
            init = torch_uniform_init(fan_in)
            return nn.Dense(n, kernel_init=init, bias_init=init, name=name)

        x = nn.relu(dense(self.hidden, x.shape[-1], "0")(x))
        return dense(self.n_classes, self.hidden, "2")(x)


def synthetic(seed: int = 0, n_cal: int = 100, in_dim: int = 8, n_classes: int = 5, n_test: int = 10,
              num_folds: int = 5, hidden_dim: int = 32, max_epochs: int = 30, init_params=None) -> dict:
    """Part 1 of the tutorial. ``init_params``: DEUP's ``num_folds + 1`` initial MLPs (default:
    torch's init drawn from the seed's key). Returns the tensors, the base model's variables, the
    fit and ``scores [n_test]`` / ``probs [n_test, n_classes]``."""
    k_x, k_y, k_model, k_deup, k_test = jax.random.split(jax.random.key(seed), 5)
    x_cal = jax.random.normal(k_x, (n_cal, in_dim), jnp.float32)
    y_cal = jax.random.randint(k_y, (n_cal,), 0, n_classes)
    model = TutorialMLP(32, n_classes)  # in a real use-case: a pre-trained model
    variables = model.init(k_model, x_cal[:1])
    fit = deup_fit(model.apply(variables, x_cal), y_cal, num_folds=num_folds, hidden_dim=hidden_dim,
                   max_epochs=max_epochs, key=k_deup, init_params=init_params)
    x_test = jax.random.normal(k_test, (n_test, in_dim), jnp.float32)
    z_test = model.apply(variables, x_test)
    return {
        "x_cal": np.asarray(x_cal), "y_cal": np.asarray(y_cal), "x_test": np.asarray(x_test),
        "variables": variables, "fit": fit,
        "scores": np.asarray(deup_score(fit, z_test)), "probs": np.asarray(jax.nn.softmax(z_test, -1)),
    }


def _shift_rows(z_eval, criteria: dict, z_oods: dict) -> list[dict]:
    """Per OOD shift and criterion (``{name: logits -> scores}``): AUROC / AUPR / FPR95 (ID = the
    evaluation images)."""
    rows = []
    for name, crit in criteria.items():
        s_id = crit(z_eval)
        for shift, z in z_oods.items():
            s = jnp.concatenate([s_id, crit(z)])
            is_ood = jnp.concatenate([jnp.zeros(len(z_eval), jnp.int32), jnp.ones(len(z), jnp.int32)])
            rows.append({"criterion": name, "shift": shift, "AUROC": float(auroc(s, is_ood)),
                         "AUPR": float(aupr(s, is_ood)), "FPR95": float(fpr95(s, is_ood))})
    return rows


def _print_shift_rows(rows) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="OOD detection per synthetic shift (ID: the evaluation images)")
    for c in ("criterion", "OOD set", "AUROC", "AUPR", "FPR95"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["criterion"], r["shift"], *(f"{100 * r[k]:.3f}%" for k in ("AUROC", "AUPR", "FPR95")))
    Console(width=120).print(t)


def cifar(data_dir=None, n_test: int = 1000, hidden_dim: int = 64, max_epochs: int = 50,
          num_folds: int = 5, batch_size: int = 256, seed: int = 0, model_dir=None) -> dict:
    """Part 2 on ResNet-20 / real CIFAR-10 test images (see the module docstring)."""
    _, te = load_cifar_heads(data_dir)
    if not 2 * num_folds <= n_test <= len(te["labels"]):
        raise ValueError(f"n_test must be in [{2 * num_folds}, {len(te['labels'])}]; got {n_test}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    module, variables = _common.load_model("resnet20", CKPT, data_dir, model_dir)
    images, labels = te["images"][:n_test], te["labels"][:n_test]
    half = n_test // 2
    t0 = time.perf_counter()
    z_cal = predict(module, variables, images[:half], preprocess=RESNET_PREPROCESS, batch_size=batch_size)
    z_eval = predict(module, variables, images[half:], preprocess=RESNET_PREPROCESS, batch_size=batch_size)
    shifted = synthetic_shifts(jax.random.key(seed), jnp.asarray(images[half:], jnp.float32) / 255.0)
    z_oods = {k: predict(module, variables, _common.normalize(v), batch_size=batch_size)
              for k, v in shifted.items()}
    t_inf = time.perf_counter() - t0

    t0 = time.perf_counter()
    fitted = deup_fit(z_cal, labels[:half], num_folds=num_folds, hidden_dim=hidden_dim,
                      max_epochs=max_epochs, key=jax.random.key(seed))
    jax.block_until_ready(fitted["predictor"])
    t_fit = time.perf_counter() - t0

    z_ood = np.concatenate(list(z_oods.values()))
    first = _common.normalize(images[half:][:batch_size].astype(np.float32) / 255.0)
    cplx = {"flops": count_flops(lambda x: module.apply(variables, x), first),
            "params": count_params(variables["params"])}
    tables = {}
    criteria = {"deup": lambda z: deup(deup_score(fitted, z)), "msp": msp}
    for name, crit in criteria.items():
        scores = jnp.concatenate([crit(z_eval), crit(z_ood)])
        tables[name] = classification_table(logits=z_eval, labels=labels[half:], ood_scores=scores,
                                            ood_probs=jax.nn.softmax(jnp.asarray(z_ood), -1), **cplx)
    return {
        "model": "resnet20", "checkpoint": CKPT, "n_cal": half, "n_eval": n_test - half,
        "n_ood": int(len(z_ood)), "ood_sets": list(z_oods), "hidden_dim": hidden_dim,
        "max_epochs": max_epochs, "num_folds": num_folds, "seed": seed,
        "tables": tables, "per_shift": _shift_rows(z_eval, criteria, z_oods),
        "inference_seconds": t_inf, "deup_fit_seconds": t_fit,
    }


def main(argv=None) -> int:
    ap = _common.experiment_parser(__doc__, "runs/deup", CKPT)
    ap.add_argument("--n-test", type=int, default=1000,
                    help="test images used (<= 1000): first half calibrates DEUP, second half evaluates")
    ap.add_argument("--hidden-dim", type=int, default=64)
    ap.add_argument("--max-epochs", type=int, default=50, help="DEUP epochs on CIFAR (the tutorial's 50)")
    ap.add_argument("--num-folds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    syn = synthetic(seed=args.seed)
    print("Epistemic scores g(x):", np.array2string(syn["scores"], precision=4, separator=", "))
    print("Base-model likelihood shape:", syn["probs"].shape)

    try:
        res = cifar(args.data_dir, args.n_test, args.hidden_dim, args.max_epochs, args.num_folds,
                    args.batch_size, args.seed, args.model)
    except (FileNotFoundError, KeyError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\nResNet-20, DEUP fitted on {res['n_cal']} real CIFAR-10 test images; evaluated on the other "
          f"{res['n_eval']}; OOD: {', '.join(res['ood_sets'])} ({res['n_ood']} images)")
    print("\n== OOD criterion: deup ==")
    print_table(res["tables"]["deup"])
    print("\n== OOD criterion: msp (MaxSoftmaxCriterion) ==")
    print_table(res["tables"]["msp"])
    _print_shift_rows(res["per_shift"])
    res["synthetic"] = {"scores": syn["scores"].tolist(), "probs_shape": list(syn["probs"].shape)}
    res["wall_seconds"] = time.perf_counter() - t_start
    out = Path(args.out)
    write_json_atomic(out / "results.json", res, indent=2)
    print(f"results.json written to {out} ({res['wall_seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
