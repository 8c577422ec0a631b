"""jaxuq model checkpoints: an orbax directory of variables + a small JSON meta.

Layout of a checkpoint directory ``out/``::

    out/meta.json        {"format": "jaxuq-model", "format_version": 1, "arch": ..., "kwargs": {...},
                          "num_members": null | M, "sources": [{"path", "sha256", "bytes"}], ...}
    out/variables/       orbax StandardCheckpointer directory: {"params": ..., "batch_stats": ...}

``num_members = M`` marks a stacked ensemble: every leaf has a leading member axis ``[M, ...]``
(``jax.vmap(module.apply, in_axes=(0, None))`` gives logits ``[M, N, C]``).

Writes follow the one output-folder rule (:func:`jaxuq._io.check_output_dir`): everything goes into
``.out.tmp-PID-*`` beside ``out``, marked as a ``"model"`` output (:data:`jaxuq._io.OUTPUT_MARKER`), and
is renamed to ``out`` at the end without replacing (an ``out`` that appeared meanwhile makes the save
fail); a failure leaves no partial output. ``force=True`` replaces only a folder jaxuq marked as its own
model output (or an empty folder), never a link, a file, the working folder or a parent of it.
Temporary folders left by killed saves are removed by the next save to the same ``out``.

Verified content: ``meta.json`` holds ``files`` (size and sha256 of every file orbax wrote under
``variables/``) and ``digest``, the sha256 of the meta (without the digest) and of every array (path,
dtype, shape, bytes), both written at creation. :func:`load` checks the files before orbax reads them
(a truncated or altered file is refused without orbax's reader threads failing midway) and the digest
after (``strict``: both required, with jaxuq's marker and no link or unlisted file, as for the hub
cache), so a flipped byte, swapped variables or edited ``kwargs`` are refused instead of used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxuq._io import (
    check_output_dir,
    is_own_output,
    jsonable,
    new_output_tmp,
    os_error_of,
    publish_dir,
    sigint_deferred,
)
from jaxuq.models.registry import get

__all__ = ["FORMAT", "KIND", "META_FILE", "VARIABLES_DIR", "check_path", "content_digest", "intact", "load",
           "read_meta", "save"]

FORMAT = "jaxuq-model"
KIND = "model"  # the output-folder marker's kind
META_FILE = "meta.json"
VARIABLES_DIR = "variables"
_MAX_META_BYTES = 16 << 20


def _checkpointer():
    import orbax.checkpoint as ocp  # noqa: PLC0415

    return ocp.StandardCheckpointer()


def save(path, variables: Any, meta: dict, force: bool = False) -> Path:
    """Write ``variables`` (a pytree of arrays) and ``meta`` (JSON-able, must hold ``arch``/``kwargs``)
    to the directory ``path`` atomically, with the content digest in ``meta.json`` (module doc).

    Raises ``FileExistsError`` when ``path`` exists and not ``force``, or when it appears while writing
    (the final rename never replaces); ``ValueError`` when ``path`` may not be replaced (a link, a file,
    a folder jaxuq did not mark as its model output, the working folder or a parent) or is not UTF-8;
    ``OSError`` when the parent cannot be written (disk full: errno 28, one line). Temporary folders of
    interrupted saves of ``path`` (their process is gone) are removed first.
    """
    out = Path(path).absolute()
    check_path(out)
    if "arch" not in meta or "kwargs" not in meta:
        raise ValueError("save: meta needs 'arch' and 'kwargs'")
    body = json.loads(json.dumps(jsonable({"format": FORMAT, "format_version": 1, **meta}), allow_nan=False))
    body.pop("digest", None)
    host = jax.tree.map(np.asarray, variables)
    check_output_dir(out, KIND, replace=force, verify=intact)
    tmp = new_output_tmp(out, KIND)
    try:
        with sigint_deferred() as interrupted:
            _write_variables(tmp / VARIABLES_DIR, host)
            body["files"] = _file_digests(tmp / VARIABLES_DIR)
            body["digest"] = {"sha256": content_digest(host, body)}
            (tmp / META_FILE).write_text(json.dumps(body, indent=2, allow_nan=False) + "\n")
            if interrupted():
                raise KeyboardInterrupt
            publish_dir(tmp, out, KIND, replace=force)
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
    except Exception as e:  # noqa: BLE001 - tensorstore raises ValueError for OS errors
        err = os_error_of(e, str(dest))
        if err is None or err is e:
            raise
        raise err from None
    finally:
        with contextlib.suppress(Exception):
            ckptr.close()
        absl_log.setLevel(level)


def _leaves(tree) -> list[tuple[str, np.ndarray]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return sorted(((jax.tree_util.keystr(k), np.asarray(v)) for k, v in flat), key=lambda t: t[0])


def content_digest(variables, meta: dict) -> str:
    """sha256 of ``meta`` (canonical JSON, without its ``digest`` entry) and of every array of
    ``variables`` (its path, dtype, shape and bytes, in path order)."""
    h = hashlib.sha256()
    body = {k: v for k, v in meta.items() if k != "digest"}
    h.update(json.dumps(jsonable(body), sort_keys=True, separators=(",", ":"), allow_nan=False).encode())
    for name, a in _leaves(variables):
        a = np.ascontiguousarray(a)
        h.update(f"\n{name}|{a.dtype.str}|{a.shape}\n".encode())
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


def _file_digests(folder: Path) -> dict[str, list]:
    """``{relative path: [size, sha256]}`` of every file under ``folder`` (links are not followed)."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            p = Path(root) / name
            out[p.relative_to(folder).as_posix()] = [p.lstat().st_size, _sha256(p)]
    return dict(sorted(out.items()))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_files(folder: Path, meta: dict, strict: bool) -> None:
    """The files under ``folder`` are the ones written (``meta["files"]``: regular files of that size and
    sha256; ``strict``: required, and no other file, link or special file), before orbax reads them."""
    want = meta.get("files")
    if not isinstance(want, dict):
        if strict:
            raise ValueError(f"{folder.parent}: {META_FILE} lists no variables files; not trusted")
        return
    problems = []
    for rel, (size, sha) in want.items():
        p = folder / rel
        try:
            st = os.lstat(p)
        except OSError:
            problems.append(f"{rel} missing")
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_size != size or _sha256(p) != sha:
            problems.append(f"{rel} changed")
    if strict:
        for root, dirs, names in os.walk(folder):
            for name in names + [d for d in dirs if os.path.islink(Path(root) / d)]:
                rel = (Path(root) / name).relative_to(folder).as_posix()
                if rel not in want:
                    problems.append(f"{rel} unexpected")
    if problems:
        raise ValueError(f"{folder}: files differ from those written ({', '.join(problems[:5])}); not used")


def read_meta(path, *, strict: bool = False) -> dict:
    """``meta.json`` of the checkpoint ``path`` (this format; ``strict``: a regular file, not a link)."""
    p = Path(path) / META_FILE
    try:
        fd = os.open(p, os.O_RDONLY | (getattr(os, "O_NOFOLLOW", 0) if strict else 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not a jaxuq checkpoint (no {META_FILE})") from None
    except OSError as e:
        raise ValueError(f"{p}: cannot be read ({e.strerror}; a link is not accepted here)") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_META_BYTES:
            raise ValueError(f"{p}: not a regular file of at most {_MAX_META_BYTES:,} bytes")
        meta = json.loads(f.read())
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{p}: format {got!r}, expected {FORMAT!r}")
    return meta


def _restore(folder: Path):
    ckptr = _checkpointer()
    try:
        return ckptr.restore(folder)
    finally:
        with contextlib.suppress(Exception):
            ckptr.close()


def _check_digest(path: Path, raw, meta: dict, strict: bool) -> None:
    digest = meta.get("digest")
    want = digest.get("sha256") if isinstance(digest, dict) else None
    if want is None:
        if strict:
            raise ValueError(f"{path}: {META_FILE} holds no content digest; not trusted")
        return
    if content_digest(raw, meta) != want:
        raise ValueError(f"{path}: the arrays or {META_FILE} changed since they were written (content digest "
                         "mismatch: a flipped byte, swapped or edited variables, edited kwargs); not used")


def load(path, *, strict: bool = False):
    """``(module, variables, meta)``: the module is ``jaxuq.models.get(meta['arch'], **meta['kwargs'])``;
    ``variables`` a dict of jax arrays (leading ``[M]`` axis when ``meta['num_members']`` is set).

    The stored files and the content digest listed in ``meta.json`` are checked when present (module
    doc); ``strict`` (the hub cache) requires both, jaxuq's model marker, a real folder, a regular
    ``meta.json``, a real ``variables`` folder and no unlisted file in it."""
    path = Path(path).absolute()
    if strict and not (is_own_output(path, KIND) and stat.S_ISDIR(os.lstat(path / VARIABLES_DIR).st_mode)):
        raise ValueError(f"{path}: not a jaxuq model folder (a link, no marker, or no variables folder)")
    meta = read_meta(path, strict=strict)
    _check_files(path / VARIABLES_DIR, meta, strict)
    raw = _restore(path / VARIABLES_DIR)
    _check_digest(path, raw, meta, strict)
    module = get(meta["arch"], **meta["kwargs"])
    return module, jax.tree.map(jnp.asarray, raw), meta


def intact(path) -> bool:
    """True when ``path`` loads with :func:`load` ``(strict=True)`` (marker, layout and digest)."""
    try:
        load(path, strict=True)
    except Exception:  # noqa: BLE001 - any failure means "not intact"
        return False
    return True
