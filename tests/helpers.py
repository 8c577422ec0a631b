"""Shared test helpers: real data lookup and the torch/TU parity reference.

Rules (see README, "Tests"):
- Real-data tests call ``data_path(rel)``. Without ``JAXUQ_DATA_DIR`` they skip; with it
  set (as in CI) a missing file is a failure, never a skip.
- Parity tests call ``require("torch")`` / ``require("torch_uncertainty")``. With
  ``JAXUQ_REQUIRE_PARITY=1`` (set by ``make test`` and CI) a missing reference is a
  failure; otherwise the test skips so that the fast suite runs without torch.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"


def data_path(rel: str) -> Path:
    raw = os.environ.get("JAXUQ_DATA_DIR")
    if not raw:
        pytest.skip("JAXUQ_DATA_DIR not set (real-data test)")
    path = Path(raw) / rel
    if not path.exists():
        pytest.fail(f"JAXUQ_DATA_DIR={raw} is set but {path} is missing")
    return path


def require(module: str):
    if os.environ.get("JAXUQ_REQUIRE_PARITY") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module)
