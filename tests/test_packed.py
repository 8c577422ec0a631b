"""Packed-Ensembles: layer arithmetic, parameter counts and logits/metrics parity with TU 0.13.0."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxuq.data.formats import repeat_target
from jaxuq.models.lenet import packed_lenet
from jaxuq.models.resnet import packed_resnet
from jaxuq.nn.packed import (
    PackedConv,
    PackedDense,
    packed_conv_sizes,
    packed_dense_sizes,
    split_members,
)
from tests.helpers import require


def _nparams(module, shape):
    v = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(shape, jnp.float32)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v["params"]))


# ----------------------------------------------------------------------------- pure JAX


def test_conv_sizes_gamma_reduction():
    # B.4: with gamma=2, layer3.0.conv2 (256*2=512 channels) gets 8 groups, the shortcut (128*2=256) stays at 4.
    assert packed_conv_sizes(256, 256, 2, 4, gamma=2) == (512, 512, 8)
    assert packed_conv_sizes(128, 256, 2, 4, gamma=2) == (256, 512, 4)
    assert packed_conv_sizes(1, 6, 2, 4, first=True) == (1, 12, 1)
    assert packed_conv_sizes(6, 16, 2, 4) == (12, 32, 4)  # 3 channels/group < 64 but gamma=1 cannot drop
    assert packed_dense_sizes(84, 10, 2, 4, last=True) == (168, 40, 4)
    assert packed_dense_sizes(256, 120, 2, 4, gamma=2) == (512, 240, 8)  # no 64-channel rule for dense
    with pytest.raises(ValueError, match="divisible"):
        packed_dense_sizes(10, 10, 1, 4)
    with pytest.raises(ValueError, match="alpha"):
        packed_conv_sizes(10, 10, 0, 4)


def test_packed_dense_is_block_diagonal_and_last_layout():
    layer = PackedDense(6, 5, alpha=2, num_estimators=2, last=True)
    x = jax.random.normal(jax.random.key(0), (3, 12))
    v = layer.init(jax.random.key(1), x)
    w, b = np.asarray(v["params"]["kernel"]), np.asarray(v["params"]["bias"])
    assert w.shape == (2, 5, 6) and b.shape == (10,)
    dense = np.zeros((12, 10), np.float32)
    for g in range(2):
        dense[g * 6 : (g + 1) * 6, g * 5 : (g + 1) * 5] = w[g].T
    ref = np.asarray(x) @ dense + b  # [B, (m c)]
    ref = ref.reshape(3, 2, 5).transpose(1, 0, 2).reshape(6, 5)  # (m b) c
    np.testing.assert_allclose(np.asarray(layer.apply(v, x)), ref, atol=1e-5)


def test_packed_conv_groups_are_members():
    # Member m's output block depends only on member m's input block.
    layer = PackedConv(4, 4, 3, alpha=1, num_estimators=2, minimum_channels_per_group=1, padding=1)
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 4))
    v = layer.init(jax.random.key(1), x)
    assert v["params"]["conv"]["kernel"].shape == (3, 3, 2, 4)
    y0 = layer.apply(v, x)
    y1 = layer.apply(v, x.at[..., 2:].set(0.0))
    np.testing.assert_allclose(np.asarray(y0[..., :2]), np.asarray(y1[..., :2]), atol=1e-6)
    assert float(jnp.abs(y0[..., 2:] - y1[..., 2:]).max()) > 1e-3


def test_split_members_and_repeat_target():
    y = jnp.arange(3)
    np.testing.assert_array_equal(np.asarray(repeat_target(y, 2)), [0, 1, 2, 0, 1, 2])
    z = jnp.arange(12).reshape(6, 2)
    s = split_members(z, 2)
    assert s.shape == (2, 3, 2)
    np.testing.assert_array_equal(np.asarray(s[1]), np.asarray(z[3:]))
    with pytest.raises(ValueError, match="multiple"):
        split_members(z, 4)


# ----------------------------------------------------------------------------- parity with TU


def _randomize_bn(torch, model):
    g = torch.Generator().manual_seed(123)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            n = mod.num_features
            mod.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def _sd(model):
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}  # no aliasing


def _tu_ens_metrics(torch, tu_metrics, member_logits):
    """TU's Disagreement / MutualInformation / Entropy on ``(B, M, C)`` probs from ``[M, B, C]`` logits."""
    pe = torch.softmax(torch.as_tensor(np.asarray(member_logits)), dim=-1).permute(1, 0, 2)
    out = {}
    for name, cls in (("Disagreement", tu_metrics.Disagreement), ("MI", tu_metrics.MutualInformation),
                      ("Entropy", tu_metrics.Entropy)):
        met = cls()
        met.update(pe)
        out[name] = float(met.compute())
    return out


def _jaxuq_ens_metrics(member_logits):
    from jaxuq.metrics.ensemble import disagreement, ensemble_entropy, mutual_information

    p = jax.nn.softmax(jnp.asarray(member_logits, jnp.float32), axis=-1)
    return {"Disagreement": float(disagreement(p)), "MI": float(mutual_information(p)),
            "Entropy": float(ensemble_entropy(p))}


def _check_parity(torch, tu_model, module, variables, x_nchw, num_members):
    tu_metrics = require("torch_uncertainty.metrics")
    with torch.no_grad():
        ref = tu_model(torch.as_tensor(x_nchw)).numpy()
    out = np.asarray(module.apply(variables, jnp.asarray(x_nchw.transpose(0, 2, 3, 1))))
    assert out.shape == ref.shape
    diff = float(np.abs(out - ref).max())
    assert diff <= 1e-4, diff
    # the same ensemble metrics from TU's metric classes on the torch logits and jaxuq.metrics on ours
    t = _tu_ens_metrics(torch, tu_metrics, split_members(ref, num_members))
    j = _jaxuq_ens_metrics(split_members(out, num_members))
    for k in t:
        assert abs(t[k] - j[k]) <= 1e-6, (k, t[k], j[k])
    return diff


@pytest.mark.parity
@pytest.mark.parametrize(("alpha", "gamma"), [(2, 1), (4, 2)])
def test_packed_lenet_parity(alpha, gamma):
    torch = require("torch")
    from torch_uncertainty.models.classification.lenet import packed_lenet as tu_packed_lenet

    from converters.mappings.packed import build

    torch.manual_seed(0)
    tm = tu_packed_lenet(1, 10, num_estimators=4, alpha=alpha, gamma=gamma).eval()
    n_tu = sum(p.numel() for p in tm.parameters())
    module, variables = build("packed_lenet", _sd(tm), in_channels=1, num_classes=10, num_estimators=4,
                              alpha=alpha, gamma=gamma)
    assert _nparams(module, (1, 28, 28, 1)) == n_tu
    if (alpha, gamma) == (2, 1):
        assert n_tu == 45_672
    x = np.random.default_rng(0).normal(size=(16, 1, 28, 28)).astype(np.float32)
    _check_parity(torch, tm, module, variables, x, 4)


@pytest.mark.parity
def test_packed_lenet_gamma2_alpha2_rejected_like_tu():
    # TU checks the first conv's 12 output channels against gamma*groups*M = 8 and raises; so do we.
    require("torch")
    from torch_uncertainty.models.classification.lenet import packed_lenet as tu_packed_lenet

    with pytest.raises(ValueError, match="divisible"):
        tu_packed_lenet(1, 10, num_estimators=4, alpha=2, gamma=2)
    m = packed_lenet(1, 10, num_estimators=4, alpha=2, gamma=2)
    with pytest.raises(ValueError, match="divisible"):
        m.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))


@pytest.mark.parity
@pytest.mark.parametrize("gamma", [1, 2])
def test_packed_resnet18_cifar_parity(gamma):
    torch = require("torch")
    from torch_uncertainty.models.classification.resnet.packed import packed_resnet as tu_packed_resnet

    from converters.mappings.packed import build

    torch.manual_seed(1)
    tm = tu_packed_resnet(3, 10, 18, num_estimators=4, alpha=2, gamma=gamma, style="cifar")
    _randomize_bn(torch, tm)
    tm.eval()
    n_tu = sum(p.numel() for p in tm.parameters())
    kw = dict(in_channels=3, num_classes=10, arch=18, num_estimators=4, alpha=2, gamma=gamma, style="cifar")
    from converters.mappings import infer

    module, variables = build("packed_resnet", _sd(tm), **kw)
    assert infer(_sd(tm)) == ("packed_resnet", {**kw, "conv_bias": False})
    assert _nparams(module, (1, 32, 32, 3)) == n_tu
    if gamma == 1:
        assert n_tu == 11_190_440
    # B.4: gamma=2 -> layer3.0.conv2 has 8 groups, layer3.0.shortcut stays at 4
    if gamma == 2:
        assert tm.layer3[0].conv2.conv.groups == 8 and tm.layer3[0].shortcut[0].conv.groups == 4
        k = variables["params"]["layer3_0"]["conv2"]["conv"]["kernel"]
        assert k.shape == (3, 3, 512 // 8, 512)
    x = np.random.default_rng(1).normal(size=(4, 3, 16, 16)).astype(np.float32)
    _check_parity(torch, tm, module, variables, x, 4)


@pytest.mark.parity
@pytest.mark.parametrize(("arch", "style", "gamma"), [(34, "cifar", 2), (50, "imagenet", 1), (50, "cifar", 2)])
def test_packed_resnet_param_counts(arch, style, gamma):
    require("torch")
    from torch_uncertainty.models.classification.resnet.packed import packed_resnet as tu_packed_resnet

    tm = tu_packed_resnet(3, 10, arch, num_estimators=4, alpha=2, gamma=gamma, style=style)
    size = 32 if style == "cifar" else 64
    module = packed_resnet(3, 10, arch, num_estimators=4, alpha=2, gamma=gamma, style=style)
    assert _nparams(module, (1, size, size, 3)) == sum(p.numel() for p in tm.parameters())


def test_packed_lenet_output_layout():
    m = packed_lenet(1, 10, num_estimators=4, alpha=2)
    x = jnp.zeros((3, 28, 28, 1))
    v = m.init(jax.random.key(0), x)
    assert m.apply(v, x).shape == (12, 10)


def test_converter_strict_errors():
    from converters.mappings.packed import build

    torch_like = {"conv1.conv.weight": np.zeros((12, 1, 5, 5), np.float32)}
    with pytest.raises(ValueError, match="missing torch key 'conv2.conv.weight'"):
        build("packed_lenet", torch_like, source="x.pt")
    m = packed_lenet()
    v = m.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    from converters.mappings.packed import flax_leaf_to_torch

    sd = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(v)[0]:
        names = tuple(p.key for p in path)
        key, _entry = flax_leaf_to_torch(names[0], names[1:], leaf.ndim)
        sd[key] = np.zeros(leaf.shape[::-1] if leaf.ndim == 4 else leaf.shape, np.float32)
    sd["conv1.conv.weight"] = np.zeros((12, 1, 5, 5), np.float32)
    sd["conv2.conv.weight"] = np.zeros((32, 3, 5, 5), np.float32)
    sd["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="unexpected torch key 'extra.weight'"):
        build("packed_lenet", sd, source="x.pt")
    del sd["extra.weight"]
    sd["fc1.weight"] = np.zeros((4, 60, 127), np.float32)
    with pytest.raises(ValueError, match="fc1.weight"):
        build("packed_lenet", sd, source="x.pt")


@pytest.mark.parity
@pytest.mark.slow
def test_packed_resnet50_imagenet_gamma2_parity():
    """Bottleneck blocks, 7x7/s2 stem + max-pool (imagenet style), gamma=2 with its per-layer reduction."""
    torch = require("torch")
    from torch_uncertainty.models.classification.resnet.packed import packed_resnet as tu_packed_resnet

    from converters.mappings.packed import build

    torch.manual_seed(2)
    tm = tu_packed_resnet(3, 10, 50, num_estimators=4, alpha=2, gamma=2)
    _randomize_bn(torch, tm)
    tm.eval()
    module, variables = build("packed_resnet", _sd(tm), in_channels=3, num_classes=10, arch=50,
                              num_estimators=4, alpha=2, gamma=2)
    x = np.random.default_rng(2).normal(size=(2, 3, 32, 32)).astype(np.float32)
    _check_parity(torch, tm, module, variables, x, 4)


@pytest.mark.parity
def test_packed_lenet_training_step_matches_tu():
    """One SGD step of CE(logits [(m b), C], RepeatTarget(4)) in TU == ``jaxuq.train.fit`` with
    ``format_batch=RepeatTarget(4)`` (the engine's batch-formatting hook, TU's ``format_batch_fn``)."""
    torch = require("torch")
    import optax
    from torch_uncertainty.models.classification.lenet import packed_lenet as tu_packed_lenet
    from torch_uncertainty.transforms import RepeatTarget as TURepeatTarget

    from converters.mappings.packed import build
    from jaxuq.data import RepeatTarget
    from jaxuq.train import TrainConfig, create_train_state, fit

    torch.manual_seed(3)
    tm = tu_packed_lenet(1, 10, num_estimators=4, alpha=2)
    kw = dict(in_channels=1, num_classes=10, num_estimators=4, alpha=2)
    module, variables = build("packed_lenet", _sd(tm), **kw)
    xu = np.random.default_rng(3).integers(0, 256, (8, 28, 28, 1)).astype(np.uint8)
    x = xu.transpose(0, 3, 1, 2).astype(np.float32) / 255.0  # the engine's default Preprocess(): x / 255
    y = np.random.default_rng(4).integers(0, 10, 8)
    opt = torch.optim.SGD(tm.parameters(), lr=0.2)
    xb, yb = TURepeatTarget(4)((torch.as_tensor(x), torch.as_tensor(y)))
    loss = torch.nn.functional.cross_entropy(tm(xb), yb)
    loss.backward()
    opt.step()
    _, after = build("packed_lenet", _sd(tm), **kw)

    tx = optax.sgd(0.2)
    st = create_train_state(module, tx, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    st = st.replace(params=variables["params"], opt_state=tx.init(variables["params"]))
    cfg = TrainConfig(optimizer=tx, epochs=1, batch_size=8, format_batch=RepeatTarget(4), quiet=True)
    r = fit(module, (xu, y), cfg, init_state=st)
    assert r.history[0]["step"] == 1
    assert abs(r.history[0]["train_loss"] - loss.item()) <= 1e-5
    for a, b in zip(jax.tree.leaves(r.state.params), jax.tree.leaves(after["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@pytest.mark.parity
def test_packed_resnet_train_mode_batchnorm_matches_tu():
    """Train-mode forward: batch-statistics normalisation and torch's running-stat update (unbiased var)."""
    torch = require("torch")
    from torch_uncertainty.models.classification.resnet.packed import packed_resnet as tu_packed_resnet

    from converters.mappings.packed import build

    torch.manual_seed(4)
    tm = tu_packed_resnet(3, 10, 20, num_estimators=2, alpha=2, gamma=1, style="cifar")
    kw = dict(in_channels=3, num_classes=10, arch=20, num_estimators=2, alpha=2, gamma=1, style="cifar")
    module, variables = build("packed_resnet", _sd(tm), **kw)
    x = np.random.default_rng(5).normal(size=(4, 3, 8, 8)).astype(np.float32)
    tm.train()
    with torch.no_grad():
        ref = tm(torch.as_tensor(x)).numpy()
    out, upd = module.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)), train=True, mutable=["batch_stats"])
    assert float(np.abs(np.asarray(out) - ref).max()) <= 1e-4
    _, after = build("packed_resnet", _sd(tm), **kw)
    for a, b in zip(jax.tree.leaves(upd["batch_stats"]), jax.tree.leaves(after["batch_stats"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
