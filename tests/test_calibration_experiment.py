"""End-to-end: experiments/temperature_scaling.py on real ResNet-20 logits (bounded sizes)."""

import json

import pytest

from tests.helpers import data_path, require


@pytest.mark.realdata
@pytest.mark.slow
def test_temperature_scaling_experiment(tmp_path, capsys):
    require("torch")  # the experiment converts the torch checkpoint ([torch] extra)
    from experiments.temperature_scaling import main

    data = data_path("")
    assert main(["--data-dir", str(data), "--out", str(tmp_path), "--n-train-cal", "300", "--n-test", "400"]) == 0
    text = capsys.readouterr().out
    assert "ECE before scaling" in text and "ECE after scaling" in text
    res = json.loads((tmp_path / "results.json").read_text())
    rows = {r["protocol"]: r for r in res["rows"]}
    split = rows["test-split"]
    assert split["T_tu"] > 1.0 and split["nll_after"] < split["nll_before"]  # over-confident test logits
    assert rows["train"]["T_tu"] < 1.0  # the model fits its training images: TS there sharpens
    # TU's 100 fixed LBFGS steps get close to the optimum when T is near 1, not when the optimum
    # is far (train protocol: inv_T must travel to ~5 with steps of lr = 0.1).
    assert abs(split["T_tu"] - split["T_exact"]) / split["T_exact"] < 0.02
    assert rows["train"]["T_exact"] < 1.0
    for r in rows.values():
        assert 0 <= r["ece_after"] <= 1 and 0.8 < r["acc"] <= 1
    for f in ["reliability_train_before.png", "reliability_test-split_after.png"]:
        assert (tmp_path / f).read_bytes()[:4] == b"\x89PNG"


def test_temperature_scaling_experiment_bad_data_dir(tmp_path, capsys):
    from experiments.temperature_scaling import main

    assert main(["--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
