"""End-to-end: ``python -m experiments de_to_pe --small`` through the launcher on real MNIST /
FashionMNIST subsets (jaxuq side, hub ensemble), and the TU side of the same recipe at a tiny size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import de_to_pe
from tests.helpers import data_path, require

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def test_de_to_pe_small_through_launcher(tmp_path, capsys, monkeypatch):
    from experiments.__main__ import main

    monkeypatch.setenv("JAXUQ_CACHE", str(tmp_path / "cache"))  # hub conversions
    root = data_path("MNIST").parent
    data_path("FashionMNIST/raw")
    out = tmp_path / "run"
    assert main(["de_to_pe", "--small", "--set", f"data_dir={json.dumps(str(root))}", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["jaxuq"]) == {"single", "de", "packed"}
    assert res["jaxuq"]["single"]["test/cplx/params"]["mean"] == 44_426
    assert res["jaxuq"]["de"]["test/cplx/params"]["mean"] == 2 * 44_426
    assert res["jaxuq"]["packed"]["test/cplx/params"]["mean"] == 45_672
    for summ in res["jaxuq"].values():
        assert 0.0 <= summ["test/cls/Acc"]["mean"] <= 1.0 and 0.0 <= summ["ood/AUROC"]["mean"] <= 1.0
    assert "test/ens_MI" in res["jaxuq"]["de"] and "test/ens_MI" in res["jaxuq"]["packed"]
    assert "test/ens_MI" not in res["jaxuq"]["single"]
    rows = {r["metric"]: r for r in res["comparison"]}
    assert rows["packed/Acc"]["published"] == pytest.approx(0.7198)
    # the hub stand-in's 8 LeNets (98.2-99.2 % each) as one ensemble on the first 512 test images
    hub = res["hub"]
    assert hub["source"].endswith("ENSTA-U2IS/tutorial-models") and hub["jaxuq"]["test/cls/Acc"] > 0.97, hub
    # no machine path in the record: the data folder, the run folder, the cache and $HOME are not named
    assert hub["source"] == "<data_dir>/hub/ENSTA-U2IS/tutorial-models" and set(hub["cache"]) == {"key", "hit"}
    text = (out / "results.json").read_text()
    for folder in (root, tmp_path, Path.home()):
        assert str(folder) not in text, folder
    for name in ("config.json", "table.txt", "reliability_packed.png", "risk_coverage.png"):
        assert (out / name).exists(), name
    text = capsys.readouterr().out
    assert "Packed-Ensemble" in text and "Classification" in text and "hub LeNets" in text


def test_de_to_pe_tu_side_tiny(tmp_path, monkeypatch):
    """TU's routine runs the tutorial's recipe (its optim_recipe dict with the ignored "scheduler"
    key) for the three models, and reads the same 8 hub checkpoints; jaxuq's hub table matches
    TU's within 1e-5 on every common key."""
    require("torch_uncertainty")
    from experiments import _tu_mnist

    monkeypatch.setenv("JAXUQ_CACHE", str(tmp_path / "cache"))
    root = data_path("MNIST").parent
    cfg = de_to_pe.get_config() | {"train_images": 512, "test_images": 256, "ood_images": 256, "epochs": 1,
                                   "batch_size": 256, "data_dir": str(root)}
    runs = _tu_mnist.run_tu_models(cfg, [0])
    assert set(runs) == {"single", "de", "packed"}
    assert runs["de"][0]["table"]["test/cplx/params"] == 2 * 44_426
    assert runs["packed"][0]["table"]["test/cplx/params"] == 45_672
    assert "ood/AUROC" in runs["single"][0]["table"] and "test/ens_MI" in runs["de"][0]["table"]
    data = de_to_pe.load_data(cfg)
    hub = de_to_pe.hub_ensemble(cfg | {"compare_tu": True}, data)
    assert len(hub["diff"]) >= 28 and not hub["missing_keys"], (sorted(hub["diff"]), hub["missing_keys"])
    assert not hub["over_1e-5"] and hub["max_abs_diff"] <= 1e-5, hub["diff"]


def test_committed_reference_matches_recipe():
    """Without compare_tu the reference column is the committed TU run with the same recipe, or none."""
    tu, src, differs = de_to_pe.committed_tu(de_to_pe.get_config() | {"epochs": 99})
    if src is None:  # nothing committed yet
        assert tu is None and differs == []
    else:  # the tutorial-recipe run, flagged as another recipe
        assert src == "experiments/results/de_to_pe.json" and differs == ["epochs: 3 there, 99 here"], differs


def test_de_to_pe_missing_data_exits_2_naming_the_file(tmp_path, capsys):
    from experiments.__main__ import main

    rc = main(["de_to_pe", "--small", "--set", f"data_dir={json.dumps(str(tmp_path))}", "--set", "download=false",
               "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "MNIST" in err and "JAXUQ_DATA_DIR" in err, err
    assert not (tmp_path / "run").exists()


def test_de_to_pe_bad_model_name_exits_2(tmp_path, capsys):
    from experiments.__main__ import main

    rc = main(["de_to_pe", "--small", "--set", 'models=["single", "pe"]', "--out", str(tmp_path / "run")])
    assert rc == 2 and "models must be" in capsys.readouterr().err
