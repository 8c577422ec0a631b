"""TU's DEUP tutorial: the synthetic walkthrough and DEUP vs MSP OOD tables on ResNet-20, TU beside jaxuq.

    python -m experiments deup [--small] [--set key=value ...] [--out DIR]

Part 1, the synthetic walkthrough, as the tutorial runs it: ``torch.manual_seed(seed)``, 100
calibration samples ``randn(100, 8)`` with ``randint(0, 5)`` labels, an untrained MLP
``8 - 32 - ReLU - 5``, ``DEUP(num_folds=5, hidden_dim=32, max_epochs=30)``; the epistemic scores
``g(x)`` of 10 fresh ``randn`` samples (the tutorial prints them: the "published" column). jaxuq's
``deup_fit`` runs on the same tensors and logits from TU's initial error-predictor weights. This
part needs torch for the tutorial's tensors, so it runs with ``compare_tu`` only.

Part 2, CIFAR-10 (the tutorial: TU's hub ResNet-18, DEUP fitted by ``ClassificationRoutine`` on a
10 % validation split of the training set, CIFAR-10 test vs SVHN). Here: the real ResNet-20
checkpoint (``model``) stands in for the hub ResNet-18 (the training images trained it, so they
are not held out): a seeded split of the ``n_images`` real test images, ``cal_fraction`` of them
(the tutorial's 5000 : 10000 ratio, 1/3) fit DEUP (``hidden_dim=64, max_epochs=50``, TU's other
defaults), the rest evaluate; the OOD set is scio's three synthetic shifts of the evaluation
images (vertical flip, darker x0.5, uniform noise from ``jax.random.key(seed)``), pooled in place
of SVHN. TU's side: ``ClassificationRoutine(loss=None, eval_ood=True, post_processing=DEUP(...),
ood_criterion="deup")`` on the torch twin through ``TUTrainer.test`` (the routine fits DEUP at
``on_test_start``), then the criterion switched to ``MaxSoftmaxCriterion`` as the tutorial does.
jaxuq's side: ``deup_fit`` on the converted model's logits from TU's initial weights (the
datamodule reseeds torch before the routine's fit, so they are reproducible), then
``classification_table``. TU also runs on jaxuq's own logits (``nn.Identity`` as the model).

Config keys:
  model: the checkpoint ("resnet20" or "resnet56").
  n_images: real CIFAR-10 test images (<= 1000).
  cal_fraction: share of them that fits DEUP.
  hidden_dim: DEUP's error-predictor width on CIFAR (the tutorial's 64).
  max_epochs: DEUP's full-batch Adam steps per predictor (the tutorial's 50).
  num_folds: DEUP's cross-validation folds (TU's default 5).
  batch_size: test batch (the tutorial's 256; the Complexity flops are of the first batch).
  smece: compute test/cal/SmECE.
  compare_tu: run TU 0.13.0 (and part 1).
  seed: the split, the shifts' noise, TU's DEUP seed and part 1's torch seed.
  data_dir: the data folder (None: $JAXUQ_DATA_DIR).
"""

from __future__ import annotations

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments import _compare, _inputs, _tu
from experiments._compare import compare_row, comparison_table, render_text
from experiments._launch import launch_module
from jaxuq.evaluation import predict
from jaxuq.nn.packed import torch_uniform_init

SYNTHETIC_SCORES = [0.8570, 0.8676, 0.8819, 0.8829, 0.8861, 0.8889, 0.8522, 0.8715, 0.8617, 0.8622]
_ID = {"test/cls/Acc": 0.9338, "test/cls/Brier": 0.10812, "test/cls/Entropy": 0.08849,
       "test/cls/NLL": 0.26405, "test/cal/ECE": 0.03537, "test/cal/MCE": 0.2367, "test/cal/SmECE": 0.10143,
       "test/cal/aECE": 0.035, "ood/Entropy": 0.35549, "test/sc/AUGRC": 0.00779, "test/sc/AURC": 0.00959,
       "test/sc/Cov_5Risk": 0.9651, "test/sc/Risk_80Cov": 0.012, "test/cplx/flops": 284.38e9,
       "test/cplx/params": 11.17e6}  # fmt: skip
PUBLISHED = {  # the tutorial's two printed tables (hub ResNet-18, CIFAR-10 vs SVHN)
    "deup": {**_ID, "ood/AUPR": 0.81944, "ood/AUROC": 0.6799, "ood/FPR95": 0.793, "ood/SCOD_AUGRC": 0.32517,
             "ood/SCOD_AURC": 0.58219, "ood/SCOD_Cov_5Risk": float("nan"), "ood/SCOD_Risk_80Cov": 0.69073},
    "msp": {**_ID, "ood/AUPR": 0.90246, "ood/AUROC": 0.82969, "ood/FPR95": 0.5605, "ood/SCOD_AUGRC": 0.29513,
            "ood/SCOD_AURC": 0.4786, "ood/SCOD_Cov_5Risk": float("nan"), "ood/SCOD_Risk_80Cov": 0.67224},
}  # fmt: skip
OOD_NAME = "shifts (pooled)"


def get_config() -> dict:
    return {
        "model": "resnet20",
        "n_images": 1000,
        "cal_fraction": 1 / 3,
        "hidden_dim": 64,
        "max_epochs": 50,
        "num_folds": 5,
        "batch_size": 256,
        "smece": True,
        "compare_tu": True,
        "seed": 0,
        "data_dir": None,
    }


SMALL = {"n_images": 150, "max_epochs": 10, "batch_size": 50, "smece": False}


class TutorialMLP(nn.Module):
    """``nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))`` with
    torch's default init; ``x: [N, in_dim]`` -> logits ``[N, n_classes]``."""

    hidden: int = 32
    n_classes: int = 5

    @nn.compact
    def __call__(self, x):
        def dense(n, fan_in, name):
            init = torch_uniform_init(fan_in)
            return nn.Dense(n, kernel_init=init, bias_init=init, name=name)

        x = nn.relu(dense(self.hidden, x.shape[-1], "0")(x))
        return dense(self.n_classes, self.hidden, "2")(x)


def synthetic(
    seed: int = 0,
    n_cal: int = 100,
    in_dim: int = 8,
    n_classes: int = 5,
    n_test: int = 10,
    num_folds: int = 5,
    hidden_dim: int = 32,
    max_epochs: int = 30,
    init_params=None,
) -> dict:
    """Part 1 on ``jax.random`` tensors (no torch; tests/gen_golden_deup.py's fixture). Returns the
    tensors, the base model's variables, the fit and ``scores [n_test]`` / ``probs [n_test, n_classes]``."""
    from jaxuq.calibration import deup_fit, deup_score

    k_x, k_y, k_model, k_deup, k_test = jax.random.split(jax.random.key(seed), 5)
    x_cal = jax.random.normal(k_x, (n_cal, in_dim), jnp.float32)
    y_cal = jax.random.randint(k_y, (n_cal,), 0, n_classes)
    model = TutorialMLP(32, n_classes)
    variables = model.init(k_model, x_cal[:1])
    fit = deup_fit(
        model.apply(variables, x_cal),
        y_cal,
        num_folds=num_folds,
        hidden_dim=hidden_dim,
        max_epochs=max_epochs,
        key=k_deup,
        init_params=init_params,
    )
    x_test = jax.random.normal(k_test, (n_test, in_dim), jnp.float32)
    z_test = model.apply(variables, x_test)
    return {
        "x_cal": np.asarray(x_cal),
        "y_cal": np.asarray(y_cal),
        "x_test": np.asarray(x_test),
        "variables": variables,
        "fit": fit,
        "scores": np.asarray(deup_score(fit, z_test)),
        "probs": np.asarray(jax.nn.softmax(z_test, -1)),
    }


def tu_initial_weights(loader, n_features: int, hidden_dim: int, num_folds: int = 5) -> list[dict]:
    """The initial weights TU's ``DEUP.fit(loader)`` will draw for its ``num_folds + 1`` error
    predictors, from the current torch RNG state (left unchanged): fit iterates ``loader`` once
    (drawing its base seed), then builds them in order. ``[{w1, b1, w2, b2}]`` (torch layouts)."""
    import torch
    from torch_uncertainty.post_processing.deup import _ErrorPredictor

    state = torch.get_rng_state()
    iter(loader)
    inits = []
    for _ in range(num_folds + 1):
        net = _ErrorPredictor(n_features, hidden_dim).net
        inits.append(
            {
                k: p.detach().numpy().copy()
                for k, p in zip(
                    ("w1", "b1", "w2", "b2"), (net[0].weight, net[0].bias, net[2].weight, net[2].bias)
                )
            }
        )
    torch.set_rng_state(state)
    return inits


def _walkthrough(seed: int) -> tuple[list[dict], dict]:
    """Part 1 as the tutorial runs it (torch tensors), TU's and jaxuq's scores."""
    import logging

    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from torch_uncertainty.post_processing import DEUP

    from jaxuq.calibration import deup_fit, deup_score

    torch.manual_seed(seed)
    n_cal, in_dim, n_classes = 100, 8, 5
    x_cal, y_cal = torch.randn(n_cal, in_dim), torch.randint(0, n_classes, (n_cal,))
    loader = DataLoader(TensorDataset(x_cal, y_cal), batch_size=32)
    model = torch.nn.Sequential(torch.nn.Linear(in_dim, 32), torch.nn.ReLU(), torch.nn.Linear(32, n_classes))
    deup = DEUP(task="classification", model=model, num_folds=5, hidden_dim=32, max_epochs=30, device="cpu")
    inits = tu_initial_weights(loader, n_classes + 2, 32)
    logging.disable(logging.WARNING)
    try:
        deup.fit(loader)
    finally:
        logging.disable(logging.NOTSET)
    x_test = torch.randn(10, in_dim)
    with torch.no_grad():
        tu, z_cal, z_test = deup(x_test).numpy(), model(x_cal).numpy(), model(x_test).numpy()
    fit = deup_fit(z_cal, y_cal.numpy(), num_folds=5, hidden_dim=32, max_epochs=30, init_params=inits)
    jx = np.asarray(deup_score(fit, z_test))
    rows = [compare_row(f"synthetic g(x_{i})", jx[i], tu[i], SYNTHETIC_SCORES[i]) for i in range(10)]
    return rows, {"tu": tu.tolist(), "jaxuq": jx.tolist()}


def _data(config):
    """``(module, variables, z_cal, y_cal, z_eval, y_eval, z_ood, tensors)``: the converted model,
    its logits on the split and the pooled shifts, and the same images (float [0, 1]) for TU."""
    from jaxuq.data import synthetic_shifts

    n = config["n_images"]
    if not 10 * config["num_folds"] <= n <= 1000:
        raise ValueError(f"n_images must be in [{10 * config['num_folds']}, 1000]; got {n}")
    _, te = _inputs.load_cifar_heads(config["data_dir"])
    x, y = te["images"][:n].astype(np.float32) / 255.0, te["labels"][:n]
    cal, ev = _inputs.calibration_split(n, config["cal_fraction"], config["seed"])
    shifted = synthetic_shifts(jax.random.key(config["seed"]), jnp.asarray(x[ev]))
    x_ood = np.concatenate([np.asarray(v) for v in shifted.values()])
    module, variables = _inputs.load_model(
        config["model"], _inputs.checkpoint_of(config["model"]), config["data_dir"]
    )
    bs = config["batch_size"]
    z = {
        k: predict(module, variables, _inputs.normalize(v), batch_size=bs)
        for k, v in {"cal": x[cal], "eval": x[ev], "ood": x_ood}.items()
    }
    return module, variables, z, (y[cal], y[ev]), {"cal": x[cal], "eval": x[ev], "ood": x_ood}


def _jaxuq_tables(config, module, variables, z, labels, x_first, inits) -> tuple[dict, dict]:
    from jaxuq.calibration import deup_fit, deup_score
    from jaxuq.evaluation import classification_table
    from jaxuq.metrics import count_flops, count_params
    from jaxuq.ood.criteria import deup, msp

    fitted = deup_fit(
        z["cal"],
        labels[0],
        num_folds=config["num_folds"],
        hidden_dim=config["hidden_dim"],
        max_epochs=config["max_epochs"],
        key=jax.random.key(config["seed"]),
        init_params=inits,
    )
    cplx = {
        "flops": count_flops(lambda t: module.apply(variables, t), _inputs.normalize(x_first)),
        "params": count_params(variables["params"]),
    }
    crits = {"deup": lambda v: np.asarray(deup(deup_score(fitted, v))), "msp": lambda v: np.asarray(msp(v))}
    scores = {c: (f(z["eval"]), {OOD_NAME: f(z["ood"])}) for c, f in crits.items()}
    tables = {
        c: classification_table(
            logits=z["eval"],
            labels=labels[1],
            ood_scores=np.concatenate([s[0], s[1][OOD_NAME]]),
            ood_probs=jax.nn.softmax(jnp.asarray(z["ood"]), -1),
            smece=config["smece"],
            **cplx,
        )
        for c, s in scores.items()
    }
    return tables, scores


def _tu_tables(config, model, x_cal, y_cal, x_eval, y_eval, x_ood) -> dict:
    """TU's routine with DEUP (criterion "deup", then MSP) on torch ``model`` and inputs in its layout."""
    from torch_uncertainty.ood_criteria import MaxSoftmaxCriterion
    from torch_uncertainty.post_processing import DEUP
    from torch_uncertainty.routines.classification import ClassificationRoutine

    deup = DEUP(
        task="classification",
        hidden_dim=config["hidden_dim"],
        max_epochs=config["max_epochs"],
        num_folds=config["num_folds"],
        device="cpu",
    )
    routine = ClassificationRoutine(
        model=model, num_classes=10, loss=None, eval_ood=True, post_processing=deup, ood_criterion="deup"
    )
    out = {}
    for c in ("deup", "msp"):
        if c == "msp":
            routine.ood_criterion = MaxSoftmaxCriterion()
        out[c] = _tu.tu_test(
            routine, (x_eval, y_eval), x_ood, (x_cal, y_cal), config["batch_size"], seed=config["seed"]
        )
        if not config["smece"]:
            out[c].pop("test/cal/SmECE", None)
    return out


def _inits(config, x_cal, y_cal) -> list[dict]:
    """TU's initial DEUP weights for the routine's fit (``tu_test`` reseeds torch with ``seed``
    right before it), in jaxuq's ``deup_fit(init_params=...)`` layout."""
    import torch

    torch.manual_seed(config["seed"])
    loader = _tu.torch_loader(x_cal, y_cal, batch_size=config["batch_size"])
    return tu_initial_weights(loader, 12, config["hidden_dim"], config["num_folds"])


def _table_rows(jx: dict, tu: dict | None, quirky: set[str]) -> list[dict]:
    """The ID keys once (they do not depend on the criterion), the ``ood/*`` keys per criterion."""
    rows = _compare.table_rows(
        None if tu is None else tu["deup"],
        {k: v for k, v in jx["deup"].items() if not k.startswith("ood/")},
        PUBLISHED["deup"],
    )
    for c, t in jx.items():
        rows += _compare.table_rows(
            None if tu is None else tu[c],
            {k: v for k, v in t.items() if k.startswith("ood/")},
            PUBLISHED[c],
            prefix=f"{c}: ",
        )
    return [{**r, "tu_quirk": r["metric"] in quirky} for r in rows]


def run(config: dict, out_dir) -> tuple[dict, str]:
    rows, part1 = _walkthrough(config["seed"]) if config["compare_tu"] else ([], None)
    module, variables, z, labels, x = _data(config)
    inits = _inits(config, x["cal"], labels[0]) if config["compare_tu"] else None
    t0 = time.perf_counter()
    jx, scores = _jaxuq_tables(config, module, variables, z, labels, x["eval"][: config["batch_size"]], inits)
    t_jx = time.perf_counter() - t0
    tu = same = t_tu = None
    if config["compare_tu"]:
        import torch

        def nchw(a):
            return np.ascontiguousarray(_inputs.normalize(a).transpose(0, 3, 1, 2))

        t0 = time.perf_counter()
        twin = _tu.torch_model_of(config["model"], config["data_dir"])
        tu = _tu_tables(config, twin, nchw(x["cal"]), labels[0], nchw(x["eval"]), labels[1], nchw(x["ood"]))
        t_tu = time.perf_counter() - t0
        same = _tu_tables(config, torch.nn.Identity(), z["cal"], labels[0], z["eval"], labels[1], z["ood"])
    quirks = _compare.tu_quirk_rows(scores, z["eval"], labels[1], config["batch_size"])
    quirky = {k.replace(f"/{OOD_NAME}", "") for k in quirks}
    rows = [{**r, "tu_quirk": False} for r in rows] + _table_rows(jx, tu, quirky)
    same_rows = [r for r in _table_rows(jx, same, quirky) if "/cplx/" not in r["metric"]] if same else []
    _compare.score_plot(scores, out_dir / "deup_scores.png")
    note, summary = _compare.parity_summary(rows, same_rows, quirky)
    text = "".join(_compare.tables_text(f"jaxuq, OOD criterion {c}", t) for c, t in jx.items())
    text += render_text(
        comparison_table(rows, "DEUP: published (synthetic; hub ResNet-18 vs SVHN) | TU | jaxuq")
    )
    text += note
    results = {
        "substituted": [
            f"{config['model']} checkpoint (converted) for TU's hub ResNet-18",
            f"DEUP fitted on {len(labels[0])} held-out real test images (seeded split) for the "
            "10 % validation split of the training set",
            f"{len(labels[1])} real CIFAR-10 test images for the 10,000; OOD: scio's 3 shifts of them "
            "pooled for SVHN",
        ],
        "synthetic": part1,
        "tables": {"jaxuq": jx, "tu": tu, "tu_on_jaxuq_logits": same},
        "comparison": rows,
        "comparison_same_logits": same_rows,
        **summary,
        "seconds": {"jaxuq": t_jx, "tu": t_tu},
    }
    return results, text


if __name__ == "__main__":
    raise SystemExit(launch_module(__name__))
