"""TU's OOD-detection tutorial: MSP and MaxLogit tables of a CIFAR-10 ResNet, TU 0.13.0 beside jaxuq.

    python -m experiments ood_detection [--small] [--set key=value ...] [--out DIR]

The tutorial evaluates TU's hub ResNet-18 (``torch-uncertainty/resnet18_c10``) on CIFAR-10 with
SVHN as the OOD set, through ``ClassificationRoutine(eval_ood=True)``, once with
``MaxSoftmaxCriterion`` and once with ``MaxLogitCriterion``. Neither the hub checkpoint nor SVHN
is reachable here, so (substitutions, also recorded in results.json):

- model: the real He et al. ResNet-20 (or ResNet-56) checkpoint under ``$JAXUQ_DATA_DIR/checkpoints/
  resnet_cifar`` stands in for the hub ResNet-18. TU's side runs its torch twin
  (``converters.torch_refs``) through ``ClassificationRoutine.test_step`` / ``on_test_epoch_end``
  (``TUTrainer.test`` on a small LightningDataModule), jaxuq's side the converted Flax model
  through ``jaxuq.evaluation.classification_table``, on the same tensors;
- ID set: the first ``n_test`` of the 1000 real CIFAR-10 test images (x/255, ImageNet mean/std);
- OOD set: ``ood="shifts"``: scio's synthetic shifts of those images (vertical flip, darker x0.5,
  uniform noise from ``jax.random.key(seed)``; ``jaxuq.data.synthetic_shifts``), one table per
  shift; ``ood="svhn"``: SVHN's ``test_32x32.mat`` under the data folder (an error naming it if
  absent).

Every key of TU's table is compared (|Δ| ≤ 1e-4 expected); the "published" column holds the
tutorial's printed ResNet-18/SVHN values (a different model and OOD set: context, not a target).

``train=True`` runs the tutorial's own training instead: ``resnet(arch=18, style="cifar",
conv_bias=False)``, Adam 1e-3, batch ``batch_size``, ``epochs`` epoch(s), bf16 compute
(``compute_dtype``), RandomCrop(32, 4) + flip + CIFAR-10 normalisation, on the
``train_images`` real training images (at most 5000 here; the tutorial's 50,000), with
``jaxuq.train.fit``; TU is not run then (no torch twin of the trained weights), so the TU column
is empty.

Config keys:
  model: "resnet20" | "resnet56" (the checkpoint evaluated; ignored when train=True).
  n_test: ID test images (<= 1000).
  ood: "shifts" | "svhn".
  criteria: OOD criteria, a list of "msp" / "max_logit" (the tutorial's two).
  batch_size: test batch (TU's 512; the Complexity flops are those of the first batch).
  smece: compute test/cal/SmECE (the slowest metric).
  compare_tu: run TU 0.13.0 on the same tensors.
  train: run the tutorial's 1-epoch ResNet-18 training instead of loading a checkpoint.
  epochs: training epochs (train=True only; the tutorial's 1).
  train_images: real training images used (train=True only; at most the 5000 here).
  lr: Adam's learning rate (train=True only; the tutorial's 1e-3).
  compute_dtype: training compute dtype (train=True only; the tutorial's 16-mixed -> "bfloat16").
  seed: the shifts' noise key and the training seed.
  data_dir: the data folder (None: $JAXUQ_DATA_DIR).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _compare, _inputs, _tu
from experiments._compare import comparison_table, render_text
from experiments._launch import launch_module

# the tutorial's printed tables (TU's hub ResNet-18, CIFAR-10 vs SVHN)
_ID = {"test/cls/Acc": 0.9339, "test/cls/Brier": 0.10812, "test/cls/Entropy": 0.08849,
       "test/cls/NLL": 0.26408, "test/cal/ECE": 0.03556, "test/cal/aECE": 0.03489,
       "test/sc/AUGRC": 0.00779, "test/sc/AURC": 0.0096, "test/sc/Cov_5Risk": 0.9652,
       "test/sc/Risk_80Cov": 0.012, "test/cplx/flops": 568.75e9, "test/cplx/params": 11.17e6}  # fmt: skip
PUBLISHED = {
    "msp": {**_ID, "ood/AUPR": 0.90244, "ood/AUROC": 0.82968, "ood/FPR95": 0.5606},
    "max_logit": {**_ID, "ood/AUPR": 0.85144, "ood/AUROC": 0.73895, "ood/FPR95": 0.7962},
}
TU_CRITERIA = {"msp": "MaxSoftmaxCriterion", "max_logit": "MaxLogitCriterion"}


def get_config() -> dict:
    return {
        "model": "resnet20",
        "n_test": 1000,
        "ood": "shifts",
        "criteria": ["msp", "max_logit"],
        "batch_size": 512,
        "smece": True,
        "compare_tu": True,
        "train": False,
        "epochs": 1,
        "train_images": 5000,
        "lr": 1e-3,
        "compute_dtype": "bfloat16",
        "seed": 0,
        "data_dir": None,
    }


SMALL = {"n_test": 100, "batch_size": 50, "smece": False, "train_images": 64, "epochs": 1}


def _train(config, x_tr, y_tr):
    """The tutorial's training run (``jaxuq.train.fit``): ``(module, variables, normalise01)``."""
    from jaxuq import models
    from jaxuq.data.pipeline import CIFAR10_NORM
    from jaxuq.data.registry import default_preprocess
    from jaxuq.train import TrainConfig, fit, torch_adam

    module = models.get("resnet", arch=18, style="cifar", num_classes=10, in_channels=3, conv_bias=False)
    cfg = TrainConfig(optimizer=torch_adam(config["lr"]), epochs=config["epochs"], quiet=True,
                      batch_size=min(config["batch_size"], len(x_tr)), seed=config["seed"],
                      preprocess=default_preprocess("cifar10"), compute_dtype=config["compute_dtype"])
    res = fit(module, (x_tr, y_tr), cfg)
    mean, std = (np.array(v, np.float32) for v in CIFAR10_NORM)
    return module, res.state.variables(), lambda x: (np.asarray(x, np.float32) - mean) / std


def _data(config):
    """``(id images [N, 32, 32, 3] in [0, 1], labels [N], {ood name: images in [0, 1]})``."""
    from jaxuq.data import svhn_ood

    n = config["n_test"]
    if not 10 <= n <= 1000:
        raise ValueError(f"n_test must be in [10, 1000]; got {n}")
    _, te = _inputs.load_cifar_heads(config["data_dir"])
    x = te["images"][:n].astype(np.float32) / 255.0
    if config["ood"] == "svhn":
        oods = {"SVHN": svhn_ood(config["data_dir"])[0].astype(np.float32) / 255.0}
    elif config["ood"] == "shifts":
        oods = {k: np.asarray(v) for k, v in _shifts(config["seed"], x).items()}
    else:
        raise ValueError(f"ood must be 'shifts' or 'svhn'; got {config['ood']!r}")
    return x, te["labels"][:n], oods


def _shifts(seed, x):
    from jaxuq.data import synthetic_shifts

    return synthetic_shifts(jax.random.key(seed), jnp.asarray(x))


def _jaxuq_tables(module, variables, norm, x, y, oods, config) -> tuple[dict, dict, tuple]:
    """jaxuq's table per ``criterion/ood set`` (``jaxuq.evaluation.classification_table``), the
    scores ``{criterion: (id [N], {ood set: [N_ood]})}`` (higher = more OOD) and the logits
    ``(id [N, 10], {ood set: [N_ood, 10]})``."""
    from jaxuq.evaluation import classification_table, predict
    from jaxuq.metrics import count_flops, count_params
    from jaxuq.ood.criteria import max_logit, msp

    bs = config["batch_size"]
    z = predict(module, variables, norm(x), batch_size=bs)
    z_oods = {k: predict(module, variables, norm(v), batch_size=bs) for k, v in oods.items()}
    cplx = {
        "flops": count_flops(lambda t: module.apply(variables, t), norm(x[:bs])),
        "params": count_params(variables["params"]),
    }
    fns = {"msp": msp, "max_logit": max_logit}
    scores = {
        c: (np.asarray(fns[c](z)), {o: np.asarray(fns[c](zo)) for o, zo in z_oods.items()})
        for c in config["criteria"]
    }
    tables = {
        f"{c}/{o}": classification_table(
            logits=z,
            labels=y,
            ood_scores=np.concatenate([scores[c][0], scores[c][1][o]]),
            ood_probs=jax.nn.softmax(jnp.asarray(zo), -1),
            smece=config["smece"],
            **cplx,
        )
        for c in config["criteria"]
        for o, zo in z_oods.items()
    }
    return tables, scores, (z, z_oods)


def _rows(jx: dict, tu: dict | None, quirky: set[str]) -> list[dict]:
    """Comparison rows: the ID keys (``test/*``, the same for every criterion and OOD set) once,
    then the ``ood/*`` keys per criterion and OOD set; ``tu_quirk`` marks the rows of ``quirky``."""
    first = next(iter(jx))
    rows = _compare.table_rows(
        None if tu is None else tu[first],
        {k: v for k, v in jx[first].items() if not k.startswith("ood/")},
        PUBLISHED["msp"],
    )
    for name, t in jx.items():
        rows += _compare.table_rows(
            None if tu is None else tu[name],
            {k: v for k, v in t.items() if k.startswith("ood/")},
            PUBLISHED[name.split("/")[0]],
            prefix=f"{name}: ",
        )
    return [{**r, "tu_quirk": r["metric"] in quirky} for r in rows]


def _tu_tables(config, model, x, y, oods: dict) -> dict:
    """TU's ``ClassificationRoutine(eval_ood=True)`` of torch ``model`` per ``criterion/ood set`` on
    inputs ``x`` / ``oods`` (NCHW images, or logits with ``nn.Identity``); the criterion is switched
    on the same routine, as the tutorial does."""
    import torch
    from torch_uncertainty import ood_criteria
    from torch_uncertainty.routines.classification import ClassificationRoutine

    routine = ClassificationRoutine(
        model=model, num_classes=10, loss=torch.nn.CrossEntropyLoss(), eval_ood=True
    )
    out = {}
    for c in config["criteria"]:
        routine.ood_criterion = getattr(ood_criteria, TU_CRITERIA[c])()
        for o, xo in oods.items():
            tu = _tu.tu_test(routine, (x, y), xo, batch_size=config["batch_size"])
            if not config["smece"]:
                tu.pop("test/cal/SmECE", None)
            out[f"{c}/{o}"] = tu
    return out


def _tu_side(config, norm, x, y, oods, logits) -> tuple[dict, dict]:
    """TU end to end (the torch twin on the same images) and TU on jaxuq's own logits
    (``nn.Identity`` as the model: the metrics alone, on identical inputs)."""
    import torch

    def nchw(a):
        return np.ascontiguousarray(norm(a).transpose(0, 3, 1, 2))

    model = _tu.torch_model_of(config["model"], config["data_dir"])
    tu = _tu_tables(config, model, nchw(x), y, {o: nchw(v) for o, v in oods.items()})
    same = _tu_tables(config, torch.nn.Identity(), logits[0], y, logits[1])
    return tu, same


def run(config: dict, out_dir) -> tuple[dict, str]:
    bad = set(config["criteria"]) - set(TU_CRITERIA)
    if bad:
        raise ValueError(f"unknown criteria {sorted(bad)}; valid: {list(TU_CRITERIA)}")
    x, y, oods = _data(config)
    substituted = [
        f"{len(x)} real CIFAR-10 test images for the 10,000",
        f"OOD: {', '.join(oods)} for SVHN" if config["ood"] == "shifts" else "OOD: SVHN",
    ]
    t0 = time.perf_counter()
    if config["train"]:
        tr, _ = _inputs.load_cifar_heads(config["data_dir"])
        k = min(config["train_images"], len(tr["labels"]))
        module, variables, norm = _train(config, tr["images"][:k], tr["labels"][:k])
        substituted.append(
            f"ResNet-18 trained here ({config['epochs']} epoch(s), {k} real training images) "
            "for the hub ResNet-18; TU not run on it"
        )
    else:
        module, variables = _inputs.load_model(
            config["model"], _inputs.checkpoint_of(config["model"]), config["data_dir"]
        )
        norm = _inputs.normalize
        substituted.append(f"{config['model']} checkpoint (converted) for TU's hub ResNet-18")
    jx, scores, logits = _jaxuq_tables(module, variables, norm, x, y, oods, config)
    _compare.score_plot(scores, out_dir / "ood_scores.png")
    t_jx = time.perf_counter() - t0
    tu = same = t_tu = None
    if config["compare_tu"] and not config["train"]:
        t0 = time.perf_counter()
        tu, same = _tu_side(config, norm, x, y, oods, logits)
        t_tu = time.perf_counter() - t0
    quirky = _compare.tu_quirk_rows(scores, logits[0], y, config["batch_size"])
    rows = _rows(jx, tu, quirky)
    same_rows = [r for r in _rows(jx, same, quirky) if "/cplx/" not in r["metric"]] if same else []
    sat = _compare.saturated(logits)
    texts = [_compare.tables_text(f"jaxuq, criterion/OOD set {name}", t) for name, t in jx.items()]
    table = "".join(texts) + render_text(
        comparison_table(rows, "OOD detection: published | TU 0.13.0 | jaxuq")
    )
    note, summary = _compare.parity_summary(rows, same_rows, quirky)
    table += note + (f"max-softmax exactly 1.0 in float32 (MSP ties) per set: {sat}\n" if tu else "")
    results = {
        "substituted": substituted,
        "n_test": len(y),
        "ood_sets": list(oods),
        "tables": {"jaxuq": jx, "tu": tu, "tu_on_jaxuq_logits": same},
        "comparison": rows,
        "comparison_same_logits": same_rows,
        **summary,
        "msp_saturated": sat,
        "seconds": {"jaxuq": t_jx, "tu": t_tu},
    }
    return results, table


if __name__ == "__main__":
    raise SystemExit(launch_module(__name__))
