"""Sampling and weight-space methods on MNIST: MC Dropout, MC-BatchNorm, SWA, EMA, SWAG, checkpoint ensembles,
a variational Bayesian LeNet and last-layer Laplace.

LeNet on an MNIST subset, each method trained by ``jaxuq.train.fit`` and by TU 0.13.0 with the same
CPU-sized recipe and data, each side's test table from its own routine (jaxuq: ``jaxuq.evaluate`` with the
method's sampler or stacked variables; TU: ``TUTrainer.test`` of a ``ClassificationRoutine`` around TU's
own wrapper), and the prediction time of the sampled methods (jaxuq: one ``vmap`` over samples; TU: its
wrapper's loop or repeated batch).

Recipe (both sides): the first ``train_images`` MNIST training images, ``epochs`` epochs, batch
``batch_size``, SGD (lr ``lr``, momentum ``momentum``, constant), ``RandomCrop(28, padding=4)`` +
``Normalize(0.1307, 0.3081)``; torch's default initialisation; test on the first ``test_images`` MNIST
test images (no OOD set). The two sides draw their own initial weights, batches and crops: their numbers
agree statistically, not bitwise (the bitwise checks are the parity tests; README, Sampling methods).

Methods (``methods``):

- ``mc_dropout``: ``lenet(dropout_rate=dropout_rate)`` trained as usual, predicted with
  ``num_estimators`` dropout samples (TU ``mc_dropout(model, M, last_layer=False, on_batch=True)``;
  jaxuq ``jaxuq.sampling.mc_dropout``);
- ``mc_batch_norm``: ``lenet(norm=BatchNorm2d)`` trained as usual, then M statistics sets from the first
  ``M * mc_batch_size`` training images in order, normalised, no crop (TU ``MCBatchNorm(model, M,
  mc_batch_size=...).fit(loader)``; jaxuq ``mc_batch_norm_fit`` + ``StackedBatchStats``);
- ``swa``, ``ema``, ``swag``, ``checkpoint``: TU's ``SWA(cycle_start, 1)``, ``EMA(ema_momentum)``,
  ``SWAG(cycle_start, 1, num_estimators=M)``, ``CheckpointCollector()`` (every epoch + the final model)
  wrapped around a plain LeNet and updated by the routine's hooks (TU runs one validation batch per epoch
  so that its ``on_validation_start`` calls ``update_wrapper``); jaxuq trains ONE LeNet with the four
  ``WeightAveraging`` callbacks at once (the callbacks do not change the training), TU one run per wrapper
  from the same seed;
- ``bayesian``: TU ``bayesian_lenet(1, 10, num_samples=M)`` trained with ``ELBOLoss(CE, kl_weight,
  bayes_samples)`` (jaxuq: ``fit`` with ``ELBOObjective``, the ELBO's samples vmapped), predicted with M
  weight draws (TU ``StochasticModel``'s loop; jaxuq ``BayesSampler``, one vmap);
- ``laplace``: a plain LeNet (jaxuq: the averaging run's, whose callbacks leave training unchanged; TU:
  its own run) with TU ``LaplaceApprox("classification", hessian_struct=laplace_hessian,
  link_approx=laplace_link)`` fitted on the training images (normalised, no crop, batches of
  ``batch_size``; TU: the routine's post-processing hook, whose ``test/post/*`` keys are its table here),
  jaxuq ``jaxuq.calibration.LaplaceApprox`` on the same images, its table from the predictive
  probabilities (``jaxuq.classification_table``).

Timing (``timing``): seconds to predict the test images with the sampled methods, median of
``timing_repeats`` runs after a warm-up (jaxuq: ``jaxuq.predict`` with the sampler or stacked variables,
jit compiled; TU: ``torch.no_grad()`` forward of the wrapper in eval mode over the same batches).

Config keys:
  train_images     5000    first k MNIST training images
  test_images      2000    first k MNIST test images
  epochs           3
  batch_size       128
  eval_batch_size  500
  lr               0.05    SGD learning rate (constant)
  momentum         0.9     SGD momentum
  methods          all eight  which methods
  num_estimators   16      samples / estimators M (MC Dropout, MC-BN, SWAG)
  dropout_rate     0.3     MC Dropout's LeNet dropout rate
  mc_batch_size    32      MC-BatchNorm calibration batch
  cycle_start      0       SWA / SWAG first epoch (0-based; SWAG's first snapshot is at cycle_start + 1)
  ema_momentum     0.9     EMA momentum
  kl_weight        0.0001  bayesian: ELBO's KL weight
  bayes_samples    3       bayesian: ELBO samples per training step
  laplace_hessian  "kron"  laplace: "kron" or "diag"
  laplace_link     "probit" laplace: "probit" or "mc" (100 samples)
  timing_repeats   3
  seed             0       first seed (seeds seed .. seed + num_seeds - 1, each side)
  num_seeds        3
  compare_tu       true    run TU 0.13.0 beside jaxuq (needs torch + torch-uncertainty)
  data_dir         null    data folder (null: $JAXUQ_DATA_DIR)
"""

from __future__ import annotations

import functools
import shutil
import time
import warnings
from pathlib import Path

import jax
import numpy as np

import jaxuq
from experiments._compare import compare_tables, render_text
from experiments._tu import torch_loader, torchvision_root, tu_test_table, tu_trainer
from experiments._tu_mnist import _datamodule
from jaxuq.calibration import mc_batch_norm_fit
from jaxuq.calibration.laplace import LaplaceApprox, last_layer_features
from jaxuq.data import MNIST_NORM, Preprocess, load_mnist
from jaxuq.forward import StackedBatchStats
from jaxuq.losses import ELBOLoss
from jaxuq.models.bayesian_lenet import bayesian_lenet
from jaxuq.models.lenet import lenet
from jaxuq.sampling import BayesSampler, mc_dropout
from jaxuq.train import ELBOObjective, TrainConfig, fit, torch_sgd
from jaxuq.train.averaging import EMA, SWA, SWAG, CheckpointCollector, WeightAveraging

METHODS = ("mc_dropout", "mc_batch_norm", "swa", "ema", "swag", "checkpoint", "bayesian", "laplace")
AVERAGING = ("swa", "ema", "swag", "checkpoint")
SAMPLED = ("mc_dropout", "mc_batch_norm", "swag", "checkpoint", "bayesian")  # timed: M forwards per batch
RECIPE_KEYS = ("train_images", "test_images", "epochs", "batch_size", "lr", "momentum", "num_estimators",
               "dropout_rate", "mc_batch_size", "cycle_start", "ema_momentum", "kl_weight", "bayes_samples",
               "laplace_hessian", "laplace_link")
# a sampled Bayesian network (fit's ELBO objective), a fit callback and a post-hoc fit on the same LeNet
SMALL = {"train_images": 512, "test_images": 256, "epochs": 2, "batch_size": 128, "eval_batch_size": 256,
         "num_estimators": 4, "mc_batch_size": 16, "timing_repeats": 1, "num_seeds": 1,
         "methods": ["bayesian", "swag", "laplace"]}


def get_config() -> dict:
    """The CPU-sized recipe (see the module docstring for every key)."""
    return {
        "train_images": 5000, "test_images": 2000, "epochs": 3, "batch_size": 128, "eval_batch_size": 500,
        "lr": 0.05, "momentum": 0.9, "methods": list(METHODS), "num_estimators": 16, "dropout_rate": 0.3,
        "mc_batch_size": 32, "cycle_start": 0, "ema_momentum": 0.9, "kl_weight": 1e-4, "bayes_samples": 3,
        "laplace_hessian": "kron", "laplace_link": "probit", "timing_repeats": 3, "seed": 0,
        "num_seeds": 3, "compare_tu": True, "data_dir": None,
    }  # fmt: skip


def _check(config: dict) -> None:
    bad = set(config["methods"]) - set(METHODS)
    if bad or not config["methods"]:
        raise ValueError(f"methods must be a non-empty subset of {list(METHODS)}, got {config['methods']}")
    for k in ("train_images", "test_images", "epochs", "batch_size", "eval_batch_size", "num_estimators",
              "mc_batch_size", "timing_repeats", "num_seeds", "bayes_samples"):
        if not isinstance(config[k], int) or isinstance(config[k], bool) or config[k] < 1:
            raise ValueError(f"{k} must be an int >= 1, got {config[k]!r}")
    ELBOLoss(kl_weight=config["kl_weight"], num_samples=config["bayes_samples"])  # raises on a bad kl_weight
    LaplaceApprox(config["laplace_hessian"], config["laplace_link"])  # raises on a bad structure / link
    if config["epochs"] <= config["cycle_start"] + 1 and {"swag"} & set(config["methods"]):
        raise ValueError(f"swag takes its first snapshot at epoch cycle_start + 1 = "
                         f"{config['cycle_start'] + 1} (0-based); epochs={config['epochs']} never gets there")
    if config["num_estimators"] * config["mc_batch_size"] > config["train_images"]:
        raise ValueError("mc_batch_norm needs num_estimators * mc_batch_size <= train_images")


def load_data(config: dict) -> dict:
    """``{"train": (x, y), "test": (x, y)}``: uint8 ``[N, 28, 28, 1]``, int32 labels (first k images)."""
    (xtr, ytr), (xte, yte) = (load_mnist(s, data_dir=config["data_dir"]) for s in ("train", "test"))
    n_tr, n_te = config["train_images"], config["test_images"]
    if n_tr > len(xtr) or n_te > len(xte):
        raise ValueError(f"train_images <= {len(xtr)} and test_images <= {len(xte)} required")
    return {"train": (xtr[:n_tr], ytr[:n_tr].astype(np.int32)),
            "test": (xte[:n_te], yte[:n_te].astype(np.int32))}


def _timed(fn, repeats: int) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


# ----------------------------------------------------------------------------- jaxuq side

PRE = Preprocess(*MNIST_NORM)


def _fit(module, config: dict, data: dict, seed: int, callbacks=(), objective=None):
    extra = {} if objective is None else {"objective": objective}
    cfg = TrainConfig(epochs=config["epochs"], batch_size=config["batch_size"], seed=seed, quiet=True,
                      optimizer=torch_sgd(config["lr"], momentum=config["momentum"]),
                      preprocess=Preprocess(*MNIST_NORM, crop=28, padding=4),
                      eval_batch_size=config["eval_batch_size"], **extra)
    return fit(module, data["train"], cfg, callbacks=callbacks).state


def _jx_predictors(config: dict, data: dict, seed: int) -> dict:
    """``{method: (module, variables, predict/evaluate kwargs)}`` of the trained jaxuq models."""
    methods, m, key = config["methods"], config["num_estimators"], jax.random.key(seed + 1000)
    xtr = data["train"][0]
    out = {}
    if "mc_dropout" in methods:
        net = lenet(1, 10, dropout_rate=config["dropout_rate"], torch_init=True)
        v = _fit(net, config, data, seed).variables()
        out["mc_dropout"] = (net, v, {"sampler": mc_dropout(net, v, PRE.eval(xtr[:1]), m), "key": key})
    if "mc_batch_norm" in methods:
        net = lenet(1, 10, norm="batchnorm", torch_init=True)
        v = _fit(net, config, data, seed).variables()
        stats = mc_batch_norm_fit(net, v, xtr, m, config["mc_batch_size"], preprocess=PRE)
        out["mc_batch_norm"] = (net, {**v, "batch_stats": stats}, {"sampler": StackedBatchStats(m)})
    if "bayesian" in methods:
        net = bayesian_lenet(1, 10, num_samples=m)
        elbo = ELBOObjective(ELBOLoss(kl_weight=config["kl_weight"], num_samples=config["bayes_samples"]))
        v = _fit(net, config, data, seed, objective=elbo).variables()
        out["bayesian"] = (net, v, {"sampler": BayesSampler(m), "key": key})
    if {*AVERAGING, "laplace"} & set(methods):
        net = lenet(1, 10, torch_init=True)
        cbs = {"swa": WeightAveraging(SWA(config["cycle_start"], 1), "swa"),
               "ema": WeightAveraging(EMA(config["ema_momentum"]), "ema"),
               "swag": WeightAveraging(SWAG(config["cycle_start"], 1, num_estimators=m), "swag"),
               "checkpoint": WeightAveraging(CheckpointCollector(), "checkpoint", capacity=config["epochs"])}
        cbs = {k: cb for k, cb in cbs.items() if k in methods}
        state = _fit(net, config, data, seed, tuple(cbs.values()))
        for name, cb in cbs.items():
            kw = {"lowering": "vmap"} if cb.stacked else {}
            out[name] = (net, cb.variables(state, key=key, model=net), kw)
        if "laplace" in methods:
            la = LaplaceApprox(config["laplace_hessian"], config["laplace_link"])
            post = la.fit(net, state.variables(), PRE.eval(xtr), data["train"][1])
            out["laplace"] = (net, state.variables(), {"laplace": (la, post), "key": key})
    return out


def _jx_laplace(net, v, kw: dict, data: dict) -> dict:
    """Laplace's table and mean probabilities: its predictive probabilities on the test images; and
    ``map_agreement``, the share of test images whose predicted class is the MAP network's."""
    (la, post), (xte, yte) = kw["laplace"], data["test"]
    probs = np.asarray(la.predict(post, net, v, PRE.eval(xte), key=kw["key"]))
    logits = np.asarray(last_layer_features(net, v, PRE.eval(xte), la.layer)[1])
    return {"table": jaxuq.classification_table(probs, yte), "probs": probs,
            "map_agreement": float(np.mean(probs.argmax(-1) == logits.argmax(-1)))}


def _jx_table(name: str, net, v, kw: dict, config: dict, data: dict) -> dict:
    """``jaxuq.evaluate``'s table, the mean probabilities and (sampled methods) the prediction time."""
    (xte, yte), bs = data["test"], config["eval_batch_size"]
    table = jaxuq.evaluate(net, v, (xte, yte), preprocess=PRE, batch_size=bs, progress=False, **kw)
    go = functools.partial(jaxuq.predict, net, v, xte, preprocess=PRE, batch_size=bs, **kw)
    probs = jax.nn.softmax(np.asarray(go(), np.float32), -1)
    r = {"table": table, "probs": np.asarray(probs.mean(0) if probs.ndim == 3 else probs)}
    if name in SAMPLED:
        r["predict_s"] = _timed(go, config["timing_repeats"])
    return r


def run_jaxuq(config: dict, data: dict, seed: int) -> dict:
    """``{method: {"table", "predict_s"}}``: jaxuq's tables (``jaxuq.evaluate``) and prediction times."""
    t0 = time.perf_counter()
    preds = _jx_predictors(config, data, seed)
    train_s = time.perf_counter() - t0
    out = {}
    for name, (net, v, kw) in preds.items():
        r = _jx_laplace(net, v, kw, data) if name == "laplace" else _jx_table(name, net, v, kw, config, data)
        out[name] = r
        print(f"jaxuq {name} seed {seed}: acc {100 * r['table']['test/cls/Acc']:.2f} %", flush=True)
    return {"train_s": train_s, "methods": out}


# ----------------------------------------------------------------------------- TU side


def _tu_routine(model, config: dict, ensemble: bool = False, name: str = "", laplace: bool = False):
    """TU's routine: cross-entropy (``name == "bayesian"``: TU's ``ELBOLoss``), SGD; ``laplace``: TU's
    ``LaplaceApprox`` as the routine's post-processing. laplace-torch deep-copies the model when TU builds
    its ``Laplace``, i.e. when this routine is built: so the Laplace routine is built after training (built
    before, as one routine that trains and tests, TU fits the Laplace of the untrained copy: README)."""
    import torch
    from torch import nn
    from torch_uncertainty.losses import ELBOLoss as TUELBOLoss
    from torch_uncertainty.post_processing import LaplaceApprox as TULaplace
    from torch_uncertainty.routines import ClassificationRoutine

    opt = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"])
    loss = (TUELBOLoss(model, nn.CrossEntropyLoss(), config["kl_weight"], config["bayes_samples"])
            if name == "bayesian" else nn.CrossEntropyLoss())
    post = (TULaplace("classification", hessian_struct=config["laplace_hessian"],
                      link_approx=config["laplace_link"]) if laplace else None)
    return ClassificationRoutine(model=model, num_classes=10, loss=loss, is_ensemble=ensemble,
                                 optim_recipe={"optimizer": opt}, post_processing=post)


def _tu_wrapped(name: str, config: dict):
    """TU's model for ``name`` before training: the wrapper for the averaging methods, else the LeNet."""
    from torch import nn
    from torch_uncertainty.methods import EMA, SWA, SWAG, CheckpointCollector
    from torch_uncertainty.models.classification import bayesian_lenet, lenet

    if name == "bayesian":
        return bayesian_lenet(1, 10, num_samples=config["num_estimators"])
    if name == "mc_dropout":
        return lenet(1, 10, dropout_rate=config["dropout_rate"])
    if name == "mc_batch_norm":
        return lenet(1, 10, norm=nn.BatchNorm2d)
    if name == "laplace":
        return lenet(1, 10)
    core, cs = lenet(1, 10), config["cycle_start"]
    return {"swa": lambda: SWA(core, cs, 1), "ema": lambda: EMA(core, config["ema_momentum"]),
            "swag": lambda: SWAG(core, cs, 1, num_estimators=config["num_estimators"]),
            "checkpoint": lambda: CheckpointCollector(core)}[name]()


def _tu_sampler(name: str, model, config: dict, data: dict):
    """TU's sampled model after training: ``mc_dropout`` / fitted ``MCBatchNorm``; else ``model``."""
    from torch_uncertainty.methods import mc_dropout as tu_mc_dropout
    from torch_uncertainty.post_processing import MCBatchNorm

    m = config["num_estimators"]
    if name == "mc_dropout":
        return tu_mc_dropout(model, num_estimators=m, last_layer=False, on_batch=True)
    if name == "mc_batch_norm":
        mcbn = MCBatchNorm(model, num_estimators=m, convert=True, mc_batch_size=config["mc_batch_size"])
        x, y = data["train"]
        mcbn.fit(torch_loader(_nchw(x), y.astype(np.int64), batch_size=config["mc_batch_size"]))
        return mcbn
    return model


def _nchw(x) -> np.ndarray:
    """uint8 ``[N, 28, 28, 1]`` -> normalised float32 ``[N, 1, 28, 28]`` (TU's test transform)."""
    return np.asarray(PRE.eval(x)).transpose(0, 3, 1, 2).copy()


def _tu_predict_s(model, config: dict, data: dict) -> float:
    import torch

    loader = torch_loader(_nchw(data["test"][0]), batch_size=config["eval_batch_size"])
    model.eval()

    def go():
        with torch.no_grad():
            for (xb,) in loader:
                model(xb)

    return _timed(go, config["timing_repeats"])


def _tu_map_agreement(routine, model, data: dict) -> float:
    """The share of test images whose class under TU's fitted Laplace predictive is the trained LeNet's."""
    import torch

    x = torch.from_numpy(_nchw(data["test"][0]))
    with torch.no_grad():
        probs, logits = routine.post_processing(x), model.eval()(x)
    return float((probs.argmax(-1) == logits.argmax(-1)).double().mean())


def run_tu_method(name: str, config: dict, data: dict, seed: int, root) -> dict:
    """Train and test method ``name`` with TU: ``{"table", "train_s", "predict_s"?}``."""
    import lightning

    lightning.seed_everything(seed, verbose=False)
    dm = _datamodule(root, config, eval_ood=False)
    if name == "laplace":  # the routine fits LaplaceApprox on this loader at test start: the train images
        x, y = data["train"]
        dm.postprocess_dataloader = lambda: torch_loader(_nchw(x), y.astype(np.int64),
                                                         batch_size=config["batch_size"])
    model = _tu_wrapped(name, config)
    routine = _tu_routine(model, config, ensemble=name in ("swag", "checkpoint", "bayesian"), name=name)
    # one validation batch per epoch: TU updates SWA/SWAG/CheckpointCollector in on_validation_start
    trainer = tu_trainer(max_epochs=config["epochs"], num_sanity_val_steps=0, limit_val_batches=1)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(routine, datamodule=dm)
        sampled = _tu_sampler(name, model, config, data)
        if sampled is not model:
            routine = _tu_routine(sampled, config, ensemble=True)
        elif name == "laplace":  # post-hoc: TU's LaplaceApprox built on the trained LeNet
            routine = _tu_routine(model, config, laplace=True)
        train_s = time.perf_counter() - t0
        table = tu_test_table(tu_trainer(), routine, dm)
    if name == "laplace":  # the Laplace predictive's table: the post-processing keys, renamed
        table = {"test/" + k[len("test/post/"):]: v for k, v in table.items() if k.startswith("test/post/")}
    out = {"table": table, "train_s": train_s}
    if name == "laplace":
        out["map_agreement"] = _tu_map_agreement(routine, model, data)
    if name in SAMPLED:
        out["predict_s"] = _tu_predict_s(sampled, config, data)
    print(f"TU {name} seed {seed}: acc {100 * out['table']['test/cls/Acc']:.2f} %", flush=True)
    return out


def run_tu(config: dict, data: dict, seed: int) -> dict:
    root = torchvision_root(config["data_dir"], datasets=("MNIST",))
    try:
        return {"methods": {n: run_tu_method(n, config, data, seed, root) for n in config["methods"]}}
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------------------- summaries and report


def _mean_tables(runs: list[dict], name: str) -> dict:
    """``{key: mean over seeds}`` of method ``name``'s tables."""
    tables = [r["methods"][name]["table"] for r in runs]
    return {k: float(np.mean([t[k] for t in tables])) for k in tables[0]}


def _timing(runs: list[dict], name: str) -> float | None:
    v = [r["methods"][name].get("predict_s") for r in runs]
    return None if v[0] is None else float(np.median(v))


def summarize(config: dict, jx_runs: list[dict], tu_runs: list[dict] | None) -> dict:
    """Per method: the mean tables of each side, |Δ| per common key, and the prediction times."""
    out = {}
    for name in config["methods"]:
        jx = _mean_tables(jx_runs, name)
        row = {"jaxuq": jx, "predict_s": {"jaxuq": _timing(jx_runs, name)}}
        if tu_runs:
            tu = _mean_tables(tu_runs, name)
            cmp = compare_tables(jx, tu)
            row |= {"tu": tu, "abs_diff": {k: d for k, (_, _, d) in cmp["diffs"].items()},
                    "max_abs_diff": cmp["max_abs_diff"], "only_jaxuq": cmp["extra"],
                    "only_tu": cmp["missing"]}
            row["predict_s"]["tu"] = _timing(tu_runs, name)
        out[name] = row
    return out


SHOWN = ("test/cls/Acc", "test/cls/NLL", "test/cls/Brier", "test/cal/ECE", "test/sc/AURC",
         "test/ens_Disagreement", "test/ens_MI")


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def render(summary: dict, seeds: list[int]) -> str:
    from rich.table import Table

    t = Table(title=f"jaxuq vs TU 0.13.0 on the same recipe (mean over seeds {seeds})")
    for c in ("method", "metric", "TU 0.13.0", "jaxuq", "|Δ|"):
        t.add_column(c, justify="left" if c in ("method", "metric") else "right")
    for name, row in summary.items():
        for k in SHOWN:
            if k in row["jaxuq"]:
                t.add_row(name, k, _fmt(row.get("tu", {}).get(k)), _fmt(row["jaxuq"][k]),
                          _fmt(row.get("abs_diff", {}).get(k)))
    s = Table(title="prediction time of the test images (s, median)")
    for c in ("method", "TU loop", "jaxuq vmap", "TU / jaxuq"):
        s.add_column(c, justify="left" if c == "method" else "right")
    for name, row in summary.items():
        p = row["predict_s"]
        if p["jaxuq"] is not None:
            ratio = p["tu"] / p["jaxuq"] if p.get("tu") else None
            s.add_row(name, _fmt(p.get("tu")), _fmt(p["jaxuq"]), "-" if ratio is None else f"{ratio:.2f}x")
    return render_text(t, s)


def plot(jx_curves: dict, out_dir: Path) -> list[str]:
    from jaxuq.report.plots import risk_coverage_curve

    risk_coverage_curve(jx_curves, out_dir / "risk_coverage.png")
    return ["risk_coverage.png"]


def run(config: dict, out_dir: Path) -> tuple[dict, str]:
    """Train and evaluate every method on ``num_seeds`` seeds (jaxuq, and TU with ``compare_tu``)."""
    _check(config)
    data = load_data(config)
    seeds = list(range(config["seed"], config["seed"] + config["num_seeds"]))
    jx_runs = [run_jaxuq(config, data, s) for s in seeds]
    tu_runs = [run_tu(config, data, s) for s in seeds] if config["compare_tu"] else None
    summary = summarize(config, jx_runs, tu_runs)
    curves = {n: (r["probs"], data["test"][1]) for n, r in jx_runs[0]["methods"].items()}
    for r in jx_runs:
        for m in r["methods"].values():
            m.pop("probs")
    results = {"recipe": {k: config[k] for k in RECIPE_KEYS}, "seeds": seeds, "methods": summary,
               "jaxuq_runs": jx_runs, "tu_runs": tu_runs, "plots": plot(curves, Path(out_dir))}
    return results, render(summary, seeds)


if __name__ == "__main__":
    from experiments._launch import launch_module

    raise SystemExit(launch_module(__name__))
