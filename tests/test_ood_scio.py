"""scio 1.1.0 parity of the OOD detectors on Tiniest, real images (experiments/scio_ood.py's own
comparison with these outputs: tests/test_experiments.py).

The reference numbers come from scio itself (tests/gen_golden_scio.py, run in a Python 3.12
venv since scio-pypi needs >= 3.12) and are stored in tests/golden/ood_scio_tiniest_small.npz:
128 calibration train images, 32 InD test images and the 3 synthetic OOD sets built from them.
"""


import numpy as np
import pytest

from jaxuq.ood import detectors as D
from jaxuq.ood.confidence_metrics import partial_auc, tpr_at_fpr_conf
from tests.gen_golden_scio import load_split, ood_sets
from tests.helpers import GOLDEN, data_path, require

# conformity tolerances (rtol, atol) per score, in the golden's order. Gram raises activations to
# the 8th power and thresholds them at per-class quantiles: float32 rounding differences between
# XLA and torch move a few statistics across those thresholds, so a few samples differ by <= ~1 %.
TOL = {
    "Softmax": (0, 1e-5),
    "GradNorm": (1e-5, 1e-4),
    "Gram": (2e-2, 1e-3),
    "KNN": (0, 1e-5),
    "DeepMahalanobis": (1e-3, 1e-3),
    "ODIN": (0, 1e-6),
}


def _golden():
    g = np.load(GOLDEN / "ood_scio_tiniest_small.npz")
    assert list(g["names"]) == ["Softmax", "GradNorm", "Gram", "KNN", "DeepMahalanobis", "ODIN"]
    return g


@pytest.mark.realdata
@pytest.mark.parity
@pytest.mark.slow
def test_mahalanobis_and_odin_match_scio():
    require("torch")  # load_model converts the torch checkpoint ([torch] extra)
    from experiments import _inputs

    g = _golden()
    model, variables = _inputs.load_model("tiniest", _inputs.TINIEST_CKPT, data_path(""))
    xc, yc, xi = load_split(data_path(""), int(g["n_calib"]), int(g["n_ind"]))
    sets = (xi, *ood_sets(xi))
    for i, det in [(4, D.Mahalanobis(["avgpool"])), (5, D.ODIN(temperature=1000.0, epsilon=0.0014))]:
        det.fit(model, variables, xc, yc)
        confs = np.split(det.confidence(np.concatenate(sets)), len(sets))  # one batch
        rtol, atol = TOL[g["names"][i]]
        for j, c in enumerate(confs):
            np.testing.assert_allclose(c, g["confs"][i, j], rtol=rtol, atol=atol, err_msg=f"{det} set {j}")
        for j in range(3):
            ours = [partial_auc(confs[0], confs[j + 1], 0.2), tpr_at_fpr_conf(confs[0], confs[j + 1], 0.05)]
            np.testing.assert_allclose(ours, g["evals"][i, j], atol=1e-9, err_msg=str(det))


def test_scio_metrics_definitions_on_golden_confidences():
    """Our partial AUC / TPR@FPR on scio's own confidences give scio's own evals (exact)."""
    for f in ["ood_scio_tiniest_full.npz", "ood_scio_tiniest_small.npz"]:
        g = np.load(GOLDEN / f)
        confs, evals = g["confs"], g["evals"]
        for i in range(confs.shape[0]):
            for j in range(3):
                ours = [partial_auc(confs[i, 0], confs[i, j + 1], 0.2), tpr_at_fpr_conf(confs[i, 0], confs[i, j + 1], 0.05)]
                np.testing.assert_allclose(ours, evals[i, j], atol=1e-12)
