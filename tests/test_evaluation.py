"""The one evaluation path: ``jaxuq.evaluate`` (streaming) == ``classification_table`` (arrays),
the one batched ``predict``, one compiled step for every batch (the tail batch masked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import numpy as np
import pytest

import jaxuq
import jaxuq.evaluation as E
from jaxuq.data import MNIST_NORM, Preprocess, load_fashion_mnist, load_mnist
from jaxuq.ensembles import default_lowering
from jaxuq.evaluation import classification_table, evaluate, padded_batches, predict
from jaxuq.metrics import count_params
from jaxuq.metrics.suite import KEYS
from jaxuq.ood.criteria import msp
from tests.helpers import REPO, data_path, require

TOL = 1e-6
HUB = "hub/ENSTA-U2IS/tutorial-models"
PRE = Preprocess(*MNIST_NORM)


def _reference(logits, labels, ood_logits, params):
    """TU's table from whole logit arrays: ``[N, C]`` or ``[M, N, C]``, MSP criterion."""
    return classification_table(
        logits=logits, labels=labels, ood_scores=np.concatenate([msp(logits), msp(ood_logits)]),
        ood_probs=jax.nn.softmax(ood_logits, -1), params=params,
    )


def _assert_same(res, ref, tol=TOL):
    assert sorted(res) == sorted(ref)
    worst = {k: abs(res[k] - ref[k]) for k in ref}
    assert max(worst.values()) <= tol, {k: v for k, v in worst.items() if v > tol}


# ----------------------------------------------------------------------------- real data, TU LeNets
@pytest.fixture(scope="module")
def mnist():
    root = data_path("MNIST").parent
    data_path("FashionMNIST")
    x, y = load_mnist("test", data_dir=root)
    xo, _ = load_fashion_mnist("test", data_dir=root)
    return x[:1000], y[:1000], xo[:700]  # batch 300: partial last batches (100 and 100)


@pytest.fixture(scope="module")
def lenets():
    """The TU-trained LeNets converted by the converter: (module, one member, 3 stacked members)."""
    require("torch")
    from converters import convert

    paths = [data_path(f"{HUB}/version_{i}.ckpt") for i in range(3)]
    stacked = convert(paths, arch="lenet")
    one = jax.tree.map(lambda a: a[0], stacked["variables"])
    return stacked["module"], one, stacked["variables"]


@pytest.mark.realdata
@pytest.mark.parity
def test_evaluate_equals_classification_table_single(mnist, lenets):
    x, y, xo = mnist
    model, v, _ = lenets
    lg = predict(model, v, x, preprocess=PRE, batch_size=300)
    np.testing.assert_allclose(lg, model.apply(v, PRE.eval(x)), atol=1e-5)  # batching is inert
    ref = _reference(lg, y, predict(model, v, xo, preprocess=PRE, batch_size=300), count_params(v["params"]))
    res = jaxuq.evaluate(model, v, (x, y), ood_data=xo, preprocess=PRE, batch_size=300, progress=False)
    _assert_same(res, ref)
    assert res["test/cplx/params"] == 44_426 and "test/ens_MI" not in res
    assert res["test/cls/Acc"] > 0.95 and res["ood/AUROC"] > 0.9  # a trained model, a real OOD set


@pytest.mark.realdata
@pytest.mark.parity
def test_evaluate_equals_classification_table_ensemble(mnist, lenets):
    x, y, xo = mnist
    model, _, v = lenets
    kw = dict(preprocess=PRE, batch_size=300, lowering=default_lowering())
    lg, lo = predict(model, v, x, **kw), predict(model, v, xo, **kw)
    assert lg.shape == (3, 1000, 10) and lo.shape == (3, 700, 10)
    ref = _reference(lg, y, lo, count_params(v["params"]))
    res = evaluate(model, v, (x, y), ood_data=xo, progress=False, **kw)
    _assert_same(res, ref)
    assert res["test/cplx/params"] == 3 * 44_426
    assert {"test/ens_Disagreement", "test/ens_MI", "ood/ens_MI", "ood/ens_Entropy"} <= set(res)


# ----------------------------------------------------------------------------- small synthetic model
class _Dense(nn.Module):
    classes: int = 5

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(self.classes)(x.reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(203, 6)).astype(np.float32)
    y = rng.integers(0, 5, 203)
    xo = 2 * rng.normal(size=(77, 6)).astype(np.float32)
    model = _Dense()
    return model, model.init(jax.random.key(0), x[:1]), x, y, xo


def test_evaluate_jit_and_no_jit_equal_the_table(small):
    model, v, x, y, xo = small
    ref = _reference(model.apply(v, x), y, model.apply(v, xo), count_params(v["params"]))
    _assert_same(evaluate(model, v, (x, y), ood_data=xo, batch_size=128, progress=False), ref)
    with jax.disable_jit():
        _assert_same(evaluate(model, v, (x, y), ood_data=xo, batch_size=128, progress=False), ref)


def test_evaluate_iterable_batches_equal_arrays(small):
    model, v, x, y, xo = small
    arrays = evaluate(model, v, (x, y), ood_data=xo, batch_size=50, progress=False)
    ragged = [(x[i : i + 40], y[i : i + 40]) for i in range(0, 203, 40)]  # 40 x 5, then 3
    ood = (xo[i : i + 30] for i in range(0, 77, 30))  # a generator: no length, no progress total
    _assert_same(evaluate(model, v, ragged, ood_data=ood, batch_size=50, progress=False), arrays)


def test_padded_batches_shapes():
    x, y = np.arange(10).reshape(5, 2), np.arange(5)
    out = list(padded_batches((x, y), 2))
    assert [k for k, _ in out] == [2, 2, 1] and all(b[0].shape == (2, 2) for _, b in out)
    np.testing.assert_array_equal(out[-1][1][1], [4, 0])  # zero-padded
    ragged = list(padded_batches([(x[:3], y[:3]), (x[3:], y[3:])], 99))
    assert [(k, b[0].shape[0]) for k, b in ragged] == [(3, 3), (2, 3)]


def test_evaluate_bad_inputs(small):
    model, v, x, y, xo = small
    with pytest.raises(ValueError, match=r"labels` values must lie in \[0, 4\] \(integer class indices for 5 classes\)"):
        evaluate(model, v, (x, np.full(203, 7)), progress=False)
    with pytest.raises(ValueError, match="labels"):
        evaluate(model, v, (x, y[:-1]), progress=False)
    with pytest.raises(ValueError, match="num_bins"):
        evaluate(model, v, (x, y), num_bins=10, progress=False)
    bad = jax.tree.map(lambda a: a.at[0].set(np.nan), v)
    with pytest.raises(ValueError, match="non-finite logits on the ID set"):
        evaluate(model, bad, (x, y), progress=False)
    with pytest.raises(ValueError, match="non-empty"):
        predict(model, v, x[:0])
    with pytest.raises(ValueError, match=r"batch 1 of `data` is empty"):  # was a ZeroDivisionError
        evaluate(model, v, [(x[:4], y[:4]), (x[:0], y[:0])], progress=False)
    with pytest.raises(ValueError, match=r"`data` is empty"):
        evaluate(model, v, (x[:0], y[:0]), progress=False)
    with pytest.raises(ValueError, match="the ID data yielded no batch"):
        evaluate(model, v, iter([]), progress=False)


def test_evaluate_compiles_one_step_for_every_batch(small):
    """N = 10 rows in batches of 4: two full batches and a short one (2 rows) run the same compiled
    step (the short one zero-padded and masked); the ID step and the OOD step are one program each."""
    model, v, x, y, xo = small
    E._jitted_step.cache_clear()
    res = evaluate(model, v, (x[:10], y[:10]), ood_data=xo[:10], batch_size=4, progress=False)
    assert E._jitted_step.cache_info().currsize == 2  # one jitted step for ID, one for OOD (no per-size key)
    spec = E._Spec.of(model, None, "float32", None, None, None)
    steps = [E._jitted_step(spec, "msp", ood, False) for ood in (False, True)]  # the same (cached) objects
    assert E._jitted_step.cache_info().currsize == 2
    assert [s._cache_size() for s in steps] == [1, 1]  # 3 batches each (4, 4, 2 rows): compiled once
    ref = _reference(model.apply(v, x[:10]), y[:10], model.apply(v, xo[:10]), count_params(v["params"]))
    _assert_same(res, ref)  # the masked tail counts its 2 real rows only
    evaluate(model, v, (x[:9], y[:9]), ood_data=xo[:7], batch_size=4, progress=False)  # other tails: 1, 3
    assert [s._cache_size() for s in steps] == [1, 1]


def test_evaluate_and_classification_table_share_keys_and_rank_metrics(small):
    """The TU key table and the rank metrics (one function, ``suite.rank_metrics``) are shared: the
    same keys, the rank-based values equal up to the softmax's last bit (fused in the step here, on the
    host logits there; measured 0 here, <= 3.2e-8 on the TU LeNets), the sums within 1e-6."""
    model, v, x, y, xo = small
    logits, ood_logits = np.asarray(model.apply(v, x)), np.asarray(model.apply(v, xo))
    res = evaluate(model, v, (x, y), ood_data=xo, batch_size=64, progress=False)
    ref = _reference(logits, y, ood_logits, count_params(v["params"]))
    assert sorted(res) == sorted(ref) and set(res) <= set(KEYS.values())
    rank = [KEYS[k] for k in ("aurc", "augrc", "cov_5risk", "risk_80cov", "aece", "auroc", "aupr", "fpr95",
                              "scod_aurc", "scod_augrc", "scod_cov_5risk", "scod_risk_80cov", "smece")]
    np.testing.assert_allclose([res[k] for k in rank], [ref[k] for k in rank], rtol=0, atol=1e-7)  # NaN == NaN
    _assert_same(res, ref)


def test_jaxuq_exports_one_name_per_meaning():
    import jaxuq.evaluation as module

    assert jaxuq.evaluate is module.evaluate and callable(jaxuq.evaluate)
    assert jaxuq.predict is module.predict and jaxuq.classification_table is module.classification_table
    assert not (REPO / "jaxuq" / "evaluate.py").exists()


# ----------------------------------------------------------------------------- data-parallel mesh
_MESH_SCRIPT = textwrap.dedent(
    """
    import json, jax, numpy as np
    assert jax.device_count() == 4, jax.devices()
    from jaxuq.evaluation import evaluate, predict
    from jaxuq.train import make_mesh
    from tests.test_evaluation import _Dense
    rng = np.random.default_rng(0)
    x = rng.normal(size=(203, 6)).astype(np.float32); y = rng.integers(0, 5, 203)
    xo = 2 * rng.normal(size=(77, 6)).astype(np.float32)
    model = _Dense(); v = model.init(jax.random.key(0), x[:1]); mesh = make_mesh()
    kw = dict(ood_data=xo, batch_size=50, progress=False)  # 52 rows per batch on 4 devices
    a, b = evaluate(model, v, (x, y), **kw), evaluate(model, v, (x, y), mesh=mesh, **kw)
    pa, pb = predict(model, v, x, batch_size=50), predict(model, v, x, batch_size=50, mesh=mesh)
    print(json.dumps({"same_keys": sorted(a) == sorted(b), "diff": max(abs(a[k] - b[k]) for k in a),
                      "pdiff": float(np.abs(pa - pb).max()), "shape": list(pb.shape)}))
    """
)


def test_data_parallel_mesh_matches_one_device(tmp_path):
    script = tmp_path / "mesh.py"
    script.write_text(_MESH_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["same_keys"] and r["shape"] == [203, 5]
    assert r["diff"] <= TOL and r["pdiff"] <= 1e-6, r


def test_streaming_update_mask_equals_the_real_rows():
    """``update(..., mask=)``: sum, binned and list states over a zero-padded batch with its real rows
    masked equal the states of the real rows alone (sum/binned also under jit)."""
    from jaxuq.metrics import streaming as S

    rng = np.random.default_rng(3)
    p = jax.nn.softmax(rng.normal(size=(7, 4)).astype(np.float32) * 3, -1)
    y = rng.integers(0, 4, 7)
    mp = jax.nn.softmax(rng.normal(size=(3, 7, 4)).astype(np.float32), -1)
    pad = lambda a, ax=0: np.concatenate([a, np.zeros_like(np.take(a, [0, 1, 2], axis=ax))], axis=ax)  # noqa: E731
    mask = np.arange(10) < 7
    for m, args, padded in (
        (S.nll(), (p, y), (pad(p), pad(y))),
        (S.ece(), (p, y), (pad(p), pad(y))),
        (S.mutual_information(), (mp,), (pad(mp, 1),)),
        (S.aurc(), (p, y), (pad(p), pad(y))),
    ):
        want = m.compute(m.update(m.init(), *args))
        got = m.compute(m.update(m.init(), *padded, mask=mask))
        np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    upd = jax.jit(lambda s, a, b, k: S.ece().update(s, a, b, mask=k))
    np.testing.assert_allclose(float(S.ece().compute(upd(S.ece().init(), pad(p), pad(y), mask))),
                               float(S.ece().compute(S.ece().update(S.ece().init(), p, y))), rtol=1e-6)
    with pytest.raises(ValueError, match="`mask` must be concrete"):
        jax.jit(lambda s, a, b, k: S.aurc().update(s, a, b, mask=k))(S.aurc().init(), pad(p), pad(y), mask)
    with pytest.raises(ValueError, match=r"`mask` must be bool of shape \(10,\)"):
        S.nll().update(S.nll().init(), pad(p), pad(y), mask=mask[:7])
