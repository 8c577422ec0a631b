"""TU ``resnet`` family (``torch_uncertainty.models.classification.resnet``): torch key -> Flax path.

==================================  ======================================  ============
torch key                           Flax leaf                               transform
==================================  ======================================  ============
conv1.weight / .bias                params/conv1/kernel / bias              oihw->hwio
bn1.{weight,bias}                   params/bn1/{scale,bias}                 id
bn1.{running_mean,running_var}      batch_stats/bn1/{mean,var}              id
bn1.num_batches_tracked             (consumed, checked scalar)              --
layer{i}.{j}.conv{k}.weight         params/layer{i}_{j}/conv{k}/kernel      oihw->hwio
layer{i}.{j}.bn{k}.*                .../layer{i}_{j}/bn{k}/...              as bn1
layer{i}.{j}.shortcut.0.weight      params/layer{i}_{j}/shortcut_0/kernel   oihw->hwio
layer{i}.{j}.shortcut.1.*           .../layer{i}_{j}/shortcut_1/...         as bn1
linear.weight / .bias               params/linear/kernel / bias             .T / id
==================================  ======================================  ============
``k`` in 1..2 (BasicBlock) or 1..3 (Bottleneck); conv biases only with ``conv_bias=True``.
"""

from __future__ import annotations

from converters.mappings import apply_table, bn_entries, conv_entries, dense_entries
from jaxuq.models.resnet import BASIC_ARCHS, RESNET_BLOCKS, SMALL_PLANES_ARCHS, resnet

__all__ = ["ARCHS", "infer", "table", "torch_to_flax"]


def _resnet(**kw):
    size = 32 if kw.get("style", "imagenet") == "cifar" else 64
    return resnet(**kw), (1, size, size, kw["in_channels"])


ARCHS = {"resnet": _resnet}


def table(model_name: str = "resnet", *, arch: int, conv_bias: bool = False, width_multiplier: float = 1.0,
          **_) -> dict:
    depth = int(arch)
    basic = depth in BASIC_ARCHS
    expansion = 1 if basic else 4
    base = int((16 if depth in SMALL_PLANES_ARCHS else 64) * width_multiplier)
    t = {**conv_entries("conv1", ("conv1",), conv_bias), **bn_entries("bn1", ("bn1",))}
    in_planes = base
    for li, n in enumerate(RESNET_BLOCKS[depth]):
        planes = base * 2**li
        for bi in range(n):
            stride = (1 if li == 0 else 2) if bi == 0 else 1
            tp, fp = f"layer{li + 1}.{bi}", f"layer{li + 1}_{bi}"
            for k in (1, 2) if basic else (1, 2, 3):
                t.update(conv_entries(f"{tp}.conv{k}", (fp, f"conv{k}"), conv_bias))
                t.update(bn_entries(f"{tp}.bn{k}", (fp, f"bn{k}")))
            if stride != 1 or in_planes != planes * expansion:
                t.update(conv_entries(f"{tp}.shortcut.0", (fp, "shortcut_0"), conv_bias))
                t.update(bn_entries(f"{tp}.shortcut.1", (fp, "shortcut_1")))
            in_planes = planes * expansion
    t.update(dense_entries("linear", ("linear",)))
    return t


def torch_to_flax(state_dict, template, source="<state_dict>"):
    """Derives the table's options from the template (conv bias present, arch from its blocks)."""
    p = template["params"]
    conv_bias = "bias" in p["conv1"]
    blocks = {}
    for name in p:
        if name.startswith("layer"):
            li, bi = name[5:].split("_")
            blocks[int(li)] = max(blocks.get(int(li), 0), int(bi) + 1)
    counts = [blocks[i] for i in sorted(blocks)]
    bottleneck = "conv3" in p["layer1_0"]
    arch = _arch_from_blocks(counts, bottleneck)
    base = p["conv1"]["kernel"].shape[-1]
    default_base = 16 if len(counts) == 3 else 64
    t = table(arch=arch, conv_bias=conv_bias, width_multiplier=base / default_base)
    return apply_table(state_dict, t, template, source)


def _arch_from_blocks(counts: list[int], bottleneck: bool) -> int:
    for a, c in RESNET_BLOCKS.items():
        if list(c) == list(counts) and ((a not in BASIC_ARCHS) == bottleneck):
            return a
    raise ValueError(f"no ResNet arch with blocks {counts} ({'bottleneck' if bottleneck else 'basic'})")


def infer(sd):
    if "conv1.weight" not in sd or "linear.weight" not in sd or "layer1.0.conv1.weight" not in sd:
        return None
    if "layer1.0.conv1.conv.weight" in sd:
        return None
    if not any(k.endswith("shortcut.0.weight") for k in sd):
        return None  # option-A CIFAR ResNet (no shortcut parameters): resnet_cifar
    counts = []
    li = 1
    while f"layer{li}.0.conv1.weight" in sd:
        n = 0
        while f"layer{li}.{n}.conv1.weight" in sd:
            n += 1
        counts.append(n)
        li += 1
    bottleneck = "layer1.0.conv3.weight" in sd
    arch = _arch_from_blocks(counts, bottleneck)
    w = sd["conv1.weight"]
    base = int(w.shape[0])
    default_base = 16 if len(counts) == 3 else 64
    planes1 = int(sd["layer1.0.conv2.weight"].shape[0])
    groups = planes1 // int(sd["layer1.0.conv2.weight"].shape[1])
    kw = {"in_channels": int(w.shape[1]), "num_classes": int(sd["linear.weight"].shape[0]), "arch": arch,
          "style": "imagenet" if w.shape[-1] == 7 else "cifar"}
    if "conv1.bias" in sd:
        kw["conv_bias"] = True
    if base != default_base:
        kw["width_multiplier"] = base / default_base
    if groups != 1:
        kw["groups"] = groups
    return "resnet", kw
