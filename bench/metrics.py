"""Benchmark: the full TU metric table, jaxuq (one fused jit) vs TU 0.13.0 / torchmetrics.

Setting: 36,032 samples x 10 classes = a CIFAR-10 test set (10,000 ID) + SVHN test (26,032 OOD),
MSP OOD score. Both sides get the same fp32 probabilities in one update. Timed: every metric of
TU's table (cls, cal, sc, ood incl. SCOD, ood/Entropy); SmECE is timed separately (host float64
port vs TU's torch code) and reported both inside and outside the total. jaxuq is timed twice:
the fused core on device arrays (``table_without_smece``) and the public
``classification_table(..., smece=False)`` from host numpy inputs, validation and the
device->host transfer of the results included (``validated_table_without_smece``). On a GPU
machine the script runs unchanged: jaxuq on the default JAX backend, TU's metrics on CUDA tensors
(synchronised before each timing ends).

    python bench/metrics.py [--repeats 51] [--n-id 10000 --n-ood 26032] [--allow-load]
(51 calls per side and part by default: jaxuq's table takes about 2.5 ms and single calls of it spread
by +-20 % on a 2-core machine, so a median of 7 or 9 moved the ratio by a whole unit between runs.)
Writes bench/results/metrics.json and bench/results/metrics.md (through bench/_common.py: load
average and thread settings recorded before timing; a loaded machine is refused or flagged).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import bench_parser, markdown_header, markdown_table, start, timeit, write_results  # noqa: E402

N_ID, N_OOD, C = 10_000, 26_032, 10


def make_inputs(seed: int = 0, n_id: int = N_ID, n_ood: int = N_OOD):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(n_id + n_ood, C)) * 3).astype(np.float32)
    z = logits - logits.max(-1, keepdims=True)
    probs = (np.exp(z) / np.exp(z).sum(-1, keepdims=True)).astype(np.float32)
    labels = np.where(rng.random(n_id) < 0.7, probs[:n_id].argmax(-1), rng.integers(0, C, n_id))
    scores = -probs.max(-1)
    return probs[:n_id], labels.astype(np.int64), scores, probs[n_id:]


def _ms(t: dict) -> float:
    return t["median_s"]


def bench_jaxuq(probs, labels, scores, ood_probs, repeats):
    import jax.numpy as jnp

    from jaxuq.evaluation import classification_table
    from jaxuq.metrics.calibration import _smece_conf_acc
    from jaxuq.metrics.suite import table_core

    n_id = len(labels)
    p, y = jnp.asarray(probs), jnp.asarray(labels.astype(np.int32))
    s, op = jnp.asarray(scores), jnp.asarray(ood_probs)
    is_ood = jnp.concatenate([jnp.zeros(n_id, jnp.int32), jnp.ones(len(scores) - n_id, jnp.int32)])
    _, conf, acc = table_core(p, y, ood_scores=s, is_ood=is_ood, ood_probs=op)
    conf, acc = np.asarray(conf), np.asarray(acc)
    t = {
        "table_without_smece": timeit(
            lambda: table_core(p, y, ood_scores=s, is_ood=is_ood, ood_probs=op)[0], repeats=repeats
        ),
        "validated_table_without_smece": timeit(
            lambda: classification_table(probs, labels, ood_scores=scores, ood_probs=ood_probs, smece=False),
            repeats=repeats,
        ),
        "SmECE": timeit(lambda: _smece_conf_acc(conf, acc), repeats=max(3, repeats // 2)),
    }
    return {k: _ms(v) for k, v in t.items()}, t


def _tu_groups(p, y, s, is_ood, errs, op):
    """TU's metric objects per row of the table (built once, not timed) and how each is updated."""
    from torch_uncertainty.metrics.classification import (
        AUGRC,
        AURC,
        FPR95,
        SCODAUGRC,
        SCODAURC,
        BrierScore,
        CalibrationError,
        CategoricalNLL,
        CovAt5Risk,
        Entropy,
        RiskAt80Cov,
        SCODCovAt5Risk,
        SCODRiskAt80Cov,
    )
    from torchmetrics.classification import Accuracy, BinaryAUROC, BinaryAveragePrecision

    return {
        "cls (Acc, Brier, NLL, Entropy)": (
            lambda: [
                Accuracy(task="multiclass", num_classes=C),
                BrierScore(num_classes=C),
                CategoricalNLL(),
                Entropy(),
            ],
            lambda ms: [m.update(p, y) for m in ms[:3]] + [ms[3].update(p)],
        ),
        "cal (ECE, MCE, aECE)": (
            lambda: [
                CalibrationError(task="multiclass", num_bins=15, num_classes=C),
                CalibrationError(task="multiclass", num_bins=15, num_classes=C, norm="max"),
                CalibrationError(task="multiclass", adaptive=True, num_bins=15, num_classes=C),
            ],
            lambda ms: [m.update(p, y) for m in ms],
        ),
        "sc (AURC, AUGRC, Cov_5Risk, Risk_80Cov)": (
            lambda: [AURC(), AUGRC(), CovAt5Risk(), RiskAt80Cov()],
            lambda ms: [m.update(p, y) for m in ms],
        ),
        "ood (AUROC, AUPR, FPR95, Entropy)": (
            lambda: [BinaryAUROC(), BinaryAveragePrecision(), FPR95(pos_label=1), Entropy()],
            lambda ms: [m.update(s, is_ood) for m in ms[:3]] + [ms[3].update(op)],
        ),
        "ood SCOD (4)": (
            lambda: [SCODAURC(), SCODAUGRC(), SCODCovAt5Risk(), SCODRiskAt80Cov()],
            lambda ms: [m.update(s, classification_errors=errs, is_ood=is_ood.bool()) for m in ms],
        ),
    }


def bench_tu(probs, labels, scores, ood_probs, repeats):
    import torch
    from torch_uncertainty.metrics.classification import SmoothCalibrationError

    n_id, n_ood = len(labels), len(scores) - len(labels)
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # the GPU row compares GPU with GPU
    p, y = torch.as_tensor(probs, device=dev), torch.as_tensor(labels, device=dev)
    s = torch.as_tensor(scores, device=dev)
    is_ood = torch.cat([torch.zeros(n_id, dtype=torch.long), torch.ones(n_ood, dtype=torch.long)]).to(dev)
    errs = torch.cat([p.argmax(-1).cpu() != y.cpu(), torch.zeros(n_ood, dtype=torch.bool)]).to(dev)
    op = torch.as_tensor(ood_probs, device=dev)

    # metric objects are built once (not timed); each timed run is reset + update + compute
    def run(ms, upd):
        for m in ms:
            m.reset()
        upd(ms)
        out = [m.compute() for m in ms]
        if dev == "cuda":
            torch.cuda.synchronize()
        return out

    with torch.no_grad():
        times = {}
        for name, (mk, up) in _tu_groups(p, y, s, is_ood, errs, op).items():
            ms = [m.to(dev) for m in mk()]
            times[name] = _ms(timeit(lambda ms=ms, up=up: run(ms, up), repeats=repeats))
        sm_ms = [SmoothCalibrationError().to(dev)]
        sm = lambda: run(sm_ms, lambda ms: [m.update(p, y) for m in ms])
        times["SmECE"] = _ms(timeit(sm, repeats=max(3, repeats // 2)))
    times["table_without_smece"] = sum(v for k, v in times.items() if k != "SmECE")
    return times


def main(argv=None) -> int:
    ap = bench_parser(__doc__)
    ap.set_defaults(repeats=51)
    ap.add_argument("--n-id", type=int, default=N_ID)
    ap.add_argument("--n-ood", type=int, default=N_OOD)
    args = ap.parse_args(argv)
    meta = start(args, torch=True)
    probs, labels, scores, ood_probs = make_inputs(0, args.n_id, args.n_ood)
    jx, jx_raw = bench_jaxuq(probs, labels, scores, ood_probs, args.repeats)
    try:
        tu = bench_tu(probs, labels, scores, ood_probs, args.repeats)
    except ImportError as e:  # pragma: no cover
        print(f"torch-uncertainty not installed ({e}); jaxuq only", file=sys.stderr)
        tu = None
    n = args.n_id + args.n_ood
    jx_total = jx["table_without_smece"] + jx["SmECE"]
    res = {
        "setting": (
            f"{args.n_id} ID + {args.n_ood} OOD = {n} samples x {C} classes, MSP score, "
            f"median of {args.repeats}"
        ),
        "jax_backend": meta["threads"]["jax_backend"],
        "jaxuq_s": jx | {"total_with_smece": jx_total},
        "jaxuq_timings": jx_raw,
    }
    rows = [{"part": "table without SmECE (fused core, device inputs)", "jx": jx["table_without_smece"]},
            {"part": "table without SmECE (classification_table: validation + host inputs)",
             "jx": jx["validated_table_without_smece"]},
            {"part": "SmECE", "jx": jx["SmECE"]},
            {"part": "total with SmECE", "jx": jx_total}]
    if tu:
        tu_total = tu["table_without_smece"] + tu["SmECE"]
        res["tu_s"] = tu | {"total_with_smece": tu_total}
        res["speedup_table_without_smece"] = tu["table_without_smece"] / jx["table_without_smece"]
        res["speedup_validated_table_without_smece"] = (
            tu["table_without_smece"] / jx["validated_table_without_smece"]
        )
        res["speedup_smece"] = tu["SmECE"] / jx["SmECE"]
        res["speedup_total_with_smece"] = tu_total / jx_total
        parts = [{"part": k, "tu": v} for k, v in tu.items() if k not in ("table_without_smece", "SmECE")]
        for r, tu_v in zip(rows, (tu["table_without_smece"],) * 2 + (tu["SmECE"], tu_total)):
            r["tu"] = tu_v
        rows = parts + rows
    for r in rows:
        if r.get("tu") and r.get("jx"):
            r["speedup"] = r["tu"] / r["jx"]
        r["tu_ms"] = r["tu"] * 1e3 if r.get("tu") else None
        r["jx_ms"] = r["jx"] * 1e3 if r.get("jx") else None
    lines = markdown_header("Metric-table benchmark: jaxuq vs torch-uncertainty 0.13.0", meta) + [
        f"Setting: {res['setting']}; warm-up excluded, outputs waited for (`block_until_ready`).",
        "",
        *markdown_table(rows, [("part", "part", "{}"), ("TU / torchmetrics (ms)", "tu_ms", "{:.2f}"),
                               ("jaxuq (ms)", "jx_ms", "{:.2f}"), ("speed-up", "speedup", "{:.1f}x")]),
    ]
    write_results("metrics", meta, res, lines, args.out_dir)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
