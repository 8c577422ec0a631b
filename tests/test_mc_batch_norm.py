"""MC-BatchNorm (``jaxuq.calibration.mc_batch_norm``) against TU 0.13.0's ``MCBatchNorm`` on the same
unshuffled calibration batches: the M statistics sets, and the M predictions through the one forward
pass (``jaxuq.predict`` with ``sampler=StackedBatchStats(M)``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxuq
from jaxuq import models
from jaxuq.calibration import mc_batch_norm_fit
from jaxuq.forward import StackedBatchStats
from tests.helpers import require

pytestmark = pytest.mark.parity
M, BS = 3, 5


@pytest.fixture(scope="module")
def bn_lenet():
    torch = require("torch")
    require("torch_uncertainty")
    from torch import nn
    from torch_uncertainty.models.classification import lenet

    from converters.mappings import convert_state_dict
    from tests.torch_models import randomize_, state_dict_numpy

    torch.manual_seed(0)
    tu = randomize_(lenet(1, 10, norm=nn.BatchNorm2d)).eval()
    module, variables = convert_state_dict("lenet", state_dict_numpy(tu), in_channels=1, num_classes=10,
                                           norm="batchnorm")
    rng = np.random.default_rng(1)
    cal = rng.standard_normal((M * BS, 28, 28, 1)).astype(np.float32)
    x = rng.standard_normal((4, 28, 28, 1)).astype(np.float32)
    return tu, module, variables, cal, x


@pytest.mark.parametrize("n_cal", [M * BS, M * BS - 3])  # the second ends with TU's partial last batch
def test_statistics_and_logits_match_tu(bn_lenet, n_cal):
    torch = require("torch")
    from torch.utils.data import DataLoader, TensorDataset
    from torch_uncertainty.post_processing import MCBatchNorm

    tu, module, variables, cal, x = bn_lenet
    cal = cal[:n_cal]
    MCBatchNorm.mc_batch_norm_layers = []  # TU keeps the converted layers in a class-level list
    mcbn = MCBatchNorm(tu, num_estimators=M, mc_batch_size=BS)
    t_cal = torch.from_numpy(cal.transpose(0, 3, 1, 2).copy())
    mcbn.fit(DataLoader(TensorDataset(t_cal, torch.zeros(n_cal, dtype=torch.long)), batch_size=64))
    mcbn.eval()
    with torch.no_grad():
        ref = mcbn(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    stats = mc_batch_norm_fit(module, variables, cal, num_estimators=M, mc_batch_size=BS)
    for name in ("norm1", "norm2"):
        layer = getattr(mcbn.model, name)
        assert stats[name]["mean"].shape == (M, layer.num_features)
        assert np.max(np.abs(np.asarray(stats[name]["mean"]) - layer.means.numpy())) <= 1e-5
        assert np.max(np.abs(np.asarray(stats[name]["var"]) - layer.vars.numpy())) <= 1e-5
    out = jaxuq.predict(module, {**variables, "batch_stats": stats}, x, sampler=StackedBatchStats(M))  # no key
    assert out.shape == (M, 4, 10)
    assert np.max(np.abs(out.reshape(M * 4, 10) - ref)) <= 1e-5
    assert np.std(out, axis=0).max() > 1e-3  # the sets differ
    table = jaxuq.evaluate(module, {**variables, "batch_stats": stats}, (x, np.arange(4)), sampler=StackedBatchStats(M),
                           smece=False, progress=False)
    assert {"test/ens_Disagreement", "test/ens_MI", "test/ens_Entropy"} <= set(table)  # an ensemble for TU's table


def test_shuffled_calibration_and_uint8_preprocess(bn_lenet):
    from jaxuq.data import MNIST_NORM, Preprocess

    _, module, variables, _, x = bn_lenet
    imgs = np.random.default_rng(2).integers(0, 256, (M * BS, 28, 28, 1)).astype(np.uint8)
    pre = Preprocess(*MNIST_NORM)
    ordered = mc_batch_norm_fit(module, variables, imgs, M, BS, preprocess=pre)
    same = mc_batch_norm_fit(module, variables, np.asarray(pre.eval(jnp.asarray(imgs))), M, BS)
    np.testing.assert_allclose(np.asarray(ordered["norm1"]["mean"]), np.asarray(same["norm1"]["mean"]), atol=1e-6)
    key = jax.random.key(0)
    shuffled = mc_batch_norm_fit(module, variables, imgs, M, BS, key=key, preprocess=pre)
    perm = np.asarray(jax.random.permutation(key, M * BS))
    again = mc_batch_norm_fit(module, variables, imgs[perm], M, BS, preprocess=pre)
    np.testing.assert_allclose(np.asarray(shuffled["norm2"]["var"]), np.asarray(again["norm2"]["var"]), atol=1e-6)


def test_bad_input_is_refused(bn_lenet):
    _, module, variables, cal, _ = bn_lenet
    with pytest.raises(ValueError, match="`num_estimators` must be >= 1"):
        mc_batch_norm_fit(module, variables, cal, 0, BS)
    with pytest.raises(TypeError, match="`mc_batch_size` must be an int"):
        mc_batch_norm_fit(module, variables, cal, M, 2.5)
    with pytest.raises(ValueError, match="dataset is too small"):
        mc_batch_norm_fit(module, variables, cal[: (M - 1) * BS], M, BS)
    plain = models.get("lenet", in_channels=1, num_classes=10)
    v = jax.eval_shape(lambda: plain.init(jax.random.key(0), cal[:1]))
    with pytest.raises(ValueError, match="no jaxuq.nn.BatchNorm layer"):
        mc_batch_norm_fit(plain, v, cal, M, BS)
