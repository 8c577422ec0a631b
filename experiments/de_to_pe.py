"""TU tutorial "From Deep Ensembles to Packed-Ensembles": LeNet, DE-2 and PE on MNIST (FashionMNIST OOD).

The tutorial's recipe as it runs: MNIST train (60,000 images), 3 epochs, batch 512, plain SGD at
lr 0.05 (no momentum, no weight decay) held constant, ``RandomCrop(28, padding=4)`` +
``Normalize(0.1307, 0.3081)``; test on the 10,000 MNIST test images; OOD set = the first 10,000
FashionMNIST *train* images (the tutorial's ``Subset(FashionMNIST(root), range(10000))``; TU's
``MNISTDataModule(eval_ood=True)`` would take all 60,000 train images, so the TU side subsets it to
the same 10,000); MSP criterion. Three models:

- ``single``: LeNet (44,426 parameters), lr 0.05;
- ``de``: a deep ensemble of ``de_members`` LeNets at lr 0.05 x M with CE over ``RepeatTarget(M)``
  rows (= each member's gradient / M), one shared data order: ``jaxuq.train.tu_deep_ensembles``;
- ``packed``: ``PackedLeNet(alpha=2, gamma=1, M=4)`` (45,672 parameters) at lr 0.05 x 4, CE on
  ``RepeatTarget(4)``.

The LR is constant on both sides: the tutorial's ``optim_recipe`` builds a
``CosineAnnealingLR(T_max=10)`` but returns it under the key ``"scheduler"``; Lightning 2.6 only
reads ``"lr_scheduler"`` and drops it with a warning. The TU side runs that very dict.

Initialisation: torch's default law (``kaiming_uniform_(a=sqrt(5))`` weights, ``U(+-1/sqrt(fan_in))``
biases) as Flax initialisers (``jaxuq.nn.init``; ``init="flax"`` for Flax's), drawn with JAX's RNG.

``hub``: the tutorial's 8 pretrained LeNets (``ENSTA-U2IS/tutorial-models``, ``version_{0..7}.ckpt``,
from ``$JAXUQ_DATA_DIR/hub`` or the network) as one ensemble: jaxuq's table, and with ``compare_tu``
TU's routine on the same 8 checkpoints (max |diff| over every key).

TU side (``compare_tu``): ``TUTrainer`` + ``ClassificationRoutine`` + TU's ``MNISTDataModule`` on a
temporary decompressed copy of ``MNIST``/``FashionMNIST`` (torchvision layout), CPU, TU's ``lenet`` /
``deep_ensembles`` / ``packed_lenet`` (the tutorial's ``LeNet``/``PackedLeNet`` graphs). Without
``compare_tu`` the reference column is the TU run committed in ``experiments/results/*.json``
whose recipe equals this config's, if any.

Config keys (defaults = the tutorial):
  train_images     60000   first k MNIST training images
  test_images      10000   first k MNIST test images
  ood_images       10000   first k FashionMNIST train images (OOD)
  epochs           3
  batch_size       512     training batch (the DataLoader keeps the last partial batch)
  eval_batch_size  2048
  lr               0.05    base SGD learning rate (x de_members for ``de``, x packed_members for ``packed``)
  models           ["single", "de", "packed"]  which models to train
  de_members       2       deep-ensemble size
  packed_members   4       Packed-Ensemble M
  alpha            2       Packed-Ensemble width factor
  gamma            1       Packed-Ensemble groups factor
  init             "torch" "torch" (torch-default law) or "flax" (Flax's default initialisers)
  seed             0       first seed; the seeds are seed .. seed + num_seeds - 1 (each side)
  num_seeds        3       runs per model and side (mean and sd reported)
  hub              true    evaluate the 8 hub LeNets as one ensemble (skipped with a note when no hub)
  compare_tu       true    run TU 0.13.0 on the same data beside jaxuq (needs torch + torch-uncertainty)
  lowering         null    deep-ensemble member lowering: "vmap", "map", "unroll" (null: per backend)
  data_dir         null    data folder (null: $JAXUQ_DATA_DIR)
  download         true    download MNIST/FashionMNIST (md5-checked) when absent and a network exists
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxuq
from converters import ConvertError, hub
from converters.io import CheckpointError, resolve_hf
from experiments import _tu_mnist
from experiments._compare import compare_row, compare_tables, render_text
from experiments._tu import tu_lenet_ensemble_table
from jaxuq import ensembles as E
from jaxuq._env import data_dir as _data_dir
from jaxuq.data import MNIST_NORM, Preprocess, RepeatTarget, load_fashion_mnist, load_mnist
from jaxuq.ensembles import default_lowering
from jaxuq.evaluation import classification_table, predict
from jaxuq.metrics import count_flops
from jaxuq.models.lenet import lenet, packed_lenet
from jaxuq.train import EnsembleConfig, TrainConfig, fit, torch_sgd, tu_deep_ensembles

RESULTS = Path(__file__).resolve().parent / "results"
HUB_REPO = "ENSTA-U2IS/tutorial-models"
HUB_FILES = [f"version_{i}.ckpt" for i in range(8)]
MODEL_NAMES = {"single": "LeNet", "de": "Deep Ensemble", "packed": "Packed-Ensemble"}
# the tutorial's printed tables (sphinx-gallery run, GPU) for the three trained models
PUBLISHED = {
    "single": {"Acc": 0.8557, "AUROC": 0.84061, "NLL": 0.41895, "ECE": 0.02701, "Brier": 0.21136,
               "AUPR": 0.81506, "FPR95": 0.4779},
    "de": {"Acc": 0.8590, "AUROC": 0.76311, "NLL": 0.46617, "ECE": 0.07159, "Brier": 0.21625,
           "AUPR": 0.72237, "FPR95": 0.5972},
    "packed": {"Acc": 0.7198, "AUROC": 0.64501, "NLL": 1.05521, "ECE": 0.2587, "Brier": 0.46771,
               "AUPR": 0.59996, "FPR95": 0.7311},
}
KEYS = {"Acc": "test/cls/Acc", "AUROC": "ood/AUROC", "NLL": "test/cls/NLL", "ECE": "test/cal/ECE",
        "Brier": "test/cls/Brier", "AUPR": "ood/AUPR", "FPR95": "ood/FPR95"}
RECIPE_KEYS = ("train_images", "test_images", "ood_images", "epochs", "batch_size", "lr", "de_members",
               "packed_members", "alpha", "gamma", "init")

SMALL = {"train_images": 1024, "test_images": 512, "ood_images": 512, "epochs": 1, "batch_size": 128,
         "num_seeds": 1, "compare_tu": False}


def get_config() -> dict:
    """The tutorial's settings (see the module docstring for every key)."""
    return {
        "train_images": 60_000, "test_images": 10_000, "ood_images": 10_000, "epochs": 3, "batch_size": 512,
        "eval_batch_size": 2048, "lr": 0.05, "models": ["single", "de", "packed"], "de_members": 2,
        "packed_members": 4, "alpha": 2, "gamma": 1, "init": "torch", "seed": 0, "num_seeds": 3,
        "hub": True, "compare_tu": True, "lowering": None, "data_dir": None, "download": True,
    }  # fmt: skip


# ----------------------------------------------------------------------------- data


def _load(reader, split: str, config: dict):
    """``reader(split)`` from the data folder; when its files are missing and ``download`` is on,
    download them (md5-checked, ``jaxuq.data.download``) into the data folder (or
    ``~/.cache/jaxuq/data`` when none is set) first."""
    try:
        return reader(split, data_dir=config["data_dir"])
    except FileNotFoundError as e:
        if not config["download"]:
            raise
        missing = e
    from jaxuq._env import ENV_VAR
    from jaxuq.data.download import download_fashion_mnist, download_mnist

    root = config["data_dir"] or os.environ.get(ENV_VAR) or str(Path.home() / ".cache/jaxuq/data")
    get = download_mnist if reader is load_mnist else download_fashion_mnist
    try:
        print(f"{missing}: downloading into {root} ...", flush=True)
        get(root)
    except OSError as e:
        raise FileNotFoundError(
            f"{missing}; the download failed too ({e}). Set {ENV_VAR} (or --set data_dir=...) to a folder "
            "holding MNIST/raw and FashionMNIST/raw in torchvision's layout"
        ) from None
    config["data_dir"] = root
    return reader(split, data_dir=root)


def load_data(config: dict) -> dict:
    """``{"train": (x, y), "test": (x, y), "ood": x}``: uint8 ``[N, 28, 28, 1]`` images, int labels."""
    xtr, ytr = _load(load_mnist, "train", config)
    xte, yte = _load(load_mnist, "test", config)
    xood, _ = _load(load_fashion_mnist, "train", config)
    n_tr, n_te, n_ood = config["train_images"], config["test_images"], config["ood_images"]
    for name, n, avail in (("train_images", n_tr, len(xtr)), ("test_images", n_te, len(xte)),
                           ("ood_images", n_ood, len(xood))):
        if not 1 <= n <= avail:
            raise ValueError(f"{name} must be in [1, {avail}], got {n}")
    return {"train": (xtr[:n_tr], ytr[:n_tr].astype(np.int32)),
            "test": (xte[:n_te], yte[:n_te].astype(np.int32)), "ood": xood[:n_ood]}


# ----------------------------------------------------------------------------- jaxuq side


def train_config(name: str, config: dict, seed: int) -> TrainConfig:
    """The engine settings of model ``name`` (TU's routine for it, see the module docstring)."""
    if config["init"] not in ("torch", "flax"):
        raise ValueError(f"init must be 'torch' or 'flax', got {config['init']!r}")
    base = TrainConfig(
        epochs=config["epochs"], batch_size=config["batch_size"], seed=seed,
        optimizer=torch_sgd(config["lr"]),
        preprocess=Preprocess(*MNIST_NORM, crop=28, padding=4), eval_batch_size=config["eval_batch_size"],
        quiet=False,
    )
    if name == "single":
        return base
    if name == "de":  # deep_ensembles + RepeatTarget(M): one shared order, CE over (m b) rows, LR x M
        base = base.replace(ensemble=EnsembleConfig(config["de_members"], lowering=config["lowering"]))
        return tu_deep_ensembles(config["de_members"], config["lr"], base)
    if name == "packed":  # one model whose output is [(M B), C]: CE on RepeatTarget(M), LR x M
        m = config["packed_members"]
        return base.replace(format_batch=RepeatTarget(m), optimizer=torch_sgd(config["lr"] * m))
    raise ValueError(f"unknown model {name!r}; known: {sorted(MODEL_NAMES)}")


def make_model(name: str, config: dict):
    """The Flax module of model ``name`` (for ``de``: one member)."""
    if name == "packed":
        return packed_lenet(1, 10, num_estimators=config["packed_members"], alpha=config["alpha"],
                            gamma=config["gamma"])  # torch-default initialisation (jaxuq.nn.packed)
    return lenet(1, 10, torch_init=config["init"] == "torch")


def train_jaxuq(name: str, config: dict, data: dict, seed: int):
    """Train model ``name`` with ``jaxuq.train.fit`` -> ``(module, params [M, ...], member_split, seconds)``
    (``member_split``: the packed M, else None; a single model gets a member axis of 1)."""
    module = make_model(name, config)
    cfg = train_config(name, config, seed)
    t0 = time.perf_counter()
    state = fit(module, data["train"], cfg).state
    params = jax.block_until_ready(state.params)
    seconds = time.perf_counter() - t0
    if cfg.num_members is None:
        params = jax.tree.map(lambda a: a[None], params)
    return module, params, config["packed_members"] if name == "packed" else None, seconds


def member_logits(module, params, split, images, batch_size: int) -> np.ndarray:
    """Eval logits ``[M, N, 10]`` of a stacked ``params [M', ...]`` (``split``: packed M) on uint8 images,
    through :func:`jaxuq.evaluation.predict` (a Packed model's ``[(M B), C]`` comes back as ``[M, N, C]``)."""
    pre = Preprocess(*MNIST_NORM)
    if split is None:
        return predict(module, {"params": params}, images, preprocess=pre, batch_size=batch_size,
                       lowering=default_lowering())
    return predict(module, {"params": jax.tree.map(lambda a: a[0], params)}, images, preprocess=pre,
                   batch_size=batch_size)


def table_of(logits_id, labels, logits_ood, n_params: int) -> dict:
    """TU's test table from member logits ``[M, N, C]`` (MSP of the member-averaged probabilities)."""
    p_id = jax.nn.softmax(jnp.asarray(logits_id, jnp.float32), -1)
    p_ood = jax.nn.softmax(jnp.asarray(logits_ood, jnp.float32), -1)
    msp = lambda p: -jnp.max(jnp.mean(p, 0), -1)  # noqa: E731  TU's MaxSoftmaxCriterion
    scores = jnp.concatenate([msp(p_id), msp(p_ood)])
    return classification_table(probs=p_id, labels=labels, ood_scores=scores, ood_probs=p_ood,
                                params=n_params)


def run_jaxuq(name: str, config: dict, data: dict, seed: int) -> dict:
    """One trained and evaluated model: ``{"seed", "train_s", "table", "probs"}``."""
    module, params, split, train_s = train_jaxuq(name, config, data, seed)
    bs = config["eval_batch_size"]
    lid = member_logits(module, params, split, data["test"][0], bs)
    lood = member_logits(module, params, split, data["ood"], bs)
    n_params = int(sum(a.size for a in jax.tree.leaves(params)))
    table = table_of(lid, data["test"][1], lood, n_params)
    print(f"jaxuq {name} seed {seed}: acc {100 * table['test/cls/Acc']:.2f} % ({train_s:.0f} s)", flush=True)
    return {"seed": seed, "train_s": train_s, "table": table,
            "probs": np.asarray(jax.nn.softmax(jnp.asarray(lid), -1).mean(0))}


def ensemble_table(module, variables, images, labels, ood_images, preprocess, batch_size: int = 2048,
                   lowering=None) -> dict[str, float]:
    """jaxuq's side of :func:`experiments._tu.tu_lenet_ensemble_table`: a stacked ensemble
    (``variables`` leaves ``[M, ...]``) on ``images [N, H, W, C]`` (uint8) with ``ood_images`` as OOD,
    ``preprocess`` a :class:`jaxuq.data.Preprocess`, MSP criterion -> :func:`jaxuq.evaluate` with TU's
    complexity numbers (FLOPs of the first batch, all members; parameter count)."""
    lowering = lowering or default_lowering()
    first = preprocess.eval(jnp.asarray(images[:batch_size]))
    flops = count_flops(lambda x: E.apply_members(module, variables, x, lowering=lowering), first)
    return jaxuq.evaluate(module, variables, (images, np.asarray(labels)), ood_data=ood_images,
                          preprocess=preprocess, batch_size=batch_size, lowering=lowering, flops=flops,
                          progress=False)


def hub_source(data_dir=None) -> str:
    """The local mirror ``$JAXUQ_DATA_DIR/hub/ENSTA-U2IS/tutorial-models`` when it holds the 8 files,
    else the Hub repo id (network)."""
    try:
        local = _data_dir(data_dir) / "hub" / HUB_REPO
    except FileNotFoundError:
        return HUB_REPO
    return str(local) if all((local / f).exists() for f in HUB_FILES) else HUB_REPO


def hub_ensemble(config: dict, data: dict) -> dict:
    """The 8 hub LeNets as one ensemble (``converters.hub.load_ensemble``, MSP): jaxuq's table, and with
    ``compare_tu`` TU's routine on the same 8 checkpoints beside it (``compare_tables``, tolerance
    1e-5). ``{"skipped": why}`` when there is no hub or no torch to read the checkpoints. ``cache``
    records the conversion cache's entry by its key (a folder of ``converters.hub.cache_dir()``), not
    by a path of this machine."""
    source = hub_source(config["data_dir"])
    try:
        module, variables, meta = hub.load_ensemble(source, HUB_FILES)
    except (FileNotFoundError, ConvertError, CheckpointError, ImportError) as e:
        print(f"hub ensemble skipped: {e}", flush=True)
        return {"skipped": f"{type(e).__name__}: {e}"}
    pre = Preprocess(*MNIST_NORM)
    (xte, yte), xood = data["test"], data["ood"]
    key = Path(meta["cache"]["path"]).name if meta["cache"]["path"] else None
    out = {"source": source, "cache": {"key": key, "hit": meta["cache"]["hit"]},
           "jaxuq": ensemble_table(module, variables, xte, yte, xood, pre, config["eval_batch_size"])}
    if config["compare_tu"]:
        paths = [Path(source) / f for f in HUB_FILES] if Path(source).is_dir() else None
        if paths is None:
            paths = [resolve_hf(HUB_REPO, f) for f in HUB_FILES]
        out["tu"] = tu_lenet_ensemble_table(paths, config["data_dir"], ood_subset=len(xood),
                                            batch_size=config["eval_batch_size"], test_subset=len(xte))
        cmp = compare_tables(out["jaxuq"], out["tu"], tol=1e-5)
        out["diff"] = {k: d for k, (_, _, d) in cmp["diffs"].items()}
        out |= {"max_abs_diff": cmp["max_abs_diff"], "over_1e-5": cmp["bad"], "missing_keys": cmp["missing"]}
    return out


# ----------------------------------------------------------------------------- summaries


def summarize(runs: list[dict]) -> dict:
    """``{key: {"mean", "sd", "values"}}`` over runs' tables (sd: ddof=1; 0 for one run)."""
    out = {}
    for k in runs[0]["table"]:
        v = np.array([r["table"][k] for r in runs], np.float64)
        out[k] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                  "values": v.tolist()}
    return out


def comparison_rows(jx: dict, tu: dict | None) -> list[dict]:
    """Per model and metric: published, TU mean/sd, jaxuq mean/sd, |diff|, pooled sd and whether
    |diff| <= 2 pooled sd (None unless both sides have at least two runs)."""
    rows = []
    for model, summ in jx.items():
        for short, key in KEYS.items():
            j = summ[key]
            t = (tu or {}).get(model, {}).get(key)
            row = compare_row(f"{model}/{short}", j["mean"], t["mean"] if t else None,
                              PUBLISHED.get(model, {}).get(short))
            row |= {"tu_sd": t["sd"] if t else None, "jaxuq_sd": j["sd"], "pooled_sd": None,
                    "within_2_pooled_sd": None}
            if t and min(len(j["values"]), len(t["values"])) >= 2:  # an sd needs two runs per side
                row["pooled_sd"] = math.sqrt((j["sd"] ** 2 + t["sd"] ** 2) / 2)
                row["within_2_pooled_sd"] = bool(row["abs_diff"] <= 2 * row["pooled_sd"])
            rows.append(row)
    return rows


def committed_tu(config: dict) -> tuple[dict | None, str | None, list[str]]:
    """The TU summary of a committed ``experiments/results/*.json`` run: ``(tu, file, differs)``.
    A run with this config's recipe (``differs == []``) if there is one, else the tutorial-recipe run
    of ``de_to_pe.json`` with the recipe keys that differ (``"epochs: 3 here 1"``), else Nones."""
    import json

    want = {k: config[k] for k in RECIPE_KEYS}
    fallback = (None, None, [])
    for path in sorted(RESULTS.glob("*.json")):
        res = json.loads(path.read_text())
        got = {k: res.get("recipe", {}).get(k) for k in RECIPE_KEYS}
        if not res.get("tu") or not set(config["models"]) <= set(res["tu"]):
            continue
        src = str(path.relative_to(RESULTS.parent.parent))
        if got == want:
            return res["tu"], src, []
        if path.name == "de_to_pe.json":
            fallback = (res["tu"], src, [f"{k}: {got[k]} there, {want[k]} here" for k in RECIPE_KEYS
                                         if got[k] != want[k]])
    return fallback


# ----------------------------------------------------------------------------- report


def _fmt(v, short: str) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.2f}%" if short in ("Acc", "AUROC", "ECE", "AUPR", "FPR95") else f"{v:.4f}"


def _pm(mean, sd, short: str) -> str:
    return "-" if mean is None else f"{_fmt(mean, short)} ± {_fmt(sd, short)}"


def render(jx_runs: dict, rows: list[dict], hub: dict | None, reference: str) -> str:
    """TU-style tables of the first seed of every jaxuq model, the hub ensemble's, and the comparison."""
    from rich.table import Table

    from jaxuq.report.table import build_tables

    parts = []
    for model, runs in jx_runs.items():
        parts += [f"\n[bold]{MODEL_NAMES[model]}[/bold] (jaxuq, seed {runs[0]['seed']})",
                  *build_tables(runs[0]["table"])]
    if hub and "jaxuq" in hub:
        parts += ["\n[bold]8 hub LeNets as one ensemble[/bold] (jaxuq)", *build_tables(hub["jaxuq"])]
    t = Table(title=f"jaxuq vs {reference} (mean ± sd over seeds)")
    for c in ("metric", "published", "TU 0.13.0", "jaxuq", "|diff|", "≤ 2 pooled sd"):
        t.add_column(c, justify="left" if c == "metric" else "right")
    for r in rows:
        short = r["metric"].split("/")[-1]
        ok = {None: "-", True: "yes", False: "NO"}[r["within_2_pooled_sd"]]
        t.add_row(r["metric"], _fmt(r["published"], short), _pm(r["tu"], r["tu_sd"], short),
                  _pm(r["jaxuq"], r["jaxuq_sd"], short), _fmt(r["abs_diff"], short), ok)
    parts.append(t)
    if hub and "max_abs_diff" in hub:
        parts.append(f"hub ensemble: jaxuq vs TU routine, max |diff| over {len(hub['diff'])} keys = "
                     f"{hub['max_abs_diff']:.2e}; keys over 1e-5: {hub['over_1e-5'] or 'none'}")
    elif hub and "skipped" in hub:
        parts.append(f"hub ensemble skipped: {hub['skipped']}")
    return render_text(*parts)


def plots(jx_runs: dict, labels, out_dir: Path) -> list[str]:
    from jaxuq.report.plots import reliability_diagram, risk_coverage_curve

    written = []
    for model, runs in jx_runs.items():
        path = out_dir / f"reliability_{model}.png"
        reliability_diagram(runs[0]["probs"], labels, path,
                            title=f"{MODEL_NAMES[model]} (seed {runs[0]['seed']})",
                            ece=runs[0]["table"]["test/cal/ECE"])
        written.append(path.name)
    curves = {MODEL_NAMES[m]: (r[0]["probs"], labels) for m, r in jx_runs.items()}
    risk_coverage_curve(curves, out_dir / "risk_coverage.png")
    written.append("risk_coverage.png")
    return written


# ----------------------------------------------------------------------------- run


def run(config: dict, out_dir: Path) -> tuple[dict, str]:
    """Train and evaluate every model on ``num_seeds`` seeds (jaxuq, and TU with ``compare_tu``)."""
    out_dir = Path(out_dir)
    unknown = set(config["models"]) - set(MODEL_NAMES)
    if unknown or not config["models"]:
        raise ValueError(f"models must be a non-empty subset of {sorted(MODEL_NAMES)}, "
                         f"got {config['models']}")
    if config["num_seeds"] < 1 or config["epochs"] < 1 or config["batch_size"] < 1:
        raise ValueError("num_seeds, epochs and batch_size must be >= 1")
    data = load_data(config)
    seeds = list(range(config["seed"], config["seed"] + config["num_seeds"]))
    t0 = time.perf_counter()
    jx_runs = {m: [run_jaxuq(m, config, data, s) for s in seeds] for m in config["models"]}
    jx_s = time.perf_counter() - t0
    jx = {m: summarize(r) for m, r in jx_runs.items()}
    results = {"recipe": {k: config[k] for k in RECIPE_KEYS}, "seeds": seeds,
               "substituted": _tu_mnist.SUBSTITUTED, "scheduler_note": _tu_mnist.SCHEDULER_NOTE,
               "jaxuq": jx, "jaxuq_runs": {m: [{k: r[k] for k in ("seed", "train_s", "table")} for r in runs]
                                           for m, runs in jx_runs.items()},
               "timings_s": {"jaxuq": jx_s}}
    tu, differs = None, []
    if config["compare_tu"]:
        t0 = time.perf_counter()
        tu_runs = _tu_mnist.run_tu_models(config, seeds)
        results["timings_s"]["tu"] = time.perf_counter() - t0
        tu = {m: summarize(r) for m, r in tu_runs.items()}
        results["tu"], results["tu_runs"] = tu, tu_runs
        reference = "TU 0.13.0 (run here)"
    else:
        tu, src, differs = committed_tu(config)
        reference = f"TU 0.13.0 (committed: {src})" if src else "TU 0.13.0 (none committed)"
        if differs:
            reference += f", another recipe ({'; '.join(differs)}): no |diff|"
        results["tu_reference"] = {"file": src, "recipe_differs": differs}
    results["reference"] = reference
    hub = hub_ensemble(config, data) if config["hub"] else None
    if hub is not None:
        results["hub"] = hub
    results["comparison"] = comparison_rows(jx, tu)
    if not config["compare_tu"] and differs:  # context only: different recipes are not compared
        for row in results["comparison"]:
            row |= {"abs_diff": None, "pooled_sd": None, "within_2_pooled_sd": None}
    results["plots"] = plots(jx_runs, data["test"][1], out_dir)
    return results, render(jx_runs, results["comparison"], hub, reference)


if __name__ == "__main__":
    from experiments._launch import launch_module

    raise SystemExit(launch_module(__name__))
