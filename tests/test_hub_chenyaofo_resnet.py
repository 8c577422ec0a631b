"""chenyaofo/pytorch-cifar-models ResNets (the temperature-scaling tutorial's ``cifar100_resnet20``):
jaxuq's ``cifar{10,100}_resnet{20,32,44,56}`` against the torch definition (``converters.torch_refs``) with
random weights and BN statistics; recognised from the keys; logits within 1e-4."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from tests.helpers import require

torch = require("torch")

from converters import convert  # noqa: E402
from converters.cli import main as cli_main  # noqa: E402
from converters.torch_refs import ChenyaofoResNet  # noqa: E402
from jaxuq import models  # noqa: E402

# The key layout of the published cifar100_resnet20-23dac2f1.pt (chenyaofo's resnet.py: BasicBlock with
# ``downsample = Sequential(conv1x1(stride), BatchNorm2d)``, head ``fc``): 128 tensors.
PUBLISHED_R20_KEYS_SAMPLE = [
    "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
    "layer1.0.conv1.weight", "layer1.2.bn2.running_var", "layer2.0.conv1.weight", "layer2.0.downsample.0.weight",
    "layer2.0.downsample.1.weight", "layer2.0.downsample.1.running_var", "layer3.0.downsample.0.weight",
    "layer3.2.conv2.weight", "fc.weight", "fc.bias",
]


def _random_model(depth: int, num_classes: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = ChenyaofoResNet(depth, num_classes)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.normal_(0, 0.2)
            mod.running_mean.normal_(0, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
            mod.num_batches_tracked.fill_(100)
    return m.eval()


@pytest.mark.parity
@pytest.mark.parametrize("num_classes,depth", [(10, 20), (100, 20), (10, 32), (100, 32), (10, 44), (100, 56)])
def test_chenyaofo_resnet_logits_match_torch(tmp_path, num_classes, depth):
    m = _random_model(depth, num_classes, seed=depth + num_classes)
    path = tmp_path / f"cifar{num_classes}_resnet{depth}.pt"
    torch.save(m.state_dict(), path)
    res = convert([path])  # architecture recognised from the keys
    assert res["meta"]["arch"] == f"cifar{num_classes}_resnet{depth}" and res["meta"]["kwargs"] == {}
    module, variables = res["module"], res["variables"]
    assert type(module) is type(models.get(f"cifar{num_classes}_resnet{depth}"))
    n_params = sum(a.size for a in jax.tree.leaves(variables["params"]))
    assert n_params == sum(p.numel() for p in m.parameters())
    x = np.random.default_rng(depth).standard_normal((3, 32, 32, 3), dtype=np.float32)
    with torch.no_grad():
        ref = m(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    got = np.asarray(module.apply(variables, x))
    assert got.shape == (3, num_classes)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_published_key_layout_and_parameter_counts():
    sd = ChenyaofoResNet(20, 100).state_dict()
    assert len(sd) == 128 and all(k in sd for k in PUBLISHED_R20_KEYS_SAMPLE)
    counts = {c: sum(p.numel() for p in ChenyaofoResNet(20, c).parameters()) for c in (10, 100)}
    assert counts == {10: 272_474, 100: 278_324}  # chenyaofo's README: 0.27 M / 0.28 M


def test_cli_verify_and_generic_depth(tmp_path, capsys):
    m = _random_model(20, 100, seed=1)
    torch.save(m.state_dict(), tmp_path / "w.pt")
    assert cli_main(["convert", str(tmp_path / "w.pt"), "-o", str(tmp_path / "out"), "--verify"]) == 0
    assert "cifar100_resnet20" in capsys.readouterr().out
    # a depth chenyaofo did not publish goes to the generic entry
    torch.save(_random_model(8, 7, seed=2).state_dict(), tmp_path / "d8.pt")
    meta = convert([tmp_path / "d8.pt"])["meta"]
    assert meta["arch"] == "chenyaofo_resnet" and meta["kwargs"] == {"depth": 8, "num_classes": 7}
