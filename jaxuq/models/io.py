"""jaxuq model checkpoints: an orbax directory of variables + a small JSON meta.

Layout of a checkpoint directory ``out/``::

    out/meta.json        {"format": "jaxuq-model", "format_version": 1, "arch": ..., "kwargs": {...},
                          "num_members": null | M, "sources": [{"path", "sha256", "bytes"}], ...}
    out/variables/       orbax StandardCheckpointer directory: {"params": ..., "batch_stats": ...}

``num_members = M`` marks a stacked ensemble: every leaf has a leading member axis ``[M, ...]``
(``jax.vmap(module.apply, in_axes=(0, None))`` gives logits ``[M, N, C]``).

Writes are atomic: everything goes into a temporary directory ``.out.tmp-PID-*`` beside ``out`` that is
renamed to ``out`` at the end without replacing (an ``out`` that appeared meanwhile makes the save fail);
a failure leaves no partial output. ``force=True`` replaces only a previous jaxuq checkpoint (a folder
with this format's ``meta.json``), never the working folder or a parent of it. Temporary folders left by
killed saves are removed by the next save to the same ``out``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FORMAT", "META_FILE", "VARIABLES_DIR", "check_path", "check_replaceable", "clean_stale", "load",
           "read_meta", "save"]

FORMAT = "jaxuq-model"
META_FILE = "meta.json"
VARIABLES_DIR = "variables"


def _checkpointer():
    import orbax.checkpoint as ocp  # noqa: PLC0415

    return ocp.StandardCheckpointer()


def save(path, variables: Any, meta: dict, force: bool = False) -> Path:
    """Write ``variables`` (a pytree of arrays) and ``meta`` (JSON-able, must hold ``arch``/``kwargs``)
    to the directory ``path`` atomically.

    Raises ``FileExistsError`` when ``path`` exists and not ``force``, or when it appears while writing
    (the final rename never replaces); ``ValueError`` when ``force`` would replace something that is not
    a jaxuq checkpoint (no ``meta.json`` of this format) or the working folder / one of its parents;
    ``OSError`` when the parent cannot be written. Temporary folders of interrupted saves of ``path``
    (their process is gone) are removed first.
    """
    import jax  # noqa: PLC0415

    from jaxuq._io import jsonable  # noqa: PLC0415

    out = Path(path).absolute()
    check_path(out)
    if "arch" not in meta or "kwargs" not in meta:
        raise ValueError("save: meta needs 'arch' and 'kwargs'")
    text = json.dumps(jsonable({"format": FORMAT, "format_version": 1, **meta}), indent=2, allow_nan=False)
    if out.exists() or out.is_symlink():
        if not force:
            raise FileExistsError(f"{out} exists (use force=True / --force to replace it)")
        check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        with _sigint_deferred() as interrupted:
            _write_variables(tmp / VARIABLES_DIR, jax.tree.map(np.asarray, variables))
            (tmp / META_FILE).write_text(text + "\n")
            if interrupted():
                raise KeyboardInterrupt
            _move_into_place(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def check_path(out: Path) -> None:
    """Raise ``ValueError`` for an output path orbax/tensorstore cannot write (not valid UTF-8)."""
    try:
        os.fsencode(out).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"output path {os.fsencode(out)!r} is not valid UTF-8, which the checkpoint "
                         "writer (tensorstore) requires; choose a UTF-8 name") from None


@contextlib.contextmanager
def _sigint_deferred():
    """Hold a Ctrl-C (SIGINT) until orbax's writer threads are done; yields ``interrupted()`` to test
    for one before committing. A pending SIGINT is raised as ``KeyboardInterrupt`` at the latest on exit,
    so that the caller removes a finished temporary folder instead of racing the writer threads."""
    got: list[int] = []
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is signal.SIG_IGN):
        yield lambda: False
        return
    previous = signal.signal(signal.SIGINT, lambda *_: got.append(1))
    try:
        yield lambda: bool(got)
    finally:
        signal.signal(signal.SIGINT, previous)
    if got:
        raise KeyboardInterrupt


def _write_variables(dest: Path, tree) -> None:
    """orbax save of ``tree`` to ``dest``; tensorstore's I/O failures (a ``ValueError`` carrying
    ``os_error_code``, e.g. 28 = disk full) become ``OSError`` with that errno, and orbax's background
    threads' own error logs are silenced (the error is raised here, once)."""
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    absl_log.setLevel(logging.CRITICAL)
    ckptr = _checkpointer()
    try:
        ckptr.save(dest, tree)
        ckptr.wait_until_finished()
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - tensorstore raises ValueError for OS errors
        m = re.search(r"os_error_code='?(\d+)", str(e))
        if m is None:
            raise
        code = int(m.group(1))
        raise OSError(code, f"{os.strerror(code)} (while writing {dest})") from None
    finally:
        with contextlib.suppress(Exception):
            ckptr.close()
        absl_log.setLevel(level)


def check_replaceable(out: Path) -> None:
    """Raise ``ValueError`` unless ``out`` is a previous jaxuq checkpoint that may be replaced: a real
    folder (not a link) holding this format's ``meta.json``, and not the working folder or a parent of it."""
    out = Path(out).absolute()
    cwd = Path.cwd().resolve()
    if out.is_symlink() or not out.is_dir():
        raise ValueError(f"{out} exists and is not a jaxuq checkpoint folder; refusing to replace it "
                         "(remove it yourself or choose another output)")
    if out.resolve() == cwd or out.resolve() in cwd.parents:
        raise ValueError(f"{out} is the working folder or one of its parents; refusing to replace it")
    try:
        read_meta(out)
    except (OSError, ValueError) as e:
        raise ValueError(f"{out} exists and is not a jaxuq checkpoint ({e}); --force/force=True only "
                         "replaces a previous jaxuq output; remove it yourself or choose another output"
                         ) from None


def _move_into_place(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished ``tmp`` to ``out`` without ever replacing a folder that appeared meanwhile;
    with ``force`` a previous jaxuq checkpoint at ``out`` is first moved aside (and restored on failure)."""
    from jaxuq._io import rename_noreplace  # noqa: PLC0415

    if not (force and out.exists()):
        rename_noreplace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
    os.rename(out, old / "x")
    try:
        check_replaceable(old / "x")  # what was moved is what was checked (no swap in between)
        rename_noreplace(tmp, out)
    except BaseException:
        rename_noreplace(old / "x", out)
        os.rmdir(old)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(out: Path) -> list[Path]:
    """Remove ``.{name}.tmp-PID-*`` folders beside ``out`` left by saves whose process ``PID`` is gone
    (killed, interrupted); a stale ``.{name}.old-PID-*`` (a replaced checkpoint) is put back at ``out``
    when ``out`` is missing, else removed. Returns the removed/restored paths."""
    done, prefix = [], f".{Path(out).name}."
    for p in sorted(q for q in Path(out).parent.iterdir() if q.name.startswith(prefix)):
        kind, _, rest = p.name[len(prefix):].partition("-")
        pid = rest.split("-", 1)[0]
        if kind not in ("tmp", "old") or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        if kind == "old" and (p / "x").is_dir() and not out.exists():
            os.rename(p / "x", out)
        shutil.rmtree(p, ignore_errors=True)
        done.append(p)
    return done


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
