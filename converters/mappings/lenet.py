"""TU ``lenet`` family: torch key -> Flax path table.

=======================  =============================  ============
torch key                Flax leaf                      transform
=======================  =============================  ============
conv{1,2}.weight         params/conv{1,2}/kernel        oihw->hwio
conv{1,2}.bias           params/conv{1,2}/bias          id
norm{1,2}.* (BN only)    params/norm{i}/{scale,bias},   id
                         batch_stats/norm{i}/{mean,var}
fc{1,2,3}.weight         params/fc{i}/kernel            .T
fc{1,2,3}.bias           params/fc{i}/bias              id
=======================  =============================  ============
fc1's input order needs no permutation: the Flax model flattens in torch's NCHW order.
"""

from __future__ import annotations

from converters.mappings import apply_table, bn_entries, conv_entries, dense_entries
from jaxuq.models.lenet import lenet

__all__ = ["ARCHS", "infer", "table", "torch_to_flax"]


def _lenet(**kw):
    return lenet(**kw), (1, 28, 28, kw.get("in_channels", 1))


ARCHS = {"lenet": _lenet}


def table(model_name: str = "lenet", norm: str = "none", **_) -> dict:
    t: dict = {}
    for i in (1, 2):
        t.update(conv_entries(f"conv{i}", (f"conv{i}",), bias=True))
        if norm == "batchnorm":
            t.update(bn_entries(f"norm{i}", (f"norm{i}",)))
    for i in (1, 2, 3):
        t.update(dense_entries(f"fc{i}", (f"fc{i}",)))
    return t


def torch_to_flax(state_dict, template, source="<state_dict>"):
    norm = "batchnorm" if "batch_stats" in template else "none"
    return apply_table(state_dict, table(norm=norm), template, source)


def infer(sd):
    need = ("conv1.weight", "conv2.weight", "fc1.weight", "fc3.weight")
    if not all(k in sd for k in need) or sd["conv1.weight"].shape[0] != 6 or len(sd["fc3.weight"].shape) != 2:
        return None
    if tuple(sd["fc1.weight"].shape) != (120, 256) or "conv1.conv.weight" in sd:
        return None
    groups = 6 // sd["conv2.weight"].shape[1]
    kw = {"in_channels": int(sd["conv1.weight"].shape[1] * groups),
          "num_classes": int(sd["fc3.weight"].shape[0])}
    if "norm1.weight" in sd:
        kw["norm"] = "batchnorm"
    if groups != 1:
        kw["groups"] = int(groups)
    return "lenet", kw
