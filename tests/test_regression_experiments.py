"""experiments/regression_cubic and regression_tabular through the launcher at its SMALL size: TU beside jaxuq on the same data,
weights and steps (training losses, the test tables, CQR's q_hat and intervals), the plot, and the config
keys documented (as tests/test_experiments.py checks for the classification tutorials)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import require


def test_regression_cubic_refuses_unknown_family(tmp_path, capsys):
    from experiments.__main__ import main

    assert main(["regression_cubic", "--small", "--set", 'families=["gauss"]', "--out", str(tmp_path / "o")]) != 0


@pytest.mark.parity
@pytest.mark.slow  # ~3 min on the loaded 2-core machine (TU imports, jit compiles, 3 x 50 steps per side)
def test_regression_cubic_small(tmp_path):
    require("torch_uncertainty")
    from experiments.__main__ import main

    out = tmp_path / "cubic"
    assert main(["regression_cubic", "--small", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["models"]) == {"normal", "der", "ensemble of 3 normal"}
    for name, m in res["models"].items():
        assert set(m["jaxuq"]) - {"test/cplx/params", "test/cplx/flops"} == set(m["tu"]), name
        # the same 50 Adam steps from the same weights: float32 drift, measured 1.13e-5 (Normal NLL on the
        # unnormalised cubic's targets, |y| up to 64), 2.9e-6 (DER)
        assert m["loss_max_rel_diff"] <= 2e-5, name
        for k, v in m["tu"].items():  # the tables after those steps: float32 training drift only
            ours, v = float(m["jaxuq"][k]), float(v)  # results.json writes NaN (DER's QCE) as a string
            assert (np.isnan(v) and np.isnan(ours)) or abs(ours - v) <= 2e-5 * max(1, abs(v)), k
    cqr = res["cqr"]
    assert cqr["q_hat"] == cqr["tu_q_hat"] and cqr["intervals_max_abs_diff"] == 0.0
    assert cqr["CQR"]["coverage"] >= 0.85 and cqr["split conformal"]["coverage"] >= 0.85  # target 0.9
    assert (out / "regression_cubic.png").stat().st_size > 0


@pytest.mark.parity
@pytest.mark.slow  # ~2 min on the loaded 2-core machine
def test_regression_tabular_small(tmp_path):
    require("torch_uncertainty")
    require("sklearn")
    from experiments.__main__ import main

    out = tmp_path / "diabetes"
    assert main(["regression_tabular", "--small", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["data"]["n_train"] == 265 and res["data"]["n_test"] == 177
    assert set(res["models"]) == {"normal", "ensemble of 3 normal"}
    for name, m in res["models"].items():
        assert m["loss_max_rel_diff"] <= 1e-5, name
        for k, v in m["tu"].items():
            assert abs(float(m["jaxuq"][k]) - float(v)) <= 2e-5 * max(1, abs(float(v))), k
    assert res["cqr"]["q_hat"] == res["cqr"]["tu_q_hat"] and res["cqr"]["intervals_max_abs_diff"] == 0.0
