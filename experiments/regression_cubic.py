"""TU's cubic toy regression: an MLP per head family, DER, a vmapped deep ensemble, CQR; TU beside jaxuq.

    python -m experiments regression_cubic [--small] [--set key=value ...] [--out DIR]

Data (TU's ``datasets.regression.toy.Cubic``): ``x = linspace(-4, 4, n_train)``, ``y = x^3 +
N(0, noise_std)`` (numpy's seeded generator here, so that both sides see the same arrays); the test set is
another ``linspace(-4, 4, n_test)`` with fresh noise, split by a seeded permutation into a CQR calibration
half and a held-out half. Each member is TU's ``mlp(1, 1, hidden_dims, dist_family=...)`` built under
``torch.manual_seed(seed + m)``, converted to jaxuq (``converters.mappings``, no ``--arch``), and trained on
both sides from those weights, full batch, Adam(lr), ``steps`` steps: TU's ``RegressionRoutine.training_step``
loss (``DistributionNLLLoss``; ``"der"``: the NIG head with ``DERLoss(reg_weight)``, TU's deep-evidential
tutorial) beside ``jaxuq.train.fit`` with ``jaxuq.losses.regression``'s losses. Then each side's test table:
TU's ``RegressionRoutine.test_step`` beside ``jaxuq.evaluate``. The deep ensemble (``num_estimators`` members
of ``ensemble_family``) trains as one stacked, vmapped ``fit`` and is evaluated vmapped; its table is given
with TU 0.13.0's member combination (averaged parameters, compared with TU's ``deep_ensembles``) and as the
members' mixture (jaxuq only). CQR: the ``ensemble_family`` single model's central ``1 - alpha`` quantiles,
calibrated on the calibration half (TU's ``ConformalRegCQR`` beside ``jaxuq.calibration.cqr_quantile``);
coverage and width on the held-out half, with split conformal on the mean's absolute residuals beside it.
A plot of each model's mean +- its central ``1 - alpha`` interval over the data, like the tutorial's.

Config keys:
  families: head families: "normal", "laplace", "cauchy", "student", "der" (NIG + DERLoss).
  n_train: points of the training linspace on [-4, 4] (TU's Cubic: 5000).
  n_test: points of the test linspace on [-4, 4] (half calibrates CQR).
  noise_std: the cubic's noise (TU's 3.0).
  hidden_dims: the MLP's hidden widths.
  steps: full-batch Adam steps of every model.
  lr: Adam's learning rate.
  der_lr: Adam's learning rate for "der".
  reg_weight: DERLoss's regularisation weight (TU's tutorial: 1e-2).
  num_estimators: members of the deep ensemble.
  ensemble_family: the deep ensemble's head family (one of `families`; its single model: CQR's quantiles).
  alpha: CQR's miscoverage (intervals of 1 - alpha).
  compare_tu: run TU 0.13.0 beside jaxuq.
  seed: data noise, split and torch init seed.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from experiments._compare import compare_row, comparison_table, render_text
from experiments._launch import launch_module

FAMILY = {"normal": "normal", "laplace": "laplace", "cauchy": "cauchy", "student": "student", "der": "nig"}


def get_config() -> dict:
    return {
        "families": ["normal", "laplace", "cauchy", "student", "der"],
        "n_train": 1024, "n_test": 512, "noise_std": 3.0, "hidden_dims": [64, 64],
        "steps": 300, "lr": 5e-3, "der_lr": 5e-3, "reg_weight": 1e-2,
        "num_estimators": 5, "ensemble_family": "normal", "alpha": 0.1, "compare_tu": True, "seed": 0,
    }


SMALL = {"families": ["normal", "der"], "n_train": 256, "n_test": 256, "hidden_dims": [32], "steps": 50,
         "num_estimators": 3}


def _data(config):
    rng = np.random.default_rng(config["seed"])
    out = []
    for n in (config["n_train"], config["n_test"]):
        x = np.linspace(-4, 4, n, dtype=np.float32)[:, None]
        out.append((x, (x[:, 0] ** 3 + rng.normal(0, config["noise_std"], n)).astype(np.float32)))
    return out


def _members(family: str, config, num: int, in_features: int = 1):
    """``num`` TU mlps (seeds ``seed + m``) and the converted jaxuq module with the stacked variables."""
    import torch
    from torch_uncertainty.models.mlp import mlp as tu_mlp

    from converters import mappings
    from converters.core import _resolve_arch

    tus, variables = [], []
    for m in range(num):
        torch.manual_seed(config["seed"] + m)
        tu = tu_mlp(in_features=in_features, num_outputs=1, hidden_dims=list(config["hidden_dims"]),
                    dist_family=family)
        sd = {k: v.detach().numpy().copy() for k, v in tu.state_dict().items()}
        arch, kw = _resolve_arch(None, {"dist_family": family}, sd, "TU mlp")  # what `convert` does
        module, v = mappings.convert_state_dict(arch, sd, **kw)
        tus.append(tu)
        variables.append(v)
    return tus, module, jax.tree.map(lambda *a: np.stack(a), *variables)


def _losses(name: str, config):
    import torch_uncertainty.losses as tul

    from jaxuq.losses.regression import DERLoss, DistributionNLLLoss

    if name == "der":
        return DERLoss(reg_weight=config["reg_weight"]), tul.DERLoss(reg_weight=config["reg_weight"])
    return DistributionNLLLoss(dist_family=FAMILY[name]), tul.DistributionNLLLoss()


def _jaxuq_fit(module, stacked, x, y, loss, steps: int, lr: float, members: int | None):
    """``fit`` full batch from the given (stacked) weights: ``(params, losses [steps, M], seconds)``."""
    import optax

    from jaxuq.train import EnsembleConfig, TrainConfig, create_train_state, fit

    params = stacked["params"] if members else jax.tree.map(lambda a: a[0], stacked["params"])
    tx = optax.adam(lr)
    st = create_train_state(module, tx, jax.random.key(0), x[:1], num_members=members)
    st = st.replace(params=params, opt_state=(jax.vmap(tx.init) if members else tx.init)(params))
    ens = None if members is None else EnsembleConfig(members, lowering="vmap", shared_order=True)
    cfg = TrainConfig(optimizer=tx, epochs=steps, batch_size=len(x), loss_fn=loss, preprocess=None,
                      quiet=True, ensemble=ens)
    t0 = time.perf_counter()
    r = fit(module, (x, y), cfg, init_state=st)
    seconds = time.perf_counter() - t0
    key = "train_loss_members" if members else "train_loss"
    return r.state.params, np.array([np.atleast_1d(h[key]) for h in r.history]), seconds


def _tu_fit(tus, x, y, loss, steps: int, lr: float, family: str):
    from experiments._tu import tu_regression_fit

    t0 = time.perf_counter()
    losses = np.array([tu_regression_fit(tu, x, y, loss, steps, lr, family) for tu in tus]).T
    return losses, time.perf_counter() - t0


def _model(name: str, config, train, test, members: int | None):
    """Train one head family (or the ensemble) on both sides; both test tables and the loss gap."""
    import jaxuq
    from experiments._tu import tu_regression_table

    family = FAMILY[name]
    tus, module, stacked = _members(family, config, members or 1, train[0].shape[1])
    jloss, tloss = _losses(name, config)
    lr = config["der_lr"] if name == "der" else config["lr"]
    params, jl, t_jx = _jaxuq_fit(module, stacked, *train, jloss, config["steps"], lr, members)
    lowering = "vmap" if members else None
    ev = dict(batch_size=256, progress=False, lowering=lowering)
    jx = jaxuq.evaluate(module, {"params": params}, test, members="average", **ev)
    out = {"jaxuq": jx, "final_loss": float(jl[-1].mean()), "seconds": {"jaxuq_fit": t_jx}}
    if members:
        out["jaxuq_mixture"] = jaxuq.evaluate(module, {"params": params}, test, members="mixture", **ev)
    if config["compare_tu"]:
        tl, t_tu = _tu_fit(tus, *train, tloss, config["steps"], lr, family)
        out["tu"] = tu_regression_table(tus, *test, family)
        rel = np.max(np.abs(tl - jl) / np.maximum(1.0, np.abs(tl)), axis=1)  # per step, worst member
        out["loss_max_abs_diff"] = float(np.max(np.abs(tl - jl)))
        out["loss_max_rel_diff"] = float(np.max(rel))
        # drift profile: the worst relative gap over the first k steps (agreement, then fp32 chaos)
        out["loss_rel_diff_first"] = {str(k): float(np.max(rel[:k])) for k in (10, 50, 100, 200)
                                      if k <= len(rel)}
        out["seconds"]["tu_fit"] = t_tu
    return out, module, params


def _cqr(module, params, test, family: str, config):
    """CQR and split conformal on the held-out half: TU's q_hat and intervals beside jaxuq's."""
    from jaxuq import distributions as D
    from jaxuq.calibration import (
        cqr_intervals,
        cqr_quantile,
        split_conformal_intervals,
        split_conformal_quantile,
    )
    from jaxuq.evaluation import predict
    from jaxuq.metrics import interval_coverage, mean_interval_width

    x, y = test
    a = config["alpha"]
    p = predict(module, {"params": params}, x)
    q = np.stack([np.asarray(D.icdf(family, p, lv))[:, 0] for lv in (a / 2, 1 - a / 2)], -1)
    mean = np.asarray(D.mean(family, p))[:, 0]
    perm = np.random.default_rng(config["seed"] + 1).permutation(len(x))
    cal, held = perm[: len(x) // 2], perm[len(x) // 2:]
    q_hat = cqr_quantile(q[cal], y[cal], a)
    s_hat = split_conformal_quantile(mean[cal], y[cal], a)
    ivs = {"raw quantiles": q[held], "CQR": np.asarray(cqr_intervals(q[held], q_hat)),
           "split conformal": np.asarray(split_conformal_intervals(mean[held], s_hat))}
    out = {"target_coverage": 1 - a, "q_hat": float(q_hat), "n_cal": len(cal), "n_heldout": len(held)}
    for k, iv in ivs.items():
        out[k] = {"coverage": float(interval_coverage(iv[:, 0], iv[:, 1], y[held])),
                  "mean_width": float(mean_interval_width(iv[:, 0], iv[:, 1]))}
    if config["compare_tu"]:
        from experiments._tu import tu_cqr

        tq, tiv = tu_cqr(a, q[cal], y[cal], q[held])
        out["tu_q_hat"] = tq
        out["intervals_max_abs_diff"] = float(np.max(np.abs(tiv - ivs["CQR"])))
    return out


def _plot(curves: dict, train, test, alpha: float, path) -> None:
    """Each model's mean +- its central ``1 - alpha`` interval over the test inputs, data points behind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.5), squeeze=False)
    for ax, (name, (mean, lo, hi)) in zip(axes[0], curves.items(), strict=True):
        ax.scatter(train[0][:, 0], train[1], s=2, c="0.7", label="train")
        ax.plot(test[0][:, 0], test[0][:, 0] ** 3, "k--", lw=1, label="x^3")
        ax.plot(test[0][:, 0], mean, "C0", label="mean")
        if lo is not None:
            ax.fill_between(test[0][:, 0], lo, hi, color="C0", alpha=0.3, label=f"{1 - alpha:.0%} interval")
        ax.set_title(name)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _curve(module, params, x, family: str, alpha: float, lowering=None):
    from jaxuq import distributions as D
    from jaxuq.evaluation import predict

    p = predict(module, {"params": params}, x, lowering=lowering)
    if lowering:
        p = jax.tree.map(lambda a: a.mean(0), p)  # TU's averaged parameters
    mean = np.asarray(D.mean(family, p))[:, 0]
    if not D.has_icdf(family):
        return mean, None, None
    lo, hi = (np.asarray(D.icdf(family, p, lv))[:, 0] for lv in (alpha / 2, 1 - alpha / 2))
    return mean, lo, hi


def check_families(config: dict) -> None:
    unknown = set(config["families"]) - set(FAMILY)
    if unknown or config["ensemble_family"] not in FAMILY:
        bad = sorted(unknown or [config["ensemble_family"]])
        raise ValueError(f"families must be among {sorted(FAMILY)}; got {bad}")
    if config["ensemble_family"] not in config["families"]:
        raise ValueError(f"ensemble_family {config['ensemble_family']!r} must be one of `families` (its "
                         "single model gives CQR's quantiles)")


def compare_all(config: dict, train, test, title: str) -> tuple[dict, str, dict]:
    """Every family and the ensemble on both sides, CQR on ``test``: ``(results, table text, curves)``."""
    check_families(config)
    models, rows, curves = {}, [], {}
    runs = [(n, None) for n in config["families"]] + [(config["ensemble_family"], config["num_estimators"])]
    for name, members in runs:
        label = f"ensemble of {members} {name}" if members else name
        res, module, params = _model(name, config, train, test, members)
        models[label] = res
        for k, v in res["jaxuq"].items():
            if k.startswith("test/") and not k.startswith("test/cplx"):
                rows.append(compare_row(f"{label}: {k}", v, res.get("tu", {}).get(k)))
        lowering = "vmap" if members else None
        curves[label] = _curve(module, params, test[0], FAMILY[name], config["alpha"], lowering)
        if name == config["ensemble_family"] and not members:
            cqr = _cqr(module, params, test, FAMILY[name], config)
            rows.append(compare_row(f"{label}: CQR q_hat", cqr["q_hat"], cqr.get("tu_q_hat")))
    diffs = [r["abs_diff"] for r in rows if r["abs_diff"] is not None]
    loss_diffs = [m["loss_max_rel_diff"] for m in models.values() if "loss_max_rel_diff" in m]
    first50 = [m["loss_rel_diff_first"]["50"] for m in models.values()
               if "50" in m.get("loss_rel_diff_first", {})]
    results = {"models": models, "cqr": cqr, "comparison": rows,
               "max_abs_diff": max(diffs) if diffs else None,
               "loss_max_rel_diff": max(loss_diffs) if loss_diffs else None,
               "loss_max_rel_diff_first_50": max(first50) if first50 else None}
    lines = [f"CQR ({1 - config['alpha']:.0%}, {cqr['n_heldout']} held-out points): "
             + ", ".join(f"{k} coverage {cqr[k]['coverage']:.3f} width {cqr[k]['mean_width']:.2f}"
                         for k in ("raw quantiles", "CQR", "split conformal"))]
    return results, "\n".join(lines) + "\n" + render_text(comparison_table(rows, title)), curves


def run(config: dict, out_dir) -> tuple[dict, str]:
    check_families(config)
    train, test = _data(config)
    results, table, curves = compare_all(config, train, test, "Cubic toy regression: TU 0.13.0 | jaxuq")
    _plot(curves, train, test, config["alpha"], out_dir / "regression_cubic.png")
    return results, table


if __name__ == "__main__":
    raise SystemExit(launch_module(__name__))
