"""End-to-end: experiments/de_to_pe.py on a small real MNIST / FashionMNIST subset."""

from __future__ import annotations

import importlib.util

import pytest

from tests.helpers import REPO, data_path


@pytest.mark.realdata
@pytest.mark.slow
def test_de_to_pe_small(capsys):
    root = data_path("MNIST").parent
    spec = importlib.util.spec_from_file_location("de_to_pe", REPO / "experiments" / "de_to_pe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--data-dir", str(root), "--train-subset", "1024", "--epochs", "1", "--test-subset", "500",
                    "--ood-subset", "500", "--de-members", "2", "--members", "vmap"])
    assert set(res) == {"single", "deep_ensemble", "packed"}
    assert res["single"]["test/cplx/params"] == 44_426
    assert res["deep_ensemble"]["test/cplx/params"] == 2 * 44_426
    assert res["packed"]["test/cplx/params"] == 45_672
    for r in res.values():
        assert 0.0 <= r["test/cls/Acc"] <= 1.0 and 0.0 <= r["ood/AUROC"] <= 1.0
    assert "test/ens_Disagreement" in res["deep_ensemble"] and "test/ens_MI" in res["packed"]
    assert "test/ens_MI" not in res["single"]
    out = capsys.readouterr().out
    assert "Packed-Ensemble (M=4, alpha=2)" in out and "Classification" in out
