"""report.plots: files are written (PNG/PDF), tables carry the numbers, bad paths raise."""

import numpy as np
import pytest

from jaxuq.ood.evaluation import evaluate_confidences
from jaxuq.report import plots


def _probs(n=500, c=5, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)) * 3
    p = np.exp(z - z.max(1, keepdims=True))
    p = (p / p.sum(1, keepdims=True)).astype(np.float32)
    return p, rng.integers(0, c, n)


def test_calibration_plots(tmp_path):
    p, y = _probs()
    out = plots.reliability_diagram(p, y, tmp_path / "rel.png", ece=0.123)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.reliability_diagram(p, y, tmp_path / "rel.pdf").read_bytes()[:4] == b"%PDF"
    assert plots.risk_coverage_curve({"a": (p, y), "b": _probs(seed=1)}, tmp_path / "rc.png").stat().st_size > 1000
    with pytest.raises(ValueError, match=".png or .pdf"):
        plots.reliability_diagram(p, y, tmp_path / "rel.jpg")
    assert not list(tmp_path.glob(".*tmp*"))


def test_ood_plots_and_summary_table(tmp_path):
    rng = np.random.default_rng(0)
    ind = [rng.normal(1, 1, 300), rng.normal(2, 1, 300)]
    oods = [[rng.normal(0, 1, 200), rng.normal(0, 1, 200)], [rng.normal(-2, 1, 200), rng.normal(1.9, 1, 200)]]
    names, titles = ["A", "B"], ["near", "far"]
    for fn, f in [(plots.score_histograms, "h.png"), (plots.roc_curves, "r.png"), (plots.summary_plot, "s.png")]:
        assert fn(ind, oods, names, titles, tmp_path / f).stat().st_size > 1000
    metrics = ("AUROC", "AUPR", "FPR95", "pAUC@0.2", "TPR@5%")
    ev = evaluate_confidences(ind, oods, metrics)
    assert ev.shape == (2, 2, 5)
    assert ev[0, 1, 0] > 0.9 and 0.45 < ev[1, 1, 0] < 0.6  # A separates "far"; B barely does
    text = plots.summary_table(ev, names, titles, list(metrics), layers=[[], ["fc"]], print_it=False)
    for s in ["OoD 1:", "near", "↳ fc", f"{ev[0, 0, 0]:.3f}", "AUROC / AUPR / FPR95 / pAUC@0.2 / TPR@5%"]:
        assert s in text, s
    with pytest.raises(ValueError, match="shape"):
        plots.summary_table(ev, names, titles, ["AUROC"], print_it=False)
    fpr, tpr = plots.roc_curve_points(ind[0], oods[0][0])
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1 and np.all(np.diff(fpr) >= 0)
