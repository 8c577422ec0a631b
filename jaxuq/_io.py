"""Safe file I/O shared by the library, the converter and the benches.

- Atomic output: a reader (or a crash) sees the old file or the whole new one, never half of it
  (:func:`write_text_atomic`, :func:`write_json_atomic`); :func:`rename_noreplace` moves a finished
  temporary file or folder into place and fails, instead of replacing, when the target appeared meanwhile.
- Restricted unpickling: :func:`load_pickle_restricted` reads data pickles (CIFAR batches) admitting
  only containers, bytes, str, numbers and plain numpy arrays; any other global is refused before it
  can run.
- Bounded input: :func:`check_zip_sizes` and :func:`gunzip_capped` refuse archives that would inflate
  beyond a limit, from their declared sizes, before inflating (zip/gzip bombs); the restricted unpickler
  builds arrays only from bytes the file holds (no strided views that materialise more).
- Output folders (the converter's ``-o``, the launcher's ``--out``, the hub cache's entries): one rule,
  :func:`check_output_dir` before any work and :func:`publish_dir` at the end. An output folder is
  created fresh (written as ``.OUT.tmp-PID-*`` beside it, marked with :data:`OUTPUT_MARKER`, renamed
  into place without replacing), or it is a folder jaxuq marked as its own output of the same kind
  (the marker a regular file, checked with ``lstat`` and ``O_NOFOLLOW``), or an empty folder; only such
  a folder is ever replaced (moved aside, re-checked, then removed without following symlinks). A file,
  a symlink, the working folder (or a parent) and any unmarked folder are refused before any work.
- Ctrl-C: :func:`sigint_deferred` holds a SIGINT during a critical write (orbax's writer threads, a
  publish) and raises it afterwards; :func:`os_error_of` turns tensorstore's ``ValueError`` carrying an
  ``os_error_code`` (disk full) into an ``OSError``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import math
import os
import pickle
import re
import shutil
import signal
import stat
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = [
    "MAX_INFLATE_RATIO",
    "OUTPUT_MARKER",
    "check_output_dir",
    "check_zip_sizes",
    "clean_stale",
    "is_own_output",
    "new_output_tmp",
    "os_error_of",
    "publish_dir",
    "sigint_deferred",
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


# ------------------------------------------------------------------------------------ output folders
#: The file that marks a folder as jaxuq's own output: ``{"format": "jaxuq-output", "kind": KIND}``.
OUTPUT_MARKER = ".jaxuq-output"
_MARKER_FORMAT = "jaxuq-output"
_MARKER_MAX_BYTES = 4096


def _write_marker(folder: Path, kind: str) -> None:
    """Create ``folder/OUTPUT_MARKER`` (never through a link: ``O_EXCL | O_NOFOLLOW``)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(folder / OUTPUT_MARKER, flags, 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump({"format": _MARKER_FORMAT, "kind": kind}, f)


def _marker_kind(folder: Path) -> str | None:
    """The kind in ``folder``'s marker, or None: ``folder`` must be a real folder (``lstat``), the marker
    a regular file opened without following a link, small, and this format's JSON."""
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            return None
        fd = os.open(Path(folder) / OUTPUT_MARKER, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:  # missing, a link (ELOOP), unreadable
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MARKER_MAX_BYTES:
            return None
        try:
            doc = json.loads(f.read(_MARKER_MAX_BYTES))
        except ValueError:
            return None
    ok = isinstance(doc, dict) and doc.get("format") == _MARKER_FORMAT and isinstance(doc.get("kind"), str)
    return doc["kind"] if ok else None


def is_own_output(folder: str | os.PathLike, kind: str) -> bool:
    """True when ``folder`` is a real folder that jaxuq marked as its own output of ``kind``."""
    return _marker_kind(Path(folder).absolute()) == kind


def _replaceable(out: Path, kind: str) -> None:
    """Raise ``ValueError`` unless the existing ``out`` may be replaced: a real folder (not a link) that
    is empty or marked as a ``kind`` output, and not the working folder or one of its parents."""
    st = os.lstat(out)
    if stat.S_ISLNK(st.st_mode):
        raise ValueError(f"output {out} is a symbolic link; refusing to write through it (choose another "
                         "output folder)")
    if not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"output {out} exists and is not a folder; refusing to replace it (choose another "
                         "output folder)")
    cwd = Path.cwd().resolve()
    if out.resolve() == cwd or out.resolve() in cwd.parents:
        raise ValueError(f"output {out} is the working folder or one of its parents; refusing to replace it")
    if _marker_kind(out) != kind and any(os.scandir(out)):
        raise ValueError(
            f"output {out} exists and jaxuq did not create it as a {kind!r} output (no {OUTPUT_MARKER} "
            "marker of that kind); refusing to write into it or replace it: remove it yourself or choose "
            "another output folder")


def check_output_dir(out: str | os.PathLike, kind: str, *, replace: bool,
                     verify: Callable[[Path], bool] | None = None) -> bool:
    """Check, before any work, that a ``kind`` output may be published at ``out``; True if it exists.

    ``out`` may be missing, or (with ``replace``) an empty folder or a folder jaxuq marked as its own
    ``kind`` output. Stale temporary folders of dead processes are cleaned first (:func:`clean_stale`,
    ``verify`` deciding whether a stale replaced output may be put back).
    Raises ``ValueError`` (a link, a file, an unmarked folder, the working folder) or
    ``FileExistsError`` (an existing output without ``replace``)."""
    out = Path(out).absolute()
    if out.parent.is_dir():
        clean_stale(out, kind, verify)
    if not os.path.lexists(out):
        return False
    _replaceable(out, kind)
    if not replace:
        raise FileExistsError(f"output {out} exists; pass --force (force=True) to replace it")
    return True


def new_output_tmp(out: str | os.PathLike, kind: str) -> Path:
    """A fresh folder ``.OUT.tmp-PID-*`` beside ``out`` (created, with the parent), marked as a ``kind``
    output: write the output there, then :func:`publish_dir` it."""
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    _write_marker(tmp, kind)
    return tmp


def publish_dir(tmp: str | os.PathLike, out: str | os.PathLike, kind: str, *, replace: bool) -> None:
    """Rename the finished ``tmp`` to ``out`` without replacing anything that appeared meanwhile; with
    ``replace`` an existing ``out`` is moved aside, re-checked (what was moved is what was checked), and
    removed only after the rename (``shutil.rmtree`` never follows links); on failure it is put back."""
    tmp, out = Path(tmp), Path(out).absolute()
    if not (replace and os.path.lexists(out)):
        rename_noreplace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
    os.rename(out, old / "x")
    try:
        _replaceable(old / "x", kind)
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
    except (PermissionError, OverflowError):
        return True
    return True


def clean_stale(out: str | os.PathLike, kind: str,
                verify: Callable[[Path], bool] | None = None) -> list[Path]:
    """Remove ``.OUT.tmp-PID-*`` / ``.OUT.old-PID-*`` folders beside ``out`` whose process ``PID`` is
    gone (killed, interrupted). A stale ``.old`` (a replaced output, its replacement killed between two
    renames) is put back at ``out`` only when ``out`` is missing and the folder is a marked ``kind``
    output that passes ``verify`` (e.g. a digest check); otherwise it is removed. Returns the paths."""
    out, done = Path(out).absolute(), []
    prefix = f".{out.name}."
    for p in sorted(q for q in out.parent.iterdir() if q.name.startswith(prefix)):
        what, _, rest = p.name[len(prefix):].partition("-")
        pid = rest.split("-", 1)[0]
        if what not in ("tmp", "old") or not pid.isdigit() or _pid_alive(int(pid)) or p.is_symlink():
            continue
        x = p / "x"
        if (what == "old" and not os.path.lexists(out) and is_own_output(x, kind)
                and (verify is None or verify(x))):
            os.rename(x, out)
        shutil.rmtree(p, ignore_errors=True)
        done.append(p)
    return done


# ------------------------------------------------------------------------------------ interrupts, OS errors
@contextlib.contextmanager
def sigint_deferred():
    """Hold a Ctrl-C (SIGINT) until the block is done (orbax's writer threads, a rename); yields
    ``interrupted()`` to test for one before committing. A held SIGINT is raised as
    ``KeyboardInterrupt`` when the block exits, so that the caller cleans up instead of racing threads.
    Outside the main thread, or with SIGINT ignored, nothing is held."""
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


def os_error_of(e: BaseException, where: str) -> OSError | None:
    """tensorstore reports I/O failures (disk full: ``os_error_code=28``) as a ``ValueError``: that error
    as an ``OSError`` with the errno and one line naming ``where``; None for other exceptions."""
    if isinstance(e, OSError):
        return e
    m = re.search(r"os_error_code='?(\d+)", str(e))
    if m is None:
        return None
    code = int(m.group(1))
    return OSError(code, f"{os.strerror(code)} (while writing {where})")


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
class _NdarrayName:
    """What the global ``numpy.ndarray`` resolves to: only a marker for ``_reconstruct``'s first argument.
    Calling it (``ndarray(shape, dtype, buffer, offset, strides)``) is refused: zero or overlapping strides
    make a view of a few bytes look like gigabytes, which a later copy materialises."""

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError(
            "numpy.ndarray(shape, dtype, buffer, offset, strides) is not allowed in a data pickle: it can "
            "describe far more memory than the file holds (arrays are read from their own bytes only)")


_NDARRAY = _NdarrayName()


def _safe_globals() -> dict:
    core = getattr(np, "_core", None) or np.core

    def dtype(*args):  # numpy.dtype, refusing object arrays (their items would be unpickled objects)
        dt = np.dtype(*args)
        if dt.hasobject:
            raise pickle.UnpicklingError(f"numpy dtype {dt} holds Python objects; not allowed")
        return dt

    def reconstruct(cls, shape, dt):  # numpy's pickles: _reconstruct(ndarray, (0,), b'b'), then the bytes
        if cls is not _NDARRAY or tuple(shape) != (0,):  # (their size is checked by ndarray.__setstate__)
            raise pickle.UnpicklingError(f"numpy _reconstruct({cls!r}, {shape!r}) is not a plain array")
        return core.multiarray._reconstruct(np.ndarray, (0,), dt)

    def encode(text: str, encoding: str = "utf-8"):  # how protocol-2 pickles spell bytes
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise pickle.UnpicklingError(f"_codecs.encode(..., {encoding!r}) not allowed")
        return text.encode(encoding)

    g = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): dtype, ("_codecs", "encode"): encode}
    for mod in ("numpy.core", "numpy._core"):  # _frombuffer: frombuffer(buf).reshape(shape), same bytes
        g[(f"{mod}.multiarray", "_reconstruct")] = reconstruct
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
    arrays built from their own bytes (``_reconstruct`` + the array's bytes, or ``_frombuffer``; never
    ``numpy.ndarray(...)`` with a buffer and strides, which can view more than the file holds). Anything
    else raises ``pickle.UnpicklingError`` before any code of the pickle runs. Memory stays bounded by
    the file: arrays hold at most the bytes they were read from, containers a pointer per reference."""
    with open(path, "rb") as f:
        return _RestrictedUnpickler(f, encoding=encoding).load()
