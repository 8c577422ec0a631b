"""MC Dropout (``jaxuq.sampling.mc_dropout``) against TU 0.13.0's ``mc_dropout`` with injected masks,
predicted through the one forward pass (``jaxuq.forward.forward`` / ``predict`` / ``evaluate`` with
``sampler=``).

jaxuq draws the masks (``jaxuq.nn.Dropout`` sows them into ``dropout_masks``), torch's dropout is made
to use the very same masks (``experiments._inject.dropout_masks``), so the check is exact.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxuq
from jaxuq import models
from jaxuq.forward import forward
from jaxuq.nn import Dropout
from jaxuq.nn.dropout import MASKS
from jaxuq.sampling import MCDropout, find_layers, mc_dropout
from tests.helpers import require

M, B = 3, 4
CALL_ORDER = [("conv_dropout", 0), ("conv_dropout", 1), ("fc_dropout", 0), ("last_fc_dropout", 0)]


@pytest.fixture(scope="module")
def tu_lenet():
    """TU lenet(dropout_rate=0.3, BatchNorm with random statistics), its jaxuq twin and an input."""
    torch = require("torch")
    require("torch_uncertainty")
    from torch import nn
    from torch_uncertainty.models.classification import lenet

    from converters.mappings import convert_state_dict
    from tests.torch_models import randomize_, state_dict_numpy

    torch.manual_seed(0)
    tu = randomize_(lenet(1, 10, norm=nn.BatchNorm2d, dropout_rate=0.3)).eval()
    module, variables = convert_state_dict("lenet", state_dict_numpy(tu), in_channels=1, num_classes=10,
                                           norm="batchnorm", dropout_rate=0.3)
    x = np.random.default_rng(0).normal(size=(B, 28, 28, 1)).astype(np.float32)
    return tu, module, variables, x


def _sampled(module, variables, x, sampler, key):
    """Logits [M, B, C] and the sown masks of each sample, by the sampler's own draw with the forward
    pass's keys (``split(key, M)``)."""

    def one(k):
        v, rngs = sampler.draw(variables, k)
        return module.apply(v, x, train=False, rngs=rngs, mutable=[MASKS])

    logits, state = jax.vmap(one)(jax.random.split(key, sampler.num_samples))
    return np.asarray(logits), jax.tree.map(np.asarray, state[MASKS])


def _torch_masks(masks, on_batch: bool) -> list:
    """Masks in torch's call order: one forward on the (m b) batch, or M forwards."""
    calls = [(name, i) for name, i in CALL_ORDER if name in masks]
    per_call = [masks[name]["mask"][i] for name, i in calls]  # each [M, B, ...]
    if on_batch:
        return [_nchw(m.reshape((-1,) + m.shape[2:])) for m in per_call]
    return [_nchw(m[s]) for s in range(M) for m in per_call]


def _nchw(mask):
    from experiments._inject import masks_nhwc_to_torch

    return masks_nhwc_to_torch(mask)


pytestmark = pytest.mark.parity


@pytest.mark.parametrize("last_layer", [False, True])
@pytest.mark.parametrize("on_batch", [True, False])
def test_logits_equal_tu_with_injected_masks(tu_lenet, last_layer, on_batch):
    torch = require("torch")
    from torch_uncertainty.methods import mc_dropout as tu_mc_dropout

    from experiments._inject import dropout_masks

    tu, module, variables, x = tu_lenet
    sampler = mc_dropout(module, variables, x, M, last_layer=last_layer, on_batch=on_batch)
    assert sampler.layers == ((("last_fc_dropout",),) if last_layer else
                              (("conv_dropout",), ("fc_dropout",), ("last_fc_dropout",)))
    key = jax.random.key(7)
    logits, masks = _sampled(module, variables, x, sampler, key)
    assert sampler.lowering == ("vmap" if on_batch else "map")  # TU's on_batch: all at once or a loop
    np.testing.assert_allclose(np.asarray(forward(module, variables, x, sampler=sampler, key=key)), logits,
                               atol=1e-6)
    wrapped = tu_mc_dropout(tu, num_estimators=M, last_layer=last_layer, on_batch=on_batch).eval()
    with dropout_masks(_torch_masks(masks, on_batch)), torch.no_grad():
        ref = wrapped(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    diff = np.max(np.abs(logits.reshape(M * B, -1) - ref))
    assert diff <= 1e-5, diff
    assert np.std(logits, axis=0).max() > 1e-3  # the samples differ


def test_rate_zero_layers_give_the_plain_model(tu_lenet):
    torch = require("torch")
    tu, _, variables, x = tu_lenet
    plain = models.get("lenet", in_channels=1, num_classes=10, norm="batchnorm", dropout_rate=0.0)
    for m in tu.modules():  # same weights, p = 0: TU's eval forward
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.p = 0.0
    with torch.no_grad():
        ref = tu(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    for m in tu.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.p = 0.3
    sampler = MCDropout(M, (("conv_dropout",), ("fc_dropout",), ("last_fc_dropout",)))
    out = np.asarray(forward(plain, variables, x, sampler=sampler, key=jax.random.key(0)))
    assert out.shape == (M, B, 10)
    assert np.max(np.abs(out - ref[None])) <= 1e-5
    np.testing.assert_array_equal(out[0], np.asarray(plain.apply(variables, x)))


def test_predict_on_batch_true_and_false_agree(tu_lenet):
    _, module, variables, x = tu_lenet

    def run(key, on_batch=True):
        return jaxuq.predict(module, variables, x, sampler=mc_dropout(module, variables, x, M, on_batch=on_batch),
                             key=jax.random.key(key), batch_size=3)  # two batches: fold_in(key, i)

    a, b, c = run(3), run(3, on_batch=False), run(4)
    assert a.shape == (M, B, 10)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert np.max(np.abs(a - c)) > 1e-3


def test_layers_found_in_resnet_and_last_layer():
    m = models.get("resnet", in_channels=3, num_classes=10, arch=18, style="cifar", dropout_rate=0.1)
    x = jnp.zeros((1, 32, 32, 3))
    v = jax.eval_shape(lambda: m.init(jax.random.key(0), x))
    paths = [p for p, _ in find_layers(m, v, x, Dropout)]
    assert len(paths) == 9 and paths[0] == ("layer1_0", "dropout") and paths[-1] == ("final_dropout",)
    assert mc_dropout(m, v, x, 2, last_layer=True).layers == (("final_dropout",),)


def test_bad_input_is_refused(tu_lenet):
    _, module, variables, x = tu_lenet
    with pytest.raises(ValueError, match="`num_estimators` must be >= 1"):
        mc_dropout(module, variables, x, 0)
    with pytest.raises(TypeError, match="`num_estimators` must be an int"):
        mc_dropout(module, variables, x, 2.0)
    with pytest.raises(ValueError, match="rate > 0"):
        mc_dropout(models.get("lenet", in_channels=1, num_classes=10, norm="batchnorm"), variables, x, 2)
    no_dropout = models.get("resnet20")
    xc = jnp.zeros((1, 32, 32, 3))
    v = jax.eval_shape(lambda: no_dropout.init(jax.random.key(0), xc))
    with pytest.raises(ValueError, match="no jaxuq.nn.Dropout layer"):
        mc_dropout(no_dropout, v, xc, 2)
    for rate in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"dropout rate must be in \[0, 1\)"):
            Dropout(rate).init(jax.random.key(0), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="no 'mc_dropout' rng"):
        v, _ = MCDropout(2, (("fc_dropout",),)).draw(variables, jax.random.key(0))
        module.apply(v, x, train=False)


def test_samples_are_an_ensemble_for_the_table(tu_lenet):
    _, module, variables, x = tu_lenet
    sampler = mc_dropout(module, variables, x, M)
    table = jaxuq.evaluate(module, variables, (x, np.arange(B) % 10), sampler=sampler, key=jax.random.key(5),
                           smece=False, progress=False)
    assert {"test/ens_Disagreement", "test/ens_MI", "test/ens_Entropy"} <= set(table)
    assert table["test/ens_Disagreement"] > 0
