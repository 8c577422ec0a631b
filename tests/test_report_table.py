"""jaxuq.report.print_table vs TU 0.13.0's own printer (TUEvaluationLoop._print_results)."""

import io
import json
import math

import pytest
from rich.console import Console

from jaxuq.report import format_value, print_table, write_json
from tests.helpers import require

RESULTS = {
    "test/cls/Acc": 0.912345, "test/cls/Brier": 0.1234567, "test/cls/NLL": 0.30001, "test/cls/Entropy": 0.2,
    "test/cal/ECE": 0.0123, "test/cal/MCE": 0.2, "test/cal/aECE": 0.01, "test/cal/SmECE": 0.011,
    "test/sc/AURC": 0.01, "test/sc/AUGRC": 0.005, "test/sc/Cov_5Risk": 0.9, "test/sc/Risk_80Cov": 0.02,
    "ood/AUROC": 0.9, "ood/AUPR": 0.8, "ood/FPR95": 0.3, "ood/SCOD_AURC": 0.1, "ood/SCOD_AUGRC": 0.05,
    "ood/SCOD_Cov_5Risk": 0.4, "ood/SCOD_Risk_80Cov": 0.1, "ood/Entropy": 1.2, "ood/ens_MI": 0.1,
    "ood/ens_Disagreement": 0.3, "ood/ens_Entropy": 0.4, "test/ens_MI": 0.2, "test/ens_Entropy": 0.5,
    "test/post/ECE": 0.02, "shift/Acc": 0.5, "shift/severity": 3, "shift/Entropy": 0.7,
    "test/cplx/flops": 72099840, "test/cplx/params": 44426,
}  # fmt: skip


def _console():
    return Console(file=io.StringIO(), width=100, force_terminal=False, color_system=None)


def _render(results):
    c = _console()
    print_table(results, c)
    return c.file.getvalue()


def test_formats_and_order_without_torch():
    text = _render(RESULTS)
    assert "91.234%" in text and "0.12346" in text and "72.10 M" in text and "44.43 K" in text
    assert "SCOD_Cov_5R…" in text and "0.40000" in text  # truncated name, SCOD not in percent
    assert "Distribution Shift lvl3" in text
    titles = ["Classification", "Calibration", "OOD Detection", "Selective Classification", "Post-Processing",
              "Distribution Shift", "Complexity"]  # fmt: skip
    pos = [text.index(t) for t in titles]
    assert pos == sorted(pos)
    assert "0.50000" not in text  # test/ens_Entropy is not printed
    assert format_value("params", 999) == "999" and format_value("flops", 3.6e9) == "3.60 G"


@pytest.mark.parity
@pytest.mark.parametrize("drop", [(), ("ood", "shift", "test/post"), ("test/cls", "test/cplx")])
def test_print_table_identical_to_tu_printer(drop, monkeypatch):
    torch = require("torch")
    el = require("torch_uncertainty.utils.evaluation_loop")
    results = {k: v for k, v in RESULTS.items() if not k.startswith(drop)} if drop else RESULTS
    c = _console()
    monkeypatch.setattr(el, "get_console", lambda: c)
    el.TUEvaluationLoop._print_results([{k: torch.tensor(v) for k, v in results.items()}], "test")
    assert _render(results) == c.file.getvalue()


def test_write_json_atomic(tmp_path):
    path = write_json({"test/cls/Acc": 0.5, "test/cls/NLL": math.inf, "x": math.nan}, tmp_path / "a" / "r.json")
    data = json.loads(path.read_text())
    assert data == {"test/cls/Acc": 0.5, "test/cls/NLL": "inf", "x": "nan"}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]
