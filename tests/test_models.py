"""Model zoo unit tests (no torch needed): registry, parameter counts (TU 0.13.0 figures), BatchNorm
train-mode update formula, torch pooling semantics, Dropout2d, save/load round trip."""

from __future__ import annotations

import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxuq import models
from jaxuq.nn import BatchNorm, Dropout, adaptive_avg_pool2d, max_pool2d


def _n_params(name, shape, **kw):
    m = models.get(name, **kw)
    v = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros(shape)))
    return sum(x.size for x in jax.tree.leaves(v["params"])), v


@pytest.mark.parametrize(
    "name,kw,shape,expected",
    [  # expected counts: TU 0.13.0 doc §B/§H, the data README and the scio Recorder table
        ("lenet", dict(in_channels=1, num_classes=10), (1, 28, 28, 1), 44_426),
        ("resnet", dict(in_channels=3, num_classes=10, arch=18, style="cifar"), (1, 32, 32, 3), 11_173_962),
        ("resnet", dict(in_channels=3, num_classes=1000, arch=18), (1, 64, 64, 3), 11_689_512),
        ("resnet20", {}, (1, 32, 32, 3), 269_722),
        ("resnet56", {}, (1, 32, 32, 3), 853_018),
        ("tiniest", {}, (1, 32, 32, 3), 97_530),
    ],
)
def test_param_counts(name, kw, shape, expected):
    assert _n_params(name, shape, **kw)[0] == expected


def test_resnet18_cifar_tree_mirrors_torch_names():
    _, v = _n_params("resnet", (1, 32, 32, 3), in_channels=3, num_classes=10, arch=18, style="cifar")
    p = v["params"]
    assert set(p) == {"conv1", "bn1", "linear"} | {f"layer{i}_{j}" for i in range(1, 5) for j in range(2)}
    assert "shortcut_0" in p["layer2_0"] and "shortcut_1" in p["layer2_0"] and "shortcut_0" not in p["layer1_0"]
    assert p["conv1"]["kernel"].shape == (3, 3, 3, 64) and "bias" not in p["conv1"]
    assert p["linear"]["kernel"].shape == (512, 10)
    assert v["batch_stats"]["layer2_0"]["shortcut_1"]["var"].shape == (128,)


def test_registry_names_and_errors():
    names = models.names()
    for n in ("lenet", "resnet", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "tiniest",
              "packed_lenet", "packed_resnet"):
        assert n in names
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        models.get("nope")
    models.register("_missing_for_test", "jaxuq.models._does_not_exist:make")
    try:
        with pytest.raises(ValueError, match="not available"):
            models.get("_missing_for_test")
    finally:
        models.registry._REGISTRY.pop("_missing_for_test")
    with pytest.raises(ValueError, match="Unknown ResNet architecture"):
        models.get("resnet", in_channels=3, num_classes=10, arch=19)


def test_registry_is_lazy():
    import subprocess
    import sys

    code = ("import sys, jaxuq.models as m; m.names(); "
            "print(any(k.startswith('jaxuq.models.packed') or k == 'jaxuq.models.resnet' for k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_batchnorm_train_update_matches_torch_formula():
    x = np.random.default_rng(0).standard_normal((3, 5, 4, 6)).astype(np.float32) * 2 + 1
    bn = BatchNorm()
    v = bn.init(jax.random.key(0), x, use_running_average=False)
    assert float(jnp.abs(v["batch_stats"]["var"] - 1).max()) == 0  # init does not update
    v = {"params": {"scale": jnp.full((6,), 1.5), "bias": jnp.full((6,), 0.25)},
         "batch_stats": {"mean": jnp.full((6,), 0.3), "var": jnp.full((6,), 2.0)}}
    y, upd = bn.apply(v, x, use_running_average=False, mutable=["batch_stats"])
    x64 = x.astype(np.float64)
    n = 3 * 5 * 4
    mu, var_b = x64.mean((0, 1, 2)), x64.var((0, 1, 2))
    np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.9 * 0.3 + 0.1 * mu, rtol=1e-6)
    np.testing.assert_allclose(upd["batch_stats"]["var"], 0.9 * 2.0 + 0.1 * var_b * n / (n - 1), rtol=1e-6)
    np.testing.assert_allclose(y, (x64 - mu) / np.sqrt(var_b + 1e-5) * 1.5 + 0.25, atol=1e-5)
    y_eval = bn.apply(v, x, use_running_average=True)
    np.testing.assert_allclose(y_eval, (x64 - 0.3) / np.sqrt(2.0 + 1e-5) * 1.5 + 0.25, atol=1e-5)


def _bn_grads(x, ct, scale, bias, axis_name=None):
    """Train-mode BatchNorm's output and gradients (x, scale, bias) for the loss ``sum(y * ct)``."""
    stats = {"mean": jnp.zeros(x.shape[-1]), "var": jnp.ones(x.shape[-1])}

    def loss(x, scale, bias):
        y, _ = BatchNorm(axis_name=axis_name).apply({"params": {"scale": scale, "bias": bias}, "batch_stats": stats},
                                                    x, use_running_average=False, mutable=["batch_stats"])
        return jnp.sum(y * ct), y

    (_, y), g = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(x, scale, bias)
    return (y, *g)


def _bn_grads_float64(x, ct, scale, bias):
    """The same in float64 numpy: y = xhat*s + b, dx = s/sigma * (ct - mean(ct) - xhat * mean(ct*xhat))."""
    x, ct = x.astype(np.float64), ct.astype(np.float64)
    axes = tuple(range(x.ndim - 1))
    sigma = np.sqrt(x.var(axes) + 1e-5)
    xhat = (x - x.mean(axes)) / sigma
    dx = scale / sigma * (ct - ct.mean(axes) - xhat * (ct * xhat).mean(axes))
    return xhat * scale + bias, dx, (ct * xhat).sum(axes), ct.sum(axes)


_BN_SHARD_MAP_SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tests.test_models import _bn_grads
mesh = jax.make_mesh((2,), ("m",))
rng = np.random.default_rng(0)
x, ct = (jnp.asarray(rng.standard_normal((4, 3, 3, 5)), jnp.float32) for _ in range(2))
s, b = jnp.linspace(0.5, 1.5, 5), jnp.linspace(-1, 1, 5)
# data parallel with cross-device statistics: equal to one device on the whole batch
dp = jax.shard_map(lambda x, ct, s, b: _bn_grads(x, ct, s, b, axis_name="m"), mesh=mesh,
                   in_specs=(P("m"), P("m"), P(), P()), out_specs=(P("m"), P("m"), P(), P()))
got = dp(jax.device_put(x, NamedSharding(mesh, P("m"))), jax.device_put(ct, NamedSharding(mesh, P("m"))), s, b)
for u, v in zip(got, _bn_grads(x, ct, s, b)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-5)
print("ok")
"""


def test_batchnorm_train_gradients_are_exact_under_vmap_and_shard_map():
    """On CPU the batch statistics and their gradients are matrix products (custom VJPs); the output and
    every gradient equal the float64 formulas, per member under ``vmap``, and with ``axis_name`` inside
    ``shard_map`` they equal one device on the whole batch."""
    import os
    import subprocess
    import sys

    rng = np.random.default_rng(1)
    x, ct = (rng.standard_normal((3, 6, 5, 4, 7)).astype(np.float32) * 2 + 1 for _ in range(2))
    scale, bias = np.linspace(0.5, 1.5, 7), np.linspace(-1, 1, 7)
    got = jax.vmap(lambda x, ct: _bn_grads(x, ct, jnp.asarray(scale, jnp.float32),
                                           jnp.asarray(bias, jnp.float32)))(jnp.asarray(x), jnp.asarray(ct))
    for m in range(3):
        for g, want in zip(got, _bn_grads_float64(x[m], ct[m], scale, bias), strict=True):
            np.testing.assert_allclose(np.asarray(g[m]), want, rtol=1e-4, atol=2e-5)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", _BN_SHARD_MAP_SCRIPT], env=env, capture_output=True, text=True,
                       timeout=300, cwd=str(Path(__file__).resolve().parent.parent))
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]


def test_adaptive_avg_pool_bins_and_maxpool_padding():
    x = np.arange(2 * 5 * 7 * 3, dtype=np.float32).reshape(2, 5, 7, 3)
    out = np.asarray(adaptive_avg_pool2d(x, (4, 4)))
    h, w = 5, 7
    for i in range(4):
        for j in range(4):
            r0, r1 = (i * h) // 4, -(-((i + 1) * h) // 4)
            c0, c1 = (j * w) // 4, -(-((j + 1) * w) // 4)
            np.testing.assert_allclose(out[:, i, j], x[:, r0:r1, c0:c1].mean((1, 2)), rtol=1e-6)
    assert adaptive_avg_pool2d(x[:, :4, :4], (4, 4)) is not None
    neg = -np.ones((1, 4, 4, 1), np.float32)
    mp = np.asarray(max_pool2d(neg, 3, 2, 1))  # -inf padding: the border never wins
    assert mp.shape == (1, 2, 2, 1) and np.all(mp == -1)


def _torch_max_pool_grad(x, k):
    """torch's CPU max_pool2d kernel, in numpy: per window, row-major, ``val > best or isnan(val)``."""
    n, h, w, c = x.shape
    out, grad = np.zeros((n, h // k, w // k, c), x.dtype), np.zeros_like(x)
    for b, i, j, ch in np.ndindex(out.shape):
        best, at = -np.inf, None
        for di, dj in np.ndindex(k, k):
            v = x[b, i * k + di, j * k + dj, ch]
            if v > best or np.isnan(v) or at is None:
                best, at = v, (b, i * k + di, j * k + dj, ch)
        out[b, i, j, ch] = best
        grad[at] += 1.0
    return out, grad


@pytest.mark.parametrize("lowering", ["auto", "lax"])
@pytest.mark.parametrize("k", [2, 3])
def test_max_pool2d_tiled_picks_torchs_element_on_ties_and_nan(k, lowering):
    """The non-overlapping max pool (LeNet, VGG) gives torch's values (odd sizes floor, a NaN wins) and
    sends each window's gradient to the element torch's kernel picks: the first maximum, row-major. On
    CPU ("auto") the gradient is a custom VJP from the picked window position; with the "lax" lowering
    it is autodiff of the select chain (forward mode included)."""
    from jaxuq.nn.conv import conv_lowering

    rng = np.random.default_rng(0)
    x = rng.integers(-2, 3, (2, 7, 8, 3)).astype(np.float32)  # many ties, zeros as after a ReLU
    weights = jnp.arange(1.0, 4.0)

    def check(x):
        want, want_grad = _torch_max_pool_grad(x, k)
        with conv_lowering(lowering):
            got = jax.jit(lambda x: max_pool2d(x, k))(jnp.asarray(x))
            grad = jax.jit(jax.grad(lambda x: (max_pool2d(x, k) * weights).sum()))(jnp.asarray(x))
        np.testing.assert_array_equal(np.asarray(got), want)
        np.testing.assert_array_equal(np.asarray(grad), want_grad * np.arange(1.0, 4.0, dtype=np.float32))
        return got

    check(x)
    x[0, 1, 1, 0] = x[1, 0, 0, 2] = x[1, 1, 0, 2] = np.nan  # the later of two NaNs wins, as in torch
    assert np.isnan(check(x)[0, 0, 0, 0])
    if lowering == "lax":
        with conv_lowering("lax"):
            t = jax.jvp(lambda x: max_pool2d(x, k), (jnp.asarray(x),), (jnp.ones_like(x),))[1]
        np.testing.assert_array_equal(np.asarray(t), np.ones(t.shape, np.float32))


def test_dropout2d_drops_whole_channels():
    m = models.get("lenet", in_channels=1, num_classes=10, dropout_rate=0.5)
    x = jnp.ones((2, 28, 28, 1))
    v = m.init(jax.random.key(0), x)
    seen = {}

    def grab(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, Dropout) and tuple(context.module.broadcast_dims) == (1, 2):
            seen.setdefault("maps", out)
        return out

    with nn.intercept_methods(grab):
        m.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)})
    maps = np.asarray(seen["maps"])  # [N, H, W, C] after conv1 -> act -> Dropout2d
    zero = np.all(maps == 0, axis=(1, 2))
    assert zero.any() and (~zero).any()
    # kept channels are scaled by 1/(1-p): compare with the eval-mode activation
    seen_eval = {}

    def grab_eval(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, Dropout) and tuple(context.module.broadcast_dims) == (1, 2):
            seen_eval.setdefault("maps", out)
        return out

    with nn.intercept_methods(grab_eval):
        m.apply(v, x, train=False)
    ref = np.asarray(seen_eval["maps"])
    kept = ~zero
    np.testing.assert_allclose(maps.transpose(0, 3, 1, 2)[kept], 2 * ref.transpose(0, 3, 1, 2)[kept], rtol=1e-6)


def test_save_load_roundtrip_and_stacked(tmp_path):
    kw = {"in_channels": 1, "num_classes": 10, "norm": "batchnorm"}
    m = models.get("lenet", **kw)
    x = np.random.default_rng(0).standard_normal((2, 28, 28, 1)).astype(np.float32)
    v = m.init(jax.random.key(0), x)
    models.save(tmp_path / "r20", v, {"arch": "lenet", "kwargs": kw, "num_members": None})
    m2, v2, meta = models.load(tmp_path / "r20")
    assert meta["arch"] == "lenet" and meta["format"] == "jaxuq-model" and "batch_stats" in v2
    apply = jax.jit(m.apply)
    np.testing.assert_array_equal(np.asarray(apply(v2, x)), np.asarray(apply(v, x)))
    with pytest.raises(FileExistsError):
        models.save(tmp_path / "r20", v, {"arch": "lenet", "kwargs": kw})
    # stacked ensemble: leading member axis, vmapped apply gives [M, N, C]
    vs = [m.init(jax.random.key(i), x) for i in range(3)]
    st = jax.tree.map(lambda *a: np.stack(a), *vs)
    models.save(tmp_path / "ens", st, {"arch": "lenet", "kwargs": kw, "num_members": 3}, force=True)
    m3, v3, meta3 = models.load(tmp_path / "ens")
    assert meta3["num_members"] == 3
    out = jax.jit(jax.vmap(lambda vv: m3.apply(vv, x)))(v3)
    assert out.shape == (3, 2, 10)
    np.testing.assert_allclose(out[1], apply(vs[1], x), atol=1e-5)
    assert json.loads((tmp_path / "ens" / "meta.json").read_text())["num_members"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ens", "r20"]  # no temp dirs left
