"""scio's OOD-evaluation tutorial: four scores on Tiniest, scio's recorded outputs beside jaxuq.

    python -m experiments scio_ood [--small] [--set key=value ...] [--out DIR]

The tutorial: scio's Tiniest (its hub checkpoint; here ``checkpoints/scio_tiniest/tiniest.pt``,
input x/255), 1000 calibration images "not seen during training" (its HF calibration split), 1000
random CIFAR-10 test images as InD, vertical flip / darker (x0.5) / uniformly random images
(``numpy.random.default_rng(0)``) as OOD. Scores and layers: Softmax; GradNorm on LOGITS (``fc``);
Gram on BLOCK3 (``l3``), FEATURE_MAPS (``avgpool``), LOGITS; KNN (k = int(n_calib ** 0.4)) on
FEATURE_MAPS. Metrics: AUROC, AUPR, FPR95, scio's AUC(max_fpr=0.2) and TPR at 5 % FPR.

Protocol here (the held-out split): a seeded split of the ``n_images`` real CIFAR-10 test images,
``cal_fraction`` of them calibrate (held out like the tutorial's calibration split; the training
images trained the model), the rest are the InD set; the OOD sets are built from that InD set.
Printed: the layer table, the summary table, per-score timers; written: the summary plot.

scio beside jaxuq (``compare_tu``): scio 1.1.0 needs Python >= 3.12 and is not installed, so its
side is its recorded outputs (tests/golden/ood_scio_tiniest_{small,full}.npz, recipe
tests/gen_golden_scio.py). They cover another protocol: calibration on the first ``n_calib``
real *training* images, InD the first ``n_ind`` test images (``scio_golden="full"``: 1000 / 1000,
the four tutorial scores; ``"small"``: 128 / 32). jaxuq reruns that protocol and is compared
per score and OOD set on scio's two metrics and on the confidences. Not compared: the held-out
split's numbers (no scio outputs exist for it) and AUROC / AUPR / FPR95 (not recorded).

Config keys:
  n_images: real CIFAR-10 test images of the held-out protocol (<= 1000).
  cal_fraction: share of them that calibrates.
  batch_size: inference batch.
  compare_tu: compare with scio's recorded outputs.
  scio_golden: "full" or "small": which recorded outputs (and protocol size).
  seed: the split's seed.
  data_dir: the data folder (None: $JAXUQ_DATA_DIR).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from experiments import _compare, _inputs
from experiments._compare import compare_row, comparison_table, render_text
from experiments._launch import launch_module
from jaxuq.ood import KNN, GradNorm, Gram, Softmax, evaluate_confidences, layer_table
from jaxuq.report.plots import summary_plot, summary_table

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"
OODS_TITLE = ("Vertical flip", "Darker", "Uniformly random")
METRICS = ("AUROC", "AUPR", "FPR95", "pAUC@0.2", "TPR@5%")
BLOCK3, FEATURE_MAPS, LOGITS = "l3", "avgpool", "fc"
# the tutorial's summary table, AUC(max_fpr=0.2) / TPR(max_fpr=0.05) per score and OOD set
PUBLISHED = {"Softmax": ((0.452, 0.350), (0.223, 0.114), (0.738, 0.612)),
             "GradNorm": ((0.404, 0.332), (0.291, 0.141), (0.813, 0.808)),
             "Gram": ((0.276, 0.174), (0.158, 0.049), (0.894, 0.946)),
             "KNN": ((0.445, 0.314), (0.277, 0.157), (0.865, 0.807))}  # fmt: skip


def get_config() -> dict:
    return {
        "n_images": 1000,
        "cal_fraction": 0.5,
        "batch_size": 250,
        "compare_tu": True,
        "scio_golden": "full",
        "seed": 0,
        "data_dir": None,
    }


SMALL = {"n_images": 128, "scio_golden": "small"}


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


def score_detectors(module, variables, calib, calib_labels, ind, batch_size: int) -> dict:
    """Fit the four scores on ``calib`` ``[N, 32, 32, 3]`` in [0, 1]; score ``ind`` and its OOD sets:
    ``{names, layers, confs_ind [S][N_ind], confs_oods [O][S][N_ind], evals [S, O, M], timers}``."""
    sal = scores_and_layers(len(calib), batch_size)
    oods = ood_sets(ind)
    for det, _ in sal:
        det.fit(module, variables, calib, calib_labels)
    confs_ind = [np.asarray(det.confidence(ind)) for det, _ in sal]
    confs_oods = [[np.asarray(det.confidence(o)) for det, _ in sal] for o in oods]
    timers = {
        repr(det): [{"op": op, "n_samples": n, "seconds": s} for op, n, s in det.timer.entries]
        for det, _ in sal
    }
    return {
        "names": [repr(det) for det, _ in sal],
        "layers": [lay for _, lay in sal],
        "confs_ind": confs_ind,
        "confs_oods": confs_oods,
        "evals": np.asarray(evaluate_confidences(confs_ind, confs_oods, METRICS)),
        "timers": timers,
    }


def _scio_rows(module, variables, config) -> tuple[list[dict], dict]:
    """jaxuq on the recorded outputs' protocol vs scio: per score and OOD set, pAUC@0.2 and TPR@5%."""
    g = np.load(GOLDEN / f"ood_scio_tiniest_{config['scio_golden']}.npz")
    n_calib, n_ind = int(g["n_calib"]), int(g["n_ind"])
    tr, te = _inputs.load_cifar_heads(config["data_dir"])
    res = score_detectors(
        module,
        variables,
        tr["images"][:n_calib].astype(np.float32) / 255,
        tr["labels"][:n_calib],
        te["images"][:n_ind].astype(np.float32) / 255,
        config["batch_size"],
    )
    rows, confs = [], {}
    cols = [METRICS.index("pAUC@0.2"), METRICS.index("TPR@5%")]
    for i, name in enumerate(g["names"][:4]):
        ours = [res["confs_ind"][i]] + [res["confs_oods"][j][i] for j in range(3)]
        confs[str(name)] = float(max(np.abs(c - g["confs"][i, j]).max() for j, c in enumerate(ours)))
        for j, ood in enumerate(OODS_TITLE):
            for m, metric in enumerate(("pAUC@0.2", "TPR@5%")):
                published = PUBLISHED[str(name)][j][m] if config["scio_golden"] == "full" else None
                rows.append(
                    compare_row(
                        f"{name} / {ood}: {metric}",
                        res["evals"][i, j, cols[m]],
                        g["evals"][i, j, m],
                        published,
                    )
                )
    return rows, {
        "n_calib": n_calib,
        "n_ind": n_ind,
        "confs_max_abs_diff": confs,
        "scio_version": str(g["scio_version"]),
        "scio_torch_version": str(g["torch_version"]),
    }


def run(config: dict, out_dir) -> tuple[dict, str]:
    n = config["n_images"]
    if not 20 <= n <= 1000:
        raise ValueError(f"n_images must be in [20, 1000]; got {n}")
    if config["scio_golden"] not in ("full", "small"):
        raise ValueError(f"scio_golden must be 'full' or 'small'; got {config['scio_golden']!r}")
    module, variables = _inputs.load_model("tiniest", _inputs.TINIEST_CKPT, config["data_dir"])
    _, te = _inputs.load_cifar_heads(config["data_dir"])
    x = te["images"][:n].astype(np.float32) / 255
    cal, ev = _inputs.calibration_split(n, config["cal_fraction"], config["seed"])
    t0 = time.perf_counter()
    res = score_detectors(module, variables, x[cal], te["labels"][:n][cal], x[ev], config["batch_size"])
    t_jx = time.perf_counter() - t0
    summary_plot(res["confs_ind"], res["confs_oods"], res["names"], OODS_TITLE, out_dir / "summary_plot.png")
    text = layer_table(module, variables, x[:1]) + "\n"
    text += (
        f"held-out protocol: {len(cal)} test images calibrate, {len(ev)} are InD (seed {config['seed']})\n"
    )
    text += summary_table(
        res["evals"], res["names"], OODS_TITLE, list(METRICS), layers=res["layers"], print_it=False
    )
    rows, scio = [], None
    if config["compare_tu"]:
        rows, scio = _scio_rows(module, variables, config)
        text += render_text(
            comparison_table(
                rows,
                f"scio's recorded outputs ({scio['n_calib']} training images calibrate, "
                f"first {scio['n_ind']} test images InD): published | scio 1.1.0 | jaxuq",
                reference="scio 1.1.0 (recorded)",
            )
        )
        text += f"confidences max |Δ| per score: {scio['confs_max_abs_diff']}\n"
    results = {
        "substituted": [
            "the data folder's Tiniest checkpoint for scio's hub one",
            f"a seeded held-out split of {n} real CIFAR-10 test images (calibration {len(cal)}, "
            f"InD {len(ev)}) for the HF calibration split and 1000 random test images",
        ],
        "not_compared": "the held-out split's numbers (scio not installed: no scio outputs for it); "
        "AUROC / AUPR / FPR95 (scio's recorded outputs hold pAUC@0.2 and TPR@5% only)",
        "metrics": list(METRICS),
        "ood_sets": list(OODS_TITLE),
        "scores": res["names"],
        "layers": res["layers"],
        "evals": res["evals"].tolist(),
        "timers": res["timers"],
        "scio_protocol": scio,
        "comparison": rows,
        "max_abs_diff": _compare.max_diff(rows),
        "seconds": {"jaxuq": t_jx, "scio": None},
    }
    return results, text


if __name__ == "__main__":
    raise SystemExit(launch_module(__name__))
