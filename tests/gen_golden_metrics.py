"""Reference values from torch-uncertainty 0.13.0 / torchmetrics for jaxuq's metric tests.

``tu_metrics(...)`` runs TU's own metric classes (the ones ``ClassificationRoutine`` uses) on given
numpy inputs and returns ``{TU key: float}``; the parity tests call it directly. Running this file
writes the golden fixtures ``tests/golden/metrics_*.npz`` (inputs + TU outputs) so that
``tests/test_metrics_golden.py`` can check jaxuq without torch installed::

    .venv/bin/python -m tests.gen_golden_metrics
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).resolve().parent / "golden"


def softmax32(logits: np.ndarray) -> np.ndarray:
    """float32 softmax computed by torch (what TU's routine feeds its metrics)."""
    import torch

    return torch.softmax(torch.as_tensor(logits, dtype=torch.float32), dim=-1).numpy()


def tu_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    member_probs: np.ndarray | None = None,
    ood_scores: np.ndarray | None = None,
    is_ood: np.ndarray | None = None,
    ood_probs: np.ndarray | None = None,
    ood_member_probs: np.ndarray | None = None,
    smece: bool = True,
    batch_size: int | None = None,
) -> dict[str, float]:
    """TU 0.13.0 values for the jaxuq table keys.

    probs [N, C] fp32, labels [N]; member_probs [M, N, C] (transposed to TU's (B, M, C));
    ood_scores [N_tot] with the N ID samples first, is_ood [N_tot]; ood_probs [N_ood, C].
    ``batch_size`` splits every update into batches (TU accumulates over batches).
    """
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
        Disagreement,
        Entropy,
        MutualInformation,
        RiskAt80Cov,
        SCODCovAt5Risk,
        SCODRiskAt80Cov,
        SmoothCalibrationError,
    )
    from torchmetrics.classification import Accuracy, BinaryAUROC, BinaryAveragePrecision

    t = lambda a: torch.as_tensor(np.asarray(a))
    n, c = probs.shape
    bs = batch_size or max(n, 1)
    cls = {
        "test/cls/Acc": Accuracy(task="multiclass", num_classes=c),
        "test/cls/Brier": BrierScore(num_classes=c),
        "test/cls/NLL": CategoricalNLL(),
        "test/cal/ECE": CalibrationError(task="multiclass", num_bins=15, num_classes=c),
        "test/cal/MCE": CalibrationError(task="multiclass", num_bins=15, num_classes=c, norm="max"),
        "test/cal/aECE": CalibrationError(task="multiclass", adaptive=True, num_bins=15, num_classes=c),
        "test/sc/AURC": AURC(),
        "test/sc/AUGRC": AUGRC(),
        "test/sc/Cov_5Risk": CovAt5Risk(),
        "test/sc/Risk_80Cov": RiskAt80Cov(),
    }
    if smece:
        cls["test/cal/SmECE"] = SmoothCalibrationError()
    ent = Entropy()
    for s in range(0, n, bs):
        p, y = t(probs[s : s + bs]), t(labels[s : s + bs]).long()
        for m in cls.values():
            m.update(p, y)
        ent.update(p)
    out = {k: float(m.compute().reshape(-1)[0]) for k, m in cls.items()}
    out["test/cls/Entropy"] = float(ent.compute())

    def ens(mp, prefix):
        ms = {"Disagreement": Disagreement(), "MI": MutualInformation(), "Entropy": Entropy()}
        pe = np.transpose(mp, (1, 0, 2))  # (B, M, C)
        for s in range(0, pe.shape[0], bs):
            for m in ms.values():
                m.update(t(pe[s : s + bs]))
        return {f"{prefix}{k}": float(m.compute()) for k, m in ms.items()}

    if member_probs is not None:
        out |= ens(member_probs, "test/ens_")
    if ood_scores is not None:
        ood = {"AUROC": BinaryAUROC(), "AUPR": BinaryAveragePrecision(), "FPR95": FPR95(pos_label=1)}
        scod = {
            "SCOD_AURC": SCODAURC(ood_cost=0.5),
            "SCOD_AUGRC": SCODAUGRC(ood_cost=0.5),
            "SCOD_Cov_5Risk": SCODCovAt5Risk(ood_cost=0.5),
            "SCOD_Risk_80Cov": SCODRiskAt80Cov(ood_cost=0.5),
        }
        errors = np.zeros(len(ood_scores), bool)
        errors[:n] = probs.argmax(-1) != labels
        for s in range(0, len(ood_scores), bs):
            sc, yo = t(ood_scores[s : s + bs]), t(is_ood[s : s + bs]).long()
            for m in ood.values():
                m.update(sc, yo)
            for m in scod.values():
                m.update(sc, classification_errors=t(errors[s : s + bs]), is_ood=yo.bool())
        out |= {f"ood/{k}": float(m.compute().reshape(-1)[0]) for k, m in (ood | scod).items()}
        if ood_probs is not None:
            e = Entropy()
            e.update(t(ood_probs))
            out["ood/Entropy"] = float(e.compute())
        if ood_member_probs is not None:
            out |= ens(ood_member_probs, "ood/ens_")
    return out


def make_case(seed: int, n: int, c: int = 10, *, m: int = 0, n_ood: int = 0, scale: float = 3.0):
    """Random logits -> fp32 softmax probabilities (torch), labels biased towards the argmax."""
    rng = np.random.default_rng(seed)
    shape = (max(m, 1), n + n_ood, c)
    logits = (rng.normal(size=shape) * scale).astype(np.float32)
    labels = rng.integers(0, c, n)
    # make ~60% of ID samples correct so all metrics are informative
    mean_logits = logits.mean(0)
    flip = rng.random(n) < 0.6
    labels = np.where(flip, mean_logits[:n].argmax(-1), labels)
    member = softmax32(logits)
    probs = member.mean(0).astype(np.float32)
    # drop samples whose confidence is tied with another (ID or OOD): TU sorts unstably, so
    # parity cases must be tie-free for the AURC family, aECE and SCOD
    _, inv, cnt = np.unique(probs.max(-1), return_inverse=True, return_counts=True)
    keep = cnt[inv] == 1
    member, probs, labels = member[:, keep], probs[keep], labels[keep[:n]]
    n, n_ood = int(keep[:n].sum()), int(keep[n:].sum())
    case = {"probs": probs[:n], "labels": labels.astype(np.int64)}
    if m:
        case["member_probs"] = member[:, :n]
    if n_ood:
        case["ood_scores"] = -probs.max(-1)  # MSP criterion: -max p
        case["is_ood"] = np.r_[np.zeros(n, np.int64), np.ones(n_ood, np.int64)]
        case["ood_probs"] = probs[n:]
        if m:
            case["ood_member_probs"] = member[:, n:]
    return case


def edge_cases() -> dict[str, dict]:
    """Small hand-made cases: conf == 1.0, confidences on the bin edges, all correct / all wrong."""
    from jaxuq.metrics.calibration import ECE_EDGES

    rng = np.random.default_rng(7)
    cases = {}
    # confidences exactly on the fp32 bin edges (C = 2 needs conf >= 0.5: use edges >= 0.5)
    edges = ECE_EDGES[ECE_EDGES >= 0.5]
    conf = np.repeat(edges, 7).astype(np.float32)
    p = np.stack([conf, (1 - conf).astype(np.float32)], -1)
    labels = rng.integers(0, 2, len(conf))
    cases["edges"] = {"probs": p, "labels": labels}
    # saturated softmax: several rows at conf == 1.0 exactly
    logits = rng.normal(size=(300, 5)).astype(np.float32) * 2
    logits[:20, 0] += 40.0
    probs = softmax32(logits)
    assert (probs.max(-1) == 1.0).sum() >= 20
    cases["saturated"] = {"probs": probs, "labels": rng.integers(0, 5, 300)}
    base = softmax32(rng.normal(size=(500, 10)).astype(np.float32) * 2)
    cases["all_correct"] = {"probs": base, "labels": base.argmax(-1)}
    cases["all_wrong"] = {"probs": base, "labels": (base.argmax(-1) + 1) % 10}
    return cases


def main() -> None:
    GOLDEN.mkdir(exist_ok=True)
    cases = {
        "single_n2000": make_case(0, 2000, n_ood=1000),
        "ens3_n2000": make_case(1, 2000, m=3, n_ood=800),
        **edge_cases(),
    }
    for name, case in cases.items():
        ref = tu_metrics(
            case["probs"],
            case["labels"],
            member_probs=case.get("member_probs"),
            ood_scores=case.get("ood_scores"),
            is_ood=case.get("is_ood"),
            ood_probs=case.get("ood_probs"),
            ood_member_probs=case.get("ood_member_probs"),
        )
        arrays = {f"in_{k}": v for k, v in case.items()}
        arrays |= {"out_" + k.replace("/", "__"): np.float64(v) for k, v in ref.items()}
        path = GOLDEN / f"metrics_{name}.npz"
        np.savez_compressed(path, **arrays)
        print(f"wrote {path} ({path.stat().st_size} bytes, {len(ref)} metrics)")


if __name__ == "__main__":
    main()
