"""A small reference Flax Tiniest (scio's CIFAR-10 net) for the OOD tests and experiment.

Temporary stand-in until ``jaxuq.models`` ships ``tiniest`` and the converter: it mirrors the torch
module names (``conv1, ln1.ln, l1..l6{rs, dwconv1..3, ln.ln, fc1, fc2}, dsconv, ln2.ln, avgpool,
fc``) so layers can be recorded by the same names as in scio's tutorial. ``avgpool`` is a module
(not an inline mean) so that its output can be recorded. The test checks the logits against the
reference logits of ``checkpoints/reference_logits_first1000.npz``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import data_path, require


class LayerNorm2d(nn.Module):
    @nn.compact
    def __call__(self, x):  # NHWC: per-pixel LayerNorm over channels
        return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name="ln")(x)


class AvgPool(nn.Module):
    @nn.compact
    def __call__(self, x):  # global average pool: [N, H, W, C] -> [N, 1, 1, C]
        return x.mean(axis=(1, 2), keepdims=True)


class Block(nn.Module):
    dim: int

    @nn.compact
    def __call__(self, x):
        d4 = self.dim // 4
        rs = self.param("rs", nn.initializers.ones, (1, 1, 1, self.dim))
        c0, c1, c2, c3 = jnp.split(x, 4, axis=-1)
        c1 = nn.Conv(d4, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=d4, name="dwconv1")(c1)
        c2 = nn.Conv(d4, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=d4, name="dwconv2")(c2)
        c3 = nn.avg_pool(c3, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=True)
        c3 = nn.Conv(d4, (7, 7), padding=((9, 9), (9, 9)), kernel_dilation=(3, 3), feature_group_count=d4,
                     name="dwconv3")(c3)
        h = jnp.concatenate([c0, c1, c2, c3], axis=-1)
        h = LayerNorm2d(name="ln")(h)
        h = nn.Conv(2 * self.dim, (1, 1), name="fc1")(h)
        a, b = jnp.split(h, 2, axis=-1)
        h = jnp.tanh(jnp.exp(a)) * a * b
        h = nn.Conv(self.dim, (1, 1), name="fc2")(h)
        return h + x * rs


class Tiniest(nn.Module):
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):  # x: [N, 32, 32, 3] in [0, 1]
        x = nn.Conv(48, (3, 3), padding=((1, 1), (1, 1)), name="conv1")(x)
        x = LayerNorm2d(name="ln1")(x)
        for i in (1, 2, 3):
            x = Block(48, name=f"l{i}")(x)
        x = nn.Conv(80, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), feature_group_count=16,
                    name="dsconv")(x)
        x = LayerNorm2d(name="ln2")(x)
        for i in (4, 5, 6):
            x = Block(80, name=f"l{i}")(x)
        x = AvgPool(name="avgpool")(x)
        return nn.Dense(self.num_classes, name="fc")(x.reshape(x.shape[0], -1))


def variables_from_state_dict(sd: dict) -> dict:
    """torch state_dict (numpy arrays) -> Flax variables for :class:`Tiniest`."""
    params: dict = {}
    for key, v in sd.items():
        v = np.asarray(v, np.float32)
        *path, leaf = key.split(".")
        node = params
        for p in path:
            node = node.setdefault(p, {})
        if leaf == "rs":
            node["rs"] = v.transpose(0, 2, 3, 1)
        elif leaf == "weight" and v.ndim == 4:
            node["kernel"] = v.transpose(2, 3, 1, 0)
        elif leaf == "weight" and v.ndim == 2:
            node["kernel"] = v.T
        elif leaf == "weight":
            node["scale"] = v
        else:
            node[leaf] = v
    return {"params": jax.tree.map(jnp.asarray, params)}


def load_tiniest(path) -> tuple[nn.Module, dict]:
    torch = require("torch")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return Tiniest(), variables_from_state_dict({k: v.numpy() for k, v in sd.items()})


@pytest.mark.realdata
def test_reference_tiniest_reproduces_reference_logits():
    ckpt = data_path("checkpoints/scio_tiniest/tiniest.pt")
    ref = np.load(data_path("checkpoints/reference_logits_first1000.npz"))
    imgs = np.load(data_path("cifar10_heads/test_first1000.npz"))["images"][:200]
    model, variables = load_tiniest(ckpt)
    n_params = sum(x.size for x in jax.tree.leaves(variables))
    assert n_params == 97_530
    logits = np.asarray(jax.jit(model.apply)(variables, imgs.astype(np.float32) / 255.0))
    np.testing.assert_allclose(logits, ref["tiniest"][:200], atol=2e-4)
