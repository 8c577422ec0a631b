"""Torch-free parity: Flax models + converter tables against fixtures produced by torch / TU 0.13.0
(tests/gen_golden_models.py): eval logits, train-mode logits and BN running statistics after one
train-mode forward. Runs in the fast suite (no torch needed: the state dicts are stored as numpy)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from converters import mappings
from tests.helpers import GOLDEN

NAMES = ["models_lenet_bn", "models_tu_resnet20_variant", "models_resnet8_he"]


@pytest.mark.parametrize("name", NAMES)
def test_golden_model(name):
    g = np.load(GOLDEN / f"{name}.npz")
    arch, kw = str(g["arch"]), json.loads(str(g["kwargs"]))
    sd = {k[3:]: g[k] for k in g.files if k.startswith("sd/")}
    module, variables = mappings.convert_state_dict(arch, sd, f"golden {name}", **kw)
    x = g["x"]
    err = np.abs(np.asarray(module.apply(variables, x, train=False)) - g["logits_eval"]).max()
    assert err <= 1e-4, err
    out, upd = module.apply(variables, x, train=True, mutable=["batch_stats"])
    assert np.abs(np.asarray(out) - g["logits_train"]).max() <= 1e-4
    after = {**sd, **{k[9:]: g[k] for k in g.files if k.startswith("sd_after/")}}
    _, expected = mappings.convert_state_dict(arch, after, f"golden {name} (after)", **kw)
    worst = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                                             upd["batch_stats"], expected["batch_stats"])))
    assert worst <= 1e-5
