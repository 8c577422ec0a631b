"""Safe file I/O shared by the library, the converter and the benches.

- Atomic output: a reader (or a crash) sees the old file or the whole new one, never half of it
  (:func:`write_text_atomic`, :func:`write_json_atomic`); :func:`rename_noreplace` moves a finished
  temporary file or folder into place and fails, instead of replacing, when the target appeared meanwhile.
- Restricted unpickling: :func:`load_pickle_restricted` reads data pickles (CIFAR batches) admitting
  only containers, bytes, str, numbers and plain numpy arrays; any other global is refused before it
  can run.
- Bounded input: :func:`check_zip_sizes` and :func:`gunzip_capped` refuse archives that would inflate
  beyond a limit, from their declared sizes, before inflating (zip/gzip bombs).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import math
import os
import pickle
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "MAX_INFLATE_RATIO",
    "check_zip_sizes",
    "gunzip_capped",
    "jsonable",
    "load_pickle_restricted",
    "rename_noreplace",
    "write_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

#: Largest accepted ratio (declared uncompressed bytes) / (file bytes) of a zip or gzip input. Real
#: checkpoints are stored uncompressed (ratio ~1) and compressed image data stays below ~10.
MAX_INFLATE_RATIO = 100
_SLACK = 1 << 20  # small files may legitimately inflate more than the ratio allows


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


# ------------------------------------------------------------------------------------ no-replace rename
_AT_FDCWD, _RENAME_NOREPLACE = -100, 1


def _renameat2(src: str, dst: str) -> bool:
    """``renameat2(RENAME_NOREPLACE)``; ``False`` when the system or file system does not support it."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), src, None, dst)


def rename_noreplace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename ``src`` (file or folder) to ``dst`` atomically, raising ``FileExistsError`` if ``dst`` exists.

    Linux: ``renameat2(RENAME_NOREPLACE)``. Elsewhere a folder is renamed onto an empty folder created
    with ``mkdir`` (which fails when ``dst`` exists), a file is hard-linked (``link`` fails likewise).
    """
    src, dst = os.fspath(src), os.fspath(dst)
    try:
        if _renameat2(src, dst):
            return
        if os.path.isdir(src):
            os.mkdir(dst)
            try:
                os.rename(src, dst)
            except OSError:
                os.rmdir(dst)
                raise
        else:
            os.link(src, dst)
            os.unlink(src)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "target appeared while writing; not replaced", dst) from None


# ------------------------------------------------------------------------------------ bounded inflation
def _cap(compressed: int, max_ratio: float) -> int:
    return int(max(compressed * max_ratio, _SLACK))


def check_zip_sizes(path: str | os.PathLike, max_ratio: float = MAX_INFLATE_RATIO) -> int:
    """Total declared uncompressed size of the zip ``path`` (central directory ``file_size``).

    Raises ``ValueError`` naming the file, the largest member and the sizes when the total exceeds
    ``max_ratio`` x the file size (a zip bomb), before anything is inflated. Python's ``zipfile`` and
    torch's reader stop at the declared size, so the declared total bounds the memory used.
    """
    size = os.path.getsize(path)
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
    total = sum(i.file_size for i in infos)
    if total > _cap(size, max_ratio):
        big = max(infos, key=lambda i: i.file_size)
        raise ValueError(
            f"{path}: the zip declares {total:,} bytes uncompressed for a {size:,}-byte file "
            f"(ratio > {max_ratio:g}; largest member {big.filename!r}: {big.file_size:,} bytes): "
            "refused as a possible zip bomb. If the file is genuine, unpack it yourself"
        )
    return total


def gunzip_capped(raw: bytes, path: str | os.PathLike, limit: int | None = None,
                  max_ratio: float = MAX_INFLATE_RATIO) -> bytes:
    """Inflate the gzip bytes ``raw``, never producing more than ``limit`` bytes (default: ``max_ratio``
    x ``len(raw)``); the ISIZE trailer is checked first. Raises ``ValueError`` (too large) or
    ``zlib.error`` / ``EOFError`` (corrupt, truncated)."""
    limit = _cap(len(raw), max_ratio) if limit is None else limit
    if len(raw) >= 18:
        isize = int.from_bytes(raw[-4:], "little")  # size mod 2**32 of the last member
        if isize > limit:
            raise ValueError(f"{path}: corrupt or truncated gzip stream, or a gzip bomb: its trailer "
                             f"declares {isize:,} bytes uncompressed, more than the {limit:,} expected")
    out, data = [], raw
    n = 0
    while data:
        d = zlib.decompressobj(wbits=31)
        chunk = d.decompress(data, limit + 1 - n)
        n += len(chunk)
        out.append(chunk)
        if n > limit:
            raise ValueError(f"{path}: inflates to more than the {limit:,} bytes expected: refused as a "
                             "gzip bomb (or a corrupt file)")
        if not d.eof:
            raise EOFError(f"{path}: truncated gzip stream")
        data = d.unused_data.lstrip(b"\0")  # concatenated members, as gzip.decompress accepts
    return b"".join(out)


# ------------------------------------------------------------------------------------ restricted pickle
def _safe_globals() -> dict:
    import numpy as np  # noqa: PLC0415

    core = getattr(np, "_core", None) or np.core

    def dtype(*args):  # numpy.dtype, refusing object arrays (their items would be unpickled objects)
        dt = np.dtype(*args)
        if dt.hasobject:
            raise pickle.UnpicklingError(f"numpy dtype {dt} holds Python objects; not allowed")
        return dt

    def encode(text: str, encoding: str = "utf-8"):  # how protocol-2 pickles spell bytes
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise pickle.UnpicklingError(f"_codecs.encode(..., {encoding!r}) not allowed")
        return text.encode(encoding)

    g = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): dtype, ("_codecs", "encode"): encode}
    for mod in ("numpy.core", "numpy._core"):
        g[(f"{mod}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        g[(f"{mod}.numeric", "_frombuffer")] = core.numeric._frombuffer
    return g


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        fn = _safe_globals().get((module, name))
        if fn is None:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed (only containers, bytes, str, numbers and "
                "numpy arrays); the file is not a plain data pickle and was not executed"
            )
        return fn


def load_pickle_restricted(path: str | os.PathLike, encoding: str = "latin1"):
    """Unpickle the file ``path`` admitting only builtin containers, bytes, str, numbers and numpy
    arrays (``numpy.ndarray`` / ``dtype`` / ``_reconstruct`` / ``_frombuffer``). Anything else
    raises ``pickle.UnpicklingError`` before any code of the pickle runs."""
    with open(path, "rb") as f:
        return _RestrictedUnpickler(f, encoding=encoding).load()
