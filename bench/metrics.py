"""Benchmark: the full TU metric table, jaxuq (one fused jit) vs TU 0.13.0 / torchmetrics.

Setting: 36,032 samples x 10 classes = a CIFAR-10 test set (10,000 ID) + SVHN test (26,032 OOD),
MSP OOD score. Both sides get the same fp32 probabilities in one update. Timed: every metric of
TU's table (cls, cal, sc, ood incl. SCOD, ood/Entropy); SmECE is timed separately (host float64
port vs TU's torch code) and reported both inside and outside the total.

    python bench/metrics.py [--repeats 7]
Writes bench/results/metrics.json and bench/results/metrics.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

N_ID, N_OOD, C = 10_000, 26_032, 10
OUT = Path(__file__).resolve().parent / "results"


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up (jit compile / lazy init) excluded
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def make_inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(N_ID + N_OOD, C)) * 3).astype(np.float32)
    z = logits - logits.max(-1, keepdims=True)
    probs = (np.exp(z) / np.exp(z).sum(-1, keepdims=True)).astype(np.float32)
    labels = np.where(rng.random(N_ID) < 0.7, probs[:N_ID].argmax(-1), rng.integers(0, C, N_ID))
    scores = -probs.max(-1)
    return probs[:N_ID], labels.astype(np.int64), scores, probs[N_ID:]


def bench_jaxuq(probs, labels, scores, ood_probs, repeats):
    import jax
    import jax.numpy as jnp

    from jaxuq.metrics.calibration import _smece_conf_acc
    from jaxuq.metrics.suite import table_core

    p, y = jnp.asarray(probs), jnp.asarray(labels.astype(np.int32))
    s, op = jnp.asarray(scores), jnp.asarray(ood_probs)
    is_ood = jnp.concatenate([jnp.zeros(N_ID, jnp.int32), jnp.ones(N_OOD, jnp.int32)])

    def table():
        out, conf, acc = table_core(p, y, ood_scores=s, is_ood=is_ood, ood_probs=op)
        return jax.block_until_ready(out), conf, acc

    _, conf, acc = table()
    conf, acc = np.asarray(conf), np.asarray(acc)
    t_table = _median_time(table, repeats)
    t_smece = _median_time(lambda: _smece_conf_acc(conf, acc), max(3, repeats // 2))
    return {"table_without_smece": t_table, "SmECE": t_smece}, jax.default_backend()


def bench_tu(probs, labels, scores, ood_probs, repeats):
    import torch
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
        SmoothCalibrationError,
    )
    from torchmetrics.classification import Accuracy, BinaryAUROC, BinaryAveragePrecision

    torch.set_num_threads(os.cpu_count() or 1)
    p, y = torch.as_tensor(probs), torch.as_tensor(labels)
    s = torch.as_tensor(scores)
    is_ood = torch.cat([torch.zeros(N_ID, dtype=torch.long), torch.ones(N_OOD, dtype=torch.long)])
    errs = torch.cat([p.argmax(-1) != y, torch.zeros(N_OOD, dtype=torch.bool)])
    op = torch.as_tensor(ood_probs)

    def groups():
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

    # metric objects are built once (not timed); each timed run is reset + update + compute
    def run(ms, upd):
        for m in ms:
            m.reset()
        upd(ms)
        return [m.compute() for m in ms]

    with torch.no_grad():
        times = {}
        for name, (mk, up) in groups().items():
            ms = mk()
            times[name] = _median_time(lambda ms=ms, up=up: run(ms, up), repeats)
        sm_ms = [SmoothCalibrationError()]
        sm = lambda: run(sm_ms, lambda ms: [m.update(p, y) for m in ms])
        times["SmECE"] = _median_time(sm, max(3, repeats // 2))
    times["table_without_smece"] = sum(v for k, v in times.items() if k != "SmECE")
    return times


def main(argv=None) -> int:
    from jaxuq._io import write_text_atomic

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    probs, labels, scores, ood_probs = make_inputs()
    jx, backend = bench_jaxuq(probs, labels, scores, ood_probs, args.repeats)
    try:
        tu = bench_tu(probs, labels, scores, ood_probs, args.repeats)
    except ImportError as e:  # pragma: no cover
        print(f"torch-uncertainty not installed ({e}); jaxuq only", file=sys.stderr)
        tu = None

    import jax

    versions = {"jax": jax.__version__}
    for mod in ("flax", "torch", "torch_uncertainty", "torchmetrics"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    jx_total = jx["table_without_smece"] + jx["SmECE"]
    res = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
        },
        "jax_backend": backend,
        "versions": versions,
        "setting": (
            f"{N_ID} ID + {N_OOD} OOD = {N_ID + N_OOD} samples x {C} classes, MSP score, "
            f"median of {args.repeats}"
        ),
        "jaxuq_s": jx | {"total_with_smece": jx_total},
    }
    if tu:
        tu_total = tu["table_without_smece"] + tu["SmECE"]
        res["tu_s"] = tu | {"total_with_smece": tu_total}
        res["speedup_table_without_smece"] = tu["table_without_smece"] / jx["table_without_smece"]
        res["speedup_smece"] = tu["SmECE"] / jx["SmECE"]
        res["speedup_total_with_smece"] = tu_total / jx_total
    OUT.mkdir(parents=True, exist_ok=True)
    write_text_atomic(OUT / "metrics.json", json.dumps(res, indent=2) + "\n")
    lines = [
        "# Metric-table benchmark: jaxuq vs torch-uncertainty 0.13.0",
        "",
        f"- date: {res['date']}",
        f"- machine: {res['machine']['platform']}, {res['machine']['cpu_count']} CPUs; "
        f"jax backend: {backend}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in versions.items())}",
        f"- setting: {res['setting']}; warm-up excluded, jaxuq `block_until_ready`",
        "",
        "| part | TU / torchmetrics (ms) | jaxuq (ms) | speed-up |",
        "|---|---|---|---|",
    ]
    if tu:
        for k, v in tu.items():
            if k not in ("table_without_smece", "SmECE"):
                lines.append(f"| {k} | {v * 1e3:.2f} | (fused) | |")
        for k, label in (("table_without_smece", "**table without SmECE**"), ("SmECE", "SmECE")):
            lines.append(f"| {label} | {tu[k] * 1e3:.2f} | {jx[k] * 1e3:.2f} | {tu[k] / jx[k]:.1f}x |")
        lines.append(
            f"| **total with SmECE** | {tu_total * 1e3:.2f} | {jx_total * 1e3:.2f} "
            f"| {tu_total / jx_total:.1f}x |"
        )
    write_text_atomic(OUT / "metrics.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
