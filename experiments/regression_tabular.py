"""Tabular probabilistic regression on scikit-learn's diabetes data: TU's table on both sides, CQR coverage.

    python -m experiments regression_tabular [--small] [--set key=value ...] [--out DIR]

Data: ``sklearn.datasets.load_diabetes()`` (442 patients, 10 features; ships with scikit-learn, offline).
The targets are standardised with the training part's mean and standard deviation; a seeded permutation
splits the rows ``train_fraction`` : rest, and the rest is the test set, whose halves calibrate CQR and
measure its coverage. Everything else is ``regression_cubic``'s comparison (:func:`compare_all`): per head
family, TU's ``mlp(10, 1, hidden_dims, dist_family=...)`` converted to jaxuq and trained on both sides from
the same weights (full batch, Adam), TU's ``RegressionRoutine`` test table beside ``jaxuq.evaluate``, a
vmapped deep ensemble, CQR and split conformal (TU's ``ConformalRegCQR`` beside jaxuq's). The table's MAE,
MSE and RMSE are in standardised target units.

Config keys:
  families: head families: "normal", "laplace", "cauchy", "student", "der" (NIG + DERLoss).
  train_fraction: share of the rows that trains (the rest tests; half of it calibrates CQR).
  hidden_dims: the MLP's hidden widths.
  steps: full-batch Adam steps of every model.
  lr: Adam's learning rate.
  der_lr: Adam's learning rate for "der".
  reg_weight: DERLoss's regularisation weight.
  num_estimators: members of the deep ensemble.
  ensemble_family: the deep ensemble's head family (one of `families`; its single model: CQR's quantiles).
  alpha: CQR's miscoverage (intervals of 1 - alpha).
  compare_tu: run TU 0.13.0 beside jaxuq.
  seed: split and torch init seed.
"""

from __future__ import annotations

import numpy as np

from experiments._launch import launch_module
from experiments.regression_cubic import check_families, compare_all


def get_config() -> dict:
    return {
        "families": ["normal", "student", "der"], "train_fraction": 0.6, "hidden_dims": [64],
        "steps": 500, "lr": 1e-3, "der_lr": 1e-3, "reg_weight": 1e-2,
        "num_estimators": 5, "ensemble_family": "normal", "alpha": 0.1, "compare_tu": True, "seed": 0,
    }


SMALL = {"families": ["normal"], "steps": 50, "num_estimators": 3, "hidden_dims": [16]}


def _data(config):
    from sklearn.datasets import load_diabetes

    if not 0.1 <= config["train_fraction"] <= 0.9:
        raise ValueError(f"train_fraction must be in [0.1, 0.9]; got {config['train_fraction']}")
    d = load_diabetes()
    x, y = d.data.astype(np.float32), d.target.astype(np.float64)
    perm = np.random.default_rng(config["seed"]).permutation(len(x))
    n = int(round(config["train_fraction"] * len(x)))
    tr, te = perm[:n], perm[n:]
    mu, sd = y[tr].mean(), y[tr].std()
    y = ((y - mu) / sd).astype(np.float32)
    return (x[tr], y[tr]), (x[te], y[te]), {"n_train": len(tr), "n_test": len(te), "target_mean": float(mu),
                                            "target_std": float(sd)}


def run(config: dict, out_dir) -> tuple[dict, str]:
    check_families(config)
    train, test, info = _data(config)
    results, table, _ = compare_all(config, train, test, "Diabetes regression: TU 0.13.0 | jaxuq")
    return {"data": info} | results, table


if __name__ == "__main__":
    raise SystemExit(launch_module(__name__))
