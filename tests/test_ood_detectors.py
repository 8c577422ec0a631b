"""OOD detectors: layer recording, batching, bad input, timers (tiny Flax CNN, fast)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxuq.ood import detectors as D
from jaxuq.ood.recorder import RecordedNet, available_layers, layer_infos, layer_table


class Pool(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x.mean((1, 2), keepdims=True)


class TinyCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)), name="conv1")(x))
        x = nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(x)
        x = Pool(name="avgpool")(x)
        return nn.Dense(4, name="fc")(x.reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def setup():
    model = TinyCNN()
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(96, 8, 8, 3)).astype(np.float32)
    variables = model.init(jax.random.key(0), x[:1])
    y = np.asarray(model.apply(variables, x).argmax(1))
    return model, variables, x, y


def test_layer_table_and_recording(setup):
    model, variables, x, _ = setup
    names = available_layers(model, variables, x[:1])
    assert names == ["conv1", "conv2", "avgpool", "fc"]
    info = {r.name: r for r in layer_infos(model, variables, x[:1])}
    assert info["conv1"].params == 3 * 3 * 3 * 8 + 8 and info["avgpool"].params == 0
    assert info["avgpool"].output_shape == (1, 1, 1, 8) and info["fc"].input_shape == (1, 8)
    text = layer_table(model, variables, x[:1], recording=["avgpool"])
    for s in ["conv1", "avgpool", "fc", "Total params: 844", "['avgpool']"]:
        assert s in text, s
    net = RecordedNet(model, variables, ["conv2", "fc:input", "fc"])
    out, acts = net(x[:5])
    assert acts["conv2"].shape == (5, 8, 8, 8) and acts["fc:input"].shape == (5, 8)
    np.testing.assert_allclose(np.asarray(acts["fc"]), np.asarray(out))
    np.testing.assert_allclose(np.asarray(acts["fc:input"]), np.asarray(acts["conv2"]).mean((1, 2)), atol=1e-6)


def test_wrong_layer_name_lists_available(setup):
    model, variables, x, y = setup
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['l3'\].*available layers: \['conv1', 'conv2', 'avgpool', 'fc'\]"):
        D.KNN(["l3"], k=3).fit(model, variables, x, y)
    with pytest.raises(ValueError, match="suffix"):
        D.KNN(["fc:grad"], k=3).fit(model, variables, x, y)


def test_too_few_calibration_samples_and_other_bad_input(setup):
    model, variables, x, y = setup
    with pytest.raises(ValueError, match="k=20 with 10 calibration samples"):
        D.KNN(["avgpool"], k=20).fit(model, variables, x[:10], y[:10])
    bad = x.copy()
    bad[3, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="calibration data contains NaN"):
        D.Softmax().fit(model, variables, bad, y)
    det = D.Softmax().fit(model, variables, x, y)
    with pytest.raises(ValueError, match="inputs contains NaN"):
        det.confidence(bad)
    with pytest.raises(RuntimeError, match="fitted"):
        D.KNN(["avgpool"], k=2).confidence(x)
    with pytest.raises(ValueError, match="at least one recorded layer"):
        D.Gram().fit(model, variables, x, y)
    with pytest.raises(ValueError, match="labels"):
        D.Softmax().fit(model, variables, x, y[:-1])
    with pytest.raises(ValueError, match="cut_off"):
        D.Gram(["fc"], cut_off=0.7).fit(model, variables, x, y)
    with pytest.raises(ValueError, match="temperature"):
        D.ODIN(temperature=0.0).fit(model, variables, x, y)
    with pytest.raises(RuntimeError, match="learnable parameter"):
        D.GradNorm(["avgpool"]).fit(model, variables, x, y)
    with pytest.raises(ValueError, match="2 calibration samples"):
        D.Mahalanobis(["fc"]).fit(model, variables, x[:1], y[:1])


@pytest.mark.parametrize(
    "make",
    [
        lambda: D.Softmax(),
        lambda: D.GradNorm(["fc"]),
        lambda: D.Gram(["conv2", "avgpool", "fc"]),
        lambda: D.KNN(["avgpool"], k=5),
        lambda: D.Mahalanobis(["avgpool", "fc"]),
        lambda: D.ODIN(temperature=10.0, epsilon=0.01),
    ],
)
def test_batch_size_invariance_and_timer(setup, make):
    model, variables, x, y = setup
    cal, test = x[:64], x[64:]
    a = make()
    a.batch_size = 64
    b = make()
    b.batch_size = 7
    ca = a.fit(model, variables, cal, y[:64]).conformity(test)[1]
    cb = b.fit(model, variables, cal, y[:64]).conformity(test)[1]
    np.testing.assert_allclose(ca, cb, rtol=1e-4, atol=1e-5)  # XLA picks other kernels per batch shape
    ops = [op for op, _, _ in b.timer.entries]
    assert ops == ["calibration", "inference"]
    assert b.timer.entries[1][1] == len(test)
    assert "Per sample" in b.timer.report(print_it=False)
    np.testing.assert_array_equal(b.ood_score(test), -b.confidence(test))


def test_knn_matches_brute_force(setup):
    model, variables, x, y = setup
    det = D.KNN(["avgpool"], k=4).fit(model, variables, x[:50], y[:50])
    net = RecordedNet(model, variables, ["avgpool"])
    f = lambda z: np.array(net(z)[1]["avgpool"]).reshape(len(z), -1)
    ref, q = f(x[:50]), f(x[50:])
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    d2 = ((q[:, None] - ref[None]) ** 2).sum(-1)
    np.testing.assert_allclose(det.conformity(x[50:])[1][:, 0], -np.sort(d2, 1)[:, 3], atol=1e-5)


def test_fgm_direction_norms():
    g = jnp.asarray(np.random.default_rng(1).normal(size=(5, 7)).astype(np.float32))
    for p in [1.0, 2.0, 3.0, np.inf]:
        d = np.asarray(D.fgm_direction(g, p))
        np.testing.assert_allclose(np.linalg.norm(d, ord=p, axis=1), 1.0, rtol=1e-5)
        assert (np.sign(d) * np.sign(np.asarray(g)) >= 0).all()
