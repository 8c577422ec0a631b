"""He et al. CIFAR ResNet-20/32/44/56/110 family (option-A shortcut; akamaster ``.th`` files).

==================================  ======================================  ============
torch key                           Flax leaf                               transform
==================================  ======================================  ============
conv1.weight                        params/conv1/kernel                     oihw->hwio
bn1.{weight,bias}                   params/bn1/{scale,bias}                 id
bn1.{running_mean,running_var}      batch_stats/bn1/{mean,var}              id
bn1.num_batches_tracked (optional)  (consumed, checked scalar)              --
layer{i}.{j}.conv{1,2}.weight       params/layer{i}_{j}/conv{k}/kernel      oihw->hwio
layer{i}.{j}.bn{1,2}.*              .../layer{i}_{j}/bn{k}/...              as bn1
linear.weight / .bias               params/linear/kernel / bias             .T / id
==================================  ======================================  ============
The option-A shortcut has no parameters. The published files carry ``module.`` (stripped by the reader)
and no ``num_batches_tracked`` (saved by an old torch): those keys are optional here.
"""

from __future__ import annotations

from converters.mappings import apply_table, bn_entries, conv_entries, dense_entries
from jaxuq.models.resnet_cifar import resnet_cifar

__all__ = ["ARCHS", "infer", "table", "torch_to_flax"]

_DEPTHS = (20, 32, 44, 56, 110)


def _factory(depth: int | None):
    def make(**kw):
        d = kw.pop("depth") if depth is None else depth
        return resnet_cifar(d, **kw), (1, 32, 32, kw.get("in_channels", 3))

    return make


ARCHS = {"resnet_cifar": _factory(None), **{f"resnet{d}": _factory(d) for d in _DEPTHS}}


def table(depth: int) -> dict:
    n = (depth - 2) // 6
    t = {**conv_entries("conv1", ("conv1",), False), **bn_entries("bn1", ("bn1",))}
    for li in range(3):
        for bi in range(n):
            tp, fp = f"layer{li + 1}.{bi}", f"layer{li + 1}_{bi}"
            for k in (1, 2):
                t.update(conv_entries(f"{tp}.conv{k}", (fp, f"conv{k}"), False))
                t.update(bn_entries(f"{tp}.bn{k}", (fp, f"bn{k}")))
    t.update(dense_entries("linear", ("linear",)))
    return t


def torch_to_flax(state_dict, template, source="<state_dict>"):
    n = sum(1 for name in template["params"] if name.startswith("layer1_"))
    return apply_table(state_dict, table(6 * n + 2), template, source)


def infer(sd):
    if "conv1.weight" not in sd or "linear.weight" not in sd or "layer3.0.conv1.weight" not in sd:
        return None
    if any("shortcut" in k for k in sd) or "layer4.0.conv1.weight" in sd or sd["conv1.weight"].shape[0] != 16:
        return None
    n = 0
    while f"layer1.{n}.conv1.weight" in sd:
        n += 1
    depth = 6 * n + 2
    kw = {}
    if sd["linear.weight"].shape[0] != 10:
        kw["num_classes"] = int(sd["linear.weight"].shape[0])
    if sd["conv1.weight"].shape[1] != 3:
        kw["in_channels"] = int(sd["conv1.weight"].shape[1])
    if depth in _DEPTHS:
        return f"resnet{depth}", kw
    return "resnet_cifar", {"depth": depth, **kw}
