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
    assert float(K.mutual_information(agree).min()) >= 0.0
