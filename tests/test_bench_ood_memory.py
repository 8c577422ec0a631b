"""bench/ood_memory.py's accounting helpers return sane sizes (no memory thresholds: see the bench)."""

import jax
import jax.numpy as jnp

from bench.ood_memory import detector_row, model_and_variables, program_memory, scaler_row


def test_program_memory_counts_arguments_and_outputs():
    m = program_memory(lambda a: (a @ a.T).sum(0), jax.ShapeDtypeStruct((64, 32), jnp.float32))
    assert m["argument"] == 64 * 32 * 4 and m["output"] == 64 * 4
    assert m["temp"] >= 0 and m["total"] >= m["argument"] + m["output"]


def test_scaler_and_knn_rows_are_positive_and_scale_with_n():
    r = scaler_row("matrix", 1000)
    assert r["fit_program"]["argument"] >= 1000 * 10 * 4 + 1000 * 4 and r["state_bytes"] == 110 * 4
    module, variables = model_and_variables("resnet20")
    small, big = (detector_row("resnet20", "KNN", n, 4, module, variables) for n in (16, 64))
    for row in (small, big):
        assert row["score_program"]["temp"] > 0 and row["fit_program"]["total"] > 0
        assert row["model_bytes"] > 0 and row["device_bytes_bound"] > row["state_bytes"]
    # KNN keeps the [N, 64] pooled ResNet-20 features (+ their squared norms) for scoring
    assert small["state_bytes"] == 16 * 65 * 4 and big["state_bytes"] == 64 * 65 * 4
    assert big["fit_host_bytes"] == 4 * small["fit_host_bytes"]
