"""jaxuq model checkpoints: an orbax directory of variables + a small JSON meta.

Layout of a checkpoint directory ``out/``::

    out/meta.json        {"format": "jaxuq-model", "format_version": 1, "arch": ..., "kwargs": {...},
                          "num_members": null | M, "sources": [{"path", "sha256", "bytes"}], ...}
    out/variables/       orbax StandardCheckpointer directory: {"params": ..., "batch_stats": ...}

``num_members = M`` marks a stacked ensemble: every leaf has a leading member axis ``[M, ...]``
(``jax.vmap(module.apply, in_axes=(0, None))`` gives logits ``[M, N, C]``).

Writes are atomic: everything goes into a temporary directory beside ``out`` that is renamed over
``out`` at the end; a failure leaves no partial output and an existing ``out`` is kept unless
``force=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FORMAT", "META_FILE", "VARIABLES_DIR", "load", "read_meta", "save"]

FORMAT = "jaxuq-model"
META_FILE = "meta.json"
VARIABLES_DIR = "variables"


def _checkpointer():
    import orbax.checkpoint as ocp  # noqa: PLC0415

    return ocp.StandardCheckpointer()


def save(path, variables: Any, meta: dict, force: bool = False) -> Path:
    """Write ``variables`` (a pytree of arrays) and ``meta`` (JSON-able, must hold ``arch``/``kwargs``)
    to the directory ``path`` atomically. Raises ``FileExistsError`` when ``path`` exists and not
    ``force``; ``OSError`` when the parent cannot be written."""
    import jax  # noqa: PLC0415

    out = Path(path).absolute()
    if "arch" not in meta or "kwargs" not in meta:
        raise ValueError("save: meta needs 'arch' and 'kwargs'")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists (use force=True / --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tree = jax.tree.map(lambda a: np.asarray(a), variables)
        ckptr = _checkpointer()
        ckptr.save(tmp / VARIABLES_DIR, tree)
        ckptr.wait_until_finished()
        ckptr.close()
        full = {"format": FORMAT, "format_version": 1, **meta}
        (tmp / META_FILE).write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_meta(path) -> dict:
    p = Path(path) / META_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{path}: not a jaxuq checkpoint (no {META_FILE})")
    meta = json.loads(p.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{p}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load(path):
    """``(module, variables, meta)``: the module is ``jaxuq.models.get(meta['arch'], **meta['kwargs'])``;
    ``variables`` a dict of jax arrays (leading ``[M]`` axis when ``meta['num_members']`` is set)."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from jaxuq.models import get  # noqa: PLC0415

    meta = read_meta(path)
    module = get(meta["arch"], **meta["kwargs"])
    raw = _checkpointer().restore(Path(path).absolute() / VARIABLES_DIR)
    variables = jax.tree.map(jnp.asarray, raw)
    return module, variables, meta
