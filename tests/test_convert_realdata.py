"""Real checkpoints (JAXUQ_DATA_DIR): ResNet-20, ResNet-56 (He et al., akamaster .th files) and scio's
Tiniest converted with the CLI reproduce torch's reference logits on the first 1000 CIFAR-10 test images
(max|Δ| <= 1e-4, identical top-1) and their accuracy is printed next to the published figure."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.helpers import REPO, data_path, require

pytestmark = [pytest.mark.realdata, pytest.mark.parity]

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
CASES = {  # name: (checkpoint, preprocessing, published top-1 %)
    "resnet20": ("checkpoints/resnet_cifar/resnet20-12fca82f.th", "meanstd", 91.73),
    "resnet56": ("checkpoints/resnet_cifar/resnet56-4bfd9763.th", "meanstd", 93.39),
    "tiniest": ("checkpoints/scio_tiniest/tiniest.pt", "unit", 94.6),
}


@pytest.mark.parametrize("name", list(CASES))
def test_real_checkpoint_cli_conversion(name, tmp_path, capsys):
    require("torch")
    rel, prep, published = CASES[name]
    ckpt = data_path(rel)
    heads = np.load(data_path("cifar10_heads/test_first1000.npz"))
    ref = np.load(data_path("checkpoints/reference_logits_first1000.npz"))
    out = tmp_path / name
    if name == "resnet20":  # the real command line, in a fresh process
        r = subprocess.run([sys.executable, "-m", "converters", "convert", str(ckpt), "-o", str(out), "--verify"],
                           capture_output=True, text=True, cwd=REPO, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
        print(r.stdout, r.stderr)
        assert r.returncode == 0, r.stderr
        assert "architecture: resnet20()" in r.stdout
    else:
        from converters.cli import main

        assert main(["convert", str(ckpt), "-o", str(out), "--verify"]) == 0
        print(capsys.readouterr().out)

    from jaxuq import models

    module, variables, meta = models.load(out)
    assert meta["arch"] == name and meta["num_members"] is None
    assert meta["sources"][0]["sha256"].startswith(ckpt.name.split("-")[-1].split(".")[0]) or name == "tiniest"
    x = heads["images"].astype(np.float32) / 255.0
    if prep == "meanstd":
        x = (x - MEAN) / STD
    apply = jax.jit(lambda v, xx: module.apply(v, xx, train=False))
    logits = np.concatenate([np.asarray(apply(variables, x[i:i + 500])) for i in range(0, 1000, 500)])
    want = ref[name]
    err = float(np.abs(logits - want).max())
    same = int((logits.argmax(1) == want.argmax(1)).sum())
    acc = float((logits.argmax(1) == heads["labels"]).mean())
    se = np.sqrt(acc * (1 - acc) / 1000)
    print(f"{name}: max|Δ| vs torch reference logits = {err:.2e}; same top-1 on {same}/1000; "
          f"accuracy {100 * acc:.1f} ± {100 * se:.1f} % on the first 1000 test images "
          f"(published {published} % on the full test set)")
    assert err <= 1e-4
    assert same == 1000
