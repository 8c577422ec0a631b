"""scio's Tiniest: torch key -> Flax path table.

==============================  ===============================  ============
torch key                       Flax leaf                        transform
==============================  ===============================  ============
conv1.weight / .bias            params/conv1/kernel / bias       oihw->hwio / id
ln{1,2}.ln.{weight,bias}        params/ln{i}/ln/{scale,bias}     id
l{i}.rs (1, d, 1, 1)            params/l{i}/rs (1, 1, 1, d)      nchw->nhwc
l{i}.dwconv{1,2,3}.weight/bias  params/l{i}/dwconv{k}/...        oihw->hwio (depthwise: I/G = 1)
l{i}.ln.ln.{weight,bias}        params/l{i}/ln/ln/{scale,bias}   id
l{i}.fc{1,2}.weight/bias        params/l{i}/fc{k}/kernel/bias    oihw->hwio (1x1 conv)
dsconv.weight / .bias           params/dsconv/kernel / bias      oihw->hwio (16 groups)
fc.weight / .bias               params/fc/kernel / bias          .T / id
==============================  ===============================  ============
"""

from __future__ import annotations

import numpy as np

from converters.mappings import Entry, apply_table, conv_entries, dense_entries, ln_entries
from jaxuq.models.tiniest import tiniest

__all__ = ["ARCHS", "infer", "table", "torch_to_flax"]


def _tiniest(**kw):
    return tiniest(**kw), (1, 32, 32, kw.get("in_channels", 3))


ARCHS = {"tiniest": _tiniest}


def _nchw_to_nhwc(t):
    return np.transpose(t, (0, 2, 3, 1))


def table(model_name: str = "tiniest", **_) -> dict:
    t = {**conv_entries("conv1", ("conv1",), True), **ln_entries("ln1.ln", ("ln1", "ln"))}
    for i in range(1, 7):
        if i == 4:
            t.update(conv_entries("dsconv", ("dsconv",), True))
            t.update(ln_entries("ln2.ln", ("ln2", "ln")))
        t[f"l{i}.rs"] = Entry(("params", f"l{i}", "rs"), _nchw_to_nhwc, "nchw->nhwc", 4)
        for k in (1, 2, 3):
            t.update(conv_entries(f"l{i}.dwconv{k}", (f"l{i}", f"dwconv{k}"), True))
        t.update(ln_entries(f"l{i}.ln.ln", (f"l{i}", "ln", "ln")))
        for k in (1, 2):
            t.update(conv_entries(f"l{i}.fc{k}", (f"l{i}", f"fc{k}"), True))
    t.update(dense_entries("fc", ("fc",)))
    return t


def torch_to_flax(state_dict, template, source="<state_dict>"):
    return apply_table(state_dict, table(), template, source)


def infer(sd):
    if "l1.rs" not in sd or "dsconv.weight" not in sd or "fc.weight" not in sd:
        return None
    kw = {}
    if sd["fc.weight"].shape[0] != 10:
        kw["num_classes"] = int(sd["fc.weight"].shape[0])
    if sd["conv1.weight"].shape[1] != 3:
        kw["in_channels"] = int(sd["conv1.weight"].shape[1])
    return "tiniest", kw
