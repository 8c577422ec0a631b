"""Plots (matplotlib, Agg backend; PNG or PDF by the file suffix) and scio's summary table.

- :func:`reliability_diagram` — TU's 15-bin top-label binning (+ the conf == 1.0 slot).
- :func:`risk_coverage_curve` — selective risk vs coverage (score = max p).
- :func:`score_histograms` — one panel per score, one histogram per scenario (InD + OOD sets).
- :func:`roc_curves` — one panel per OOD set, one ROC per score (OOD positive).
- :func:`summary_plot` — scio's ``summary_plot``: histograms row over ROC row.
- :func:`summary_table` — scio's ``summary_table``: scores x OOD sets x metrics, printed with rich.

Confidences follow scio (higher = more in-distribution); pass ``-score`` for TU-style scores.
Every writer saves to a temporary file and renames it, so no half-written figure is left.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxuq.metrics import reliability_diagram_data  # noqa: E402

__all__ = [
    "reliability_diagram",
    "risk_coverage_curve",
    "score_histograms",
    "roc_curves",
    "summary_plot",
    "summary_table",
    "roc_curve_points",
]


def _save(fig, path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in (".png", ".pdf"):
        raise ValueError(f"plot path must end in .png or .pdf; got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def reliability_diagram(probs, labels, path, *, title: str = "Reliability diagram", ece: float | None = None):
    """Bar plot of per-bin accuracy vs confidence with the gap to the diagonal.

    Args:
      probs: [N, C] probabilities. labels: [N] int.
      ece: optional value to print in the legend (e.g. ``jaxuq.metrics.ece(probs, labels)``).
    """
    d = reliability_diagram_data(probs, labels)
    edges = np.append(d.edges.astype(np.float64), 1.0)[:16]
    left, width = edges[:15], np.diff(np.append(edges[:15], 1.0))
    conf, acc, cnt = d.conf[:15].copy(), d.acc[:15].copy(), d.counts[:15].copy()
    if d.counts[15]:  # conf == 1.0 samples: drawn in the last bin
        n14, n15 = cnt[14], d.counts[15]
        acc[14] = (acc[14] * n14 + d.acc[15] * n15) / (n14 + n15)
        conf[14] = (conf[14] * n14 + d.conf[15] * n15) / (n14 + n15)
        cnt[14] += n15
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    nz = cnt > 0
    ax.bar(left[nz], acc[nz], width[nz], align="edge", edgecolor="k", color="tab:blue", label="accuracy")
    ax.bar(left[nz], conf[nz] - acc[nz], width[nz], bottom=acc[nz], align="edge", color="tab:red",
           alpha=0.35, edgecolor="tab:red", hatch="//", label="gap")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title + (f"  (ECE {100 * ece:.2f}%)" if ece is not None else ""))
    ax.legend(loc="upper left")
    axh.bar(left, cnt / max(cnt.sum(), 1), width, align="edge", edgecolor="k", color="tab:gray")
    axh.set_xlabel("confidence (max p)")
    axh.set_ylabel("fraction")
    return _save(fig, path)


def risk_coverage_curve(curves: dict, path, *, title: str = "Risk-coverage"):
    """Selective risk vs coverage for one or more models.

    Args:
      curves: ``{name: (probs [N, C], labels [N])}``; samples sorted by max p descending.
    """
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, (probs, labels) in curves.items():
        probs, labels = np.asarray(probs, np.float32), np.asarray(labels)
        conf = probs.max(1)
        err = (probs.argmax(1) != labels).astype(np.float64)
        order = np.argsort(-conf, kind="stable")
        risk = np.cumsum(err[order]) / np.arange(1, len(err) + 1)
        cov = np.arange(1, len(err) + 1) / len(err)
        aurc = np.trapezoid(risk, cov) / (1 - 1 / len(err)) if len(err) > 1 else np.nan
        ax.plot(cov, risk, label=f"{name} (AURC {100 * aurc:.2f}%)")
    ax.set_xlabel("coverage")
    ax.set_ylabel("selective risk")
    ax.set_title(title)
    ax.set_xlim(0, 1)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def roc_curve_points(conf_ind, conf_ood) -> tuple[np.ndarray, np.ndarray]:
    """ROC ``(FPR, TPR)`` for detecting OOD by low confidence (one point per distinct value)."""
    a, b = np.asarray(conf_ind, np.float64), np.asarray(conf_ood, np.float64)
    s = np.concatenate([a, b])
    y = np.concatenate([np.zeros(a.size), np.ones(b.size)])
    order = np.argsort(s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(y)[last]
    fp = np.cumsum(1 - y)[last]
    return np.r_[0.0, fp / a.size], np.r_[0.0, tp / b.size]


def _hist_panel(ax, confs: Sequence[np.ndarray], labels: Sequence[str], title: str):
    allv = np.concatenate([np.asarray(c, np.float64) for c in confs])
    allv = allv[np.isfinite(allv)]
    lo, hi = (allv.min(), allv.max()) if allv.size else (0.0, 1.0)
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 41)
    for c, lab in zip(confs, labels):
        c = np.asarray(c, np.float64)
        ax.hist(c[np.isfinite(c)], bins=bins, alpha=0.45, label=lab, density=True)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("confidence (higher = InD)", fontsize=8)


def score_histograms(confs_ind, confs_oods, score_names, ood_titles, path):
    """One panel per score; histograms of InD and each OOD set (scio's first row)."""
    n = len(score_names)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3), squeeze=False)
    for i, name in enumerate(score_names):
        _hist_panel(axes[0, i], [confs_ind[i]] + [co[i] for co in confs_oods], ["InD", *ood_titles], name)
    axes[0, 0].legend(fontsize=7)
    return _save(fig, path)


def _roc_panel(ax, confs_ind, confs_ood_set, score_names, title):
    for i, name in enumerate(score_names):
        fpr, tpr = roc_curve_points(confs_ind[i], confs_ood_set[i])
        ax.plot(fpr, tpr, label=name, drawstyle="steps-post")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("FPR (InD flagged)", fontsize=8)
    ax.set_ylabel("TPR (OOD detected)", fontsize=8)


def roc_curves(confs_ind, confs_oods, score_names, ood_titles, path):
    """One panel per OOD set, one ROC per score (scio's second row)."""
    n = len(ood_titles)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.3), squeeze=False)
    for j, t in enumerate(ood_titles):
        _roc_panel(axes[0, j], confs_ind, confs_oods[j], score_names, f"InD vs {t}")
    axes[0, 0].legend(fontsize=7)
    return _save(fig, path)


def summary_plot(confs_ind, confs_oods, score_names, ood_titles, path):
    """scio's ``summary_plot``: histograms per score (top row), ROC per OOD set (bottom row).

    Args:
      confs_ind: per score, InD confidences [N] (``[S, N]``).
      confs_oods: per OOD set, per score, confidences (``[O][S, M]``).
    """
    ncol = max(len(score_names), len(ood_titles))
    fig, axes = plt.subplots(2, ncol, figsize=(3.6 * ncol, 6.6), squeeze=False)
    for i, name in enumerate(score_names):
        _hist_panel(axes[0, i], [confs_ind[i]] + [co[i] for co in confs_oods], ["InD", *ood_titles], name)
    for j, t in enumerate(ood_titles):
        _roc_panel(axes[1, j], confs_ind, confs_oods[j], score_names, f"InD vs OoD {j + 1}: {t}")
    for ax in list(axes[0, len(score_names):]) + list(axes[1, len(ood_titles):]):
        ax.axis("off")
    axes[0, 0].legend(fontsize=7)
    if len(ood_titles) < ncol:  # ROC legend in the free slot of the second row
        axes[1, -1].legend(*axes[1, 0].get_legend_handles_labels(), loc="center", fontsize=8, title="scores")
    else:
        axes[1, 0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def summary_table(evals, score_names, ood_titles, metric_names, *, layers=None, print_it: bool = True,
                  precision: int = 3) -> str:
    """scio's ``summary_table``: one row per score (with its recorded layers), one column per OOD
    set, each cell ``m1 / m2 / ...``; the best score per (OOD set, metric) is bold.

    Args:
      evals: ``[score, ood set, metric]`` array.
      metric_names: labels of the metrics, in order. ``layers``: per score, a list of layer names.
    Returns:
      the rendered text.
    """
    from rich.console import Console
    from rich.table import Table

    evals = np.asarray(evals, np.float64)
    s, o, m = evals.shape
    if (len(score_names), len(ood_titles), len(metric_names)) != (s, o, m):
        raise ValueError(f"evals has shape {evals.shape}; got {len(score_names)} scores, "
                         f"{len(ood_titles)} OOD titles, {len(metric_names)} metric names")
    lower_better = [("FPR" in n and "TPR" not in n) for n in metric_names]
    best = np.where(np.array(lower_better)[None, None], evals == np.nanmin(evals, 0, keepdims=True),
                    evals == np.nanmax(evals, 0, keepdims=True))
    t = Table(title=f"Evaluation of {s} scores against {o} OoD sets and {m} metrics:\n"
                    + " / ".join(metric_names), show_lines=True)
    t.add_column("Scores\n↳ Recorded layers")
    for j, title in enumerate(ood_titles):
        t.add_column(f"OoD {j + 1}:\n{title}", justify="center")
    for i, name in enumerate(score_names):
        label = name + (f"\n↳ {', '.join(layers[i])}" if layers and layers[i] else "")
        cells = []
        for j in range(o):
            parts = [(f"[bold]{evals[i, j, k]:.{precision}f}[/bold]" if best[i, j, k]
                      else f"{evals[i, j, k]:.{precision}f}") for k in range(m)]
            cells.append(" / ".join(parts))
        t.add_row(label, *cells)
    console = Console(width=160, record=True, force_terminal=False)
    with console.capture() as cap:
        console.print(t)
    text = cap.get()
    if print_it:
        Console(width=160).print(t)
    return text
