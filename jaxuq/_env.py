"""The environment of a run: where jaxuq finds real data (``JAXUQ_DATA_DIR`` or an explicit folder),
and the stamp of a run record (date, machine, package versions) with its paths made portable.

The experiments' launcher and the bench harness both stamp their results with :func:`stamp` and write
them through :func:`portable_paths`, so a committed result names no folder of the machine it ran on.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
from importlib import metadata
from pathlib import Path

ENV_VAR = "JAXUQ_DATA_DIR"


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Return the data folder: ``explicit`` if given, else ``$JAXUQ_DATA_DIR``.

    Raises:
      FileNotFoundError: neither is set, or the folder does not exist.
    """
    raw = explicit if explicit is not None else os.environ.get(ENV_VAR)
    if not raw:
        raise FileNotFoundError(
            f"no data folder: pass --data-dir or set {ENV_VAR} "
            "(a folder in torchvision's layout, e.g. ../shared/data)"
        )
    path = Path(raw).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"data folder {path} (from {ENV_VAR} or --data-dir) does not exist")
    return path


def data_file(relpath: str | os.PathLike, explicit: str | os.PathLike | None = None) -> Path:
    """Return ``data_dir(explicit) / relpath``; raise FileNotFoundError naming it if absent."""
    path = data_dir(explicit) / relpath
    if not path.exists():
        raise FileNotFoundError(f"missing data file {path} (expected under {ENV_VAR}={data_dir(explicit)})")
    return path


# ------------------------------------------------------------------------------------ run records
#: Distributions a run record lists (absent ones are left out).
STAMPED = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "torch", "torch-uncertainty",
           "torchmetrics", "lightning")


def versions() -> dict[str, str]:
    """Versions of python and of every package in :data:`STAMPED` that is installed (no import)."""
    out = {"python": platform.python_version()}
    for dist in STAMPED:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def machine() -> dict:
    """The machine: platform string, processor and CPU count (no host name, user or path)."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def stamp() -> dict:
    """What every run record (experiment results, bench results) is stamped with: the UTC date,
    :func:`machine` and :func:`versions`."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
    }


def portable_paths(obj, roots: dict[str | os.PathLike, str] | None = None):
    """``obj`` (JSON-like: dicts, lists, strings, numbers) with machine paths rewritten in every string.

    A path under one of ``roots`` (``{folder: token}``, e.g. ``{out_dir: "<run>"}``), under the data
    folder (``$JAXUQ_DATA_DIR`` -> ``<data_dir>``) or under the home folder (-> ``~``) becomes the token
    followed by the path relative to that folder; the deepest folder wins. Results and run records hold
    these forms, never the absolute paths of the machine that ran them.
    """
    table = {Path(k): v for k, v in (roots or {}).items()}
    if os.environ.get(ENV_VAR):
        table.setdefault(Path(os.environ[ENV_VAR]), "<data_dir>")
    table.setdefault(Path.home(), "~")
    pairs = {}
    for folder, token in table.items():
        folder = folder.expanduser()
        for form in {os.fspath(folder.absolute()), os.fspath(folder.resolve())}:  # as given, and symlink-free
            if form != os.sep:
                pairs[form.rstrip(os.sep)] = token
    ordered = sorted(pairs.items(), key=lambda kv: -len(kv[0]))
    return _rewrite(obj, ordered)


def _rewrite(obj, ordered: list[tuple[str, str]]):
    if isinstance(obj, str):
        for folder, token in ordered:
            obj = re.sub(re.escape(folder) + r"(?=$|/|[^\w.-])", lambda _m, t=token: t, obj)
        return obj
    if isinstance(obj, dict):
        return {k: _rewrite(v, ordered) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_rewrite(v, ordered) for v in obj]
    return obj
