"""jaxuq.train.averaging without torch: the definitions (equal-weight SWA, EMA, SWAG moments and
ring of deviations), jit with traced epochs, stacked-ensemble prediction, the ``fit`` callback
(``WeightAveraging``: EMA before each update as TU, the others at epoch ends, resumed bitwise), and bad
input."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxuq
from jaxuq import models
from jaxuq.evaluation import predict
from jaxuq.train import EnsembleConfig, TrainConfig, create_train_state, fit
from jaxuq.train.averaging import (
    EMA,
    SWA,
    SWAG,
    CheckpointCollector,
    SWAGNoise,
    WeightAveraging,
    bn_update,
)


def _snaps(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return [{"w": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal(4).astype(np.float32)}
            for _ in range(n)]


def test_swa_is_the_equal_weight_mean_and_jits_with_traced_epochs():
    snaps = _snaps(6)
    swa = SWA(cycle_start=1, cycle_length=1)
    st = swa.init(snaps[0])
    assert swa.params(st, snaps[0]) is not None
    np.testing.assert_array_equal(swa.params(st, snaps[0])["w"], snaps[0]["w"])  # nothing averaged yet
    upd = jax.jit(swa.update)
    for e, p in enumerate(snaps):
        st = upd(st, p, jnp.int32(e))
    assert int(st.count) == 5
    np.testing.assert_allclose(st.mean["w"], np.mean([s["w"] for s in snaps[1:]], 0), atol=1e-6)
    assert [e for e in range(6) if swa.collects(e)] == [1, 2, 3, 4, 5]


def test_ema_formula():
    snaps = _snaps(3)
    ema = EMA(momentum=0.75)
    st = ema.init(snaps[0])
    for p in snaps[1:]:
        st = ema.update(st, p)
    want = (snaps[0]["b"] * 0.75 + snaps[1]["b"] * 0.25) * 0.75 + snaps[2]["b"] * 0.25
    np.testing.assert_allclose(st.params["b"], want, atol=1e-6)


def test_swag_moments_ring_of_deviations_and_sampling():
    snaps = _snaps(5)
    swag = SWAG(cycle_start=0, cycle_length=1, max_num_models=3, num_estimators=4)
    st = swag.init(snaps[0])
    for e, p in enumerate(snaps, start=1):
        st = jax.jit(swag.update)(st, p, e)
    w = np.stack([s["w"] for s in snaps])
    np.testing.assert_allclose(st.mean["w"], w.mean(0), atol=1e-6)
    np.testing.assert_allclose(st.sq_mean["w"], (w**2).mean(0), atol=1e-6)
    devs = swag.deviations(st)["w"]
    running = np.cumsum(w, 0) / np.arange(1, 6)[:, None, None]
    np.testing.assert_allclose(devs, (w - running)[2:], atol=1e-6)  # last 3 snapshots, oldest first
    zero = SWAGNoise(jax.tree.map(jnp.zeros_like, st.mean), jax.tree.map(lambda a: jnp.zeros(3), st.mean))
    np.testing.assert_allclose(swag.sample(st, zero)["w"], st.mean["w"])  # z = 0 -> the mean
    stack = swag.sample_stack(st, jax.random.key(0))
    assert stack["w"].shape == (4, 3, 4) and float(jnp.std(stack["w"], 0).min()) > 0
    members = swag.members(st, jax.random.key(0), {"params": snaps[0], "batch_stats": {"s": jnp.ones(2)}})
    np.testing.assert_array_equal(members["params"]["w"], stack["w"])  # the same samples, other leaves repeated
    assert members["batch_stats"]["s"].shape == (4, 2)


def test_swag_stacked_samples_predict_as_an_ensemble():
    lenet = models.get("lenet", in_channels=1, num_classes=10)
    x = np.random.default_rng(0).standard_normal((6, 28, 28, 1)).astype(np.float32)
    params = jax.jit(lenet.init)(jax.random.key(0), x[:1])["params"]
    swag = SWAG(cycle_start=0, cycle_length=1, diag_covariance=True, num_estimators=3)
    st = swag.init(params)
    for e in (1, 2):
        st = jax.jit(swag.update)(st, jax.tree.map(lambda a, e=e: a * (1 + 0.1 * e), params), e)
    logits = predict(lenet, swag.members(st, jax.random.key(0), {"params": params}), x, lowering="map")
    assert logits.shape == (3, 6, 10) and np.all(np.isfinite(logits))
    assert bn_update(lenet, {"params": params}, [x]) == {}  # no BatchNorm: nothing to do (torch)


def test_checkpoint_collector_members():
    col = CheckpointCollector(save_schedule=(1, 3))
    v = {"w": jnp.zeros(2)}
    st = col.init(v, capacity=2)
    np.testing.assert_array_equal(col.members(st, {"w": jnp.full(2, 9.0)})["w"], [[9.0, 9.0]])  # TU: final alone
    for e in range(5):
        st = jax.jit(col.update)(st, {"w": jnp.full(2, float(e))}, e)
    np.testing.assert_array_equal(col.members(st, {"w": jnp.full(2, 9.0)})["w"][:, 0], [1.0, 3.0, 9.0])
    assert col.kept_epochs(5) == [1, 3] and CheckpointCollector().kept_epochs(3) == [0, 1, 2]
    with pytest.raises(ValueError, match="capacity"):
        col.update(st, v, 3)


@pytest.mark.parametrize("make,err,match", [
    (lambda: SWA(-1, 1), ValueError, "cycle_start"),
    (lambda: SWA(0, 0), ValueError, "cycle_length"),
    (lambda: SWA(0.5, 1), TypeError, "cycle_start"),
    (lambda: EMA(1.0), ValueError, "momentum"),
    (lambda: EMA(float("nan")), ValueError, "momentum"),
    (lambda: EMA("0.9"), TypeError, "momentum"),
    (lambda: SWAG(0, 1, num_estimators=0), ValueError, "num_estimators"),
    (lambda: SWAG(0, 1, max_num_models=1), ValueError, "max_num_models"),
    (lambda: SWAG(0, 1, scale=-1.0), ValueError, "scale"),
    (lambda: SWAG(0, 1, var_clamp=float("inf")), ValueError, "var_clamp"),
    (lambda: SWAG(0, 1, diag_covariance=1), TypeError, "diag_covariance"),
    (lambda: CheckpointCollector(cycle_start=1), ValueError, "cycle_start"),
    (lambda: CheckpointCollector(cycle_start=1, cycle_length=1, save_schedule=(2,)), ValueError, "save_schedule"),
    (lambda: CheckpointCollector(save_schedule=(-1,)), ValueError, "save_schedule"),
    (lambda: CheckpointCollector(save_schedule="1"), TypeError, "save_schedule"),
])
def test_bad_settings(make, err, match):
    with pytest.raises(err, match=match):
        make()


def test_swag_before_any_snapshot_and_bad_sample_count():
    p = _snaps(1)[0]
    swag = SWAG(cycle_start=2, cycle_length=1)
    st = swag.update(swag.init(p), p, 2)  # epoch 2 is not > cycle_start: no snapshot (TU's rule)
    for call in (lambda: swag.sample_stack(st, jax.random.key(0)), lambda: swag.members(st, jax.random.key(0), {}),
                 lambda: swag.sample(st, swag.noise(st, jax.random.key(0)))):
        with pytest.raises(ValueError, match="no snapshot"):
            call()
    st = swag.update(st, p, 3)
    with pytest.raises(ValueError, match="num_samples"):
        swag.sample_stack(st, jax.random.key(0), 0)
    diag = SWAG(0, 1, diag_covariance=True)
    with pytest.raises(ValueError, match="diag_covariance"):
        diag.deviations(diag.init(p))


# ------------------------------------------------------------------------------ through fit
class _Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(3, name="fc2")(nn.relu(nn.Dense(5, name="fc1")(x)))


_N = 24
_XY = (np.random.default_rng(0).normal(size=(_N, 4)).astype(np.float32), np.arange(_N) % 3)
_CFG = TrainConfig(optimizer=optax.sgd(0.1), epochs=3, batch_size=8, preprocess=None, quiet=True)


def _callbacks():
    return [WeightAveraging(SWA(0, 1), "swa"), WeightAveraging(EMA(0.5), "ema"),
            WeightAveraging(SWAG(0, 1, max_num_models=2, num_estimators=2), "swag"),
            WeightAveraging(CheckpointCollector(), "ckpt", capacity=3)]


def test_ema_in_fit_averages_the_params_before_each_update():
    """TU's EMA runs inside training_step, before backward/step: after k steps it holds the params
    theta_0 .. theta_{k-1} (never the last update); one step per epoch makes every theta a fit result."""
    x, y = _XY
    cfg = _CFG.replace(batch_size=_N)  # one step per epoch
    st0 = create_train_state(_Net(), optax.sgd(0.1), jax.random.key(3), jnp.zeros((1, 4)))
    thetas = [st0.params] + [fit(_Net(), (x, y), cfg.replace(epochs=k), init_state=jax.tree.map(jnp.copy, st0))
                             .state.params for k in (1, 2, 3)]
    r = fit(_Net(), (x, y), cfg, init_state=jax.tree.map(jnp.copy, st0), callbacks=[WeightAveraging(EMA(0.5), "ema")])
    want = thetas[0]
    for t in thetas[:3]:  # ema <- 0.5 ema + 0.5 theta_i, i = 0, 1, 2 (the params each step starts from)
        want = jax.tree.map(lambda e, p: 0.5 * e + 0.5 * p, want, t)
    for a, b in zip(jax.tree.leaves(r.state.extras["ema"].params), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-7)
    after = jax.tree.map(lambda e, p: 0.5 * e + 0.5 * p, want, thetas[3])  # an after-update EMA would hold this
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in
               zip(jax.tree.leaves(r.state.extras["ema"].params), jax.tree.leaves(after))) > 1e-4


def test_averaging_callbacks_in_fit_are_checkpointed_and_resumed_bitwise(tmp_path):
    """SWA, EMA, SWAG and the collector as fit callbacks (one model and a 2-member ensemble): an
    interrupted-then-resumed run equals the uninterrupted one bitwise; every epoch end is collected."""
    x, y = _XY
    for ens in (None, EnsembleConfig(2, lowering="map")):
        cfg = _CFG.replace(ensemble=ens, checkpoint_every=2)
        ref = fit(_Net(), (x, y), cfg, callbacks=_callbacks())
        work = tmp_path / str(ens is None)
        fit(_Net(), (x, y), cfg.replace(epochs=1), workdir=work, callbacks=_callbacks())
        res = fit(_Net(), (x, y), cfg, workdir=work, callbacks=_callbacks())
        assert res.resumed_from == 3
        for a, b in zip(jax.tree.leaves((ref.state.params, ref.state.extras)),
                        jax.tree.leaves((res.state.params, res.state.extras)), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        ex = ref.state.extras
        np.testing.assert_array_equal(np.asarray(ex["swa"].count), 3)  # epochs 0, 1, 2 (>= cycle_start)
        np.testing.assert_array_equal(np.asarray(ex["swag"].count), 2)  # epochs 1, 2 (> cycle_start)
        np.testing.assert_array_equal(np.asarray(ex["ckpt"].count), 3)
        axis = 0 if ens is None else 1  # the copies' axis (after the members')
        mean = jax.tree.map(lambda a, ax=axis: a.mean(ax), ex["ckpt"].snapshots["params"])
        for a, b in zip(jax.tree.leaves(ex["swa"].mean), jax.tree.leaves(mean), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)  # the copies average to SWA's mean


def test_averaging_callback_variables_predict_through_evaluate():
    x, y = _XY
    cbs = _callbacks()
    st = fit(_Net(), (x, y), _CFG, callbacks=cbs).state
    for cb in cbs:
        v = cb.variables(st, key=jax.random.key(0))
        res = jaxuq.evaluate(_Net(), v, (x, y), lowering="map" if cb.stacked else None, smece=False, progress=False)
        assert ("test/ens_MI" in res) == cb.stacked and 0 <= res["test/cls/Acc"] <= 1
    assert cbs[3].variables(st)["params"]["fc1"]["kernel"].shape == (4, 4, 5)  # 3 copies + the final model
    with pytest.raises(ValueError, match="SWAG samples need `key`"):
        cbs[2].variables(st)
    with pytest.raises(ValueError, match="give capacity"):
        WeightAveraging(CheckpointCollector())
    with pytest.raises(TypeError, match="method must be"):
        WeightAveraging(optax.sgd(0.1))
