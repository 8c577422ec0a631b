"""Plots (matplotlib figures; PNG or PDF by the file suffix) and scio's summary table.

- :func:`reliability_diagram` — TU's 15-bin top-label binning (+ the conf == 1.0 slot).
- :func:`risk_coverage_curve` — selective risk vs coverage (score = max p).
- :func:`score_histograms` — one panel per score, one histogram per scenario (InD + OOD sets).
- :func:`roc_curves` — one panel per OOD set, one ROC per score (OOD positive).
- :func:`summary_plot` — scio's ``summary_plot``: histograms row over ROC row.
- :func:`summary_table` — scio's ``summary_table``: scores x OOD sets x metrics, printed with rich.

Every plot builds a :class:`matplotlib.figure.Figure` without pyplot: no global figure state and
no backend change, so importing this module in a notebook leaves its backend alone. Pass ``ax=``
(a sequence of Axes for the multi-panel plots) to draw into your own figure. Each function returns
the figure and writes it only when ``path`` is given, to a temporary file renamed into place, so no
half-written figure is left. matplotlib is the ``[plots]`` extra: ``pip install jaxuq[plots]``.

Confidences follow scio (higher = more in-distribution); pass ``-score`` for TU-style scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxuq._io import write_atomic
from jaxuq.metrics import reliability_diagram_data

__all__ = [
    "reliability_diagram",
    "risk_coverage_curve",
    "score_histograms",
    "roc_curves",
    "summary_plot",
    "summary_table",
    "roc_curve_points",
]


def _figure(figsize):
    """A new pyplot-free ``Figure``; a clear error when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("jaxuq.report.plots needs matplotlib: pip install 'jaxuq[plots]'") from e
    return Figure(figsize=figsize)


def _axes(ax, shape: tuple[int, int], figsize):
    """``(figure, axes [rows, cols])``: new subplots, or the caller's ``ax`` checked against ``shape``."""
    if ax is None:
        fig = _figure(figsize)
        return fig, fig.subplots(*shape, squeeze=False)
    axes = np.asarray(ax, dtype=object)
    if axes.size != shape[0] * shape[1]:
        raise ValueError(f"ax: need {shape[0] * shape[1]} Axes (a {shape[0]} x {shape[1]} grid); "
                         f"got {axes.size}")
    return axes.flat[0].figure, axes.reshape(shape)


def _finish(fig, path):
    """Save ``fig`` to ``path`` (``.png`` / ``.pdf``) atomically when a path is given; return ``fig``."""
    if path is None:
        return fig
    path = Path(path)
    fmt = path.suffix.lower()[1:]
    if fmt not in ("png", "pdf"):
        raise ValueError(f"plot path must end in .png or .pdf; got {path}")
    write_atomic(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=120, bbox_inches="tight"))
    return fig


def reliability_diagram(probs, labels, path=None, *, ax=None, title: str = "Reliability diagram",
                        ece: float | None = None):
    """Bar plot of per-bin accuracy vs confidence with the gap to the diagonal, over a histogram
    of the confidences.

    Args:
      probs: [N, C] probabilities. labels: [N] int.
      path: ``.png`` / ``.pdf`` to write (atomically); ``None`` writes nothing.
      ax: an Axes to draw the accuracy bars into (the confidence histogram is then left out).
      ece: optional value to print in the title (e.g. ``jaxuq.metrics.ece(probs, labels)``).
    Returns:
      the ``matplotlib.figure.Figure``.
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
    if ax is None:
        fig = _figure((5, 6))
        ax, axh = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
        axh.bar(left, cnt / max(cnt.sum(), 1), width, align="edge", edgecolor="k", color="tab:gray")
        axh.set_xlabel("confidence (max p)")
        axh.set_ylabel("fraction")
    else:
        fig = _axes(ax, (1, 1), None)[0]
        ax.set_xlabel("confidence (max p)")
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
    return _finish(fig, path)


def risk_coverage_curve(curves: dict, path=None, *, ax=None, title: str = "Risk-coverage"):
    """Selective risk vs coverage for one or more models.

    Args:
      curves: ``{name: (probs [N, C], labels [N])}``; samples sorted by max p descending.
      path: ``.png`` / ``.pdf`` to write (atomically); ``None`` writes nothing.
      ax: an Axes to draw into (default: a new figure).
    Returns:
      the ``matplotlib.figure.Figure``.
    """
    fig, axes = _axes(ax, (1, 1), (5, 4))
    ax = axes[0, 0]
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
    return _finish(fig, path)


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


def score_histograms(confs_ind, confs_oods, score_names, ood_titles, path=None, *, ax=None):
    """One panel per score; histograms of InD and each OOD set (scio's first row).

    ``ax``: one Axes per score (default: a new figure). Returns the figure; writes it if ``path``.
    """
    n = len(score_names)
    fig, axes = _axes(ax, (1, n), (3.6 * n, 3))
    for i, name in enumerate(score_names):
        _hist_panel(axes[0, i], [confs_ind[i]] + [co[i] for co in confs_oods], ["InD", *ood_titles], name)
    axes[0, 0].legend(fontsize=7)
    return _finish(fig, path)


def _roc_panel(ax, confs_ind, confs_ood_set, score_names, title):
    for i, name in enumerate(score_names):
        fpr, tpr = roc_curve_points(confs_ind[i], confs_ood_set[i])
        ax.plot(fpr, tpr, label=name, drawstyle="steps-post")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("FPR (InD flagged)", fontsize=8)
    ax.set_ylabel("TPR (OOD detected)", fontsize=8)


def roc_curves(confs_ind, confs_oods, score_names, ood_titles, path=None, *, ax=None):
    """One panel per OOD set, one ROC per score (scio's second row).

    ``ax``: one Axes per OOD set (default: a new figure). Returns the figure; writes it if ``path``.
    """
    n = len(ood_titles)
    fig, axes = _axes(ax, (1, n), (3.6 * n, 3.3))
    for j, t in enumerate(ood_titles):
        _roc_panel(axes[0, j], confs_ind, confs_oods[j], score_names, f"InD vs {t}")
    axes[0, 0].legend(fontsize=7)
    return _finish(fig, path)


def summary_plot(confs_ind, confs_oods, score_names, ood_titles, path=None, *, ax=None):
    """scio's ``summary_plot``: histograms per score (top row), ROC per OOD set (bottom row).

    Args:
      confs_ind: per score, InD confidences [N] (``[S, N]``).
      confs_oods: per OOD set, per score, confidences (``[O][S, M]``).
      path: ``.png`` / ``.pdf`` to write (atomically); ``None`` writes nothing.
      ax: a ``2 x max(S, O)`` grid of Axes (default: a new figure).
    Returns:
      the ``matplotlib.figure.Figure``.
    """
    ncol = max(len(score_names), len(ood_titles))
    fig, axes = _axes(ax, (2, ncol), (3.6 * ncol, 6.6))
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
    if ax is None:
        fig.tight_layout()
    return _finish(fig, path)


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
