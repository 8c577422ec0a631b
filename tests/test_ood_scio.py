"""scio 1.1.0 parity of the OOD detectors on Tiniest with real CIFAR-10 images.

The reference numbers come from scio itself (tests/test_ood_scio_gen.py, run in a Python 3.12
venv since scio-pypi needs >= 3.12) and are stored in tests/golden/ood_scio_tiniest_small.npz:
128 calibration train images, 32 InD test images and the 3 synthetic OOD sets built from them.
"""

import numpy as np
import pytest

from jaxuq.ood import detectors as D
from jaxuq.ood.evaluation import partial_auc, tpr_at_fpr
from tests.helpers import GOLDEN, data_path
from tests.test_ood_scio_gen import load_split, ood_sets

# (detector, conformity tolerance (rtol, atol)). Gram raises activations to the 8th power and
# thresholds at per-class quantiles: float32 rounding differences between XLA and torch move a few
# statistics across those thresholds / overflow limits, so a few samples differ by up to ~1 %.
CASES = [
    (lambda n: D.Softmax(), (0, 1e-5)),
    (lambda n: D.GradNorm(["fc"]), (1e-5, 1e-4)),
    (lambda n: D.Gram(["l3", "avgpool", "fc"]), (2e-2, 1e-3)),
    (lambda n: D.KNN(["avgpool"], k=int(n**0.4)), (0, 1e-5)),
    (lambda n: D.Mahalanobis(["avgpool"]), (1e-3, 1e-3)),
    (lambda n: D.ODIN(temperature=1000.0, epsilon=0.0014), (0, 1e-6)),
]


@pytest.mark.realdata
@pytest.mark.parity
@pytest.mark.slow
def test_detectors_match_scio_on_tiniest():
    from tests.test_ood_tiniest_ref import load_tiniest

    g = np.load(GOLDEN / "ood_scio_tiniest_small.npz")
    n_calib, n_ind = int(g["n_calib"]), int(g["n_ind"])
    model, variables = load_tiniest(data_path("checkpoints/scio_tiniest/tiniest.pt"))
    xc, yc, xi = load_split(data_path(""), n_calib, n_ind)
    sets = (xi, *ood_sets(xi))
    assert list(g["names"]) == ["Softmax", "GradNorm", "Gram", "KNN", "DeepMahalanobis", "ODIN"]
    for i, (make, (rtol, atol)) in enumerate(CASES):
        det = make(n_calib).fit(model, variables, xc, yc)
        confs = [det.confidence(x) for x in sets]
        for j, c in enumerate(confs):
            np.testing.assert_allclose(c, g["confs"][i, j], rtol=rtol, atol=atol, err_msg=f"{det} set {j}")
        for j in range(3):
            ours = [partial_auc(confs[0], confs[j + 1], 0.2), tpr_at_fpr(confs[0], confs[j + 1], 0.05)]
            np.testing.assert_allclose(ours, g["evals"][i, j], atol=0.02 if i == 2 else 1e-9, err_msg=str(det))


def test_scio_metrics_definitions_on_golden_confidences():
    """Our partial AUC / TPR@FPR on scio's own confidences give scio's own evals (exact)."""
    g = np.load(GOLDEN / "ood_scio_tiniest_full.npz")
    confs, evals = g["confs"], g["evals"]
    for i in range(confs.shape[0]):
        for j in range(3):
            ours = [partial_auc(confs[i, 0], confs[i, j + 1], 0.2), tpr_at_fpr(confs[i, 0], confs[i, j + 1], 0.05)]
            np.testing.assert_allclose(ours, evals[i, j], atol=1e-12)
