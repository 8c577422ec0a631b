"""Real CIFAR-10 images through a TU packed_resnet18 (cifar) and its jaxuq conversion.

No trained Packed-Ensembles checkpoint is available offline (TU's hub checkpoints are not in the data
folder), so the closest real test: build TU's packed_resnet18 (cifar, M=4, alpha=2, gamma=1), set its
BatchNorm statistics from 128 real CIFAR-10 training images, save its state_dict to a file, convert
that file with the ``jaxuq-convert`` CLI, load it with ``jaxuq.models.load``, and check on the first 200 real test images that the converted model predicts the same
ensemble class as torch for every image (and the logits agree to 1e-4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxuq.nn.packed import split_members
from tests.helpers import data_path, require

MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
STD = np.array([0.2023, 0.1994, 0.2010], np.float32)


def _norm(images_uint8):
    return ((images_uint8.astype(np.float32) / 255.0 - MEAN) / STD).astype(np.float32)  # NHWC


@pytest.mark.parity
@pytest.mark.realdata
@pytest.mark.slow
def test_packed_resnet18_real_cifar_same_predictions(tmp_path):
    torch = require("torch")
    from torch_uncertainty.models.classification.resnet.packed import packed_resnet as tu_packed_resnet

    from converters.cli import main as convert_cli
    from jaxuq import models as jm

    test = np.load(data_path("cifar10_heads/test_first1000.npz"))
    train = np.load(data_path("cifar10_heads/train_first1000x5.npz"))
    x_test = _norm(test["images"][:200])
    x_train = _norm(train["images"][:128])

    torch.manual_seed(0)
    tm = tu_packed_resnet(3, 10, 18, num_estimators=4, alpha=2, gamma=1, style="cifar")
    for mod in tm.modules():  # BN running stats = statistics of 128 real training images
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None
            mod.reset_running_stats()
    tm.train()
    with torch.no_grad():
        tm(torch.as_tensor(x_train.transpose(0, 3, 1, 2)))
    tm.eval()
    path = tmp_path / "packed_resnet18_c10.pt"
    torch.save(tm.state_dict(), path)

    # jaxuq-convert recognises the architecture and its kwargs from the keys/shapes (no --arch)
    out_dir = tmp_path / "pe_resnet18"
    assert convert_cli(["convert", str(path), "-o", str(out_dir), "--verify"]) == 0
    module, variables, meta = jm.load(out_dir)
    assert meta["arch"] == "packed_resnet"
    assert meta["kwargs"] == {"in_channels": 3, "num_classes": 10, "arch": 18, "num_estimators": 4, "alpha": 2,
                              "gamma": 1, "style": "cifar", "conv_bias": False}
    apply = jax.jit(lambda x: module.apply(variables, x))
    ref, out = [], []
    for i in range(0, 200, 50):
        with torch.no_grad():
            ref.append(tm(torch.as_tensor(x_test[i : i + 50].transpose(0, 3, 1, 2))).numpy())
        out.append(np.asarray(apply(jnp.asarray(x_test[i : i + 50]))))
    ref = np.concatenate([split_members(r, 4) for r in ref], axis=1)  # [M, 200, C]
    out = np.concatenate([split_members(o, 4) for o in out], axis=1)
    assert float(np.abs(out - ref).max()) <= 1e-4
    p_ref = torch.softmax(torch.as_tensor(ref), -1).mean(0).numpy()
    p_out = np.asarray(jax.nn.softmax(jnp.asarray(out), -1).mean(0))
    np.testing.assert_array_equal(p_out.argmax(-1), p_ref.argmax(-1))
    np.testing.assert_array_equal(out.argmax(-1), ref.argmax(-1))  # every member, every image
