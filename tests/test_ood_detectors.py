"""OOD detectors: layer recording, batching, bad input, timers (tiny Flax CNN, fast)."""

from contextlib import contextmanager

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


# ---------------------------------------------------------------- state + pure functions
MAKERS = {
    "Softmax": lambda bs: D.Softmax(batch_size=bs, quiet=True),
    "GradNorm": lambda bs: D.GradNorm(["fc"], batch_size=bs, quiet=True),
    "Gram": lambda bs: D.Gram(["conv2", "fc"], batch_size=bs, quiet=True),
    "KNN": lambda bs: D.KNN(["avgpool"], k=3, batch_size=bs, quiet=True),
    "Mahalanobis": lambda bs: D.Mahalanobis(["avgpool"], epsilon=0.01, batch_size=bs, quiet=True),
    "ODIN": lambda bs: D.ODIN(temperature=10.0, epsilon=0.01, batch_size=bs, quiet=True),
}


@contextmanager
def count_compiles():
    """XLA backend compilations inside the block (every jitted program and eager op compiled)."""
    events = []

    def listener(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(kw)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@pytest.mark.parametrize("name", list(MAKERS))
def test_refit_and_partial_last_batch_compile_nothing(setup, name):
    """The fitted state and the weights are arguments of the per-batch programs and the last batch
    is padded: after a first fit + score, refitting (other data, other weights) and scoring a set
    with a partial last batch compile nothing (the old detectors compiled per fit and per tail)."""
    model, variables, x, y = setup
    MAKERS[name](4).fit(model, variables, x[:12], y[:12]).confidence(x[:12])  # batches of 4: no tail
    other = jax.tree.map(lambda a: a * 1.01, variables)
    with count_compiles() as compiles:
        det = MAKERS[name](4).fit(model, other, x[12:24], y[12:24])
        conf = det.conformity(x[24:34])[1]  # 10 rows: 4 + 4 + 2 (padded)
    assert compiles == [], f"{len(compiles)} compilation(s) after the first fit"
    # padding is inert: rows 8, 9 beside rows 10, 11 instead of zeros give the same numbers
    np.testing.assert_array_equal(conf, det.conformity(x[24:36])[1][:10])


def test_state_is_a_pytree_and_score_is_pure(setup):
    """fit_detector returns a NamedTuple of arrays: it survives a host round trip (a checkpoint) and
    score_detector gives the wrapper's numbers from it; the config is hashable and static."""
    model, variables, x, y = setup
    cfg = D.MahalanobisConfig(layers=("avgpool", "fc"))
    net = RecordedNet(model, variables, ["conv1", "avgpool", "fc"])  # may record more than it reads
    state = D.fit_detector(cfg, net, x[:64], y[:64], batch_size=16, progress=False)
    assert isinstance(state, D.MahalanobisState) and [a.shape for a in state.means] == [(4, 8), (4, 4)]
    restored = D.MahalanobisState(*jax.tree.map(np.asarray, jax.device_get(tuple(state))))
    logits, conf = D.score_detector(cfg, restored, net, x[64:], batch_size=16, progress=False)
    wrapped = D.Mahalanobis(["avgpool", "fc"], batch_size=16, quiet=True).fit(model, variables, x[:64], y[:64])
    np.testing.assert_array_equal(conf, wrapped.conformity(x[64:])[1])
    np.testing.assert_array_equal(D.confidence(logits, conf), wrapped.confidence(x[64:]))
    assert hash(cfg) == hash(D.MahalanobisConfig(layers=["avgpool", "fc"])) and logits.shape == (32, 4)
    knn = D.fit_detector(D.KNNConfig(layers=("avgpool",), k=2), net, x[:5], progress=False)
    assert knn.features.shape == (5, 8) and knn.sq_norms.shape == (5,)
    assert D.fit_detector(D.ODINConfig(temperature=2.0), net, x[:5], progress=False) == D.EmptyState()


def test_recorded_net_is_a_pytree_with_a_public_forward(setup):
    model, variables, x, _ = setup
    net = RecordedNet(model, variables, ["avgpool"])
    leaves, treedef = jax.tree.flatten(net)
    assert len(leaves) == len(jax.tree.leaves(variables))
    again = jax.tree.unflatten(treedef, leaves)
    assert again.module == model and again.layers == ("avgpool",)
    pooled = jax.jit(lambda n, xb: n.forward(xb)[1]["avgpool"])(net, x[:3])
    np.testing.assert_allclose(np.asarray(pooled), np.asarray(net(x[:3])[1]["avgpool"]), atol=1e-6)
    assert net.eval_shape(x[:7])[0].shape == (7, 4)


def test_mahalanobis_labels_out_of_range_are_a_value_error(setup):
    """Labels >= C used to index past the class means (IndexError deep in numpy)."""
    model, variables, x, y = setup
    bad = y[:20].copy()
    bad[5] = 4  # TinyCNN has 4 classes
    with pytest.raises(ValueError, match=r"`y` values must lie in \[0, 3\].*offending value 4 at index 5"):
        D.Mahalanobis(["avgpool"]).fit(model, variables, x[:20], bad)
    with pytest.raises(ValueError, match="`y`"):
        D.Gram(["fc"], calib_labels="true").fit(model, variables, x[:20], bad - 5)  # negative
    with pytest.raises(ValueError, match="`y` must hold integer"):
        D.Mahalanobis(["avgpool"]).fit(model, variables, x[:20], y[:20].astype(np.float32) + 0.5)
    with pytest.raises(ValueError, match="needs calibration labels"):
        D.Mahalanobis(["avgpool"]).fit(model, variables, x[:20])


def test_hostile_settings_and_arguments(setup):
    model, variables, x, y = setup
    net = RecordedNet(model, variables, ["avgpool"])
    for make, err, msg in [
        (lambda: D.KNNConfig(layers=("avgpool",), k=0), ValueError, "k must be >= 1"),
        (lambda: D.KNNConfig(layers=("avgpool",), k=2.5), TypeError, "k must be an integer"),
        (lambda: D.KNNConfig(layers="avgpool", k=2), TypeError, "layers must be a sequence"),
        (lambda: D.KNNConfig(layers=(3,), k=2), TypeError, "layer specs must be strings"),
        (lambda: D.ODINConfig(temperature=float("nan")), ValueError, "temperature"),
        (lambda: D.ODINConfig(temperature=1.0, epsilon=float("inf")), ValueError, "epsilon"),
        (lambda: D.GradNormConfig(layers=("fc",), temperature=float("inf")), ValueError, "temperature"),
        (lambda: D.MahalanobisConfig(layers=("fc",), fgm_norm=0.5), ValueError, "fgm_norm"),
        (lambda: D.MahalanobisConfig(layers=("fc",), weights=(1.0, float("nan"))), ValueError, "weights"),
        (lambda: D.GramConfig(layers=("fc",), max_gram_order=0), ValueError, "max_gram_order"),
        (lambda: D.KNN(["avgpool"], k=2, act_norm=float("nan")), ValueError, "act_norm"),
        (lambda: D.Softmax(batch_size=0), ValueError, "batch_size"),
    ]:
        with pytest.raises(err, match=msg):
            make()
    wrapper = D.KNN(["avgpool"], k=2)
    assert (wrapper.k, wrapper.act_norm, wrapper.layers) == (2, 2.0, ("avgpool",))
    with pytest.raises(AttributeError, match="frozen setting"):
        wrapper.k = 3
    knn = D.KNNConfig(layers=("avgpool",), k=2)
    with pytest.raises(TypeError, match="net must be a jaxuq.ood.RecordedNet"):
        D.fit_detector(knn, (model, variables), x, y)
    with pytest.raises(TypeError, match="detector must be a DetectorConfig"):
        D.fit_detector(D.KNN(["avgpool"], k=2), net, x, y)
    with pytest.raises(ValueError, match=r"does not record the layer\(s\) \['fc'\]"):
        D.fit_detector(D.GramConfig(layers=("avgpool", "fc")), net, x, y)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        D.fit_detector(knn, net, x, y, batch_size=0)
    state = D.fit_detector(knn, net, x[:8], progress=False)
    with pytest.raises(TypeError, match="state must be the KNNState"):
        D.score_detector(knn, D.EmptyState(), net, x)
    with pytest.raises(ValueError, match=r"inputs must be a non-empty batch"):
        D.score_detector(knn, state, net, x[:0])
