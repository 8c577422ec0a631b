"""Unit tests of jaxuq.metrics without torch: float64 references, errors, streaming, jit."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxuq import metrics as M
from jaxuq.metrics import calibration, classification, ensemble, ood, selective, streaming


# ------------------------------------------------------------------ float64 references
def ref_selective_f64(conf, err):
    """Tie-aware float64 AURC family + aECE from TU's formulas: inside a group of tied confidences
    the cumulative error is linearly interpolated (= expectation over random tie-breaking),
    Cov@Risk only at distinct thresholds, aECE with each sample's accuracy = its group's mean."""
    conf = np.asarray(conf, np.float32).astype(np.float64)
    err = np.asarray(err, np.float64)
    n = len(conf)
    order = np.argsort(-conf, kind="stable")
    c_s, e_s = conf[order], err[order]
    cum = np.cumsum(e_s)
    values, first, counts = np.unique(-c_s, return_index=True, return_counts=True)
    interp, at_thr, e_mean = np.empty(n), np.zeros(n, bool), np.empty(n)
    for a, g in zip(first, counts):
        before = cum[a - 1] if a else 0.0
        interp[a : a + g] = before + (cum[a + g - 1] - before) * np.arange(1, g + 1) / g
        e_mean[a : a + g] = (cum[a + g - 1] - before) / g
        at_thr[a + g - 1] = True
    r = interp / np.arange(1, n + 1)
    cov = np.arange(1, n + 1) / n
    ok = np.nonzero((r <= 0.05) & at_thr)[0]
    out = {
        "AURC": np.trapezoid(r, cov) / (1 - 1 / n),
        "AUGRC": np.trapezoid(r * cov, cov) / (1 - 1 / n),
        "Cov_5Risk": (ok[-1] + 1) / n if len(ok) else math.nan,
        "Risk_80Cov": r[math.ceil(n * 0.8) - 1],
    }
    chunks_c = np.array_split(c_s[::-1], 15)
    chunks_a = np.array_split(1 - e_mean[::-1], 15)
    aece = sum(abs(a.mean() - c.mean()) * len(c) / n for a, c in zip(chunks_a, chunks_c)) if n >= 15 else math.nan
    out["aECE"] = aece
    return out


def ref_ece_f64(conf, acc):
    conf = np.asarray(conf, np.float32)
    idx = np.searchsorted(M.ECE_EDGES, conf, side="right") - 1
    ece, mce = 0.0, 0.0
    for k in range(16):
        sel = idx == k
        if sel.any():
            gap = abs(acc[sel].mean() - conf[sel].astype(np.float64).mean())
            ece += gap * sel.mean()
            mce = max(mce, gap)
    return ece, mce


def _case(seed, n=600, c=7, scale=3.0):
    rng = np.random.default_rng(seed)
    probs = np.asarray(jax.nn.softmax(jnp.asarray(rng.normal(size=(n, c)) * scale, jnp.float32)))
    labels = np.where(rng.random(n) < 0.6, probs.argmax(-1), rng.integers(0, c, n))
    return probs, labels


def test_ece_edges_are_torch_linspace_bits():
    e = M.ECE_EDGES
    assert e.dtype == np.float32 and len(e) == 16 and e[0] == 0 and e[-1] == 1
    diff = np.nonzero(e != np.linspace(0, 1, 16, dtype=np.float32))[0]
    assert list(diff) == [3, 6, 7, 8, 9, 10]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_and_calibration_vs_float64(seed):
    probs, labels = _case(seed)
    p64 = probs.astype(np.float64)
    conf, acc = probs.max(-1), (probs.argmax(-1) == labels).astype(np.float64)
    onehot = np.eye(probs.shape[1])[labels]
    assert abs(float(M.accuracy(probs, labels)) - acc.mean()) < 1e-7
    assert abs(float(M.brier_score(probs, labels)) - ((p64 - onehot) ** 2).sum(-1).mean()) < 1e-6
    assert abs(float(M.nll(probs, labels)) - (-np.log(p64[np.arange(len(labels)), labels])).mean()) < 1e-5
    ent = -(np.where(p64 > 0, p64 * np.log(np.where(p64 > 0, p64, 1)), 0)).sum(-1).mean()
    assert abs(float(M.entropy(probs)) - ent) < 1e-6
    ece, mce = ref_ece_f64(conf, acc)
    assert abs(float(M.ece(probs, labels)) - ece) < 1e-6
    assert abs(float(M.mce(probs, labels)) - mce) < 1e-6
    ref = ref_selective_f64(conf, 1 - acc)
    for k, f in (("AURC", M.aurc), ("AUGRC", M.augrc), ("Cov_5Risk", M.cov_at_risk), ("Risk_80Cov", M.risk_at_cov)):
        got, want = float(f(probs, labels)), ref[k]
        assert (math.isnan(got) and math.isnan(want)) or abs(got - want) < 1e-6, k
    assert abs(float(M.adaptive_ece(probs, labels)) - ref["aECE"]) < 1e-6


def test_ties_are_accepted_as_a_group():
    conf = np.array([0.9, 0.9, 0.9, 0.6, 0.6], np.float32)
    probs = np.stack([conf, 1 - conf], -1)
    labels = np.array([1, 0, 0, 1, 0])  # one of the three tied samples wrong
    ref = ref_selective_f64(conf, probs.argmax(-1) != labels)
    assert abs(float(M.aurc(probs, labels)) - ref["AURC"]) < 1e-7
    # coverage 0.2 lies inside the tied group: expected risk 1/3 whatever the sample order
    assert float(M.risk_at_cov(probs, labels, 0.2)) == pytest.approx(1 / 3, abs=1e-7)
    # risk <= 0.34 is reached by no threshold below coverage 3/5 (the group's end: risk 1/3)
    assert float(M.cov_at_risk(probs, labels, 0.34)) == pytest.approx(0.6, abs=1e-7)
    assert math.isnan(float(M.cov_at_risk(probs, labels, 0.3)))


def _tied_case(seed, n=5000, c=10, levels=20):
    """Quantised confidences (heavy ties, incl. a block at exactly 1.0) with mixed errors."""
    rng = np.random.default_rng(seed)
    conf = np.round(rng.uniform(0.1, 1.0, n) * levels) / levels
    conf = np.clip(conf, 1.0 / c + 0.01, 1.0).astype(np.float32)
    conf[: n // 20] = 1.0
    rest = ((1.0 - conf) / (c - 1)).astype(np.float32)
    probs = np.repeat(rest[:, None], c, 1)
    pred = rng.integers(0, c, n)
    probs[np.arange(n), pred] = conf
    wrong = rng.random(n) < 1.0 - conf * 0.9
    labels = np.where(wrong, (pred + 1 + rng.integers(0, c - 1, n)) % c, pred)
    return probs, labels


_RANK_METRICS = {
    "aurc": M.aurc, "augrc": M.augrc, "cov_at_risk": lambda p, y: M.cov_at_risk(p, y, 0.05),
    "cov_at_risk_30": lambda p, y: M.cov_at_risk(p, y, 0.3), "risk_at_cov": M.risk_at_cov,
    "adaptive_ece": M.adaptive_ece,
}  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1])
def test_tied_inputs_are_order_invariant(seed):
    """Issue 16: with tied confidences the same predictions in another order gave another AURC,
    Cov@Risk, aECE, ... (stable sort: the storage order decided)."""
    probs, labels = _tied_case(seed)
    conf = probs.max(-1)
    assert len(np.unique(conf)) < 30
    ref = ref_selective_f64(conf, probs.argmax(-1) != labels)
    base = {k: float(f(probs, labels)) for k, f in _RANK_METRICS.items()}
    rng = np.random.default_rng(seed + 100)
    for _ in range(4):
        perm = rng.permutation(len(labels))
        for k, f in _RANK_METRICS.items():
            got = float(f(probs[perm], labels[perm]))
            assert got == pytest.approx(base[k], abs=1e-7, nan_ok=True), k
    for k, name in (("AURC", "aurc"), ("AUGRC", "augrc"), ("Cov_5Risk", "cov_at_risk"),
                    ("Risk_80Cov", "risk_at_cov"), ("aECE", "adaptive_ece")):  # fmt: skip
        assert base[name] == pytest.approx(ref[k], abs=1e-6, nan_ok=True), k


def test_tied_table_and_ood_metrics_are_order_invariant():
    from jaxuq.evaluation import classification_table

    probs, labels = _tied_case(2, n=3000)
    rng = np.random.default_rng(3)
    n_ood = 1000
    ood_scores = np.round(rng.normal(size=3000 + n_ood), 1).astype(np.float32)  # heavy ties
    ood_scores[3000:] += 0.5
    ref = classification_table(probs, labels, ood_scores=ood_scores, smece=False)
    for _ in range(3):
        p_id, p_ood = rng.permutation(3000), 3000 + rng.permutation(n_ood)
        got = classification_table(probs[p_id], labels[p_id], ood_scores=ood_scores[np.r_[p_id, p_ood]], smece=False)
        for k, v in ref.items():
            assert got[k] == pytest.approx(v, abs=1e-7, nan_ok=True), k
    y = np.r_[np.zeros(3000, int), np.ones(n_ood, int)]
    perm = rng.permutation(len(y))
    for f in (M.auroc, M.aupr, M.fpr95, lambda s, o: M.auc(s, o, 0.1), lambda s, o: M.tpr_at_fpr(s, o, 0.1)):
        assert float(f(ood_scores[perm], y[perm])) == pytest.approx(float(f(ood_scores, y)), abs=1e-7)


def test_aece_nan_below_15_and_mce_conf_one_slot():
    probs, labels = _case(3, n=14)
    assert math.isnan(float(M.adaptive_ece(probs, labels)))
    p = np.array([[1.0, 0.0], [1.0, 0.0], [0.99, 0.01]], np.float32)
    rd = M.reliability_diagram_data(p, np.array([0, 1, 0]))
    assert rd.counts.tolist()[-1] == 2 and rd.counts.sum() == 3
    assert rd.acc[-1] == 0.5 and rd.conf[-1] == 1.0
    assert abs(float(M.mce(p, np.array([0, 1, 0]))) - 0.5) < 1e-7


def test_nll_is_inf_when_true_class_has_zero_probability():
    p = np.array([[1.0, 0.0], [0.5, 0.5]], np.float32)
    assert math.isinf(float(M.nll(p, np.array([1, 0]))))


def test_ensemble_metrics_vs_numpy():
    rng = np.random.default_rng(0)
    mp = np.asarray(jax.nn.softmax(jnp.asarray(rng.normal(size=(4, 300, 5)) * 2, jnp.float32)))
    preds = mp.argmax(-1)
    dis = np.mean([np.mean([preds[a, i] != preds[b, i] for a in range(4) for b in range(a + 1, 4)]) for i in range(300)])
    assert abs(float(M.disagreement(mp)) - dis) < 1e-6
    h = lambda p: -(p * np.log(p)).sum(-1)
    p64 = mp.astype(np.float64)
    assert abs(float(M.ensemble_entropy(mp)) - h(p64).mean()) < 1e-6
    assert abs(float(M.mutual_information(mp)) - max((h(p64.mean(0)) - h(p64).mean(0)).sum(), 0) / 300) < 1e-6
    assert math.isnan(float(M.disagreement(mp[:1])))
    assert float(M.mutual_information(np.repeat(mp[:1], 3, 0))) >= 0.0  # identical members: clamped sum


# ------------------------------------------------------------------ OOD vs sklearn
@pytest.mark.parametrize("seed,rounding", [(0, None), (1, 1), (2, 0)])
def test_ood_vs_sklearn(seed, rounding):
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    rng = np.random.default_rng(seed)
    n = 3000
    y = (rng.random(n) < 0.4).astype(np.int64)
    s = rng.normal(y * 0.8, 1.0).astype(np.float32)
    if rounding is not None:
        s = np.round(s, rounding).astype(np.float32)  # heavy ties
    assert abs(float(M.auroc(s, y)) - roc_auc_score(y, s)) < 1e-6
    assert abs(float(M.aupr(s, y)) - average_precision_score(y, s)) < 1e-6
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    for mf in (0.01, 0.05, 0.1, 0.3, 0.5, 1.0):
        assert abs(float(M.auc(s, y, mf)) - roc_auc_score(y, s, max_fpr=mf)) < 2e-6, mf
        assert abs(float(M.tpr_at_fpr(s, y, mf)) - tpr[fpr <= mf].max()) < 1e-6, mf
    # FPR95 from sklearn's ROC points: first point with tpr >= 0.95
    k = np.argmax(tpr.astype(np.float32) >= np.float32(0.95))
    assert abs(float(M.fpr95(s, y)) - fpr[k]) < 1e-6


def test_signed_zero_and_extreme_scores_rank_like_floats():
    """rank_sort sorts an int32 image of the scores: -0.0 ties with 0.0, negatives and huge
    magnitudes keep their float order."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    s = np.array([0.0, -0.0, -0.0, 0.0, -3e38, 3e38, -1e-30, 1e-30, -2.5, 2.5, 0.0, -0.0], np.float32)
    y = np.array([1, 0, 1, 0, 0, 1, 0, 1, 0, 1, 1, 0])
    assert float(M.auroc(s, y)) == pytest.approx(roc_auc_score(y, s), abs=1e-7)
    assert float(M.aupr(s, y)) == pytest.approx(average_precision_score(y, s), abs=1e-7)
    flipped = np.where(s == 0, -s, s)  # swap the signs of the zeros: same ranking, same values
    assert float(M.auroc(flipped, y)) == float(M.auroc(s, y))
    losses = np.where(y == 1, 0.5, 0.25)
    g = selective._ties.rank_sort(jnp.asarray(s), jnp.asarray(losses, jnp.float32))
    r = selective._ties.reverse(g)
    g_neg = selective._ties.rank_sort(-jnp.asarray(s), jnp.asarray(losses, jnp.float32))
    for a, b in zip(jax.tree.leaves(r), jax.tree.leaves(g_neg)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_host_and_xla_sort_paths_give_the_same_groups():
    """The CPU host callback (packed int64 sort, in-place buffers) and the XLA path that other
    backends take return the same sorted keys, ranks and tie-group bounds, under jit and vmap:
    runs of ties at both ends, a single group, one key, negative keys."""
    rng = np.random.default_rng(3)
    cases = [
        rng.integers(-5, 5, 257).astype(np.int32),  # many ties, negative keys
        np.r_[np.full(7, 2**31 - 1), rng.integers(-(2**31), 2**31 - 1, 50), np.full(5, -(2**31))].astype(
            np.int32
        ),  # the int32 extremes at both ends
        np.zeros(9, np.int32),  # one group
        np.array([4], np.int32),
    ]
    sort_and_group = selective._ties._sort_and_group
    for k in cases:
        host = jax.jit(lambda a, b: sort_and_group(a, b, on_host=True))(k, k[::-1].copy())
        xla = jax.jit(lambda a, b: sort_and_group(a, b, on_host=False))(k, k[::-1].copy())
        for h, x in zip(jax.tree.leaves(host), jax.tree.leaves(xla), strict=True):
            np.testing.assert_array_equal(np.asarray(h), np.asarray(x))
        ks, rank, start, end = (np.asarray(a) for a in host[0])
        np.testing.assert_array_equal(ks, np.sort(k))
        np.testing.assert_array_equal(rank, np.searchsorted(ks, k, "left"))
        np.testing.assert_array_equal(start, np.searchsorted(ks, ks, "left"))
        np.testing.assert_array_equal(end, np.searchsorted(ks, ks, "right") - 1)
    batch = np.stack([cases[0], cases[0][::-1]])
    vm = jax.vmap(lambda a: sort_and_group(a, on_host=True)[0])(batch)
    for row in range(2):
        for got, want in zip(vm, sort_and_group(jnp.asarray(batch[row]), on_host=False)[0], strict=True):
            np.testing.assert_array_equal(np.asarray(got[row]), np.asarray(want))


def test_scod_metrics_function_matches_table():
    probs, labels = _case(4, n=400)
    scores = -probs.max(-1)
    ood_scores = np.r_[scores, scores[:200] + 0.05].astype(np.float32)
    is_ood = np.r_[np.zeros(400), np.ones(200)].astype(np.int64)
    err = np.r_[probs.argmax(-1) != labels, np.zeros(200, bool)]
    got = M.scod_metrics(ood_scores, err, is_ood)
    from jaxuq.evaluation import classification_table

    tab = classification_table(probs, labels, ood_scores=ood_scores, smece=False)
    for k, v in got.items():
        assert float(v) == pytest.approx(tab[f"ood/{k}"], abs=1e-7, nan_ok=True)
    losses = np.where(is_ood == 1, 0.5, 0.5 * err)
    ref = ref_selective_f64(-ood_scores, losses)
    assert abs(tab["ood/SCOD_AURC"] - ref["AURC"]) < 1e-6


# ------------------------------------------------------------------ errors
def test_errors_name_argument_and_shape():
    probs, labels = _case(0, n=20, c=3)
    cases = [
        (lambda: M.ece(probs[None], labels), "`probs` must be 2-D"),  # 1-D is a binary task's probs
        (lambda: M.ece(probs[:, 0], labels), "`labels` values must lie in [0, 1]"),
        (lambda: M.ece(probs, labels[:5]), "`labels` has shape (5,)"),
        (lambda: M.ece(probs[:0], labels[:0]), "`probs` is empty"),
        (lambda: M.ece(np.where(np.arange(3) == 0, np.nan, probs), labels), "contains NaN"),
        (lambda: M.ece(probs, labels + 3), "`labels` values must lie in [0, 2] (integer class indices for 3 classes)"),
        (lambda: M.ece(probs * 2, labels), "must lie in [0, 1]"),
        (lambda: M.ece(probs * 0.9, labels), "rows must sum to 1"),
        (lambda: M.ece(probs, labels.astype(np.float32)), "`labels` must hold integer class indices for 3 classes, got dtype float32"),
        (lambda: M.auroc(np.ones(5), np.zeros(5, int)), "single class"),
        (lambda: M.auroc(np.array([0.1, np.inf]), np.array([0, 1])), "`scores` (shape (2,)) contains NaN or inf"),
        (lambda: M.auroc(np.ones(5), np.array([0, 1, 2, 0, 1])), "`is_ood` values must lie in [0, 1]"),
        (lambda: M.auroc(np.ones(4), np.array([0, 1, 1])), "`is_ood` has shape (3,)"),
        (lambda: M.disagreement(probs), "`member_probs` must be 3-D"),
        (lambda: M.auc(np.arange(4.0), np.array([0, 1, 0, 1]), 0.0), "`max_fpr` must be in (0, 1]"),
    ]
    for fn, msg in cases:
        with pytest.raises(ValueError) as e:
            fn()
        assert msg in str(e.value), (msg, str(e.value))


def test_labels_are_never_wrapped_or_truncated():
    """Issue 16: int64 labels >= 2**31 wrapped silently into a valid class, float labels were
    truncated or rejected without saying which value."""
    from jaxuq.evaluation import classification_table

    probs, labels = _case(0, n=20, c=3)
    big = labels.astype(np.int64)
    big[7] = 2**32 + 1  # wraps to class 1 in int32
    for fn in (lambda: M.ece(probs, big), lambda: M.aurc(probs, big),
               lambda: classification_table(probs, big, smece=False)):  # fmt: skip
        with pytest.raises(ValueError, match=r"`labels` values must lie in \[0, 2\].*offending value 4294967297 at index 7"):
            fn()
    neg = labels.astype(np.int64)
    neg[3] = -(2**32) + 2
    with pytest.raises(ValueError, match="offending value -4294967294 at index 3"):
        M.nll(probs, neg)
    flt = labels.astype(np.float64)
    flt[5] = 1.5
    with pytest.raises(ValueError, match=r"`labels` must hold integer .* dtype float64 \(e.g. value 1.5 at index 5\)"):
        M.accuracy(probs, flt)
    with pytest.raises(ValueError, match="dtype float64"):
        classification_table(probs, labels.astype(np.float64), smece=False)
    is_ood = np.array([0, 1, 2**32, 1], np.int64)
    with pytest.raises(ValueError, match="`is_ood` values must lie in \\[0, 1\\].*offending value 4294967296 at index 2"):
        M.auroc(np.arange(4.0), is_ood)
    with pytest.raises(ValueError, match="`ood_labels` values must lie"):
        classification_table(probs, labels, ood_scores=np.arange(24.0), ood_labels=np.r_[np.zeros(20), 2**33, 1, 1, 1].astype(np.int64), smece=False)
    # device int32 labels out of range are still caught (on device, one transfer)
    with pytest.raises(ValueError, match="got range \\[0, 3\\]"):
        M.ece(probs, jnp.asarray(labels).at[0].set(3))


def test_bfloat16_probabilities_are_accepted():
    """Issue 16: a bfloat16 softmax has row sums off by ~5e-3 and was always rejected."""
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(400, 10)) * 3, jnp.bfloat16)
    pb = jax.nn.softmax(logits, axis=-1)
    assert float(jnp.max(jnp.abs(jnp.sum(pb.astype(jnp.float32), -1) - 1))) > 1e-3
    labels = rng.integers(0, 10, 400)
    p32 = np.asarray(pb.astype(jnp.float32))
    assert float(M.nll(pb, labels)) == pytest.approx(float(M.nll(p32 / p32.sum(-1, keepdims=True), labels)), abs=1e-2)
    assert 0 <= float(M.ece(pb, labels)) <= 1
    with pytest.raises(ValueError, match=r"rows must sum to 1 .* > 0.0156"):
        M.ece(pb * 0.9, labels)
    with pytest.raises(ValueError, match=r"> 0.001\)"):
        M.ece(p32 * 0.995, labels)  # float32 keeps the 1e-3 tolerance


# every public metric, with arguments built from (probs [N, C], labels [N]) or (scores, is_ood)
_PL = {
    "accuracy": M.accuracy, "brier_score": M.brier_score, "nll": M.nll, "ece": M.ece, "mce": M.mce,
    "adaptive_ece": M.adaptive_ece, "aurc": M.aurc, "augrc": M.augrc, "cov_at_risk": lambda p, y: M.cov_at_risk(p, y, 0.3),
    "risk_at_cov": M.risk_at_cov, "entropy": lambda p, y: M.entropy(p),
    "disagreement": lambda p, y: M.disagreement(jnp.stack([p, p[::-1]])),
    "ensemble_entropy": lambda p, y: M.ensemble_entropy(jnp.stack([p, p[::-1]])),
    "mutual_information": lambda p, y: M.mutual_information(jnp.stack([p, p[::-1]])),
}  # fmt: skip
_SO = {
    "auroc": M.auroc, "aupr": M.aupr, "fpr95": M.fpr95, "fpr_at_tpr": lambda s, o: M.fpr_at_tpr(s, o, 0.9),
    "auc": lambda s, o: M.auc(s, o, 0.2), "tpr_at_fpr": lambda s, o: M.tpr_at_fpr(s, o, 0.1),
    "scod_metrics": lambda s, o: M.scod_metrics(s, o, o)["SCOD_AURC"],
}  # fmt: skip
_DIFFERENTIABLE = ("brier_score", "nll", "ece", "mce", "adaptive_ece", "entropy", "ensemble_entropy", "mutual_information")


def test_public_metrics_run_under_jit_vmap_and_grad():
    """Issue 16: the host-side validation raised TracerArrayConversionError under jit/vmap/grad."""
    probs, labels = _case(6, n=64, c=4)
    p, y = jnp.asarray(probs), jnp.asarray(labels)
    pb, yb = jnp.stack([p, p[::-1]]), jnp.stack([y, y[::-1]])
    s = -p.max(-1)
    o = jnp.asarray(np.arange(64) % 3 == 0, jnp.int32)
    for name, f in _PL.items():
        eager = float(f(p, y))
        assert float(jax.jit(f)(p, y)) == pytest.approx(eager, abs=1e-6, nan_ok=True), name
        batched = jax.vmap(f)(pb, yb)
        assert batched.shape == (2,) and float(batched[0]) == pytest.approx(eager, abs=1e-6, nan_ok=True), name
    for name in _DIFFERENTIABLE:
        g = jax.grad(lambda q, f=_PL[name]: f(q, y))(p)
        assert g.shape == p.shape and bool(jnp.all(jnp.isfinite(g))), name
    assert float(jnp.abs(jax.grad(lambda q: M.nll(q, y))(p)).sum()) > 0
    for name, f in _SO.items():
        assert float(jax.jit(f)(s, o)) == pytest.approx(float(f(s, o)), abs=1e-6, nan_ok=True), name
        batched = jax.vmap(f)(jnp.stack([s, -s]), jnp.stack([o, o]))
        assert float(batched[0]) == pytest.approx(float(f(s, o)), abs=1e-6, nan_ok=True), name


# ------------------------------------------------------------------ jit vs eager
def test_jit_and_eager_cores_agree():
    probs, labels = _case(5, n=300)
    p, y = jnp.asarray(probs), jnp.asarray(labels)
    s = -p.max(-1)
    o = jnp.asarray(np.arange(300) % 3 == 0, jnp.int32)
    mp = jnp.stack([p, p[::-1]])
    fns = [
        lambda: classification._brier_impl(p, y), lambda: classification._nll_impl(p, y),
        lambda: calibration._ece_impl(p, y), lambda: calibration._aece_impl(p, y),
        lambda: selective._selective_impl(p, y, "AURC"), lambda: selective._selective_impl(p, y, "Cov_5Risk"),
        lambda: ood._auroc_impl(s, o), lambda: ood._aupr_impl(s, o), lambda: ood._fpr_at_tpr_impl(s, o),
        lambda: ood._auc_impl(s, o, max_fpr=0.2), lambda: ensemble._mi_impl(mp),
    ]  # fmt: skip
    for f in fns:
        jitted = float(f())
        with jax.disable_jit():
            eager = float(f())
        assert jitted == pytest.approx(eager, abs=2e-7, nan_ok=True)


# ------------------------------------------------------------------ streaming
_FULL = {
    "accuracy": M.accuracy, "brier_score": M.brier_score, "nll": M.nll, "ece": M.ece, "mce": M.mce,
    "adaptive_ece": M.adaptive_ece, "aurc": M.aurc, "augrc": M.augrc, "cov_at_risk": lambda p, y: M.cov_at_risk(p, y, 0.3),
    "risk_at_cov": M.risk_at_cov,
}  # fmt: skip
_STREAM = {k: getattr(streaming, k) for k in _FULL}
_STREAM["cov_at_risk"] = lambda: streaming.cov_at_risk(0.3)
_PROBS, _LABELS = _case(11, n=257)
_OOD = (np.random.default_rng(1).random(257) < 0.5).astype(np.int64)
_MP = np.stack([_PROBS, _PROBS[::-1], _case(12, n=257)[0]])


def _cuts(data, n):
    # cut points on a coarse grid so batch shapes repeat (keeps jit recompiles bounded)
    cuts = sorted(set(data.draw(st.lists(st.sampled_from(range(64, n, 64)), max_size=4))))
    return list(zip([0] + cuts, cuts + [n]))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_streaming_any_batching_equals_full_array(data):
    n = len(_LABELS)
    parts = _cuts(data, n)
    for name, factory in _STREAM.items():
        m = factory()
        # split the batches over two "devices" and merge
        s1, s2 = m.init(), m.init()
        for i, (a, b) in enumerate(parts):
            if i % 2:
                s2 = m.update(s2, _PROBS[a:b], _LABELS[a:b])
            else:
                s1 = m.update(s1, _PROBS[a:b], _LABELS[a:b])
        got, want = float(m.compute(m.merge(s1, s2))), float(_FULL[name](_PROBS, _LABELS))
        assert got == pytest.approx(want, abs=1e-6, nan_ok=True), name
    scores = -_PROBS.max(-1)
    for m, full in ((streaming.auroc(), M.auroc), (streaming.aupr(), M.aupr), (streaming.fpr_at_tpr(), M.fpr95)):
        s = m.init()
        for a, b in parts:
            s = m.update(s, scores[a:b], _OOD[a:b])
        assert float(m.compute(s)) == pytest.approx(float(full(scores, _OOD)), abs=1e-6)
    for m, full in ((streaming.disagreement(), M.disagreement), (streaming.mutual_information(), M.mutual_information),
                    (streaming.ensemble_entropy(), M.ensemble_entropy)):  # fmt: skip
        s = m.init()
        for a, b in parts:
            s = m.update(s, _MP[:, a:b], )
        assert float(m.compute(s)) == pytest.approx(float(full(_MP)), abs=1e-6)


def test_streaming_tied_inputs_equal_full_array_in_any_order():
    probs, labels = _tied_case(4, n=600)
    perm = np.random.default_rng(0).permutation(600)
    for name in ("aurc", "augrc", "cov_at_risk", "risk_at_cov", "adaptive_ece"):
        m = _STREAM[name]()
        states = [m.update(m.init(), probs[perm[a : a + 200]], labels[perm[a : a + 200]]) for a in (0, 200, 400)]
        got = float(m.compute(m.merge(states[2], m.merge(states[0], states[1]))))
        want = float(_FULL[name](probs, labels))
        assert got == pytest.approx(want, abs=1e-7, nan_ok=True), name


def test_streaming_smece_and_reliability():
    m = streaming.smooth_ece()
    s = m.init()
    for a in range(0, 257, 100):
        s = m.update(s, _PROBS[a : a + 100], _LABELS[a : a + 100])
    assert m.compute(s) == pytest.approx(M.smooth_ece(_PROBS, _LABELS), abs=1e-9)
    r = streaming.reliability()
    s = r.init()
    for a in range(0, 257, 64):
        s = r.update(s, _PROBS[a : a + 64], _LABELS[a : a + 64])
    full = M.reliability_diagram_data(_PROBS, _LABELS)
    np.testing.assert_array_equal(r.compute(s).counts, full.counts)
    np.testing.assert_allclose(r.compute(s).conf, full.conf, atol=1e-6)


# ------------------------------------------------------------------ complexity
class FlaxLeNet(nn.Module):
    """TU's lenet(1, 10) in Flax (NHWC), for the FLOP / parameter counts."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(6, (5, 5), padding="VALID", name="conv1")(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(16, (5, 5), padding="VALID", name="conv2")(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(120, name="fc1")(x))
        x = nn.relu(nn.Dense(84, name="fc2")(x))
        return nn.Dense(10, name="fc3")(x)


def test_count_flops_lenet_matches_tu_numbers():
    model = FlaxLeNet()
    x = np.zeros((1, 28, 28, 1), np.float32)
    variables = model.init(jax.random.key(0), x)
    assert M.count_params(variables["params"]) == 44426
    assert M.count_flops(lambda v: model.apply(variables, v), x) == 563280
    x128 = jax.ShapeDtypeStruct((128, 28, 28, 1), jnp.float32)
    assert M.count_flops(jax.jit(lambda v: model.apply(variables, v)), x128) == 72_099_840
    # recursion into sub-jaxprs: scan counts length times, custom_jvp bodies are walked
    w = jnp.ones((8, 8))
    scanned = lambda v: jax.lax.scan(lambda c, _: (jax.nn.relu(c @ w), None), v, None, length=3)[0]
    assert M.count_flops(scanned, jnp.ones((2, 8))) == 3 * 2 * 2 * 8 * 8
    assert M.count_flops(lambda v: jax.nn.gelu(v @ w), jnp.ones((2, 8))) == 2 * 2 * 8 * 8
