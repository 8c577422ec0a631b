"""report.plots: files are written (PNG/PDF), tables carry the numbers, bad paths raise; figures are
pyplot-free (the backend is left alone), accept ``ax=`` and are returned."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from jaxuq.ood.confidence_metrics import evaluate_confidences
from jaxuq.report import plots


def _probs(n=500, c=5, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)) * 3
    p = np.exp(z - z.max(1, keepdims=True))
    p = (p / p.sum(1, keepdims=True)).astype(np.float32)
    return p, rng.integers(0, c, n)


def test_calibration_plots(tmp_path):
    p, y = _probs()
    fig = plots.reliability_diagram(p, y, tmp_path / "rel.png", ece=0.123)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert (tmp_path / "rel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plots.reliability_diagram(p, y, tmp_path / "rel.pdf")
    assert (tmp_path / "rel.pdf").read_bytes()[:4] == b"%PDF"
    plots.risk_coverage_curve({"a": (p, y), "b": _probs(seed=1)}, tmp_path / "rc.png")
    assert (tmp_path / "rc.png").stat().st_size > 1000
    with pytest.raises(ValueError, match=".png or .pdf"):
        plots.reliability_diagram(p, y, tmp_path / "rel.jpg")
    assert not list(tmp_path.glob(".*tmp*"))
    assert sorted(f.name for f in tmp_path.iterdir()) == ["rc.png", "rel.pdf", "rel.png"]


def test_plots_draw_into_given_axes_and_save_only_with_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p, y = _probs()
    fig = Figure()
    ax_rel, ax_rc = fig.subplots(1, 2)
    assert plots.reliability_diagram(p, y, ax=ax_rel, title="mine") is fig
    assert ax_rel.get_title() == "mine" and len(ax_rel.patches) > 0
    assert plots.risk_coverage_curve({"a": (p, y)}, ax=ax_rc) is fig and len(ax_rc.lines) == 1
    rng = np.random.default_rng(0)
    ind, oods = [rng.normal(1, 1, 50)], [[rng.normal(0, 1, 40)], [rng.normal(-1, 1, 40)]]
    grid = Figure().subplots(2, 2)
    assert plots.summary_plot(ind, oods, ["A"], ["near", "far"], ax=grid) is grid[0, 0].figure
    assert len(grid[1, 1].lines) == 2  # the ROC of A + the diagonal
    row = Figure().subplots(1, 2)
    assert plots.roc_curves(ind, oods, ["A"], ["near", "far"], ax=row) is row[0].figure
    with pytest.raises(ValueError, match="need 1 Axes"):
        plots.score_histograms(ind, oods, ["A"], ["near", "far"], ax=row)
    assert isinstance(plots.score_histograms(ind, oods, ["A"], ["near", "far"]), Figure)
    assert list(tmp_path.iterdir()) == []  # no path: nothing written


def test_import_and_plot_leave_the_matplotlib_backend_alone():
    code = textwrap.dedent("""
        import matplotlib
        matplotlib.use("svg")
        import numpy as np
        from jaxuq.report import plots
        plots.risk_coverage_curve({"a": (np.eye(3, dtype=np.float32), np.arange(3))})
        import matplotlib.pyplot as plt
        print(matplotlib.get_backend(), len(plt.get_fignums()))
    """)
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert out.stdout.split() == ["svg", "0"], out.stdout + out.stderr


def test_missing_matplotlib_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'jaxuq\[plots\]'"):
        plots.risk_coverage_curve({"a": _probs()})


def test_ood_plots_and_summary_table(tmp_path):
    rng = np.random.default_rng(0)
    ind = [rng.normal(1, 1, 300), rng.normal(2, 1, 300)]
    oods = [[rng.normal(0, 1, 200), rng.normal(0, 1, 200)], [rng.normal(-2, 1, 200), rng.normal(1.9, 1, 200)]]
    names, titles = ["A", "B"], ["near", "far"]
    for fn, f in [(plots.score_histograms, "h.png"), (plots.roc_curves, "r.png"), (plots.summary_plot, "s.png")]:
        assert isinstance(fn(ind, oods, names, titles, tmp_path / f), Figure)
        assert (tmp_path / f).stat().st_size > 1000
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
