"""TU's printed result tables (``TUEvaluationLoop._print_results``) with rich, plus JSON output.

Same groups and order (Classification ``test/cls``, Segmentation, Regression, Calibration
``test/cal``, OOD Detection ``ood*``, Selective Classification ``test/sc``, Post-Processing
``test/post``, ``Distribution Shift lvl{k}`` ``shift*``, Complexity ``test/cplx``), rows sorted by
the Python string order of the last key component, TU's formats (``{:.3%}`` for the percent
metrics, ``x.xx G/M/K`` for flops/params, ``{:.5f}`` otherwise) and 12/25-character columns (long
names are cut with "…" by rich). ``test/ens_*`` keys match no group and are not printed, as in TU.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console, Group
from rich.table import Table

from jaxuq._io import jsonable, write_text_atomic

__all__ = ["PERCENTAGE_METRICS", "INT_METRICS", "format_value", "build_tables", "print_table", "write_json"]

PERCENTAGE_METRICS = (
    "Acc", "AUPR", "AUROC", "FPR95", "Cov_5Risk", "Risk_80Cov", "pixAcc", "mIoU",
    "AURC", "AUGRC", "mAcc", "ECE", "MCE", "aECE", "SmECE",
)  # fmt: skip
INT_METRICS = ("flops", "params")

# (group key, key prefix, column title), in TU's printing order
_GROUPS = (
    ("cls", "test/cls", "Classification"),
    ("seg", "test/seg", "Segmentation"),
    ("reg", "test/reg", "Regression"),
    ("cal", "test/cal", "Calibration"),
    ("ood", "ood", "OOD Detection"),
    ("sc", "test/sc", "Selective Classification"),
    ("post", "test/post", "Post-Processing"),
    ("shift", "shift", None),
    ("cplx", "test/cplx", "Complexity"),
)
# TU tests the prefixes in this order (first match wins)
_MATCH_ORDER = ("cls", "cal", "ood", "shift", "sc", "post", "seg", "reg", "cplx")


def _item(value) -> float | int:
    if hasattr(value, "item"):
        value = value.item()
    return value


def format_value(name: str, value) -> str:
    """TU's cell text for metric ``name`` (the last key component)."""
    v = _item(value)
    if name in PERCENTAGE_METRICS:
        return f"{v:.3%}"
    if name in INT_METRICS:
        if v >= 1e9:
            return f"{v / 1e9:.2f} G"
        if v >= 1e6:
            return f"{v / 1e6:.2f} M"
        if v >= 1e3:
            return f"{v / 1e3:.2f} K"
        return f"{int(v):}"
    return f"{v:.5f}"


def _group_metrics(results: dict) -> dict[str, dict]:
    prefixes = {g: p for g, p, _ in _GROUPS}
    metrics: dict[str, dict] = {}
    for key, value in results.items():
        for g in _MATCH_ORDER:
            if key.startswith(prefixes[g]):
                metrics.setdefault(g, {})[key.split("/")[-1]] = value
                break
    return metrics


def build_tables(results: dict, stage: str = "test") -> list[Table]:
    """The rich tables TU would print for ``results`` (``{key: float}``)."""
    metrics = _group_metrics(results)
    first_col = f"{stage.capitalize()} metric"
    tables = []
    for g, _, title in _GROUPS:
        if g not in metrics:
            continue
        group = dict(metrics[g])
        if g == "shift":
            title = f"Distribution Shift lvl{int(_item(group['severity']))}"
        table = Table()
        table.add_column(first_col, justify="center", style="cyan", width=12)
        table.add_column(title, justify="center", style="magenta", width=25)
        for name, value in sorted(group.items()):
            if g == "shift" and name == "severity":
                continue
            table.add_row(name, format_value(name, value))
        tables.append(table)
    return tables


def print_table(results: dict, console: Console | None = None, stage: str = "test") -> None:
    """Print ``results`` exactly like TU's ``TUEvaluationLoop`` (rich tables, TU order/formats).

    Args:
      results: ``{key: float}`` as returned by :func:`jaxuq.evaluation.classification_table`.
      console: a ``rich.console.Console`` (default: rich's global console).
      stage: the first column reads ``f"{stage.capitalize()} metric"``.
    """
    if console is None:
        from rich import get_console

        console = get_console()
    console.print(Group(*build_tables(results, stage)))


def write_json(results: dict, path) -> Path:
    """Write ``results`` as JSON to ``path`` atomically (temp file + ``os.replace``).

    NaN / inf values are written as the strings ``"nan"`` / ``"inf"`` / ``"-inf"``.
    """
    return write_text_atomic(path, json.dumps(jsonable(results), indent=2, sort_keys=True) + "\n")
