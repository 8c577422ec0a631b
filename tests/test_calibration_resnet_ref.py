"""A small reference Flax CIFAR ResNet-20/56 (He et al., option-A shortcut) for the calibration
experiment, until ``jaxuq.models`` ships ``resnet20`` and the converter. Eval mode only (BatchNorm
with running statistics, eps 1e-5). Checked against checkpoints/reference_logits_first1000.npz."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import data_path, require

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def preprocess(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 (x/255 - mean) / std."""
    return ((images_uint8.astype(np.float32) / 255.0) - MEAN) / STD


def _bn(name):
    return nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5, name=name)


class BasicBlock(nn.Module):
    planes: int
    stride: int

    @nn.compact
    def __call__(self, x):
        out = nn.Conv(self.planes, (3, 3), (self.stride,) * 2, padding=((1, 1), (1, 1)), use_bias=False,
                      name="conv1")(x)
        out = nn.relu(_bn("bn1")(out))
        out = nn.Conv(self.planes, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="conv2")(out)
        out = _bn("bn2")(out)
        if self.stride != 1 or x.shape[-1] != self.planes:  # option A: subsample + zero-pad channels
            pad = self.planes // 4
            x = jnp.pad(x[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (pad, pad)))
        return nn.relu(out + x)


class ResNetCifar(nn.Module):
    depth: int = 20
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        n = (self.depth - 2) // 6
        x = nn.relu(_bn("bn1")(nn.Conv(16, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="conv1")(x)))
        for li, planes in enumerate((16, 32, 64), start=1):
            for b in range(n):
                x = BasicBlock(planes, 2 if (b == 0 and li > 1) else 1, name=f"layer{li}_{b}")(x)
        x = x.mean((1, 2))
        return nn.Dense(self.num_classes, name="linear")(x)


def variables_from_state_dict(sd: dict) -> dict:
    params: dict = {}
    stats: dict = {}
    for key, v in sd.items():
        v = np.asarray(v, np.float32)
        parts = key.removeprefix("module.").split(".")
        if parts[0].startswith("layer"):
            parts = [f"{parts[0]}_{parts[1]}"] + parts[2:]
        *path, leaf = parts
        if leaf == "num_batches_tracked":
            continue
        tree = stats if leaf.startswith("running") else params
        node = tree
        for p in path:
            node = node.setdefault(p, {})
        if leaf == "weight" and v.ndim == 4:
            node["kernel"] = v.transpose(2, 3, 1, 0)
        elif leaf == "weight" and v.ndim == 2:
            node["kernel"] = v.T
        elif leaf == "weight":
            node["scale"] = v
        elif leaf == "running_mean":
            node["mean"] = v
        elif leaf == "running_var":
            node["var"] = v
        else:
            node[leaf] = v
    return {"params": jax.tree.map(jnp.asarray, params), "batch_stats": jax.tree.map(jnp.asarray, stats)}


def load_resnet_cifar(path, depth: int = 20):
    torch = require("torch")
    ck = torch.load(path, map_location="cpu", weights_only=False)
    sd = {k: t.numpy() for k, t in ck["state_dict"].items()}
    return ResNetCifar(depth=depth), variables_from_state_dict(sd)


@pytest.mark.realdata
def test_reference_resnet20_reproduces_reference_logits():
    model, variables = load_resnet_cifar(data_path("checkpoints/resnet_cifar/resnet20-12fca82f.th"))
    ref = np.load(data_path("checkpoints/reference_logits_first1000.npz"))
    imgs = np.load(data_path("cifar10_heads/test_first1000.npz"))["images"][:200]
    logits = np.asarray(jax.jit(model.apply)(variables, preprocess(imgs)))
    np.testing.assert_allclose(logits, ref["resnet20"][:200], atol=2e-4)
