"""Each ensemble-in-one-network family of TU 0.13.0 through the converter CLI, on real images.

For every family: TU's model, seeded, with random BatchNorm statistics (``randomize_``; BatchEnsemble
fast weights and Masksembles masks are TU's own random draws), is saved with ``torch.save``, converted
by ``jaxuq-convert convert`` **without --arch** (MIMO: ``--arch mimo_* -k num_estimators=M``, since a MIMO
state dict is key for key a plain one), loaded with ``jaxuq.models.load``, and its eval logits
``[(M B), C]`` (TU's eval-time input repetition included) are compared with TU's on the first real
CIFAR-10 test images (LeNet forms: MNIST). Wide-ResNet-28x10 (36.5 M parameters) is marked slow.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from tests.helpers import data_path, require

pytestmark = [pytest.mark.parity, pytest.mark.realdata]

@pytest.fixture(autouse=True)
def _seeded_tu_masks(monkeypatch):
    """TU draws Masksembles masks from OS entropy: seeded here so that every run sees the same models."""
    require("torch")
    from tests.torch_models import seed_tu_masks

    seed_tu_masks(monkeypatch)


CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR_STD = np.array([0.2023, 0.1994, 0.2010], np.float32)


def _cifar(n: int) -> np.ndarray:
    images = np.load(data_path("cifar10_heads/test_first1000.npz"))["images"][:n]
    return ((images.astype(np.float32) / 255.0 - CIFAR_MEAN) / CIFAR_STD).astype(np.float32)


def _mnist(n: int) -> np.ndarray:
    from jaxuq.data import load_mnist

    images = load_mnist("test", data_dir=data_path("MNIST").parent)[0][:n]  # [n, 28, 28, 1]
    return ((images.astype(np.float32) / 255.0 - 0.1307) / 0.3081).astype(np.float32)


def _tu(name: str, **kw):
    torch = require("torch")
    from torch_uncertainty.models import classification as tu

    from tests.torch_models import randomize_

    torch.manual_seed(0)
    return randomize_(getattr(tu, name)(**kw), seed=1).eval()


def _convert(tm, tmp_path, *extra):
    """``torch.save`` -> CLI -> ``jaxuq.models.load``."""
    torch = require("torch")
    from converters.cli import main
    from jaxuq import models

    path = tmp_path / "tu.pt"
    torch.save(tm.state_dict(), path)
    out = tmp_path / "converted"
    assert main(["convert", str(path), "-o", str(out), *extra]) == 0
    return models.load(out)


def _compare(tm, module, variables, x, members: int):
    torch = require("torch")
    with torch.no_grad():
        ref = tm(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    got = np.asarray(jax.jit(lambda v, xx: module.apply(v, xx, train=False))(variables, x))
    assert got.shape == ref.shape == (members * len(x), ref.shape[1])
    err = float(np.abs(got - ref).max())
    print(f"{type(module).__name__}: eval max|Δ| = {err:.2e} (max|logits| {np.abs(ref).max():.2f})")
    assert err <= 1e-5 * max(1.0, float(np.abs(ref).max()))
    return err


CASES = [  # id, TU factory, kwargs (TU's and jaxuq's), members, images
    ("batched_resnet20_cifar", "batched_resnet",
     dict(in_channels=3, num_classes=10, arch=20, num_estimators=2, style="cifar"), 2, 4),
    ("batched_resnet50_imagenet", "batched_resnet",
     dict(in_channels=3, num_classes=10, arch=50, num_estimators=3, width_multiplier=0.25, conv_bias=False), 3, 2),
    ("masked_resnet20_cifar", "masked_resnet",
     dict(in_channels=3, num_classes=10, arch=20, num_estimators=2, scale=2.0, style="cifar"), 2, 4),
    ("masked_resnet50_imagenet_groups", "masked_resnet",
     dict(in_channels=4, num_classes=10, arch=50, num_estimators=2, scale=3.0, width_multiplier=0.5, groups=2),
     2, 2),
]


@pytest.mark.parametrize("name,kw,members,n", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_resnet_forms_cli_no_arch(name, kw, members, n, tmp_path):
    tm = _tu(name, **kw)
    module, variables, meta = _convert(tm, tmp_path)
    assert meta["arch"] == name
    assert {k: v for k, v in meta["kwargs"].items() if k in kw} == kw
    x = _cifar(n)
    if kw["in_channels"] == 4:
        x = np.concatenate([x, x[..., :1]], axis=-1)
    _compare(tm, module, variables, x, members)


def test_mimo_resnet_cli(tmp_path):
    """A MIMO checkpoint needs --arch and M; every other kwarg comes from the shapes. Without --arch it
    converts as TU's plain resnet with M*in channels and M*C classes (the same weights)."""
    kw = dict(in_channels=3, num_classes=10, arch=20, num_estimators=2, style="cifar")
    tm = _tu("mimo_resnet", **kw)
    module, variables, meta = _convert(tm, tmp_path, "--arch", "mimo_resnet", "-k", "num_estimators=2")
    assert meta["arch"] == "mimo_resnet" and meta["kwargs"] == {**kw, "conv_bias": True}
    _compare(tm, module, variables, _cifar(4), 2)

    from converters import convert

    plain = convert([tmp_path / "tu.pt"])
    assert plain["meta"]["arch"] == "resnet"
    assert plain["meta"]["kwargs"]["in_channels"] == 6 and plain["meta"]["kwargs"]["num_classes"] == 20


def test_batchensemble_lenet_cli_mnist(tmp_path):
    tm = _tu("batchensemble_lenet", in_channels=1, num_classes=10, num_estimators=4)
    module, variables, meta = _convert(tm, tmp_path)
    assert meta["arch"] == "batchensemble_lenet"
    assert meta["kwargs"] == {"in_channels": 1, "num_classes": 10, "num_estimators": 4, "norm": "batchnorm"}
    _compare(tm, module, variables, _mnist(16), 4)


VGG_CASES = [
    ("vgg11_cifar_bn", "vgg", dict(in_channels=3, num_classes=10, arch=11, norm="batchnorm", style="cifar"), 1),
    ("packed_vgg11_cifar", "packed_vgg",
     dict(in_channels=3, num_classes=10, arch=11, alpha=2, num_estimators=4, gamma=1, style="cifar"), 4),
]


@pytest.mark.parametrize("name,kw,members", [c[1:] for c in VGG_CASES], ids=[c[0] for c in VGG_CASES])
def test_vgg_cli_no_arch(name, kw, members, tmp_path):
    torch = require("torch")
    tkw = {**kw, "norm": torch.nn.BatchNorm2d} if kw.get("norm") == "batchnorm" else kw
    tm = _tu(name, **tkw)
    with torch.no_grad():  # TU's VGG init (linear N(0, 0.01)) gives logits ~1e-3: a larger random head
        for m in tm.cls_head.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        tm.cls_head[6].weight.mul_(30.0)
    module, variables, meta = _convert(tm, tmp_path)
    assert meta["arch"] == name and meta["kwargs"] == kw
    _compare(tm, module, variables, _cifar(2), members)


WRN_CASES = [
    ("wideresnet28x10", dict(in_channels=3, num_classes=10, style="cifar"), 1, ()),
    ("batched_wideresnet28x10", dict(in_channels=3, num_classes=10, num_estimators=2, style="cifar"), 2, ()),
    ("masked_wideresnet28x10", dict(in_channels=3, num_classes=10, num_estimators=2, scale=2.0, style="cifar"),
     2, ()),
    ("mimo_wideresnet28x10", dict(in_channels=3, num_classes=10, num_estimators=2, style="cifar"), 2,
     ("--arch", "mimo_wideresnet28x10", "-k", "num_estimators=2")),
    ("packed_wideresnet28x10",
     dict(in_channels=3, num_classes=10, num_estimators=4, alpha=2, gamma=1, style="cifar"), 4, ()),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,kw,members,args", WRN_CASES, ids=[c[0] for c in WRN_CASES])
def test_wideresnet28x10_forms_cli(name, kw, members, args, tmp_path):
    tm = _tu(name, **kw)
    module, variables, meta = _convert(tm, tmp_path, *args)
    assert meta["arch"] == name
    assert {k: v for k, v in meta["kwargs"].items() if k in kw} == kw
    _compare(tm, module, variables, _cifar(2), members)


def test_evaluate_and_predict_split_members_like_tu():
    """``jaxuq.predict`` gives ``[M, N, C]`` = TU's ``"(m b) c -> m b c"``; ``jaxuq.evaluate``'s ``test/ens_*``
    and Acc equal TU's metric classes on TU's logits (batch 24 over 64 images: a zero-padded last batch)."""
    torch = require("torch")
    tu_metrics = require("torch_uncertainty.metrics")
    from einops import rearrange

    from converters import mappings
    from jaxuq.data import MNIST_NORM, Preprocess, load_mnist
    from jaxuq.evaluation import evaluate, predict
    from tests.torch_models import state_dict_numpy

    kw = dict(in_channels=1, num_classes=10, num_estimators=4)
    tm = _tu("batchensemble_lenet", **kw)
    module, variables = mappings.convert_state_dict("batchensemble_lenet", state_dict_numpy(tm), "tu", **kw)
    images, labels = (a[:64] for a in load_mnist("test", data_dir=data_path("MNIST").parent))
    with torch.no_grad():
        ref = tm(torch.from_numpy(np.ascontiguousarray(_mnist(64).transpose(0, 3, 1, 2))))
    pre = Preprocess(*MNIST_NORM)
    got = predict(module, variables, images, preprocess=pre, batch_size=24)
    want = rearrange(ref, "(m b) c -> m b c", m=4).numpy()
    assert got.shape == (4, 64, 10)
    assert float(np.abs(got - want).max()) <= 1e-5
    res = evaluate(module, variables, (images, labels), preprocess=pre, batch_size=24, progress=False)
    pe = torch.softmax(rearrange(ref, "(m b) c -> b m c", m=4), dim=-1)
    for key, cls in (("Disagreement", tu_metrics.Disagreement), ("MI", tu_metrics.MutualInformation),
                     ("Entropy", tu_metrics.Entropy)):
        met = cls()
        met.update(pe)
        assert abs(res[f"test/ens_{key}"] - float(met.compute())) <= 1e-6, key
    acc = float((pe.mean(1).argmax(-1).numpy() == labels).mean())
    assert abs(res["test/cls/Acc"] - acc) <= 1e-6
