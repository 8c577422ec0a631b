"""The one forward pass (``jaxuq.forward``): single / stacked / members-in-batch layouts decided by
the variables and the class marker (never by the output's shape), the Sampler hook, and the mesh
roles (``jaxuq.sharding.split_mesh``)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxuq import models
from jaxuq.evaluation import evaluate, predict
from jaxuq.forward import Sampler, StackedBatchStats, forward
from jaxuq.sharding import MeshRoles, make_mesh, member_mesh, split_mesh
from jaxuq.train import create_train_state
from tests.helpers import REPO


class _TinyBN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn1")(x)
        return nn.Dense(5, name="linear")(jnp.mean(nn.relu(x), axis=(1, 2)))


class _Unmarked(nn.Module):
    """Returns ``copies * B`` rows, has ``num_estimators`` but no ``members_in_batch`` marker: never split."""

    num_estimators: int = 2
    copies: int = 2

    @nn.compact
    def __call__(self, x, train: bool = False):
        return jnp.tile(nn.Dense(3)(x), (self.copies, 1))


class _Marked(_Unmarked):
    members_in_batch: ClassVar[bool] = True


@dataclasses.dataclass(frozen=True)
class _WeightNoise:
    """A key-based sampler: params + scale * N(0, 1) (a SWAG-diagonal-like draw)."""

    num_samples: int
    scale: float = 0.1

    def draw(self, variables, key):
        leaves, tree = jax.tree.flatten(variables["params"])
        keys = jax.random.split(key, len(leaves))
        noisy = [a + self.scale * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)]
        return dict(variables, params=jax.tree.unflatten(tree, noisy)), {}


@pytest.fixture(scope="module")
def bn():
    x = np.asarray(jax.random.normal(jax.random.key(1), (6, 8, 8, 3)), np.float32)
    state = create_train_state(_TinyBN(), optax.identity(), jax.random.key(0), x[:1], num_members=3)
    stats = jax.tree.map(lambda a: a + jnp.arange(3.0).reshape((3,) + (1,) * (a.ndim - 1)), state.batch_stats)
    return _TinyBN(), {"params": state.params, "batch_stats": stats}, x


def _member(tree, m):
    return jax.tree.map(lambda a: a[m], tree)


def test_single_and_stacked_layouts(bn):
    model, v, x = bn
    one = _member(v, 1)
    np.testing.assert_array_equal(forward(model, one, x), model.apply(one, x))
    for lowering in ("vmap", "gemm", "map", "unroll"):
        out = forward(model, v, x, lowering=lowering)
        assert out.shape == (3, 6, 5) and out.dtype == jnp.float32
        for m in range(3):
            np.testing.assert_allclose(out[m], model.apply(_member(v, m), x), atol=1e-5)
    bf = forward(model, one, x, compute_dtype="bfloat16")
    assert bf.dtype == jnp.float32 and float(jnp.abs(bf - model.apply(one, x)).max()) < 0.1
    with pytest.raises(ValueError, match="lowering must be one of"):
        forward(model, v, x, lowering="loop")
    with pytest.raises(ValueError, match="compute_dtype"):
        forward(model, one, x, compute_dtype="float16")


def test_members_in_batch_is_the_class_marker_not_the_shape():
    x = jnp.ones((4, 3))
    for cls, shape in ((_Unmarked, (8, 3)), (_Marked, (2, 4, 3))):
        v = cls().init(jax.random.key(0), x)
        assert forward(cls(), v, x).shape == shape, cls
    packed = models.get("packed_lenet", num_estimators=4, alpha=2)
    xi = jax.random.normal(jax.random.key(2), (5, 28, 28, 1))
    pv = packed.init(jax.random.key(0), xi[:1])
    raw = packed.apply(pv, xi)  # TU's [(M B), C], member-major
    out = forward(packed, pv, xi)
    np.testing.assert_array_equal(out, raw.reshape(4, 5, 10))
    stacked = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), pv)  # 2 packed models of 4 estimators
    both = forward(packed, stacked, xi, lowering="map")
    assert both.shape == (8, 5, 10)
    np.testing.assert_allclose(both[4:], packed.apply(_member(stacked, 1), xi).reshape(4, 5, 10), atol=1e-5)
    assert predict(packed, pv, np.asarray(xi), batch_size=2).shape == (4, 5, 10)  # split per padded batch
    bad = _Marked(num_estimators=3)
    with pytest.raises(ValueError, match=r"returned 8 rows for a batch of 4; expected 12"):
        forward(bad, bad.init(jax.random.key(0), x), x)


def test_sampler_hook_index_and_key_based(bn):
    model, v, x = bn
    params, stats = v["params"], v["batch_stats"]
    one_params = _member(params, 0)
    # index-based: M sets of BatchNorm statistics for one set of params (MC-BatchNorm's layout)
    sampler = StackedBatchStats(3)
    assert isinstance(sampler, Sampler)
    out = forward(model, {"params": one_params, "batch_stats": stats}, x, sampler=sampler, key=jax.random.key(0))
    for m in range(3):
        ref = model.apply({"params": one_params, "batch_stats": _member(stats, m)}, x)
        np.testing.assert_allclose(out[m], ref, atol=1e-6)
    # key-based: sample m draws from split(key, M)[m]
    one = {"params": one_params, "batch_stats": _member(stats, 0)}
    noise, key = _WeightNoise(4), jax.random.key(7)
    out = forward(model, one, x, sampler=noise, key=key, lowering="vmap")
    for m, k in enumerate(jax.random.split(key, 4)):
        np.testing.assert_allclose(out[m], model.apply(noise.draw(one, k)[0], x), atol=1e-5)
    batched = predict(model, one, x, sampler=noise, key=key, batch_size=4)  # batch i: fold_in(key, i)
    np.testing.assert_allclose(batched[:, :4], forward(model, one, x[:4], sampler=noise,
                                                       key=jax.random.fold_in(key, 0)), atol=1e-5)
    res = evaluate(model, one, (x, np.arange(6) % 5), sampler=noise, key=key, batch_size=4, progress=False)
    assert "test/ens_MI" in res  # samples are members of an ensemble for the table


def test_sampler_errors(bn):
    model, v, x = bn
    one = _member(v, 0)
    with pytest.raises(ValueError, match="needs `key`"):
        forward(model, one, x, sampler=_WeightNoise(2))
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        forward(model, one, x, sampler=_WeightNoise(0), key=jax.random.key(0))
    with pytest.raises(TypeError, match="num_samples must be an int"):
        forward(model, one, x, sampler=_WeightNoise(2.0), key=jax.random.key(0))
    with pytest.raises(TypeError, match="sampler must have"):
        forward(model, one, x, sampler=object(), key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"leading axis of num_samples=2"):
        forward(model, one, x, sampler=StackedBatchStats(2), key=jax.random.key(0))  # stats not stacked
    with pytest.raises(ValueError, match=r"needs the variable collections \['batch_stats'\]"):
        forward(model, {"params": one["params"]}, x, sampler=StackedBatchStats(2), key=jax.random.key(0))


def test_split_mesh_roles():
    assert split_mesh(None) == MeshRoles(None, None)
    data, members = make_mesh(jax.devices()[:1]), member_mesh(1)
    assert split_mesh(data) == MeshRoles(data=data) and split_mesh(members) == MeshRoles(members=members)
    assert split_mesh(split_mesh(data)) == MeshRoles(data=data)  # idempotent: split once, pass the roles
    with pytest.raises(ValueError, match="mesh axes must be"):
        split_mesh(jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("model",)))
    with pytest.raises(TypeError, match="mesh must be"):
        split_mesh("data")
    with pytest.raises(ValueError, match="a member mesh needs stacked variables"):
        forward(_Unmarked(), {}, jnp.ones((2, 3)), mesh=members)


_SAMPLER_MESH = """
import jax, jax.numpy as jnp, numpy as np, optax
from jaxuq.forward import forward
from jaxuq.sharding import member_mesh
from tests.test_forward import _TinyBN, _WeightNoise
assert jax.device_count() == 4
x = np.asarray(jax.random.normal(jax.random.key(1), (6, 8, 8, 3)), np.float32)
m = _TinyBN(); v = m.init(jax.random.key(0), x[:1])
kw = dict(sampler=_WeightNoise(4), key=jax.random.key(3), lowering="map")
one = jax.jit(lambda v, x: forward(m, v, x, **kw))(v, x)
par = jax.jit(lambda v, x: forward(m, v, x, mesh=member_mesh(4), **kw))(v, x)
print("DIFF", float(jnp.abs(one - par).max()), len(par.sharding.device_set))
"""


def test_sampler_samples_split_over_a_member_mesh():
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    r = subprocess.run([sys.executable, "-c", _SAMPLER_MESH], env=env, cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    diff, ndev = r.stdout.split("DIFF")[1].split()
    assert float(diff) <= 1e-6 and int(ndev) == 4
