"""chenyaofo/pytorch-cifar-models CIFAR ResNets (``cifar{10,100}_resnet{20,32,44,56}``, option-B shortcut).

=========================================  ============================================  ============
torch key                                  Flax leaf                                     transform
=========================================  ============================================  ============
conv1.weight                               params/conv1/kernel                           oihw->hwio
bn1.{weight,bias}                          params/bn1/{scale,bias}                       id
bn1.{running_mean,running_var}             batch_stats/bn1/{mean,var}                    id
bn1.num_batches_tracked                    (consumed, checked scalar)                    --
layer{i}.{j}.conv{1,2}.weight              params/layer{i}_{j}/conv{k}/kernel            oihw->hwio
layer{i}.{j}.bn{1,2}.*                     .../layer{i}_{j}/bn{k}/...                    as bn1
layer{i}.0.downsample.0.weight (i = 2, 3)  params/layer{i}_0/shortcut_0/kernel           oihw->hwio
layer{i}.0.downsample.1.*                  .../layer{i}_0/shortcut_1/...                 as bn1
fc.weight / fc.bias                        params/fc/kernel / bias                       .T / id
=========================================  ============================================  ============
The published files (``cifar100_resnet20-23dac2f1.pt`` ...) are plain state dicts of these keys.
"""

from __future__ import annotations

from converters.mappings import apply_table, bn_entries, conv_entries, dense_entries, resnet_cifar
from jaxuq.models.chenyaofo_resnet import chenyaofo_resnet

__all__ = ["ARCHS", "infer", "table", "torch_reference", "torch_to_flax"]

_DEPTHS = (20, 32, 44, 56)


def _factory(depth: int | None, num_classes: int | None):
    def make(**kw):
        if depth is not None:
            return chenyaofo_resnet(depth, num_classes, **kw), (1, 32, 32, 3)
        return chenyaofo_resnet(**kw), (1, 32, 32, 3)

    return make


ARCHS = {
    "chenyaofo_resnet": _factory(None, None),
    **{f"cifar{c}_resnet{d}": _factory(d, c) for c in (10, 100) for d in _DEPTHS},
}


def table(depth: int) -> dict:
    """He et al.'s CIFAR ResNet table (:mod:`converters.mappings.resnet_cifar`) + the two ``downsample``
    shortcuts, with the head ``fc`` instead of ``linear``."""
    t = {k: e for k, e in resnet_cifar.table(depth).items() if not k.startswith("linear.")}
    for li in (2, 3):
        t.update(conv_entries(f"layer{li}.0.downsample.0", (f"layer{li}_0", "shortcut_0"), False))
        t.update(bn_entries(f"layer{li}.0.downsample.1", (f"layer{li}_0", "shortcut_1")))
    t.update(dense_entries("fc", ("fc",)))
    return t


def torch_to_flax(state_dict, template, source="<state_dict>"):
    depth = 6 * sum(1 for name in template["params"] if name.startswith("layer1_")) + 2
    return apply_table(state_dict, table(depth), template, source)


def infer(sd):
    if "conv1.weight" not in sd or "fc.weight" not in sd or "layer3.0.downsample.0.weight" not in sd:
        return None
    if "layer4.0.conv1.weight" in sd or tuple(sd["conv1.weight"].shape) != (16, 3, 3, 3):
        return None
    n = 0
    while f"layer1.{n}.conv1.weight" in sd:
        n += 1
    depth, num_classes = 6 * n + 2, int(sd["fc.weight"].shape[0])
    if depth in _DEPTHS and num_classes in (10, 100):
        return f"cifar{num_classes}_resnet{depth}", {}
    return "chenyaofo_resnet", {"depth": depth, "num_classes": num_classes}


def torch_reference(model_name: str, **kwargs):
    from converters.torch_refs import ChenyaofoResNet  # noqa: PLC0415

    if model_name == "chenyaofo_resnet":
        return ChenyaofoResNet(**kwargs)
    c, d = model_name[len("cifar"):].split("_resnet")
    return ChenyaofoResNet(int(d), int(c))
