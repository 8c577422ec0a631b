"""Checkpoint readers: torch state dicts, Lightning ``.ckpt``, safetensors, the Hugging Face Hub.

:func:`read_state_dict` returns ``(state_dict, info)`` with ``state_dict: {key: numpy array}`` (prefix
stripped) and ``info: {"path", "sha256", "bytes", "format", "stripped_prefixes", ...}``.

- torch zip or legacy pickle (``.pt / .pth / .th / .bin / .ckpt``): ``torch.load(weights_only=True,
  map_location="cpu")`` — never arbitrary unpickling. A pickle holding anything else than tensors,
  containers and numbers is refused (:class:`CheckpointError`).
- ``.safetensors``: ``safetensors`` (numpy; torch for bfloat16).
- The format is recognised from the file's content, not its suffix (a safetensors file named ``.pt``
  is read as safetensors); a zip's declared sizes are checked before inflating (zip bombs), and
  float64 values beyond float32's range are refused (they would become inf).
- Nesting: ``{"state_dict": {...}}`` (Lightning, akamaster's ``.th``), ``{"model_state_dict": ...}``,
  ``{"model": ...}``, ``{"module": ...}`` are unwrapped; then a prefix shared by *all* keys among
  ``module.`` (DataParallel), ``model.`` (Lightning routine), ``_orig_mod.`` (torch.compile) is removed
  (repeatedly).
- Hub: a source ``hf://ORG/NAME/path/in/repo[@REVISION]`` or :func:`resolve_hf` ``(repo_id, filename)``
  goes through ``huggingface_hub.hf_hub_download`` (honours ``HF_HUB_CACHE``/``HF_HOME`` and
  ``HF_HUB_OFFLINE``); a ``repo_id`` that is an existing local folder reads ``folder/filename``. Every
  name that becomes a path is checked first (:func:`check_hub_names`): the revision (huggingface_hub
  writes ``refs/<revision>`` in its cache), the repo id and the file name (no ``..``, no absolute path).

All failures raise :class:`CheckpointError` (a ``ValueError``) with a message naming the file.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxuq._io import check_zip_sizes

__all__ = [
    "CheckpointError", "HubEntryNotFoundError", "check_hub_names", "check_name", "read_state_dict",
    "resolve_hf", "resolve_source", "sha256_file", "sniff_format", "unwrap",
]

_NEST_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
_PREFIXES = ("module.", "model.", "_orig_mod.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (missing, empty, truncated, not a checkpoint...)."""


class HubEntryNotFoundError(CheckpointError):
    """The Hub repo (or, offline, its cache) has no such file: the case TU's ``load_hf`` falls back on."""


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")  # one path component: no "/", no leading "." or "-"
_MAX_NAME = 255


def check_name(value, what: str, max_parts: int | None = None) -> None:
    """``value``: a str of "/"-separated :data:`_NAME` components (so no "..", no absolute path, no
    backslash or control character), at most ``max_parts`` of them; ``CheckpointError`` naming ``what``."""
    if not isinstance(value, str):
        raise CheckpointError(f"{what} must be a string, got {type(value).__name__} {value!r}")
    parts = value.split("/")
    bad = (not value or len(value) > 4 * _MAX_NAME or (max_parts is not None and len(parts) > max_parts)
           or any(len(p) > _MAX_NAME or not _NAME.fullmatch(p) or p.endswith(".lock") for p in parts))
    if bad:
        raise CheckpointError(
            f"{what} {value!r} is not a valid name: use letters, digits, '_', '-', '.' in '/'-separated "
            "parts, none empty, none starting with '.' or '-' (no '..', no absolute path)")


def check_hub_names(repo_id, filename, revision=None, *, local: bool = False) -> None:
    """Check every user-supplied name that becomes a path before it is used: ``revision`` (a branch,
    tag, ``refs/pr/N`` or commit; huggingface_hub writes ``refs/<revision>`` under its cache), ``repo_id``
    (``ORG/NAME`` or ``NAME``; skipped for a ``local`` folder) and ``filename`` (a relative path in the
    repo). Raises :class:`CheckpointError` naming the bad value."""
    if revision is not None:
        check_name(revision, "revision")
    if not local:
        check_name(repo_id, "repo id", max_parts=2)
    check_name(filename, "file name")


def resolve_hf(repo_id: str, filename: str, revision: str | None = None, cache_dir=None) -> Path:
    """Local path of ``filename`` in the Hub repo ``repo_id`` (download or cache; or a local folder);
    the names are checked first (:func:`check_hub_names`)."""
    local = isinstance(repo_id, str | os.PathLike) and Path(repo_id).is_dir()
    check_hub_names(repo_id, filename, revision, local=local)
    if local:
        p = Path(repo_id) / filename
        if not p.is_file():
            raise HubEntryNotFoundError(f"{p}: no such file in the local folder {repo_id}")
        return p
    try:
        from huggingface_hub import hf_hub_download  # noqa: PLC0415
    except ImportError as e:  # pragma: no cover - dependency of the [torch] extra
        raise CheckpointError("reading from the Hugging Face Hub needs `pip install huggingface_hub`") from e
    from huggingface_hub.errors import EntryNotFoundError  # noqa: PLC0415

    # HF_ENDPOINT / HF_HUB_OFFLINE / HF_HUB_CACHE are read now, not only when huggingface_hub was imported
    env = os.environ
    kw = {"endpoint": env["HF_ENDPOINT"].rstrip("/")} if env.get("HF_ENDPOINT") else {}
    if env.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true"):
        kw["local_files_only"] = True
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision,
                                    cache_dir=cache_dir or env.get("HF_HUB_CACHE") or None, **kw))
    except Exception as e:  # noqa: BLE001 - the hub raises many types (offline, 404, network)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        err = HubEntryNotFoundError if isinstance(e, EntryNotFoundError) else CheckpointError
        raise err(
            f"hf://{repo_id}/{filename}: cannot get it from the Hugging Face Hub "
            f"(HF_HUB_OFFLINE={env.get('HF_HUB_OFFLINE', '0')}): {type(e).__name__}: {msg}"
        ) from None


def resolve_source(source: str | os.PathLike) -> Path:
    """A local path for ``source`` (a path or ``hf://ORG/NAME/file[@rev]``)."""
    s = str(source)
    if s.startswith("hf://"):
        rest = s[5:]
        rev = None
        if "@" in rest:
            rest, rev = rest.rsplit("@", 1)
        parts = rest.split("/")
        if len(parts) < 3 or not all(parts):
            raise CheckpointError(f"{s}: expected hf://ORG/NAME/path/to/file[@REVISION]")
        return resolve_hf("/".join(parts[:2]), "/".join(parts[2:]), revision=rev)
    return Path(s)


def _is_tensor(v) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype")


def _to_numpy(v, key: str, path) -> np.ndarray:
    if isinstance(v, np.ndarray):
        return v
    try:
        import torch  # noqa: PLC0415

        if isinstance(v, torch.Tensor):
            t = v.detach().cpu()
            if t.dtype == torch.bfloat16 or t.dtype == torch.float16:
                t = t.float()
            return t.numpy()
    except ImportError:  # pragma: no cover
        pass
    raise CheckpointError(f"{path}: value of {key!r} is a {type(v).__name__}, not a tensor")


def unwrap(obj: Any, path="<checkpoint>") -> tuple[dict[str, Any], list[str]]:
    """Find the state dict inside ``obj`` and strip shared prefixes: ``(state_dict, notes)``."""
    notes: list[str] = []
    for _ in range(4):
        if not isinstance(obj, Mapping):
            raise CheckpointError(
                f"{path}: holds a {type(obj).__name__}, not a state dict "
                "(a mapping of tensor names to tensors)"
            )
        tensors = {k: v for k, v in obj.items() if _is_tensor(v)}
        if tensors and len(tensors) == len(obj):
            break
        nested = next((k for k in _NEST_KEYS if isinstance(obj.get(k), Mapping) and obj.get(k)), None)
        if nested is None:
            if tensors:
                others = sorted(str(k) for k in obj if k not in tensors)
                raise CheckpointError(
                    f"{path}: mixes tensors with non-tensor entries {others[:5]}; not a plain state dict"
                )
            raise CheckpointError(
                f"{path}: no tensors found (top-level keys: {sorted(map(str, obj))[:8]}); not a checkpoint"
            )
        notes.append(f"unwrapped [{nested!r}]")
        obj = obj[nested]
    else:
        raise CheckpointError(f"{path}: nested too deeply; not a checkpoint")
    sd = dict(obj)
    if not sd:
        raise CheckpointError(f"{path}: empty state dict")
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if all(isinstance(k, str) and k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                notes.append(f"stripped prefix {p!r}")
                changed = True
    return sd, notes


def _torch_load(path: Path):
    try:
        import torch  # noqa: PLC0415
    except ImportError as e:  # pragma: no cover
        raise CheckpointError(f"{path}: reading torch checkpoints needs `pip install torch`") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        why = next((ln.strip() for ln in first if "Unsupported global" in ln or "GLOBAL" in ln),
                   first[0] if first else "")
        raise CheckpointError(
            f"{path}: refused by torch.load(weights_only=True): it is a pickle that is not a plain "
            "checkpoint "
            f"(only tensors, containers and numbers are allowed). {why[:300]}"
        ) from None
    except (EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: truncated or corrupt file ({type(e).__name__}: {e})") from None
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        msg = msg.split(". ")[0]
        raise CheckpointError(f"{path}: truncated or corrupt torch file ({msg[:200]})") from None
    except Exception as e:  # noqa: BLE001 - torch raises assorted types on garbage input
        raise CheckpointError(
            f"{path}: cannot be read by torch.load ({type(e).__name__}: {str(e)[:300]})"
        ) from None


def _safetensors_load(path: Path) -> dict:
    try:
        from safetensors.numpy import load_file  # noqa: PLC0415

        return load_file(str(path))
    except TypeError:  # bfloat16 has no numpy dtype: go through torch
        from safetensors.torch import load_file as load_torch  # noqa: PLC0415

        return load_torch(str(path))
    except Exception as e:  # noqa: BLE001 - SafetensorError etc.
        raise CheckpointError(
            f"{path}: not a valid safetensors file ({type(e).__name__}: {str(e)[:300]})"
        ) from None


def sniff_format(path: Path) -> str:
    """The container format from the file's first bytes, not its suffix: ``"zip"`` (torch >= 1.6),
    ``"safetensors"`` (8-byte little-endian header length, then ``{``), else ``"pickle"``."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"
    return "pickle"


def _check_float32_range(v: np.ndarray, key: str, path) -> None:
    """Refuse finite wide floats (float64) that would become inf when stored as float32."""
    if not (np.issubdtype(v.dtype, np.floating) and v.dtype.itemsize > 4 and v.size):
        return
    big = np.isfinite(v) & (np.abs(v) > np.finfo(np.float32).max)
    if big.any():
        raise CheckpointError(
            f"{path}: tensor {key!r} {v.dtype} {tuple(v.shape)} holds {int(big.sum())} value(s) beyond "
            f"float32's range (e.g. {v[big].flat[0]:.6g}; max {np.finfo(np.float32).max:.4g}): they would "
            "become inf in the float32 model; fix or rescale the checkpoint"
        )


def read_state_dict(source) -> tuple[dict[str, np.ndarray], dict]:
    """Read a checkpoint (path or ``hf://``) -> ``({key: numpy array}, info)``.

    The format is detected from the content (:func:`sniff_format`); a torch zip's declared sizes are
    checked before torch inflates it (:func:`jaxuq._io.check_zip_sizes`).
    """
    path = resolve_source(source)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes)")
    kind = sniff_format(path)
    notes = [] if (kind == "safetensors") == (path.suffix == ".safetensors") else \
        [f"read as {kind} (detected from the content; the suffix {path.suffix or '(none)'} says otherwise)"]
    if kind == "safetensors":
        obj, fmt = _safetensors_load(path), "safetensors"
    else:
        if kind == "zip":
            try:
                check_zip_sizes(path)
            except ValueError as e:
                raise CheckpointError(str(e)) from None
            except zipfile.BadZipFile as e:
                raise CheckpointError(f"{path}: truncated or corrupt file (BadZipFile: {e})") from None
        obj = _torch_load(path)
        fmt = "lightning" if path.suffix == ".ckpt" else "torch"
    sd, unwrap_notes = unwrap(obj, path)
    notes += unwrap_notes
    out = {}
    for k, v in sd.items():
        if not isinstance(k, str):
            raise CheckpointError(f"{path}: key {k!r} is not a string")
        out[k] = _to_numpy(v, k, path)
        _check_float32_range(out[k], k, path)
    info = {"path": str(source), "resolved": str(path), "sha256": sha256_file(path), "bytes": size,
            "format": fmt, "notes": notes}
    return out, info
