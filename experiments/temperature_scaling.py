"""TU's temperature-scaling tutorial, in JAX, on a real CIFAR-10 ResNet-20 and real images.

    JAXUQ_DATA_DIR=../shared/data python -m experiments.temperature_scaling --out runs/ts

Model: ``checkpoints/resnet_cifar/resnet20-12fca82f.th`` (preprocessing x/255, mean (0.485, 0.456,
0.406), std (0.229, 0.224, 0.225)). Two calibration protocols are reported:

- ``train``: fit T on real *training* images (``cifar10_heads/train_first1000x5.npz``), evaluate on
  ``test_first1000.npz``. The model fits its training images almost perfectly (99.8 % top-1), so the
  fitted temperature there reflects training-set confidence, not test-set confidence.
- ``test-split``: TU's tutorial protocol (it splits the test set into a calibration part and an
  evaluation part): the first half of ``test_first1000`` calibrates, the second half evaluates.

For each: ECE (TU's 15-bin ECE) before/after, NLL, accuracy (with its standard error), the fitted
temperature with TU's optimiser (``method="tu"``, torch-LBFGS port) and the converged optimum
(``method="exact"``); reliability diagrams before/after are written to ``--out``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jax
import numpy as np

from experiments import _common
from experiments._common import RESNET20_CKPT, RESNET_PREPROCESS, load_cifar_heads, write_json_atomic
from jaxuq.calibration import temperature_apply, temperature_fit
from jaxuq.evaluation import predict
from jaxuq.metrics import accuracy, ece, nll
from jaxuq.report.plots import reliability_diagram

CKPT = RESNET20_CKPT


def load_model(data_dir, model_dir=None):
    """resnet20 as ``(module, variables)`` (see ``experiments._common.load_model``)."""
    return _common.load_model("resnet20", CKPT, data_dir, model_dir)


def _row(name, z_cal, y_cal, z_test, y_test, out: Path):
    t0 = time.perf_counter()
    p_tu = temperature_fit(z_cal, y_cal)
    t_fit = time.perf_counter() - t0
    p_ex = temperature_fit(z_cal, y_cal, method="exact")
    probs_before = jax.nn.softmax(z_test, -1)
    probs_after = jax.nn.softmax(temperature_apply(p_tu, z_test), -1)
    acc = float(accuracy(probs_before, y_test))
    r = {
        "protocol": name,
        "n_cal": int(len(y_cal)),
        "n_test": int(len(y_test)),
        "acc": acc,
        "acc_se": float(np.sqrt(acc * (1 - acc) / len(y_test))),
        "T_tu": float(p_tu["temperature"][0]),
        "T_exact": float(p_ex["temperature"][0]),
        "fit_seconds": t_fit,
        "ece_before": float(ece(probs_before, y_test)),
        "ece_after": float(ece(probs_after, y_test)),
        "nll_before": float(nll(probs_before, y_test)),
        "nll_after": float(nll(probs_after, y_test)),
    }
    reliability_diagram(probs_before, y_test, out / f"reliability_{name}_before.png",
                        title=f"ResNet-20, before TS ({name})", ece=r["ece_before"])
    reliability_diagram(probs_after, y_test, out / f"reliability_{name}_after.png",
                        title=f"after TS, T={r['T_tu']:.3f} ({name})", ece=r["ece_after"])
    return r


def print_results(rows) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Temperature scaling, ResNet-20 on CIFAR-10 (real images)")
    for c in ("protocol", "cal / test", "acc (± s.e.)", "T (TU LBFGS)", "T (exact)", "ECE before",
              "ECE after", "NLL before", "NLL after"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["protocol"], f"{r['n_cal']} / {r['n_test']}",
                  f"{100 * r['acc']:.1f}% ± {100 * r['acc_se']:.1f}",
                  f"{r['T_tu']:.4f}", f"{r['T_exact']:.4f}",
                  f"{100 * r['ece_before']:.2f}%", f"{100 * r['ece_after']:.2f}%",
                  f"{r['nll_before']:.4f}", f"{r['nll_after']:.4f}")
    Console(width=150).print(t)
    for r in rows:
        print(f"[{r['protocol']}] ECE before scaling - {100 * r['ece_before']:.3}%.  "
              f"ECE after scaling - {100 * r['ece_after']:.3}%.")


def main(argv=None) -> int:
    ap = _common.experiment_parser(__doc__, "runs/temperature_scaling", CKPT)
    ap.add_argument("--n-train-cal", type=int, default=5000,
                    help="training images used to calibrate (<= 5000)")
    ap.add_argument("--n-test", type=int, default=1000, help="test images (<= 1000)")
    args = ap.parse_args(argv)
    try:
        tr, te = load_cifar_heads(args.data_dir)
        module, variables = load_model(args.data_dir, args.model)
    except (FileNotFoundError, KeyError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not 10 <= args.n_test <= len(te["labels"]) or not 10 <= args.n_train_cal <= len(tr["labels"]):
        print("error: --n-test must be in [10, 1000] and --n-train-cal in [10, 5000]", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    x_tr, y_tr = tr["images"][: args.n_train_cal], tr["labels"][: args.n_train_cal]
    x_te, y_te = te["images"][: args.n_test], te["labels"][: args.n_test]
    z_tr = predict(module, variables, x_tr, preprocess=RESNET_PREPROCESS)
    z_te = predict(module, variables, x_te, preprocess=RESNET_PREPROCESS)
    t_inf = time.perf_counter() - t0
    half = len(y_te) // 2
    rows = [
        _row("train", z_tr, y_tr, z_te, y_te, out),
        _row("test-split", z_te[:half], y_te[:half], z_te[half:], y_te[half:], out),
    ]
    print_results(rows)
    res = {"model": "resnet20", "checkpoint": CKPT, "inference_seconds": t_inf, "rows": rows}
    write_json_atomic(out / "results.json", res, indent=2)
    print(f"plots and results.json written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
