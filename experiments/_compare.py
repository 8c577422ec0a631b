"""Comparison and rendering of the experiments: TU-vs-jaxuq rows and tables, the rows where TU's
value depends on its quirks, the parity summary, and text/plot rendering of the tables.

One comparison: :func:`compare_row` defines ``|Δ|`` (NaN only equals NaN; a NaN against a number is
``inf``; equal values, infinities included, are 0); :func:`compare_tables` and :func:`table_rows`
are built on it.
"""

from __future__ import annotations

import io
import math

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.table import Table

from jaxuq.report.plots import summary_plot
from jaxuq.report.table import build_tables

__all__ = [
    "compare_row", "compare_tables", "comparison_table", "max_diff", "mixed_ties", "parity_summary",
    "render_text", "saturated", "score_plot", "table_rows", "tables_text", "tu_quirk_rows",
]  # fmt: skip


def compare_row(metric: str, jaxuq, tu=None, published=None) -> dict:
    """One comparison row ``{"metric", "published", "tu", "jaxuq", "abs_diff"}``; ``abs_diff`` is
    ``|tu - jaxuq|`` (None when TU was not run; 0 when both are NaN, as TU's undefined values are,
    or equal; inf when only one is NaN)."""
    jaxuq = float(jaxuq)
    tu = None if tu is None else float(tu)
    if tu is None:
        diff = None
    elif math.isnan(tu) or math.isnan(jaxuq):  # NaN only equals NaN; a NaN against a number is inf
        diff = 0.0 if math.isnan(tu) and math.isnan(jaxuq) else math.inf
    else:
        diff = 0.0 if tu == jaxuq else abs(tu - jaxuq)  # equal infinities are equal, not NaN apart
    return {"metric": metric, "published": published, "tu": tu, "jaxuq": jaxuq, "abs_diff": diff}


def compare_tables(ours: dict, ref: dict, tol: float = 1e-5) -> dict:
    """Key-by-key comparison of two metric tables through :func:`compare_row`: ``{"missing": keys of
    ref not in ours, "extra": ..., "diffs": {key: (ours, ref, |Δ|)}, "bad": keys with |Δ| > tol,
    "max_abs_diff": the largest |Δ| (inf when one side is NaN and the other is not)}``."""
    common = sorted(set(ours) & set(ref))
    rows = [compare_row(k, ours[k], ref[k]) for k in common]
    diffs = {r["metric"]: (r["jaxuq"], r["tu"], r["abs_diff"]) for r in rows}
    return {
        "missing": sorted(set(ref) - set(ours)),
        "extra": sorted(set(ours) - set(ref)),
        "diffs": diffs,
        "bad": [k for k, (_, _, d) in diffs.items() if not d <= tol],
        "max_abs_diff": max_diff(rows) or 0.0,
    }


def table_rows(tu: dict | None, jx: dict, published: dict | None = None, prefix: str = "") -> list[dict]:
    """Comparison rows (:func:`compare_row`) of two TU-style metric tables, in ``jx``'s key order;
    ``tu=None`` (TU not run) gives rows without a TU value."""
    published = published or {}
    return [
        compare_row(prefix + k, v, None if tu is None else tu[k], published.get(k)) for k, v in jx.items()
    ]


def max_diff(rows) -> float | None:
    """The largest ``abs_diff`` of comparison rows (None when TU was not run)."""
    return max((r["abs_diff"] for r in rows if r["abs_diff"] is not None), default=None)


def mixed_ties(values, labels) -> bool:
    """Whether some group of equal ``values`` holds both labels: there TU's value depends on the
    tie order (unstable sort) and ours does not."""
    v, lab = np.asarray(values), np.asarray(labels)
    order = np.argsort(v, kind="stable")
    v, lab = v[order], lab[order]
    starts = np.r_[True, v[1:] != v[:-1]]
    group = np.cumsum(starts) - 1
    lo, hi = np.full(group[-1] + 1, 2), np.full(group[-1] + 1, -1)
    np.minimum.at(lo, group, lab)
    np.maximum.at(hi, group, lab)
    return bool((lo != hi).any())


def _sigmoid_mixed(s_id, s_ood, batch_size: int) -> bool:
    """Whether TU's per-batch sigmoid (torchmetrics squashes a batch with any score outside [0, 1])
    applies to some test batches and not to others, which reorders the scores."""
    flags = [
        bool(((b < 0) | (b > 1)).any())
        for s in (s_id, s_ood)
        for b in np.split(s, range(batch_size, len(s), batch_size))
    ]
    return len(set(flags)) > 1


def tu_quirk_rows(scores, z, y, batch_size: int) -> set[str]:
    """Comparison rows where TU's value depends on its quirks and ours does not (README, deviations
    from TU): ``ood/{AUROC, AUPR}`` of a criterion/OOD set whose batches TU sigmoids only in part, or
    whose scores, after TU's float32 sigmoid, tie across ID and OOD; ``ood/SCOD_*`` when raw scores
    tie across ID and OOD (TU's unstable sort); ``test/sc/*`` when equal ID confidences mix right
    and wrong. ``scores``: ``{criterion: (id [N], {ood set: [M]})}``; ``z``, ``y``: ID logits, labels."""
    out = set()
    for c, (s_id, s_oods) in scores.items():
        for o, s_ood in s_oods.items():
            s = np.concatenate([s_id, s_ood]).astype(np.float32)
            is_ood = np.r_[np.zeros(len(s_id), int), np.ones(len(s_ood), int)]
            sig = (1 / (1 + np.exp(-s))).astype(np.float32)
            if _sigmoid_mixed(s_id, s_ood, batch_size) or mixed_ties(sig, is_ood) or mixed_ties(s, is_ood):
                out |= {f"{c}/{o}: ood/AUROC", f"{c}/{o}: ood/AUPR"}
            if mixed_ties(s, is_ood):
                out |= {f"{c}/{o}: ood/SCOD_{k}" for k in ("AUGRC", "AURC", "Cov_5Risk", "Risk_80Cov")}
    p = np.asarray(jax.nn.softmax(jnp.asarray(z), -1))
    if mixed_ties(p.max(-1), p.argmax(-1) != y):
        out |= {f"test/sc/{k}" for k in ("AUGRC", "AURC", "Cov_5Risk", "Risk_80Cov")}
    return out


def saturated(logits) -> dict:
    """How many float32 max-softmax values are exactly 1 (ties MSP cannot order) per set."""
    z, z_oods = logits
    return {
        name: int((np.asarray(jax.nn.softmax(jnp.asarray(v), -1)).max(-1) == 1.0).sum())
        for name, v in {"ID": z, **z_oods}.items()
    }


def parity_summary(rows: list[dict], same_rows: list[dict], quirky: set[str]) -> tuple[str, dict]:
    """The text line and results entries summing up a TU-vs-jaxuq comparison: max |Δ| end to end,
    on the rows free of TU's quirks (:func:`tu_quirk_rows`), and of TU run on jaxuq's own logits."""
    free = [r for r in rows if not r["tu_quirk"]]
    res = {
        "max_abs_diff": max_diff(rows),
        "max_abs_diff_quirk_free": max_diff(free),
        "max_abs_diff_same_logits": max_diff(same_rows),
        "tu_quirk_rows": sorted(quirky),
    }
    if res["max_abs_diff"] is None:
        return "", res

    def fmt(v):
        return "-" if v is None else f"{v:.1e}"

    text = (
        f"max |Δ| TU vs jaxuq: {fmt(res['max_abs_diff'])} over {len(rows)} rows; "
        f"{fmt(res['max_abs_diff_quirk_free'])} without the {len(quirky)} rows where TU's value depends on "
        f"its per-batch sigmoid or tie order (README: deviations from TU): {sorted(quirky) or 'none'}; "
        f"TU on jaxuq's own logits: {fmt(res['max_abs_diff_same_logits'])}\n"
    )
    return text, res


# ------------------------------------------------------------------------------------ rendering
def comparison_table(
    rows: list[dict],
    title: str = "published | TU 0.13.0 here | jaxuq here",
    reference: str = "TU 0.13.0 here",
):
    """A rich ``Table`` of :func:`compare_row` rows (6 significant digits; |Δ| in scientific
    notation); ``reference`` names the ``tu`` column (scio's recorded outputs for the scio tutorial)."""
    def num(v, fmt="{:.6g}"):
        return "-" if v is None else (fmt.format(v) if isinstance(v, int | float) else str(v))

    t = Table(title=title)
    for c in ("metric", "published", reference, "jaxuq here", "|Δ|"):
        t.add_column(c, justify="left" if c == "metric" else "right")
    for r in rows:
        t.add_row(
            r["metric"], num(r["published"]), num(r["tu"]), num(r["jaxuq"]), num(r["abs_diff"], "{:.1e}")
        )
    return t


def render_text(*renderables) -> str:
    """Render rich tables (or strings) to plain text, 120 columns wide."""
    console = Console(record=True, width=120, file=io.StringIO())
    for r in renderables:
        console.print(r)
    return console.export_text()


def tables_text(title: str, table: dict) -> str:
    """TU's printed tables of ``table`` (``jaxuq.report``) as text under ``title``."""
    return render_text(title, *build_tables(table))


def score_plot(scores: dict, path) -> None:
    """scio-style histograms + ROC curves of OOD criteria ``{name: (id [N], {ood set: [M]})}``
    (higher = more OOD; plotted as confidence = -score)."""
    names = list(scores)
    oods = list(next(iter(scores.values()))[1])
    summary_plot(
        [-scores[c][0] for c in names], [[-scores[c][1][o] for c in names] for o in oods], names, oods, path
    )


def drift(a, ref) -> np.ndarray:
    """Per-step relative loss difference ``|a - ref| / |ref|`` (the lockstep tool's and methods_cifar's
    drift profiles)."""
    ref = np.asarray(ref, np.float64)
    return np.abs(np.asarray(a, np.float64) - ref) / np.maximum(np.abs(ref), 1e-30)
