"""scio's OOD-evaluation tutorial ("Visualizing & Evaluating OoD Detection algorithms") in JAX.

    JAXUQ_DATA_DIR=../shared/data python -m experiments.scio_ood --out runs/scio_ood

Model: scio's Tiniest (``checkpoints/scio_tiniest/tiniest.pt``, input x/255). Calibration: the
first ``--n-calib`` (1000) real CIFAR-10 *training* images with their labels; InD: the first
``--n-ind`` (1000) test images (the tutorial takes 1000 random test images); OOD: vertical flip,
darker (x0.5) and uniformly random images (numpy ``default_rng(0)``). Scores and layers as in the
tutorial: Softmax; GradNorm on LOGITS = ``fc``; Gram on BLOCK3 = ``l3``, FEATURE_MAPS = ``avgpool``,
LOGITS; KNN (k = int(n_calib ** 0.4)) on FEATURE_MAPS. Prints the layer table, the summary table
(AUROC / AUPR / FPR95 / scio AUC(max_fpr=0.2) / TPR at 5 % FPR), the per-score timers, and writes
the summary plot (histograms + ROC curves) and results.json to ``--out``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from experiments import _common
from experiments._common import TINIEST_CKPT, load_cifar_heads, write_json_atomic
from jaxuq.ood import KNN, GradNorm, Gram, Softmax, evaluate_confidences, layer_table
from jaxuq.report.plots import summary_plot, summary_table

CKPT = TINIEST_CKPT
OODS_TITLE = ("Vertical flip", "Darker", "Uniformly random")
METRICS = ("AUROC", "AUPR", "FPR95", "pAUC@0.2", "TPR@5%")
BLOCK3, FEATURE_MAPS, LOGITS = "l3", "avgpool", "fc"


def load_model(data_dir, model_dir=None):
    """tiniest as ``(module, variables)`` (see ``experiments._common.load_model``)."""
    return _common.load_model("tiniest", CKPT, data_dir, model_dir)


def ood_sets(ind: np.ndarray) -> tuple[np.ndarray, ...]:
    """The tutorial's OOD sets (NHWC in [0, 1]): ``ind.flip(2)`` in NCHW is a flip of the H axis."""
    rand = np.random.default_rng(0).random(ind.shape, dtype=np.float32)
    return (ind[:, ::-1].copy(), ind * np.float32(0.5), rand)


def scores_and_layers(n_calib: int, batch_size: int):
    kw = {"batch_size": batch_size}
    return [
        (Softmax(**kw), []),
        (GradNorm([LOGITS], **kw), [LOGITS]),
        (Gram([BLOCK3, FEATURE_MAPS, LOGITS], **kw), [BLOCK3, FEATURE_MAPS, LOGITS]),
        (KNN([FEATURE_MAPS], k=int(n_calib**0.4), **kw), [FEATURE_MAPS]),
    ]


def run(data_dir, out: Path, n_calib: int, n_ind: int, batch_size: int = 250, quiet: bool = False,
        model_dir=None) -> dict:
    tr, te = load_cifar_heads(data_dir)
    if not 1 <= n_calib <= len(tr["labels"]) or not 1 <= n_ind <= len(te["labels"]):
        raise ValueError(f"n_calib must be in [1, {len(tr['labels'])}] and n_ind in [1, {len(te['labels'])}]")
    module, variables = load_model(data_dir, model_dir)
    calib = tr["images"][:n_calib].astype(np.float32) / 255
    calib_labels = tr["labels"][:n_calib]
    ind = te["images"][:n_ind].astype(np.float32) / 255
    oods = ood_sets(ind)
    if not quiet:
        print(layer_table(module, variables, calib[:1]))
    sal = scores_and_layers(n_calib, batch_size)
    t0 = time.perf_counter()
    for det, _ in sal:
        det.fit(module, variables, calib, calib_labels)
    confs_ind, confs_oods = [], [[] for _ in oods]
    for det, _ in sal:
        confs_ind.append(det.confidence(ind))
        for j, o in enumerate(oods):
            confs_oods[j].append(det.confidence(o))
    wall = time.perf_counter() - t0
    evals = evaluate_confidences(confs_ind, confs_oods, METRICS)
    names = [repr(det) for det, _ in sal]
    layers = [lay for _, lay in sal]
    text = summary_table(evals, names, OODS_TITLE, list(METRICS), layers=layers, print_it=not quiet)
    out.mkdir(parents=True, exist_ok=True)
    summary_plot(confs_ind, confs_oods, names, OODS_TITLE, out / "summary_plot.png")
    timers = {}
    for det, _ in sal:
        if not quiet:
            det.timer.report()
        timers[repr(det)] = [{"op": op, "n_samples": n, "seconds": s} for op, n, s in det.timer.entries]
    res = {
        "n_calib": n_calib,
        "n_ind": n_ind,
        "metrics": list(METRICS),
        "ood_sets": list(OODS_TITLE),
        "scores": names,
        "layers": layers,
        "evals": evals.tolist(),
        "confs_ind": [c.tolist() for c in confs_ind],
        "confs_oods": [[c.tolist() for c in co] for co in confs_oods],
        "timers": timers,
        "wall_seconds": wall,
        "table": text,
    }
    write_json_atomic(out / "results.json", res)
    return res


def main(argv=None) -> int:
    ap = _common.experiment_parser(__doc__, "runs/scio_ood", CKPT)
    ap.add_argument("--n-calib", type=int, default=1000)
    ap.add_argument("--n-ind", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=250)
    args = ap.parse_args(argv)
    try:
        res = run(args.data_dir, Path(args.out), args.n_calib, args.n_ind, args.batch_size,
                  model_dir=args.model)
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"summary_plot.png and results.json written to {args.out} ({res['wall_seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
