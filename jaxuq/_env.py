"""Where jaxuq finds real data: ``JAXUQ_DATA_DIR`` (or an explicit folder)."""

from __future__ import annotations

import os
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
