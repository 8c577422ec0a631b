"""jaxuq.nn.Conv / conv_general_dilated: same values and gradients as lax.conv_general_dilated.

On XLA:CPU the convolution has two rewrites (``conv_lowering``): "conv" (lax.conv forward, both gradients
as channels-last convs: fast inside lax.scan) and "gemm" (patches + one matrix product). These tests pin
that each is exact up to float32 summation order ("conv": a bitwise forward), for every
stride/padding/dilation/group shape the model zoo uses, under jit, scan and vmap, in fp32 and bf16.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxuq.nn import Conv
from jaxuq.nn import conv as conv_mod

DN = ("NHWC", "HWIO", "NHWC")

CASES = [  # (h, w, k, stride, padding, dilation, groups, cin, cout)
    (9, 9, 3, 1, 1, 1, 1, 4, 6),
    (10, 7, 3, 2, 1, 1, 1, 4, 6),
    (11, 11, 5, 2, 2, 1, 2, 4, 6),
    (12, 12, 3, 1, 3, 3, 1, 3, 5),
    (8, 8, 1, 2, 0, 1, 4, 8, 8),
    (13, 13, 7, 2, 3, 1, 1, 3, 8),
    (12, 12, 3, 1, 1, 1, 6, 6, 6),  # depthwise
    (10, 10, 3, 3, 0, 2, 2, 4, 4),
    (9, 9, 2, 2, ((0, 1), (1, 0)), 1, 1, 2, 3),  # asymmetric padding
]


def _pair(case, lowering="conv"):
    h, w, k, s, p, d, g, cin, cout = case
    pad = ((p, p), (p, p)) if isinstance(p, int) else p
    x = jax.random.normal(jax.random.key(0), (3, h, w, cin))
    wt = jax.random.normal(jax.random.key(1), (k, k, cin // g, cout))
    dn = lax.conv_dimension_numbers(x.shape, wt.shape, DN)

    def ref(x, wt):
        return lax.conv_general_dilated(x, wt, (s, s), pad, rhs_dilation=(d, d), dimension_numbers=dn,
                                        feature_group_count=g)

    def new(x, wt):
        with conv_mod.conv_lowering(lowering):
            return conv_mod.conv_general_dilated(x, wt, (s, s), pad, rhs_dilation=(d, d), dimension_numbers=dn,
                                                 feature_group_count=g)

    return x, wt, ref, new


def _rel(a, b):
    return float(jnp.abs(a - b).max() / jnp.abs(a).max())


@pytest.mark.parametrize("lowering", ["conv", "gemm"])
@pytest.mark.parametrize("case", CASES, ids=[str(c[:7]) for c in CASES])
def test_values_and_gradients_match_lax(case, lowering):
    x, wt, ref, new = _pair(case, lowering)
    y0, y1 = ref(x, wt), new(x, wt)
    assert _rel(y0, y1) <= (0.0 if lowering == "conv" else 1e-6)
    ct = jax.random.normal(jax.random.key(2), y0.shape)
    g0 = jax.vjp(ref, x, wt)[1](ct)
    g1 = jax.jit(lambda x, wt, ct: jax.vjp(new, x, wt)[1](ct))(x, wt, ct)
    assert _rel(g0[0], g1[0]) <= 1e-6
    assert _rel(g0[1], g1[1]) <= 1e-6


@pytest.mark.parametrize("lowering", ["conv", "gemm"])
@pytest.mark.parametrize("case", CASES[:3], ids=[str(c[:7]) for c in CASES[:3]])
def test_weight_gradient_inside_scan_and_vmap(case, lowering):
    x, wt, ref, new = _pair(case, lowering)
    ct = jax.random.normal(jax.random.key(2), ref(x, wt).shape)

    def looped(f):
        def body(c, _):
            dw = jax.vjp(lambda w: f(x, w), wt + c)[1](ct)[0]
            return c + 1e-3 * dw, None

        return jax.jit(lambda: lax.scan(body, jnp.zeros_like(wt), None, length=3)[0])()

    assert _rel(looped(ref), looped(new)) <= 1e-5
    xs, ws = jnp.stack([x, 2 * x]), jnp.stack([wt, -wt])
    cts = jnp.stack([ct, ct])
    g0 = jax.vmap(lambda a, b, c: jax.vjp(ref, a, b)[1](c))(xs, ws, cts)
    g1 = jax.vmap(lambda a, b, c: jax.vjp(new, a, b)[1](c))(xs, ws, cts)
    for a, b in zip(g0, g1, strict=True):
        assert _rel(a, b) <= 1e-6


MEMBER_CASES = [(12, 12, 5, 1, 0, 1, 1, 1, 6), (9, 9, 3, 1, 1, 1, 1, 4, 6), (11, 11, 5, 2, 2, 1, 2, 4, 6)]


@pytest.mark.parametrize("axes", [(None, 0), (0, None), (0, 0)], ids=["shared-input", "shared-weights", "stacked"])
@pytest.mark.parametrize("case", MEMBER_CASES, ids=["gemm-1ch", "conv", "grouped"])
def test_member_batching_rules_match_vmapped_lax(case, axes):
    """Under ``jax.vmap`` (ensemble members, MC samples) the CPU rewrites use their batching rules: members
    sharing the input are the shared patches times every member's kernel in one product (no loop, no
    grouped conv), members sharing the weights one convolution over M * N images, stacked members a
    ``lax.map`` of the single-model kernels. Values and both gradients match ``vmap`` of ``lax.conv``."""
    h, w, k, s, p, d, g, cin, cout = case
    pad = ((p, p), (p, p))
    x = jax.random.normal(jax.random.key(0), (3, 4, h, w, cin))
    wt = jax.random.normal(jax.random.key(1), (3, k, k, cin // g, cout))
    x, wt = (x if axes[0] == 0 else x[0]), (wt if axes[1] == 0 else wt[0])
    dn = lax.conv_dimension_numbers((4, h, w, cin), (k, k, cin // g, cout), DN)
    kw = dict(rhs_dilation=(d, d), dimension_numbers=dn, feature_group_count=g)

    def loss(conv):
        return lambda a, b: (jnp.sin(jax.vmap(lambda u, v: conv(u, v, (s, s), pad, **kw), in_axes=axes)(a, b)) ** 2).sum()

    v0, g0 = jax.value_and_grad(loss(lax.conv_general_dilated), (0, 1))(x, wt)
    v1, g1 = jax.jit(jax.value_and_grad(loss(conv_mod.conv_general_dilated), (0, 1)))(x, wt)
    assert abs(float(v1 - v0)) <= 1e-5 * abs(float(v0))
    for a, b in zip(g0, g1, strict=True):
        assert _rel(a, b) <= 1e-5
    if jax.default_backend() != "cpu":
        return
    # the gradient training needs (a first layer's weights; MC samples' inputs), compiled: XLA drops the rest
    wrt = {(None, 0): 1, (0, None): 0, (0, 0): (0, 1)}[axes]
    hlo = jax.jit(jax.grad(loss(conv_mod.conv_general_dilated), wrt)).lower(x, wt).compile().as_text()
    loops = re.findall(r"= [^=]* while\(", hlo)
    grouped = re.findall(r"convolution\([^\n]*feature_group_count=[2-9]", hlo)
    if axes == (0, 0) or (axes == (None, 0) and g > 1):
        assert loops  # a map of the single-model kernels
    else:
        assert not loops and (g > 1 or not grouped)


def test_nested_member_and_sample_vmaps_match_lax():
    """An outer vmap over MC samples (shared weights) around an inner vmap over members (shared input)."""
    x = jax.random.normal(jax.random.key(0), (2, 4, 12, 12, 1))
    wt = jax.random.normal(jax.random.key(1), (3, 5, 5, 1, 6))
    dn = lax.conv_dimension_numbers(x.shape[1:], wt.shape[1:], DN)

    def loss(conv):
        one = lambda u, v: conv(u, v, (1, 1), ((0, 0), (0, 0)), dimension_numbers=dn)  # noqa: E731
        return lambda a, b: (jax.vmap(jax.vmap(one, (None, 0)), (0, None))(a, b) ** 2).sum()

    g0 = jax.grad(loss(lax.conv_general_dilated), (0, 1))(x, wt)
    g1 = jax.jit(jax.grad(loss(conv_mod.conv_general_dilated), (0, 1)))(x, wt)
    for a, b in zip(g0, g1, strict=True):
        assert _rel(a, b) <= 1e-5


@conv_mod.conv_lowering("conv")
def test_same_padding_string_and_bf16():
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
    wt = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
    dn = lax.conv_dimension_numbers(x.shape, wt.shape, DN)
    loss_new = lambda w, x: (conv_mod.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=dn) ** 2).sum()  # noqa: E731
    loss_ref = lambda w, x: (lax.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=dn) ** 2).sum()  # noqa: E731
    assert _rel(jax.grad(loss_ref)(wt, x), jax.grad(loss_new)(wt, x)) <= 1e-6
    xb, wb = x.astype(jnp.bfloat16), wt.astype(jnp.bfloat16)
    gb = jax.grad(lambda w: conv_mod.conv_general_dilated(xb, w, (1, 1), ((1, 1), (1, 1)),
                                                          dimension_numbers=dn).astype(jnp.float32).sum())(wb)
    g0 = jax.grad(lambda w: lax.conv_general_dilated(xb, w, (1, 1), ((1, 1), (1, 1)),
                                                     dimension_numbers=dn).astype(jnp.float32).sum())(wb)
    assert gb.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(gb, np.float32), np.asarray(g0, np.float32))


def test_gemm_bf16_stays_bf16_and_close_to_fp32():
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
    wt = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
    dn = lax.conv_dimension_numbers(x.shape, wt.shape, DN)

    def loss(w, x):
        with conv_mod.conv_lowering("gemm"):
            y = conv_mod.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)
        return y.astype(jnp.float32).sum(), y

    (_, yb), gb = jax.value_and_grad(loss, has_aux=True)(wt.astype(jnp.bfloat16), x.astype(jnp.bfloat16))
    (_, y), g = jax.value_and_grad(loss, has_aux=True)(wt, x)
    assert yb.dtype == gb.dtype == jnp.bfloat16
    assert _rel(y, yb.astype(jnp.float32)) <= 2e-2 and _rel(g, gb.astype(jnp.float32)) <= 2e-2


@pytest.mark.parametrize("lowering", ["conv", "gemm"])
def test_flax_module_same_variables_and_outputs_as_nn_conv(lowering):
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
    kw = dict(features=6, kernel_size=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), feature_group_count=2)
    v = nn.Conv(**kw).init(jax.random.key(1), x)
    v2 = Conv(**kw).init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, v2)
    with conv_mod.conv_lowering(lowering):
        y = Conv(**kw).apply(v, x)
    assert _rel(nn.Conv(**kw).apply(v, x), y) <= (0.0 if lowering == "conv" else 1e-6)


# conv_max_pool: (x shape, kernel size, out channels, padding, window, relu, bias)
POOL_CASES = [((11, 10, 2), 3, 4, 0, 2, True, True), ((9, 8, 3), 2, 3, 1, 3, False, False),
              ((7, 7, 1), 5, 6, 2, 2, True, True)]


@pytest.mark.parametrize("axes", [None, (None, 0, 0), (0, None, None), (0, 0, 0)],
                         ids=["single", "shared-input", "shared-weights", "stacked"])
@pytest.mark.parametrize("case", POOL_CASES, ids=["relu-w2", "w3-odd-nobias", "5x5-pad2"])
def test_conv_max_pool_is_the_composition_with_torchs_picks(case, axes):
    """The fused conv (+ ReLU) + max pool gives the composition's values and all three gradients exactly,
    alone and under each member batching. The inputs are small integers, so the convolution is exact in
    any summation order and its windows are full of ties: each window's gradient must go where torch's
    pick goes (first maximum, the later NaN; the "lax" composition is checked against torch's kernel in
    test_models). The floor-mode remainder rows and columns get no gradient."""
    from jaxuq.nn import conv_max_pool

    (h, w, cin), k, cout, p, win, relu, with_bias = case
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(-2, 3, (3, 4, h, w, cin)).astype(np.float32))
    kern = jnp.asarray(rng.integers(-1, 2, (3, k, k, cin, cout)).astype(np.float32))
    bias = jnp.asarray(rng.integers(-1, 2, (3, cout)).astype(np.float32))
    if axes is None or axes[0] is None:
        x = x[0]
    if axes is None or axes[1] is None:
        kern, bias = kern[0], bias[0]
    pads = ((p, p), (p, p))

    def loss(x, kern, bias):
        def f(u, v, b):
            return conv_max_pool(u, v, b if with_bias else None, pads, win, relu)
        out = f(x, kern, bias) if axes is None else jax.vmap(f, in_axes=axes)(x, kern, bias)
        weights = jnp.arange(out.size, dtype=out.dtype).reshape(out.shape) % 5 - 2
        return (out * weights).sum(), out

    def run():
        return jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(x, kern, bias)

    (_, got), got_grads = run()
    with conv_mod.conv_lowering("lax"):
        (_, want), want_grads = run()
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    for a, b in zip(got_grads, want_grads, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(jnp.abs(got_grads[1]).sum()) > 0
    if axes is None and not relu:  # NaNs: a NaN wins its window, the later of two NaNs takes the gradient
        xn = x.at[0, 1, 1, 0].set(jnp.nan).at[1, 2, 3, 0].set(jnp.nan)

        def gx():  # a fresh jit per lowering: the lowering is read when tracing
            return jax.jit(jax.grad(lambda u: loss(u, kern, bias)[0]))(xn)

        with conv_mod.conv_lowering("lax"):
            want_x = gx()
        np.testing.assert_array_equal(np.asarray(gx()), np.asarray(want_x))


def test_conv_max_pool_module_keeps_conv_variables():
    """ConvMaxPool and PackedConv(max_pool=...) have their Conv's variables and give max_pool2d(relu(conv))
    (fused, and composed where the fused kernel does not apply: a strided conv)."""
    from jaxuq.nn import ConvMaxPool, max_pool2d
    from jaxuq.nn.packed import PackedConv

    x = jax.random.normal(jax.random.key(0), (2, 12, 12, 3))
    for kw in (dict(kernel_size=(5, 5), padding=((1, 1), (1, 1))), dict(kernel_size=3, strides=2, padding=1)):
        v = Conv(features=4, **kw).init(jax.random.key(1), x)
        v2 = ConvMaxPool(features=4, max_pool=2, relu=True, **kw).init(jax.random.key(1), x)
        assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, v2)
        want = max_pool2d(jax.nn.relu(Conv(features=4, **kw).apply(v, x)), 2)
        got = ConvMaxPool(features=4, max_pool=2, relu=True, **kw).apply(v, x)
        assert _rel(want, got) <= 1e-6
    pc = dict(in_channels=3, out_channels=8, kernel_size=5, alpha=2, num_estimators=2, first=True)
    v = PackedConv(**pc).init(jax.random.key(2), x)
    assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, PackedConv(**pc, max_pool=2).init(
        jax.random.key(2), x))
    got = PackedConv(**pc, max_pool=2, relu=True).apply(v, x)
    assert _rel(max_pool2d(jax.nn.relu(PackedConv(**pc).apply(v, x)), 2), got) <= 1e-6
    with pytest.raises(ValueError, match="needs max_pool"):
        PackedConv(**pc, relu=True).apply(v, x)


def test_forward_mode_needs_a_lowering_without_custom_vjp():
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 2))
    wt = jax.random.normal(jax.random.key(1), (3, 3, 2, 3))
    dn = lax.conv_dimension_numbers(x.shape, wt.shape, DN)

    def f(w):
        return conv_mod.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)

    if jax.default_backend() == "cpu":
        with conv_mod.conv_lowering("conv"), pytest.raises(TypeError, match="forward-mode"):
            jax.jvp(f, (wt,), (wt,))
    for lowering in ("lax", "gemm"):
        conv_mod.set_conv_lowering(lowering)
        try:
            y, t = jax.jvp(f, (wt,), (wt,))
        finally:
            conv_mod.set_conv_lowering("auto")
        np.testing.assert_allclose(t, f(wt), rtol=1e-6, atol=1e-5)  # conv is linear in w


def test_lowering_choice_is_validated():
    with pytest.raises(ValueError, match="lowering must be one of"):
        conv_mod.set_conv_lowering("fast")
    with pytest.raises(TypeError, match="lowering must be a string"):
        with conv_mod.conv_lowering(None):
            pass


_SHARD_MAP_SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P
from jaxuq.nn import conv as C
mesh = jax.make_mesh((2,), ("m",))
x = jax.random.normal(jax.random.key(0), (4, 6, 6, 2))
w = jax.random.normal(jax.random.key(1), (3, 3, 2, 3))
dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
def grads(conv):
    loss = lambda x, w: (conv(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn) ** 2).sum()
    # data parallel: x sharded (varying), w replicated (invariant) -> dw summed over devices
    dp = jax.shard_map(lambda x, w: jax.grad(loss, argnums=(0, 1))(x, w), mesh=mesh,
                       in_specs=(P("m"), P()), out_specs=(P("m"), P()))
    # member parallel: x replicated, a stack of w sharded -> dx summed over members
    ws = jnp.stack([w, -2 * w])
    mp = jax.shard_map(lambda x, ws: jax.grad(loss, argnums=(0, 1))(x, ws[0]), mesh=mesh,
                       in_specs=(P(), P("m")), out_specs=(P(), P("m")))
    return dp(jax.device_put(x, NamedSharding(mesh, P("m"))), w) + mp(
        x, jax.device_put(ws, NamedSharding(mesh, P("m"))))
a, b = grads(C.conv_general_dilated), grads(lax.conv_general_dilated)
for u, v in zip(a, b):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-4)
# max_pool2d's CPU custom VJP inside shard_map (an input replicated over the mesh, a varying scale)
from jaxuq.nn import max_pool2d
scales = jax.device_put(jnp.asarray([1.0, -2.0]), NamedSharding(mesh, P("m")))
pool = lambda: jax.shard_map(lambda x, s: jax.grad(lambda x: (max_pool2d(x, 2) * s[0]).sum())(x), mesh=mesh,
                             in_specs=(P(), P("m")), out_specs=P())(x, scales)
got = pool()
with C.conv_lowering("lax"):
    want = pool()
np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
assert float(jnp.abs(got).sum()) > 0
# the fused conv + ReLU + max pool's custom VJP, both ways (its input gradient under member parallelism)
from jaxuq.nn import conv_max_pool
fused = lambda x, w, strides, pads, dimension_numbers: conv_max_pool(x, w, jnp.arange(3.0) / 10, pads, 2, True)
got = grads(fused)
with C.conv_lowering("lax"):
    want = grads(fused)
for u, v in zip(got, want):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-4)
print("ok")
"""


def test_cotangents_inside_shard_map_match_lax():
    """Inside shard_map a cotangent that varies over an axis its primal does not vary over is summed;
    max_pool2d's and conv_max_pool's custom VJPs give lax's gradients there too."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", _SHARD_MAP_SCRIPT], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]


def test_auto_lowering_follows_the_measured_table():
    """bench/results/conv.md and LeNet training steps: gemm for strided convs and one input channel,
    else conv."""
    pick = conv_mod._auto_lowering
    assert pick((128, 12, 12, 6), (5, 5, 6, 16), (1, 1), ((0, 0),) * 2, (1, 1), 1) == "conv"
    assert pick((128, 28, 28, 1), (5, 5, 1, 6), (1, 1), ((0, 0),) * 2, (1, 1), 1) == "gemm"
    assert pick((128, 32, 32, 16), (3, 3, 16, 32), (2, 2), ((1, 1),) * 2, (1, 1), 1) == "gemm"
    assert pick((128, 32, 32, 16), (3, 3, 16, 16), (1, 1), ((1, 1),) * 2, (1, 1), 1) == "conv"
