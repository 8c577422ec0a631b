"""BatchEnsemble, Masksembles and MIMO layers against TU 0.13.0's own layers.

- BatchConv/BatchDense = TU's BatchConv2d/BatchLinear given TU's weights, including TU's rule for a batch
  that is not a multiple of M (the trailing rows go to members 0, 1, ...).
- Masks: TU's ``generation_wrapper`` run with ``np.random.default_rng`` injected gives exactly
  ``jaxuq.nn.masksembles.mask_array(c, M, scale, seed)``; a whole ``masked_resnet`` built by TU with the
  generator ``default_rng((seed, i))`` for its i-th masked layer has the masks of jaxuq's
  ``masked_resnet(seed=seed)``; MaskedConv/MaskedDense = TU's layers given TU's masks and weights.
- MIMO heads = TU's einops rearranges.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxuq.nn.batch_ensemble import BatchConv, BatchDense, member_index
from jaxuq.nn.masksembles import MaskedConv, MaskedDense, apply_masks, generation_wrapper, mask_array
from jaxuq.nn.mimo import mimo_inputs, mimo_outputs
from tests.helpers import require

pytestmark = pytest.mark.parity


def _nchw(x):
    return np.ascontiguousarray(np.moveaxis(x, -1, 1))


def _tu_layers():
    require("torch")
    return require("torch_uncertainty.layers")


@pytest.mark.parametrize("batch", [6, 7])
def test_batch_dense_and_conv_match_tu(batch):
    torch = require("torch")
    L = _tu_layers()
    torch.manual_seed(0)
    lin = L.BatchLinear(5, 4, num_estimators=3)
    conv = L.BatchConv2d(4, 6, 3, num_estimators=3, padding=1, stride=2, groups=2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 5), dtype=np.float32)
    xc = rng.standard_normal((batch, 9, 9, 4), dtype=np.float32)
    with torch.no_grad():
        ref = lin(torch.from_numpy(x)).numpy()
        refc = conv(torch.from_numpy(_nchw(xc))).numpy().transpose(0, 2, 3, 1)
    p = {k: v.detach().numpy() for k, v in lin.state_dict().items()}
    v = {"params": {"r_group": p["r_group"], "s_group": p["s_group"], "bias": p["bias"],
                    "linear": {"kernel": p["linear.weight"].T}}}
    got = BatchDense(5, 4, 3).apply(v, x)
    pc = {k: v.detach().numpy() for k, v in conv.state_dict().items()}
    vc = {"params": {"r_group": pc["r_group"], "s_group": pc["s_group"], "bias": pc["bias"],
                     "conv": {"kernel": pc["conv.weight"].transpose(2, 3, 1, 0)}}}
    gotc = BatchConv(4, 6, 3, 3, stride=2, padding=1, groups=2).apply(vc, xc)
    assert float(np.abs(np.asarray(got) - ref).max()) <= 1e-6
    assert float(np.abs(np.asarray(gotc) - refc).max()) <= 1e-5


def test_member_index_rule_and_errors():
    np.testing.assert_array_equal(member_index(7, 3), [0, 0, 1, 1, 2, 2, 0])
    np.testing.assert_array_equal(member_index(11, 4), [0, 0, 1, 1, 2, 2, 3, 3, 0, 0, 1])
    with pytest.raises(ValueError, match="at least 4 rows"):
        member_index(3, 4)
    with pytest.raises(ValueError, match="num_estimators"):
        BatchDense(3, 2, 0).init(jax.random.key(0), jnp.zeros((2, 3)))


def test_batch_layers_fresh_init_follows_tu_law():
    v = BatchConv(64, 64, 3, 4).init(jax.random.key(0), jnp.zeros((4, 5, 5, 64)))["params"]
    r = np.asarray(v["r_group"])
    assert abs(r.mean() - 1.0) < 0.05 and abs(r.std() - 0.5) < 0.05  # N(1, 0.5)
    bound = 1 / np.sqrt(64 * 9)
    for leaf in (v["conv"]["kernel"], v["bias"]):
        a = np.asarray(leaf)
        assert a.min() >= -bound and a.max() <= bound and a.max() > 0.9 * bound  # U(+-1/sqrt(fan_in))


class _Rng:
    """Stands in for the ``np`` TU's masksembles module uses: ``np.random.default_rng()`` returns
    ``self.gen`` (switched per masked layer), everything else is numpy."""

    def __init__(self):
        self.gen = None
        self.random = types.SimpleNamespace(default_rng=lambda *a: self.gen)

    def __getattr__(self, name):
        return getattr(np, name)


@pytest.mark.parametrize("c,n,scale,seed", [(16, 2, 2.0, 0), (64, 4, 2.0, 3), (100, 3, 3.5, (7, 1)),
                                            (10, 4, 1.0, 5), (640, 4, 2.0, 1)])
def test_mask_generation_equals_tu_with_the_same_generator(monkeypatch, c, n, scale, seed):
    require("torch")
    from torch_uncertainty.layers import masksembles as tu_m

    shim = _Rng()
    monkeypatch.setattr(tu_m, "np", shim)
    shim.gen = np.random.default_rng(seed)
    ref = tu_m.generation_wrapper(c, n, scale)
    got = mask_array(c, n, scale, seed)
    assert ref.shape == got.shape == (n, c)
    np.testing.assert_array_equal(got, ref)
    # a pure function of (c, n, scale, seed), equal to the uncached port with a fresh generator
    np.testing.assert_array_equal(generation_wrapper(c, n, scale, np.random.default_rng(seed)), got)


def test_mask_generation_errors_like_tu():
    with pytest.raises(ValueError, match="less than 10"):
        mask_array(9, 2, 2.0)
    with pytest.raises(ValueError, match="larger than 6"):
        mask_array(32, 2, 6.5)
    with pytest.raises(ValueError, match=">= 1"):
        mask_array(32, 2, 0.5)
    with pytest.raises(ValueError, match=">= 1"):
        mask_array(32, 2, float("nan"))
    with pytest.raises(TypeError, match="scale"):
        mask_array(32, 2, "2")
    with pytest.raises(ValueError, match="multiple of num_estimators"):
        apply_masks(jnp.zeros((3, 4)), jnp.ones((2, 4)))


@pytest.mark.slow
def test_masked_resnet_masks_follow_tu_construction_order(monkeypatch):
    """TU's masked_resnet built with ``default_rng((seed, i))`` for its i-th masked layer (construction
    order) holds jaxuq's ``masked_resnet(seed=seed)`` masks, layer by layer."""
    require("torch")
    from torch_uncertainty.layers import masksembles as tu_m
    from torch_uncertainty.models.classification import masked_resnet as tu_masked_resnet

    from converters.mappings import flax_leaf_to_torch
    from jaxuq.models.resnet import masked_resnet

    shim, count, orig = _Rng(), [0], tu_m.generation_wrapper

    def wrapper(c, n, scale):
        shim.gen = np.random.default_rng((5, count[0]))
        count[0] += 1
        return orig(c, n, scale)

    monkeypatch.setattr(tu_m, "np", shim)
    monkeypatch.setattr(tu_m, "generation_wrapper", wrapper)
    tm = tu_masked_resnet(3, 10, 50, 2, 2.5, style="cifar", width_multiplier=0.25)
    sd = {k: v.numpy() for k, v in tm.state_dict().items() if k.endswith("mask.masks")}
    module = masked_resnet(3, 10, 50, 2, 2.5, style="cifar", width_multiplier=0.25, seed=5)
    masks = module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["constants"]
    got = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(masks)[0]:
        names = tuple(str(p.key) for p in path)
        if names[-1] == "masks":
            got[flax_leaf_to_torch("constants", names, 2)[0]] = np.asarray(leaf)
    assert count[0] == len(sd) == len(got) == 53  # 16 bottlenecks x 3 convs + 4 shortcuts + the head
    for k, ref in sd.items():
        np.testing.assert_array_equal(got[k], ref, err_msg=k)


def test_masked_layers_match_tu(monkeypatch):
    torch = require("torch")
    L = _tu_layers()
    from tests.torch_models import seed_tu_masks

    seed_tu_masks(monkeypatch)
    torch.manual_seed(1)
    lin = L.MaskedLinear(20, 5, num_estimators=2, scale=2.0)
    conv = L.MaskedConv2d(12, 6, 3, num_estimators=3, scale=1.5, padding=1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 20), dtype=np.float32)
    xc = rng.standard_normal((6, 5, 5, 12), dtype=np.float32)
    with torch.no_grad():
        ref = lin(torch.from_numpy(x)).numpy()
        refc = conv(torch.from_numpy(_nchw(xc))).numpy().transpose(0, 2, 3, 1)
    p = {k: v.detach().numpy() for k, v in lin.state_dict().items()}
    v = {"params": {"linear": {"kernel": p["linear.weight"].T, "bias": p["linear.bias"]}},
         "constants": {"mask": {"masks": p["mask.masks"].astype(np.float32)}}}
    pc = {k: v.detach().numpy() for k, v in conv.state_dict().items()}
    vc = {"params": {"conv": {"kernel": pc["conv.weight"].transpose(2, 3, 1, 0), "bias": pc["conv.bias"]}},
          "constants": {"mask": {"masks": pc["mask.masks"].astype(np.float32)}}}
    got = MaskedDense(20, 5, 2, 2.0).apply(v, x)
    gotc = MaskedConv(12, 6, 3, 3, 1.5, padding=1).apply(vc, xc)
    assert float(np.abs(np.asarray(got) - ref).max()) <= 1e-6
    assert float(np.abs(np.asarray(gotc) - refc).max()) <= 1e-5


def test_mimo_heads_are_tus_rearranges():
    require("torch")
    from einops import rearrange, repeat

    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 5, 2), dtype=np.float32)  # [B, H, W, C]
    ref = rearrange(repeat(_nchw(x), "b ... -> (m b) ...", m=3), "(m b) c h w -> b (m c) h w", m=3)
    np.testing.assert_array_equal(np.moveaxis(np.asarray(mimo_inputs(x, 3, train=False)), -1, 1), ref)
    xt = rng.standard_normal((6, 4, 5, 2), dtype=np.float32)
    ref_t = rearrange(_nchw(xt), "(m b) c h w -> b (m c) h w", m=2)
    np.testing.assert_array_equal(np.moveaxis(np.asarray(mimo_inputs(xt, 2, train=True)), -1, 1), ref_t)
    y = rng.standard_normal((3, 8), dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(mimo_outputs(y, 2)), rearrange(y, "b (m d) -> (m b) d", m=2))


def test_mask_search_is_bounded(monkeypatch):
    """TU's searches loop until they succeed; here a search that does not end raises instead."""
    from jaxuq.nn import masksembles

    monkeypatch.setattr(masksembles, "MAX_TRIES", 0)
    with pytest.raises(ValueError, match="would loop forever"):
        generation_wrapper(32, 2, 2.0, np.random.default_rng(0))


def test_masks_are_constants_carried_by_fit_and_checkpoints(tmp_path):
    """Masks live in the ``constants`` collection (not ``batch_stats``): fit applies them read-only,
    checkpoints them, and a resumed run gets the masks it was started with (here masks other than the
    seed's, as a converted TU checkpoint has), not freshly drawn ones."""
    import flax.linen as nn
    import optax

    from jaxuq.train import TrainConfig, create_train_state, fit

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = x if train else jnp.tile(x, (2, 1))  # TU's eval-time repetition
            return MaskedDense(12, 3, num_estimators=2, scale=2.0, name="fc")(x)

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 12)).astype(np.float32), rng.integers(0, 3, 8)
    model, tx = Net(), optax.sgd(0.1)
    st = create_train_state(model, tx, jax.random.key(0), jnp.zeros((2, 12)))
    seeded = np.asarray(st.constants["fc"]["mask"]["masks"])
    assert not st.batch_stats and seeded.shape == (2, 12)
    other = np.ascontiguousarray(seeded[::-1])  # not the seed's masks
    st = st.replace(constants={"fc": {"mask": {"masks": jnp.asarray(other)}}})
    cfg = TrainConfig(optimizer=tx, epochs=1, batch_size=4, preprocess=None, quiet=True)
    r = fit(model, (x, y), cfg, workdir=tmp_path, init_state=st)
    np.testing.assert_array_equal(np.asarray(r.state.constants["fc"]["mask"]["masks"]), other)
    assert set(r.state.variables()) == {"params", "constants"}
    resumed = fit(model, (x, y), cfg.replace(epochs=2), workdir=tmp_path)  # a fresh state, then the checkpoint
    assert resumed.resumed_from is not None
    np.testing.assert_array_equal(np.asarray(resumed.state.constants["fc"]["mask"]["masks"]), other)
