"""ABNN pieces without torch: the wrapper keeps the model's variables, needs noise in every forward,
alpha = 0 is the model; random-prior class weights; the weighted cross-entropy; bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxuq import models
from jaxuq.losses import cross_entropy
from jaxuq.losses.abnn import WeightedCrossEntropy, abnn_class_weights
from jaxuq.nn.abnn import ABNN


@pytest.fixture(scope="module")
def lenet_bn():
    m = models.get("lenet", in_channels=1, num_classes=10, norm="batchnorm")
    x = np.random.default_rng(0).standard_normal((4, 28, 28, 1)).astype(np.float32)
    return m, jax.jit(m.init)(jax.random.key(0), x), x


def test_wrapper_shares_the_variables_and_draws_noise_per_call(lenet_bn):
    m, v, x = lenet_bn
    a = ABNN(m, 0.5)
    va = a.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x)
    assert jax.tree.structure(va) == jax.tree.structure(v)
    np.testing.assert_array_equal(ABNN(m, 0.0).apply(v, x), m.apply(v, x))
    o1, o2 = (a.apply(v, x, rngs={"dropout": jax.random.key(k)}) for k in (1, 2))
    assert float(jnp.max(jnp.abs(o1 - o2))) > 1e-3
    zeros = [jnp.zeros((4, 24, 24, 6)), jnp.zeros((4, 8, 8, 16))]
    np.testing.assert_allclose(a.apply(v, x, noise=zeros), m.apply(v, x), atol=1e-6)
    with pytest.raises(ValueError, match="rngs"):
        a.apply(v, x)
    with pytest.raises(ValueError, match="noise"):
        a.apply(v, x, noise=zeros[:1])
    with pytest.raises(ValueError, match="alpha"):
        ABNN(m, -1.0).apply(v, x, noise=zeros)


def test_class_weights_and_weighted_cross_entropy():
    w = abnn_class_weights(jax.random.key(0), 10, 4, 3.0)
    assert w.shape == (4, 10) and np.all(np.sum(w == 3.0, 1) == 3) and np.all(np.sum(w == 1.0, 1) == 7)
    logits = jax.random.normal(jax.random.key(1), (8, 10))
    y = jnp.arange(8) % 10
    np.testing.assert_allclose(WeightedCrossEntropy((1.0,) * 10)(logits, y), cross_entropy(logits, y), rtol=1e-6)
    lw = WeightedCrossEntropy(tuple(float(v) for v in w[0]))(logits, y)
    logp = jax.nn.log_softmax(logits)
    want = np.sum(w[0][y] * -np.asarray(logp)[np.arange(8), y]) / np.sum(w[0][y])
    np.testing.assert_allclose(lw, want, rtol=1e-6)
    with pytest.raises(ValueError, match="weights"):
        WeightedCrossEntropy((0.0, 0.0))
    with pytest.raises(ValueError, match="chosen"):
        abnn_class_weights(None, 10, 2, 2.0, chosen=np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="random_prior"):
        abnn_class_weights(jax.random.key(0), 10, 2, -1.0)
