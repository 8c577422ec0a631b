"""OOD criteria vs torch-uncertainty 0.13.0's ood_criteria classes (|delta| <= 1e-6)."""

import numpy as np
import pytest

from jaxuq.ood import criteria as K
from tests.helpers import require


def _logits(m, n=400, c=10, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(m, n, c)) * rng.uniform(0.5, 4, size=(1, n, 1))).astype(np.float32)


@pytest.mark.parity
@pytest.mark.parametrize("m", [1, 3])
def test_criteria_match_tu(m):
    torch = require("torch")
    require("torch_uncertainty")
    from torch_uncertainty import ood_criteria as T

    z = _logits(m, seed=m)
    zt = torch.tensor(z).permute(1, 0, 2)  # TU: (B, M, C)
    pe = zt.softmax(-1)
    ref = {
        "msp": T.MaxSoftmaxCriterion()(pe.mean(1)),
        "entropy": T.EntropyCriterion()(pe),
    }
    if m == 1:
        ref["logit"] = T.MaxLogitCriterion()(zt)
        ref["energy"] = T.EnergyCriterion()(zt)
    else:
        ref["mutual_information"] = T.MutualInformationCriterion()(pe)
        ref["variation_ratio"] = T.VariationRatioCriterion()(pe)
    for name, r in ref.items():
        ours = np.asarray(K.score(name, z if m > 1 else z[0]))
        np.testing.assert_allclose(ours, r.numpy(), atol=1e-6, rtol=0, err_msg=name)
    d = np.random.default_rng(0).uniform(size=50).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(K.score("deup", d)), T.DEUPCriterion()(torch.tensor(d)).numpy())


def test_restrictions_raise_like_tu():
    single, ens = _logits(1)[0], _logits(4)
    for name in ["logit", "max_logit", "energy"]:
        with pytest.raises(NotImplementedError):
            K.score(name, ens)
        K.score(name, single)
    for name in ["mutual_information", "variation_ratio"]:
        with pytest.raises(ValueError):
            K.score(name, single)
        K.score(name, ens)
    with pytest.raises(ValueError, match="must be one of"):
        K.get_criterion("odin")
    with pytest.raises(ValueError, match="shape"):
        K.msp(np.zeros((2, 3, 4, 5)))


def test_signs_higher_is_more_ood():
    confident = np.array([[10.0, 0, 0]], np.float32)
    flat = np.array([[0.1, 0, 0]], np.float32)
    for name in ["msp", "logit", "energy", "entropy"]:
        assert float(K.score(name, flat)[0]) > float(K.score(name, confident)[0]), name
    agree = np.stack([confident, confident])
    disagree = np.stack([confident, confident[:, ::-1].copy()])
    for name in ["mutual_information", "variation_ratio"]:
        assert float(K.score(name, disagree)[0]) > float(K.score(name, agree)[0]), name
    # MI is clamped per sample, never negative
    assert float(K.mutual_information_score(agree).min()) >= 0.0


def test_one_name_per_meaning():
    """The criteria are ``*_score`` (per-sample [N]); ``entropy`` / ``mutual_information`` are the
    metrics' names only, and ``tpr_at_fpr`` exists once, as the metric on ``(scores, is_ood)``."""
    import jaxuq.metrics as M
    import jaxuq.ood as ood
    from jaxuq.ood import confidence_metrics as E

    for gone in ["entropy", "mutual_information", "tpr_at_fpr"]:
        assert not hasattr(ood, gone) and not hasattr(K, gone) and not hasattr(E, gone), gone
    for gone in ["auroc", "aupr", "fpr_at_tpr"]:  # the (conf_ind, conf_ood) wrappers are *_conf
        assert not hasattr(E, gone), gone
    z = _logits(3, n=50)
    assert K.CRITERIA["entropy"] is K.entropy_score is ood.entropy_score
    assert K.CRITERIA["mutual_information"] is K.mutual_information_score is ood.mutual_information_score
    assert K.entropy_score(z).shape == (50,) and K.mutual_information_score(z).shape == (50,)
    # tpr_at_fpr_conf(conf_ind, conf_ood) is the metric on score = -confidence, OOD positive
    rng = np.random.default_rng(1)
    ci, co = rng.normal(1, 1, 300), rng.normal(0, 1, 200)
    scores, is_ood = -np.r_[ci, co].astype(np.float32), np.r_[np.zeros(300, int), np.ones(200, int)]
    for f in [0.0, 0.05, 0.3, 1.0]:
        assert E.tpr_at_fpr_conf(ci, co, f) == float(M.tpr_at_fpr(scores, is_ood, f)), f
    assert E.auroc_conf(ci, co) == float(M.auroc(scores, is_ood)) > 0.7
