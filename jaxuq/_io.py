"""Atomic file output: a reader (or a crash) sees the old file or the whole new one, never half of it."""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["jsonable", "write_atomic", "write_json_atomic", "write_text_atomic"]


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on ``.{name}.tmp`` in the same folder, then ``os.replace`` it to ``path``.

    Creates the parent folder; on any error the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`write_atomic`)."""
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def jsonable(v):
    """``v`` with numpy/JAX scalars as Python numbers and non-finite floats as the strings ``"nan"``,
    ``"inf"``, ``"-inf"`` (JSON has no literals for them), through dicts, lists and tuples."""
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    if hasattr(v, "item") and getattr(v, "size", 1) == 1:  # numpy/JAX scalars and 1-element arrays
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def write_json_atomic(path: str | os.PathLike, obj, **dumps_kwargs) -> Path:
    """``json.dumps(jsonable(obj), **dumps_kwargs)`` to ``path`` atomically (:func:`write_text_atomic`)."""
    return write_text_atomic(path, json.dumps(jsonable(obj), **dumps_kwargs))
