"""TU 0.13.0's metric options on jaxuq's metrics, against TU's metric classes on random inputs (<= 1e-6):
``reduction``, Brier's ``top_class`` and ensemble input, binary tasks, ECE's ``num_bins``/``norm``,
the adaptive ECE's norms, SmECE's kernel and bandwidth, ``classwise_ece`` and ``variation_ratio``.
Edge cases after TU's own test suite: all correct, confidence exactly 1, ties, one class present."""

import jax
import numpy as np
import pytest

from jaxuq import metrics as M
from tests.helpers import require

pytestmark = pytest.mark.parity

REDUCTIONS = ["mean", "sum", "none", None]


def _probs(shape, seed, temp=2.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=shape) * temp
    e = np.exp(z - z.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def _labels(n, c, seed):
    return np.random.default_rng(seed + 100).integers(0, c, n)


def _tu(metric, *inputs):
    torch = require("torch")
    metric.update(*[torch.tensor(np.asarray(a)) for a in inputs])
    return metric.compute().numpy()


def _close(ours, ref, atol=1e-6):
    """<= 1e-6, relative for the float32 sums of ``reduction="sum"`` (hundreds: 1 ulp = 3e-5)."""
    np.testing.assert_allclose(np.asarray(ours, np.float64), np.asarray(ref, np.float64), atol=atol, rtol=1e-6)


def _tu_cls():
    require("torch")
    return require("torch_uncertainty.metrics.classification")


# ----------------------------------------------------------------------------- reductions
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_reductions_match_tu(reduction):
    T = _tu_cls()
    torch = require("torch")
    p, y = _probs((300, 7), 0), _labels(300, 7, 0)
    ens = _probs((4, 300, 7), 1)
    ens_bmc = ens.transpose(1, 0, 2)
    pairs = [
        (M.brier_score(p, y, reduction=reduction), _tu(T.BrierScore(7, reduction=reduction), p, y)),
        (M.nll(p, y, reduction=reduction), _tu(T.CategoricalNLL(reduction=reduction), p, y)),
        (M.entropy(p, reduction=reduction), _tu(T.Entropy(reduction=reduction), p)),
        (M.ensemble_entropy(ens, reduction=reduction), _tu(T.Entropy(reduction=reduction), ens_bmc)),
        (M.disagreement(ens, reduction=reduction), _tu(T.Disagreement(reduction=reduction), ens_bmc)),
        (M.mutual_information(ens, reduction=reduction), _tu(T.MutualInformation(reduction=reduction), ens_bmc)),
        (M.variation_ratio(ens, reduction=reduction), _tu(T.VariationRatio(reduction=reduction), ens)),
        (M.variation_ratio(ens, probabilistic=False, reduction=reduction),
         _tu(T.VariationRatio(probabilistic=False, reduction=reduction), ens)),
    ]
    for i, (ours, ref) in enumerate(pairs):
        assert np.shape(ours) == np.shape(ref), (i, np.shape(ours), np.shape(ref))
        _close(ours, ref)
    # TU accumulates over updates; one call on the whole array is the same number
    m = T.BrierScore(7, reduction=reduction)
    for part in np.array_split(np.arange(300), 3):
        m.update(torch.tensor(p[part]), torch.tensor(y[part]))
    _close(M.brier_score(p, y, reduction=reduction), m.compute().numpy())


def test_mutual_information_clamps_like_tu():
    """Identical members: MI is 0 up to rounding; TU clamps each sample for 'none', the sum otherwise."""
    T = _tu_cls()
    ens = np.repeat(_probs((1, 200, 5), 2), 3, axis=0)
    for reduction in REDUCTIONS:
        ours = M.mutual_information(ens, reduction=reduction)
        _close(ours, _tu(T.MutualInformation(reduction=reduction), ens.transpose(1, 0, 2)))
        assert np.all(np.asarray(ours) >= 0)


# ----------------------------------------------------------------------------- Brier options, binary
@pytest.mark.parametrize("top_class", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_brier_top_class_ensemble_and_binary_match_tu(top_class, reduction):
    T = _tu_cls()
    p, y = _probs((250, 6), 3), _labels(250, 6, 3)
    ens = _probs((3, 250, 6), 4)
    kw = dict(top_class=top_class, reduction=reduction)
    _close(M.brier_score(p, y, **kw), _tu(T.BrierScore(6, **kw), p, y))
    _close(M.brier_score(ens, y, **kw), _tu(T.BrierScore(6, **kw), ens.transpose(1, 0, 2), y))
    pb = np.random.default_rng(5).uniform(size=250).astype(np.float32)
    yb = _labels(250, 2, 5)
    for ours_in, tu_in in [(pb, pb), (pb[:, None], pb[:, None]),
                           (np.stack([pb, pb[::-1]])[..., None], np.stack([pb, pb[::-1]], 1)[..., None])]:
        _close(M.brier_score(ours_in, yb, **kw), _tu(T.BrierScore(1, **kw), tu_in, yb))


def test_nll_and_ece_binary_match_tu():
    T = _tu_cls()
    rng = np.random.default_rng(6)
    pb = np.concatenate([rng.uniform(size=300), [0.0, 1.0, 0.5, 1.0]]).astype(np.float32)
    yb = np.concatenate([_labels(300, 2, 6), [0, 1, 1, 1]])
    for reduction in REDUCTIONS:
        _close(M.nll(pb, yb, reduction=reduction), _tu(T.CategoricalNLL(reduction=reduction), pb, yb))
    for num_bins, norm in [(1, "l1"), (4, "l2"), (10, "max"), (15, "l1"), (15, "l2")]:
        ref = _tu(T.CalibrationError(task="binary", num_bins=num_bins, norm=norm), pb, yb)
        _close(M.ece(pb, yb, num_bins=num_bins, norm=norm), ref)
        ref = _tu(T.AdaptiveCalibrationError(task="binary", num_bins=num_bins, norm=norm), pb[:300], yb[:300])
        _close(M.adaptive_ece(pb[:300], yb[:300], num_bins, norm=norm), ref)


# ----------------------------------------------------------------------------- ECE options
@pytest.mark.parametrize("num_bins", [1, 5, 10, 15, 30, 100])
def test_ece_bins_and_norms_match_tu(num_bins):
    T = _tu_cls()
    p, y = _probs((400, 10), 7, temp=4.0), _labels(400, 10, 7)
    p[:5] = np.eye(10, dtype=np.float32)[y[:5]]  # confidence exactly 1.0 (the extra slot)
    for norm in ["l1", "l2", "max"]:
        ref = _tu(T.CalibrationError(task="multiclass", num_bins=num_bins, norm=norm, num_classes=10), p, y)
        _close(M.ece(p, y, num_bins=num_bins, norm=norm), ref)
        ref = _tu(T.AdaptiveCalibrationError(task="multiclass", num_bins=num_bins, norm=norm, num_classes=10), p, y)
        _close(M.adaptive_ece(p, y, num_bins, norm=norm), ref)
    _close(M.ece(p, y, num_bins=num_bins, norm="max"),
           _tu(T.CalibrationError(task="multiclass", num_bins=num_bins, norm="max", num_classes=10), p, y))
    if num_bins == 15:
        assert float(M.ece(p, y, norm="max")) == float(M.mce(p, y))


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_classwise_ece_matches_tu(norm, reduction):
    T = _tu_cls()
    p, y = _probs((300, 5), 8), _labels(300, 5, 8)
    for num_bins in [3, 15]:
        ref = _tu(T.ClasswiseCalibrationError(5, num_bins=num_bins, norm=norm, reduction=reduction), p, y)
        ours = M.classwise_ece(p, y, num_bins=num_bins, norm=norm, reduction=reduction)
        assert np.shape(ours) == np.shape(ref)
        _close(ours, ref)


@pytest.mark.parametrize("kernel", ["logit", "reflected"])
@pytest.mark.parametrize("bandwidth", ["auto", 0.05, 0.3])
def test_smooth_ece_kernels_and_bandwidths_match_tu(kernel, bandwidth):
    T = _tu_cls()
    p, y = _probs((400, 4), 9, temp=1.5), _labels(400, 4, 9)
    m = T.SmoothCalibrationError(kernel_type=kernel, bandwidth=bandwidth)
    ref = _tu(m, p, y)
    value, bw = M.smooth_ece(p, y, kernel=kernel, bandwidth=bandwidth, return_bandwidth=True)
    assert bw == m.final_bandwidth
    _close(value, ref)
    pb, yb = np.random.default_rng(10).uniform(size=300).astype(np.float32), _labels(300, 2, 10)
    pb[:3] = [0.5, 0.0, 1.0]
    _close(M.smooth_ece(pb, yb, kernel=kernel, bandwidth=bandwidth),
           _tu(T.SmoothCalibrationError(kernel_type=kernel, bandwidth=bandwidth), pb, yb))


# ----------------------------------------------------------------------------- edge cases
def test_edge_cases_match_tu():
    T = _tu_cls()
    y = _labels(200, 4, 11)
    cases = {
        "all correct, confident": np.eye(4, dtype=np.float32)[y] * 0.96 + 0.01,
        "all correct, exactly one-hot": np.eye(4, dtype=np.float32)[y],
        "ties (quantised)": np.round(_probs((200, 4), 12) * 8) / 8,
    }
    cases["ties (quantised)"] = (cases["ties (quantised)"] + 1e-3) / (cases["ties (quantised)"] + 1e-3).sum(
        -1, keepdims=True)
    for p in cases.values():
        p = p.astype(np.float32)
        for yy in (y, np.full(200, 2)):  # every class / a single class present
            for norm in ["l1", "l2", "max"]:
                _close(M.ece(p, yy, num_bins=10, norm=norm),
                       _tu(T.CalibrationError(task="multiclass", num_bins=10, norm=norm, num_classes=4), p, yy))
                _close(M.classwise_ece(p, yy, norm=norm), _tu_classwise(p, yy, norm))
            _close(M.brier_score(p, yy, top_class=True), _tu(T.BrierScore(4, top_class=True), p, yy))
            _close(M.nll(p, yy, reduction="sum"), _tu(T.CategoricalNLL(reduction="sum"), p, yy), atol=1e-4)


def _tu_classwise(p, y, norm):
    """TU's ``ClasswiseCalibrationError`` (mean over classes), which raises ``RuntimeError`` (``mean()``
    of a Long tensor) when ``norm="l2"`` and some class is perfectly calibrated: torchmetrics returns an
    integer ``tensor(0)`` there. jaxuq returns 0.0 for that class (deviation); the reference is TU's
    own per-class metric, as floats."""
    torch = require("torch")
    T = _tu_cls()
    try:
        return _tu(T.ClasswiseCalibrationError(p.shape[1], norm=norm), p, y)
    except RuntimeError:
        assert norm == "l2"
    from torch_uncertainty.metrics.classification.calibration.calibration_error import (
        TUBinaryCalibrationError,
    )

    onehot = np.eye(p.shape[1], dtype=np.int64)[y]
    per = [float(TUBinaryCalibrationError(n_bins=15, norm=norm)(torch.tensor(p[:, c]), torch.tensor(onehot[:, c])))
           for c in range(p.shape[1])]
    return np.float32(np.mean(np.float32(per)))


# ----------------------------------------------------------------------------- jit, validation
def test_options_are_jittable():
    p, y = _probs((100, 5), 13), _labels(100, 5, 13)
    ens = _probs((3, 100, 5), 14)
    pb = p[:, 0]
    yb = (y == 0).astype(int)
    calls = [
        lambda p, y, e, pb: M.brier_score(e, y, top_class=True, reduction="none"),
        lambda p, y, e, pb: M.nll(pb, yb, reduction="sum"),
        lambda p, y, e, pb: M.entropy(p, reduction="none"),
        lambda p, y, e, pb: M.ece(p, y, num_bins=7, norm="l2"),
        lambda p, y, e, pb: M.ece(pb, yb, num_bins=7),
        lambda p, y, e, pb: M.adaptive_ece(p, y, 10, norm="max"),
        lambda p, y, e, pb: M.classwise_ece(p, y, reduction="none"),
        lambda p, y, e, pb: M.variation_ratio(e, reduction="sum"),
        lambda p, y, e, pb: M.mutual_information(e, reduction="none"),
        lambda p, y, e, pb: M.disagreement(e, reduction="none"),
    ]
    for i, f in enumerate(calls):
        np.testing.assert_allclose(np.asarray(jax.jit(f)(p, y, ens, pb)), np.asarray(f(p, y, ens, pb)),
                                   atol=1e-7, rtol=0, err_msg=str(i))


def test_bad_options_are_refused():
    p, y = _probs((50, 3), 15), _labels(50, 3, 15)
    ens = _probs((2, 50, 3), 16)
    with pytest.raises(ValueError, match="reduction"):
        M.brier_score(p, y, reduction="max")
    with pytest.raises(ValueError, match="reduction"):
        M.variation_ratio(ens, reduction="avg")
    with pytest.raises(TypeError, match="top_class"):
        M.brier_score(p, y, top_class="yes")
    with pytest.raises(ValueError, match="norm"):
        M.ece(p, y, norm="l3")
    with pytest.raises(ValueError, match="num_bins"):
        M.ece(p, y, num_bins=0)
    with pytest.raises(TypeError, match="num_bins"):
        M.classwise_ece(p, y, num_bins=2.5)
    with pytest.raises(ValueError, match="kernel"):
        M.smooth_ece(p, y, kernel="box")
    with pytest.raises(ValueError, match="bandwidth"):
        M.smooth_ece(p, y, bandwidth=-0.1)
    with pytest.raises(ValueError, match="bandwidth"):
        M.smooth_ece(p, y, bandwidth=float("nan"))
    with pytest.raises(ValueError, match="probs"):
        M.nll(np.full(50, 1.5, np.float32), (y > 0).astype(int))
    with pytest.raises(ValueError, match="labels"):
        M.ece(p[:, 0], y)  # binary probabilities need 0/1 labels
    with pytest.raises(ValueError, match="probs"):
        M.brier_score(p[:, :2], y % 2)  # 2 classes that do not sum to 1


def test_classwise_l2_where_tu_crashes():
    """Deviation: TU's ClasswiseCalibrationError(norm="l2") raises on a perfectly calibrated class."""
    T = _tu_cls()
    y = _labels(60, 3, 17)
    p = np.eye(3, dtype=np.float32)[y]
    with pytest.raises(RuntimeError, match="mean"):
        _tu(T.ClasswiseCalibrationError(3, norm="l2"), p, y)
    assert float(M.classwise_ece(p, y, norm="l2")) == 0.0
