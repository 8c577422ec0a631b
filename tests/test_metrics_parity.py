"""Parity of every jaxuq metric with torch-uncertainty 0.13.0 / torchmetrics 1.9.0 (|Δ| <= 1e-6).

Where TU 0.13.0 is wrong or tie-order dependent, we pin jaxuq's value to a float64 numpy /
sklearn reference instead (deviations listed in the README "Metrics" section).
"""

import math

import numpy as np
import pytest

from jaxuq import metrics as M
from jaxuq.evaluation import classification_table
from tests.helpers import require

torch = require("torch")
tu = require("torch_uncertainty")
from tests.gen_golden_metrics import edge_cases, make_case, tu_metrics  # noqa: E402
from tests.test_metrics import ref_selective_f64  # noqa: E402

pytestmark = pytest.mark.parity
TOL = 1e-6


def _close(got, want, key):
    if math.isnan(want):
        assert math.isnan(got), (key, got, want)
    elif math.isinf(want):
        assert got == want, (key, got, want)
    else:
        assert abs(got - want) <= TOL, (key, got, want, abs(got - want))


def _ours(case):
    probs = case.get("member_probs", case["probs"])
    ood_probs = case.get("ood_member_probs", case.get("ood_probs"))
    return classification_table(probs, case["labels"], ood_scores=case.get("ood_scores"), ood_probs=ood_probs)


def _tu(case, batch_size=None, smece=True):
    return tu_metrics(
        case["probs"], case["labels"], member_probs=case.get("member_probs"),
        ood_scores=case.get("ood_scores"), is_ood=case.get("is_ood"), ood_probs=case.get("ood_probs"),
        ood_member_probs=case.get("ood_member_probs"), batch_size=batch_size, smece=smece,
    )  # fmt: skip


@pytest.mark.parametrize(
    "seed,n,m,n_ood,batch",
    [(0, 2000, 0, 1000, None), (3, 3000, 0, 3000, 256), (1, 5000, 3, 2000, 512), (4, 1000, 5, 700, 100),
     (2, 50000, 0, 10000, None)],
)  # fmt: skip
def test_full_table_random_logits(seed, n, m, n_ood, batch):
    case = make_case(seed, n, m=m, n_ood=n_ood)
    conf = case["probs"].max(-1)
    assert len(np.unique(conf)) == len(conf) >= 0.99 * n, "parity case must be tie-free (TU sorts unstably)"
    ref, ours = _tu(case, batch), _ours(case)
    assert set(ref) == set(ours) - {"test/cplx/flops", "test/cplx/params"}
    for k, v in ref.items():
        _close(ours[k], v, k)


@pytest.mark.parametrize("name", ["edges", "saturated", "all_correct", "all_wrong"])
def test_edge_cases(name):
    case = edge_cases()[name]
    ref, ours = _tu(case), _ours(case)
    probs, labels = case["probs"], case["labels"]
    conf = probs.max(-1)
    tied = len(np.unique(conf)) < len(conf)
    for k, v in ref.items():
        if tied and (k.startswith("test/sc/") or k == "test/cal/aECE"):
            continue  # tie-order dependent in TU: pinned below against a tie-aware float64 reference
        _close(ours[k], v, k)
    ref64 = ref_selective_f64(conf, probs.argmax(-1) != labels)
    for k in ("AURC", "AUGRC", "Cov_5Risk", "Risk_80Cov"):
        _close(ours[f"test/sc/{k}"], ref64[k], k)
    _close(ours["test/cal/aECE"], ref64["aECE"], "aECE")


def test_ece_confidences_on_bin_edges_use_torch_edges():
    # conf exactly on every torch fp32 edge: bins must follow torch.linspace bits, not np.linspace
    case = edge_cases()["edges"]
    ref = _tu(case, smece=False)
    assert abs(float(M.ece(case["probs"], case["labels"])) - ref["test/cal/ECE"]) <= TOL
    assert abs(float(M.mce(case["probs"], case["labels"])) - ref["test/cal/MCE"]) <= TOL


def test_ood_heavy_ties_vs_torchmetrics():
    from torch_uncertainty.metrics.classification import FPR95
    from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision

    rng = np.random.default_rng(5)
    for _ in range(5):
        n = 4000
        is_ood = (rng.random(n) < 0.3).astype(np.int64)
        scores = np.round(np.clip(rng.normal(0.4 + 0.2 * is_ood, 0.2), 0, 1), 1).astype(np.float32)  # 11 values
        for cls, fn in ((BinaryAUROC, M.auroc), (BinaryAveragePrecision, M.aupr), (lambda: FPR95(pos_label=1), M.fpr95)):
            m = cls()
            m.update(torch.as_tensor(scores), torch.as_tensor(is_ood))
            _close(float(fn(scores, is_ood)), float(m.compute()), cls)


def test_auroc_per_batch_sigmoid_quirk_pinned_to_raw_score_value():
    """TU/torchmetrics sigmoid a batch when any score is outside [0, 1]: with entropy-like scores
    in two batches the ranking changes. jaxuq uses the raw scores (= sklearn)."""
    from sklearn.metrics import average_precision_score, roc_auc_score
    from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision

    scores = np.array([0.2, 0.9, 0.4, 0.95, 1.5, 2.0, 0.1, 1.2], np.float32)
    is_ood = np.array([0, 1, 0, 1, 1, 1, 0, 0])
    tm_roc, tm_ap = BinaryAUROC(), BinaryAveragePrecision()
    for sl in (slice(0, 4), slice(4, 8)):  # batch 1 in [0, 1] (raw), batch 2 squashed by sigmoid
        for m in (tm_roc, tm_ap):
            m.update(torch.as_tensor(scores[sl]), torch.as_tensor(is_ood[sl]))
    ours_roc, ours_ap = float(M.auroc(scores, is_ood)), float(M.aupr(scores, is_ood))
    assert abs(ours_roc - roc_auc_score(is_ood, scores)) <= TOL
    assert abs(ours_ap - average_precision_score(is_ood, scores)) <= TOL
    assert abs(float(tm_roc.compute()) - ours_roc) > 0.05  # TU differs here (documented deviation)
    # one batch (or all batches squashed, e.g. MSP) -> TU agrees with the raw-score value
    one = BinaryAUROC()
    one.update(torch.as_tensor(scores), torch.as_tensor(is_ood))
    _close(float(one.compute()), ours_roc, "AUROC one batch")


def test_count_flops_and_params_vs_flop_counter_mode_on_tu_lenet():
    import jax
    from torch.utils.flop_counter import FlopCounterMode
    from torch_uncertainty.models.classification import lenet

    from tests.test_metrics import FlaxLeNet

    tmodel = lenet(in_channels=1, num_classes=10)
    fmodel = FlaxLeNet()
    variables = fmodel.init(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32))
    assert M.count_params(variables["params"]) == sum(p.numel() for p in tmodel.parameters()) == 44426
    for batch in (1, 128):
        fc = FlopCounterMode(display=False)
        with fc:
            tmodel(torch.zeros(batch, 1, 28, 28))
        ours = M.count_flops(lambda x: fmodel.apply(variables, x), np.zeros((batch, 28, 28, 1), np.float32))
        assert ours == fc.get_total_flops() == 563280 * batch
