"""End-to-end: experiments/ood_detection.py (TU's OOD-detection tutorial flow) on real CIFAR-10 heads
with scio's synthetic shifts as OOD sets (SVHN is absent), small sizes; and the missing-SVHN error."""

from __future__ import annotations

import json
import math
import re

import pytest

from tests.helpers import data_path

# TU 0.13.0 ClassificationRoutine test keys with eval_ood=True (docs: A.1, A.6), single model
EXPECTED_KEYS = {
    "test/cls/Acc",
    "test/cls/Brier",
    "test/cls/Entropy",
    "test/cls/NLL",
    "test/cal/ECE",
    "test/cal/MCE",
    "test/cal/SmECE",
    "test/cal/aECE",
    "ood/AUPR",
    "ood/AUROC",
    "ood/Entropy",
    "ood/FPR95",
    "ood/SCOD_AUGRC",
    "ood/SCOD_AURC",
    "ood/SCOD_Cov_5Risk",
    "ood/SCOD_Risk_80Cov",
    "test/sc/AUGRC",
    "test/sc/AURC",
    "test/sc/Cov_5Risk",
    "test/sc/Risk_80Cov",
    "test/cplx/flops",
    "test/cplx/params",
}
GROUPS = ("Classification", "Calibration", "OOD Detection", "Selective Classification", "Complexity")
SCENARIOS = ("Vertical flip", "Darker", "Uniformly random")
# TU-measured complexity of resnet(arch=18, style="cifar") (docs, section H)
RESNET18_CIFAR_PARAMS = 11_173_962
RESNET18_CIFAR_FLOPS_PER_IMAGE = 1_110_845_440


@pytest.mark.realdata
@pytest.mark.slow
def test_ood_experiment_shifts_end_to_end(tmp_path, capsys):
    from experiments.ood_detection import main

    data = data_path("cifar10_heads/train_first1000x5.npz").parent.parent
    out = tmp_path / "res" / "ood.json"
    argv = ["--data-dir", str(data), "--dataset", "cifar10_heads", "--ood", "shifts"]
    argv += [
        "--train-subset",
        "64",
        "--test-subset",
        "64",
        "--batch-size",
        "32",
        "--quiet",
        "--json",
        str(out),
    ]
    assert main(argv) == 0  # default: bf16 compute, as TU's 16-mixed tutorial
    text = capsys.readouterr().out
    for g in GROUPS:
        # the rich table headers, one set per (criterion, OOD set)
        assert len(re.findall(rf"┃\s+{g}\s+┃", text)) == 2 * len(SCENARIOS), g
    assert "trained on 64 images, 1 epoch(s), bfloat16 compute; test on 64 ID images" in text

    res = json.loads(out.read_text())
    assert not list(out.parent.glob("*.tmp"))
    assert res["config"]["n_train"] == 64 and res["config"]["compute_dtype"] == "bfloat16"
    assert res["config"]["n_ood"] == {s: 64 for s in SCENARIOS}
    assert [e["step"] for e in res["history"]] == [2]
    assert set(res["timings_s"]) == {"train", "predict", "metrics", "total"}
    tables = res["tables"]
    assert set(tables) == {f"{c}/{s}" for c in ("msp", "max_logit") for s in SCENARIOS}
    for name, t in tables.items():
        assert set(t) == EXPECTED_KEYS, (name, set(t) ^ EXPECTED_KEYS)
        for k, v in t.items():
            if k.endswith("Cov_5Risk") and v == "nan":
                continue  # TU: NaN when no coverage reaches risk <= 5 % (a 2-step model never does)
            assert isinstance(v, float | int) and math.isfinite(v), (name, k, v)
        for k in ("test/cls/Acc", "ood/AUROC", "ood/AUPR", "ood/FPR95", "test/cal/ECE"):
            assert 0.0 <= t[k] <= 1.0, (name, k, t[k])
        assert t["test/cplx/params"] == RESNET18_CIFAR_PARAMS
        assert t["test/cplx/flops"] == 32 * RESNET18_CIFAR_FLOPS_PER_IMAGE  # first test batch of 32
    # ID metrics do not depend on the criterion or the OOD set; the OOD ones do
    ref = tables["msp/Darker"]
    for t in tables.values():
        assert all(t[k] == ref[k] for k in EXPECTED_KEYS if k.startswith("test/"))
    assert tables["msp/Darker"]["ood/AUROC"] != tables["max_logit/Darker"]["ood/AUROC"]
    assert tables["msp/Darker"]["ood/Entropy"] != tables["msp/Vertical flip"]["ood/Entropy"]
    assert tables["msp/Darker"]["ood/Entropy"] == tables["max_logit/Darker"]["ood/Entropy"]


@pytest.mark.realdata
def test_ood_experiment_missing_svhn_is_clear(tmp_path, capsys):
    from experiments.ood_detection import main

    data = data_path("cifar10_heads/test_first1000.npz").parent.parent
    out = tmp_path / "ood.json"
    argv = ["--data-dir", str(data), "--dataset", "cifar10_heads", "--ood", "svhn", "--json", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "missing SVHN file test_32x32.mat" in err and f"{data}/SVHN/test_32x32.mat" in err
    assert not out.exists()


def test_ood_experiment_bad_args(capsys):
    from experiments.ood_detection import main

    for argv, msg in (
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--batch-size", "-1"], "--batch-size must be >= 1, got -1"),
        (["--train-subset", "-5"], "--train-subset must be >= 0, got -5"),
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert msg in capsys.readouterr().err
