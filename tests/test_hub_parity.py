"""The tutorial's 8 hub LeNets ("From Deep Ensembles to Packed-Ensembles"): jaxuq's table equals TU
0.13.0's own routine on the same checkpoints, every key (``ens_*`` and complexity included) within 1e-5.

jaxuq: ``converters.hub.load_ensemble`` from an offline ``huggingface_hub`` cache built from
``$JAXUQ_DATA_DIR/hub`` -> stacked ensemble -> ``experiments.de_to_pe.ensemble_table`` (MSP) on the
MNIST test set with FashionMNIST train[:10000] as OOD. TU: ``deep_ensembles`` of 8 ``lenet`` with the
torch checkpoints, ``ClassificationRoutine(is_ensemble=True, eval_ood=True)``, ``TUTrainer.test`` on
``MNISTDataModule`` (``experiments._tu.tu_lenet_ensemble_table``). About 2 min on 2 busy cores.
"""

from __future__ import annotations

import pytest

from tests.helpers import data_path, require
from tests.hub_server import build_hf_cache, hub_env

pytestmark = [pytest.mark.parity, pytest.mark.slow, pytest.mark.realdata]

REPO_ID = "ENSTA-U2IS/tutorial-models"
FILES = [f"version_{i}.ckpt" for i in range(8)]
OOD = 10_000


def test_hub_lenet_ensemble_table_equals_tu_routine(tmp_path, monkeypatch):
    require("torch_uncertainty")
    from converters import hub
    from experiments._compare import compare_tables
    from experiments._tu import tu_lenet_ensemble_table
    from experiments.de_to_pe import ensemble_table
    from jaxuq.data import MNIST_NORM, Preprocess, load_fashion_mnist, load_mnist

    folder = data_path(f"hub/{REPO_ID}")
    data_dir = folder.parent.parent.parent
    build_hf_cache(tmp_path / "hf", REPO_ID, folder)
    hub_env(monkeypatch, hf_cache=tmp_path / "hf", jaxuq_cache=tmp_path / "jx", offline=True)
    module, variables, meta = hub.load_ensemble(REPO_ID, FILES)
    assert meta["num_members"] == 8

    xte, yte = load_mnist("test", data_dir=data_dir)
    xood = load_fashion_mnist("train", data_dir=data_dir)[0][:OOD]
    pre = Preprocess(mean=MNIST_NORM[0], std=MNIST_NORM[1])
    ours = ensemble_table(module, variables, xte, yte, xood, pre, batch_size=2048)
    ref = tu_lenet_ensemble_table([folder / f for f in FILES], data_dir, ood_subset=OOD, batch_size=2048)

    cmp = compare_tables(ours, ref, tol=1e-5)
    report = "\n".join(f"{k:28s} jaxuq {a:.8g}  TU {b:.8g}  |Δ| {d:.2e}" for k, (a, b, d) in cmp["diffs"].items())
    print(f"{report}\nmax |Δ| = {cmp['max_abs_diff']:.2e} over {len(cmp['diffs'])} keys")
    assert not cmp["missing"], f"keys TU reports and jaxuq does not: {cmp['missing']}\n{report}"
    assert not cmp["bad"], f"differ by more than 1e-5: {cmp['bad']}\n{report}"
    assert len(cmp["diffs"]) >= 28 and {"test/ens_MI", "ood/ens_MI", "test/cplx/flops"} <= set(cmp["diffs"])
    assert ref["test/cls/Acc"] > 0.99  # the members are trained models, not noise
