"""The rest of TU's packed family (``torch_uncertainty/layers/packed.py``) in ``jaxuq.nn.packed``: each layer
built and seeded in TU, its state dict converted strictly through the ``converters.mappings.packed`` entry
helpers, outputs compared on random inputs (<= 1e-5), parameter counts equal to TU's."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxuq.nn.packed import (
    PackedConv,
    PackedConvTranspose,
    PackedLayerNorm,
    PackedMultiheadAttention,
    PackedTransformerDecoderLayer,
    PackedTransformerEncoderLayer,
)
from tests.helpers import require

ATOL = 1e-5


def _tu_layers():
    require("torch")
    import torch_uncertainty.layers as L

    return L


def _randomize(torch, module, seed: int = 0):
    """Every parameter random (TU zero-initialises the attention biases and leaves bias_k/bias_v empty)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module.eval()


def _convert(module, sd_module, table, *args, **kwargs):
    """Flax variables of ``module`` (shapes from ``init(*args)``) filled strictly from ``sd_module``."""
    from converters.mappings import apply_table

    template = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))
    sd = {k: v.detach().numpy().copy() for k, v in sd_module.state_dict().items()}
    return apply_table(sd, table, template, "<tu>")


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _nchw_to_last(x):
    return np.moveaxis(x, 1, -1)


def _check(got, ref, atol: float = ATOL) -> float:
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    diff = float(np.abs(got - ref).max())
    assert diff <= atol, diff
    return diff


# ------------------------------------------------------------------------------------------ convolutions
CONV_CASES = [
    # (spatial dims, kwargs)
    (1, dict(in_channels=8, out_channels=16, kernel_size=3, alpha=2, num_estimators=2, gamma=2,
             minimum_channels_per_group=2, padding=1, stride=2)),
    (1, dict(in_channels=3, out_channels=8, kernel_size=5, alpha=2, num_estimators=4, first=True,
             padding="same", padding_mode="reflect", dilation=2)),
    (1, dict(in_channels=8, out_channels=5, kernel_size=3, alpha=2, num_estimators=2, last=True,
             padding=2, padding_mode="circular", bias=False)),
    (3, dict(in_channels=4, out_channels=8, kernel_size=(3, 1, 2), alpha=2, num_estimators=2, groups=2,
             minimum_channels_per_group=1, padding=(1, 0, 1), stride=(1, 2, 1))),
    (3, dict(in_channels=4, out_channels=6, kernel_size=3, alpha=2, num_estimators=2, last=True,
             padding=1, padding_mode="replicate")),
    (2, dict(in_channels=8, out_channels=8, kernel_size=3, alpha=2, num_estimators=4, gamma=2,
             minimum_channels_per_group=64, padding="same", padding_mode="reflect")),  # gamma reduced to 1
]


@pytest.mark.parity
@pytest.mark.parametrize(("nd", "kw"), CONV_CASES)
def test_packed_conv_1d_2d_3d_match_tu(nd, kw):
    torch = require("torch")
    L = _tu_layers()
    from converters.mappings.packed import packed_conv_entries

    torch.manual_seed(0)
    tu = {1: L.PackedConv1d, 2: L.PackedConv2d, 3: L.PackedConv3d}[nd](**kw).eval()
    ext_in = tu.conv.in_channels
    x = np.random.default_rng(0).normal(size=(3, ext_in, *(7, 6, 5)[:nd])).astype(np.float32)
    ours = PackedConv(**kw)
    xl = jnp.asarray(_nchw_to_last(x))
    v = _convert(ours, tu, packed_conv_entries("", (), bias=kw.get("bias", True), spatial_dims=nd), xl)
    assert _count(v) == sum(p.numel() for p in tu.parameters())
    with torch.no_grad():
        ref = tu(torch.as_tensor(x)).numpy()
    _check(ours.apply(v, xl), _nchw_to_last(ref))


CONVT_CASES = [
    dict(in_channels=8, out_channels=8, kernel_size=3, alpha=2, num_estimators=2, stride=2, padding=1,
         output_padding=1, minimum_channels_per_group=1),
    dict(in_channels=4, out_channels=6, kernel_size=(2, 3), alpha=2, num_estimators=2, gamma=2, stride=(2, 1),
         dilation=(1, 2), minimum_channels_per_group=2, bias=False),
    dict(in_channels=3, out_channels=4, kernel_size=4, alpha=2, num_estimators=4, first=True, stride=2),
    dict(in_channels=8, out_channels=4, kernel_size=3, alpha=2, num_estimators=2, last=True, padding=1,
         minimum_channels_per_group=4, groups=2),
]


@pytest.mark.parity
@pytest.mark.parametrize("kw", CONVT_CASES)
def test_packed_conv_transpose2d_matches_tu(kw):
    torch = require("torch")
    L = _tu_layers()
    from converters.mappings.packed import packed_conv_transpose_entries

    torch.manual_seed(1)
    tu = L.PackedConvTranspose2d(**kw).eval()
    x = np.random.default_rng(1).normal(size=(2, tu.extended_in_channels, 5, 4)).astype(np.float32)
    ours = PackedConvTranspose(**kw)
    xl = jnp.asarray(_nchw_to_last(x))
    v = _convert(ours, tu, packed_conv_transpose_entries("", (), bias=kw.get("bias", True)), xl)
    assert _count(v) == sum(p.numel() for p in tu.parameters())
    with torch.no_grad():
        ref = tu(torch.as_tensor(x)).numpy()
    _check(ours.apply(v, xl), _nchw_to_last(ref))
    # the same transposed conv on a 1-d input (TU has only the 2-d class): equals a [*, 1] 2-d one
    if kw.get("kernel_size") == 3 and kw.get("stride") == 2:
        ours1 = PackedConvTranspose(**{**kw, "kernel_size": (3, 1), "stride": (2, 1), "padding": (1, 0),
                                       "output_padding": (1, 0)})
        v1 = ours1.init(jax.random.key(0), xl[:, :, :1])
        got1 = PackedConvTranspose(**kw).apply(
            {"params": {"conv_transpose": {"kernel": v1["params"]["conv_transpose"]["kernel"][:, 0],
                                           "bias": v1["params"]["conv_transpose"]["bias"]}}}, xl[:, :, 0])
        _check(got1, ours1.apply(v1, xl[:, :, :1])[:, :, 0], 1e-6)


@pytest.mark.parity
@pytest.mark.parametrize(("first", "last", "shape"), [(False, False, (4, 16)), (True, False, (2, 3, 8)),
                                                      (False, True, (2, 3, 5, 12))])
def test_packed_layer_norm_matches_tu(first, last, shape):
    torch = require("torch")
    L = _tu_layers()
    from converters.mappings.packed import packed_layer_norm_entries

    embed = {(False, False): 8, (True, False): 4, (False, True): 4}[(first, last)]
    tu = _randomize(torch, L.PackedLayerNorm(embed, num_estimators=3 if last else 2, alpha=2, first=first,
                                             last=last, eps=1e-4))
    ours = PackedLayerNorm(embed, num_estimators=3 if last else 2, alpha=2, first=first, last=last, eps=1e-4)
    x = (np.random.default_rng(2).normal(size=shape) * 3 + 1).astype(np.float32)
    v = _convert(ours, tu, packed_layer_norm_entries("", ()), jnp.asarray(x))
    with torch.no_grad():
        ref = tu(torch.as_tensor(x)).numpy()
    _check(ours.apply(v, jnp.asarray(x)), ref)


# ------------------------------------------------------------------------------------------- attention
def _masks(rng, b, heads, tgt, src, kind: str):
    """TU-style masks: bool = True masked; float = added (no fully masked row)."""
    out = {}
    if "attn_bool" in kind:
        m = rng.random((tgt, src)) < 0.3
        m[:, 0] = False
        out["attn_mask"] = m
    if "attn_float3d" in kind:
        out["attn_mask"] = rng.normal(size=(b * heads, tgt, src)).astype(np.float32)
    if "kpm" in kind:
        k = np.zeros((b, src), bool)
        k[0, -2:] = True
        k[-1, 1] = True
        out["key_padding_mask"] = k
    if "causal" in kind:
        out["attn_mask"] = np.triu(np.ones((tgt, src), bool), 1)
        out["is_causal"] = True
    return out


MHA_CASES = [
    # (kwargs, call mode, mask kind)
    (dict(), "self", ""),
    (dict(batch_first=True), "self", "attn_bool+kpm"),
    (dict(gamma=2), "encdec", "kpm"),
    (dict(), "general", "attn_float3d"),
    (dict(add_bias_kv=True, add_zero_attn=True), "self", "attn_bool+kpm"),
    (dict(kdim=6, vdim=10, batch_first=True), "general", "kpm"),
    (dict(last=True), "encdec", "attn_bool"),
    (dict(batch_first=True), "self", "causal"),
    (dict(), "self", "causal+kpm"),
    (dict(first=True, alpha=1), "self", "kpm"),
    (dict(bias=False), "encdec", ""),
    (dict(), "unbatched", "attn_bool"),
]


def _mha_inputs(rng, kw, mode, e_in, batch_first, b=3, tgt=5, src=4):
    q = rng.normal(size=(tgt, b, e_in)).astype(np.float32)
    if mode == "unbatched":
        return q[:, 0], q[:, 0], q[:, 0], tgt, tgt, 1
    if mode == "self":
        k = v = q
        src = tgt
    elif mode == "encdec":
        k = v = rng.normal(size=(src, b, e_in)).astype(np.float32)
    else:
        kd = int(kw.get("kdim", 8) * kw.get("alpha", 2))
        vd = int(kw.get("vdim", 8) * kw.get("alpha", 2))
        k = rng.normal(size=(src, b, kd)).astype(np.float32)
        v = rng.normal(size=(src, b, vd)).astype(np.float32)
    if batch_first:
        q, k, v = (np.swapaxes(t, 0, 1) for t in (q, k, v))
    return q, k, v, tgt, src, b


def _call_same_way(fn, q, k, v, mode, **kw):
    """TU dispatches on object identity (``query is key``, ``key is value``): call both sides alike."""
    if mode in ("self", "unbatched"):
        return fn(q, q, q, **kw)
    if mode == "encdec":
        return fn(q, k, k, **kw)
    return fn(q, k, v, **kw)


@pytest.mark.parity
@pytest.mark.parametrize(("kw", "mode", "mask"), MHA_CASES)
def test_packed_multihead_attention_matches_tu(kw, mode, mask):
    torch = require("torch")
    L = _tu_layers()
    from converters.mappings.packed import packed_mha_entries

    full = {"embed_dim": 8, "num_heads": 2, "alpha": 2, "num_estimators": 2, **kw}
    torch.manual_seed(3)
    tu = _randomize(torch, L.PackedMultiheadAttention(**full), 3)
    ours = PackedMultiheadAttention(**full)
    rng = np.random.default_rng(3)
    e_in = int(8 * (1 if full.get("first") else full["alpha"]))
    q, k, v, tgt, src, b = _mha_inputs(rng, full, mode, e_in, full.get("batch_first", False))
    masks = _masks(rng, b, tu.num_heads, tgt, src, mask)
    same = full.get("kdim") is None and full.get("vdim") is None
    table = packed_mha_entries("", (), same_embed_dim=same, bias=full.get("bias", True),
                               add_bias_kv=full.get("add_bias_kv", False))
    jq, jk, jv = (jnp.asarray(t) for t in (q, k, v))
    jmasks = {n: (m if isinstance(m, bool) else jnp.asarray(m)) for n, m in masks.items()}
    variables = _convert(ours, tu, table, *(jq, jk, jv) if mode == "general" else (jq,))
    assert _count(variables) == sum(p.numel() for p in tu.parameters())
    got = _call_same_way(lambda *a, **m: ours.apply(variables, *a, **m), jq, jk, jv, mode, **jmasks)
    tq, tk, tv = (torch.as_tensor(t) for t in (q, k, v))
    tmasks = {n: (m if isinstance(m, bool) else torch.as_tensor(m)) for n, m in masks.items()}
    with torch.no_grad():
        ref = _call_same_way(tu, tq, tk, tv, mode, **tmasks)[0].numpy()
    _check(got, ref)


@pytest.mark.parity
def test_packed_attention_call_modes_differ_like_tu():
    """The three in-projection splits really differ (so the identity dispatch matters), on both sides."""
    torch = require("torch")
    L = _tu_layers()
    from converters.mappings.packed import packed_mha_entries

    tu = _randomize(torch, L.PackedMultiheadAttention(8, 2, 2, 2), 4)
    ours = PackedMultiheadAttention(8, 2, 2, 2)
    x = np.random.default_rng(4).normal(size=(5, 2, 16)).astype(np.float32)
    v = _convert(ours, tu, packed_mha_entries("", ()), jnp.asarray(x))
    jx, tx = jnp.asarray(x), torch.as_tensor(x)
    ck = tx.clone()
    with torch.no_grad():  # self (q is k is v), encoder-decoder (k is v), general
        refs = [tu(tx, tx, tx)[0], tu(tx, ck, ck)[0], tu(tx, tx.clone(), tx.clone())[0]]
    gots = [ours.apply(v, jx), ours.apply(v, jx, jx + 0), ours.apply(v, jx, jx + 0, jx * 1.0)]
    for g, r in zip(gots, refs, strict=True):
        _check(g, r.numpy())
    assert float(jnp.abs(gots[0] - gots[1]).max()) > 1e-3 and float(jnp.abs(gots[1] - gots[2]).max()) > 1e-3


# ------------------------------------------------------------------------------------------ transformers
TRANSFORMER_CASES = [
    dict(norm_first=False, batch_first=False),
    dict(norm_first=True, batch_first=True, activation="gelu"),
    dict(norm_first=True, batch_first=False, gamma=2),
    dict(norm_first=False, batch_first=True, first=True, alpha=1),
    dict(norm_first=True, batch_first=False, first=True, alpha=1, bias=False),
]


def _tu_activation(torch, kw):
    out = dict(kw)
    if out.get("activation") == "gelu":
        out["activation"] = torch.nn.functional.gelu
    return out


@pytest.mark.parity
@pytest.mark.parametrize("kw", TRANSFORMER_CASES)
def test_packed_transformer_encoder_layer_matches_tu(kw):
    torch = require("torch")
    L = _tu_layers()
    from converters.mappings.packed import packed_transformer_encoder_layer_entries

    full = {**dict(d_model=8, nhead=2, alpha=2, num_estimators=2, dim_feedforward=16, dropout=0.0), **kw}
    tu = _randomize(torch, L.PackedTransformerEncoderLayer(**_tu_activation(torch, full)), 5)
    ours = PackedTransformerEncoderLayer(**full)
    rng = np.random.default_rng(5)
    b, s, e = 3, 6, 8 * full["alpha"]
    x = rng.normal(size=(b, s, e) if full["batch_first"] else (s, b, e)).astype(np.float32)
    masks = _masks(rng, b, tu.self_attn.num_heads, s, s, "attn_bool+kpm")
    table = packed_transformer_encoder_layer_entries("", (), bias=full.get("bias", True))
    v = _convert(ours, tu, table, jnp.asarray(x))
    assert _count(v) == sum(p.numel() for p in tu.parameters())
    for m in ({}, {"src_mask": masks["attn_mask"], "src_key_padding_mask": masks["key_padding_mask"]},
              {"src_mask": np.triu(np.ones((s, s), bool), 1), "is_causal": True}):
        got = ours.apply(v, jnp.asarray(x), **{n: a if isinstance(a, bool) else jnp.asarray(a) for n, a in m.items()})
        with torch.no_grad():
            ref = tu(torch.as_tensor(x), **{n: a if isinstance(a, bool) else torch.as_tensor(a)
                                            for n, a in m.items()}).numpy()
        _check(got, ref)


@pytest.mark.parity
@pytest.mark.parametrize("kw", TRANSFORMER_CASES)
def test_packed_transformer_decoder_layer_matches_tu(kw):
    torch = require("torch")
    L = _tu_layers()
    from converters.mappings.packed import packed_transformer_decoder_layer_entries

    full = {**dict(d_model=8, nhead=2, alpha=2, num_estimators=2, dim_feedforward=16, dropout=0.0), **kw}
    tu = _randomize(torch, L.PackedTransformerDecoderLayer(**_tu_activation(torch, full)), 6)
    ours = PackedTransformerDecoderLayer(**full)
    rng = np.random.default_rng(6)
    b, t, s = 3, 5, 4
    e_tgt, e_mem = 8 * full["alpha"], 16  # memory goes through the non-first cross-attention: alpha*d_model
    bf = full["batch_first"]
    tgt = rng.normal(size=(b, t, e_tgt) if bf else (t, b, e_tgt)).astype(np.float32)
    mem = rng.normal(size=(b, s, e_mem) if bf else (s, b, e_mem)).astype(np.float32)
    if full["alpha"] == 1:
        mem = mem[..., :8]
    table = packed_transformer_decoder_layer_entries("", (), bias=full.get("bias", True))
    v = _convert(ours, tu, table, jnp.asarray(tgt), jnp.asarray(mem))
    assert _count(v) == sum(p.numel() for p in tu.parameters())
    tm = _masks(rng, b, tu.self_attn.num_heads, t, t, "attn_bool+kpm")
    mm = _masks(rng, b, tu.multihead_attn.num_heads, t, s, "attn_float3d+kpm")
    calls = [{}, {"tgt_mask": np.triu(np.ones((t, t), bool), 1), "tgt_is_causal": True,
                  "memory_key_padding_mask": mm["key_padding_mask"]},
             {"tgt_mask": tm["attn_mask"], "tgt_key_padding_mask": tm["key_padding_mask"],
              "memory_mask": mm["attn_mask"]}]
    for m in calls:
        got = ours.apply(v, jnp.asarray(tgt), jnp.asarray(mem),
                         **{n: a if isinstance(a, bool) else jnp.asarray(a) for n, a in m.items()})
        with torch.no_grad():
            ref = tu(torch.as_tensor(tgt), torch.as_tensor(mem),
                     **{n: a if isinstance(a, bool) else torch.as_tensor(a) for n, a in m.items()}).numpy()
        _check(got, ref)


# ------------------------------------------------------------------------------- refusals, converter, train
@pytest.mark.parity
def test_combinations_tu_cannot_run_are_refused():
    torch = require("torch")
    L = _tu_layers()
    x = torch.zeros(4, 2, 16)
    with pytest.raises(RuntimeError):  # TU: the residual of a last=True layer has mismatched shapes
        L.PackedTransformerEncoderLayer(8, 2, 2, 2, dim_feedforward=16, last=True)(x)
    with pytest.raises(AssertionError):  # TU: first=True with alpha=2 fails its embedding width check
        L.PackedMultiheadAttention(8, 2, 2, 2, first=True)(x[..., :8], x[..., :8], x[..., :8])
    with pytest.raises(ValueError, match="last=True"):
        PackedTransformerEncoderLayer(8, 2, 2, 2, dim_feedforward=16, last=True).init(jax.random.key(0),
                                                                                      jnp.zeros((4, 2, 16)))
    with pytest.raises(ValueError, match="first=True"):
        PackedMultiheadAttention(8, 2, 2, 2, first=True).init(jax.random.key(0), jnp.zeros((4, 2, 8)))
    with pytest.raises(ValueError, match="padding_mode"):
        PackedConv(4, 4, 3, 1, 2, padding_mode="mirror").init(jax.random.key(0), jnp.zeros((1, 5, 4)))
    with pytest.raises(ValueError, match="same"):
        PackedConv(4, 4, 3, 1, 2, stride=2, padding="same").init(jax.random.key(0), jnp.zeros((1, 5, 4)))
    with pytest.raises(ValueError, match="output_padding"):
        PackedConvTranspose(4, 4, 3, 1, 2, output_padding=1).init(jax.random.key(0), jnp.zeros((1, 5, 5, 4)))
    with pytest.raises(ValueError, match="is_causal"):
        PackedMultiheadAttention(8, 2, 2, 2).init(jax.random.key(0), jnp.zeros((4, 2, 16)), is_causal=True)


@pytest.mark.parity
def test_encoder_state_dict_converts_strictly_and_template_rules_agree():
    """The helper table equals the one the family's template rules derive; a missing or extra key fails."""
    torch = require("torch")
    L = _tu_layers()
    from converters.mappings import apply_table, template_table
    from converters.mappings.packed import packed_transformer_encoder_layer_entries

    tu = _randomize(torch, L.PackedTransformerEncoderLayer(8, 2, 2, 2, dim_feedforward=16, dropout=0.0), 7)
    ours = PackedTransformerEncoderLayer(8, 2, 2, 2, dim_feedforward=16, dropout=0.0)
    x = jnp.zeros((3, 2, 16))
    template = jax.eval_shape(lambda: ours.init(jax.random.key(0), x))
    helper = packed_transformer_encoder_layer_entries("", ())
    derived = template_table(template)
    assert {k: e.path for k, e in helper.items()} == {k: e.path for k, e in derived.items()}
    sd = {k: v.detach().numpy() for k, v in tu.state_dict().items()}
    apply_table(sd, helper, template, "enc.pt")
    with pytest.raises(ValueError, match="missing torch key 'self_attn.in_proj_bias'"):
        apply_table({k: v for k, v in sd.items() if k != "self_attn.in_proj_bias"}, helper, template, "enc.pt")
    with pytest.raises(ValueError, match="unexpected torch key 'self_attn.bias_k'"):
        apply_table({**sd, "self_attn.bias_k": np.zeros((1, 1, 16), np.float32)}, helper, template, "enc.pt")
    bad = dict(sd, **{"linear1.weight": np.zeros((4, 8, 8), np.float32)})
    with pytest.raises(ValueError, match="linear1.weight"):
        apply_table(bad, helper, template, "enc.pt")


def test_transformer_layers_train_with_dropout_and_grad():
    """Train mode draws dropout masks from the ``dropout`` rng (different keys, different outputs); the
    layer is differentiable."""
    enc = PackedTransformerEncoderLayer(8, 2, 2, 2, dim_feedforward=16, dropout=0.3, batch_first=True)
    x = jax.random.normal(jax.random.key(0), (2, 5, 16))
    rng = np.random.default_rng(0)  # random parameters without compiling init (slow on a loaded CPU)
    shapes = jax.eval_shape(enc.init, jax.random.key(1), x)["params"]
    params = jax.tree.map(lambda t: jnp.asarray(rng.normal(size=t.shape).astype(np.float32) * 0.3), shapes)

    @functools.partial(jax.jit, static_argnames="train")
    def loss(params, key, train):
        out = enc.apply({"params": params}, x, train=train, rngs={"dropout": key})
        return jnp.sum(out**2), out

    grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnames="train")
    (_, a), g = grad(params, jax.random.key(2, impl="rbg"), train=True)
    (_, b), _ = grad(params, jax.random.key(3, impl="rbg"), train=True)
    _, c = loss(params, jax.random.key(3, impl="rbg"), False)
    _, d = loss(params, jax.random.key(4, impl="rbg"), False)
    assert a.shape == x.shape and float(jnp.abs(a - b).max()) > 1e-3  # dropout masks differ per key
    np.testing.assert_array_equal(np.asarray(c), np.asarray(d))  # eval: deterministic
    assert all(bool(jnp.all(jnp.isfinite(t))) for t in jax.tree.leaves(g))
