"""Hugging Face Hub loading: torch checkpoints on the Hub -> jaxuq models, cached.

This module is the one public home of hub loading. It lives in ``converters`` (not in ``jaxuq``)
because it reads torch files: ``converters`` imports ``jaxuq``, never the reverse, and ``jaxuq`` stays
free of torch. Importing it needs no torch (torch, ``huggingface_hub`` and ``yaml`` load on first use);
loading a checkpoint needs the ``[torch]`` extra.

    from converters import hub
    module, variables, meta = hub.load_hf("resnet18_c10")                        # TU's load_hf naming
    module, variables, meta = hub.load_repo("ORG/NAME", "weights.ckpt")          # any repo and file
    module, variables, meta = hub.load_ensemble(                                 # [M, ...] stacked
        "ENSTA-U2IS/tutorial-models", [f"version_{i}.ckpt" for i in range(8)])

Each returns what :func:`jaxuq.models.load` returns: ``(module, variables, meta)``; an ensemble has
``meta["num_members"] = M`` and every leaf a leading ``[M]`` axis. ``meta["cache"]`` says where the
converted model lives and whether it was a hit.

- Files come through ``huggingface_hub.hf_hub_download`` (:func:`converters.io.resolve_hf`): its cache,
  ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``, ``HF_HUB_CACHE`` (read at call time); a ``repo_id`` that is a local
  folder reads from it. torch files are read with ``torch.load(weights_only=True)``.
- :func:`load_hf` follows TU 0.13.0's ``torch_uncertainty.utils.hub.load_hf``: repo
  ``torch-uncertainty/{weight_id}``, file ``{weight_id}.ckpt`` (version 0) or ``{weight_id}_{version}.ckpt``,
  falling back to ``{weight_id}_{version}.safetensors`` when the ``.ckpt`` is not there; the
  ``state_dict`` entry is unwrapped; the model arguments come from the repo's ``config.yaml`` (its
  ``model:`` section, or that section's ``init_args``, or the top level), keeping the keys the jaxuq model
  takes (the others are listed in ``meta["hub"]["ignored_config_keys"]``). The architecture is recognised
  from the state-dict keys unless ``arch`` is given.
- Conversions are cached under ``$JAXUQ_CACHE/hub`` (default ``~/.cache/jaxuq/hub``), one
  :func:`jaxuq.models.io.save` directory per key = sha256 of (the sources' sha256, arch, kwargs). A second
  load reads that directory and converts nothing. Every entry is verified before use
  (:func:`jaxuq.models.io.load` ``strict``): a real folder with jaxuq's marker, a regular ``meta.json``,
  the content digest of its arrays and meta written at creation, the sources' sha256 and the model's
  shapes. Anything else at the key (a flipped byte, swapped variables, edited kwargs, a link, a file, a
  truncated entry) is removed (a link: the link only) and rebuilt, never used. A stale ``.KEY.old-PID-*``
  folder of a killed write is put back only if it verifies. Writes are atomic.
- Names are checked before they become paths (:func:`converters.io.check_hub_names`: repo id, file
  name, revision; ``weight_id``); a ``config.yaml`` is read only up to 1 MiB and its parsed form (YAML
  aliases expanded) is bounded (:data:`MAX_CONFIG_NODES`) before it is written into ``meta.json``.

Errors: :class:`converters.io.CheckpointError` (missing repo/file, bad checkpoint) and
:class:`converters.core.ConvertError` (architecture mismatch), both ``ValueError`` naming the source.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import jax

from converters import mappings
from converters.core import convert, split_members
from converters.io import (
    CheckpointError,
    HubEntryNotFoundError,
    check_hub_names,
    check_name,
    read_state_dict,
    resolve_hf,
    sha256_file,
)
from jaxuq import models
from jaxuq._io import clean_stale
from jaxuq._validate import check_int
from jaxuq.models.io import KIND, intact, load, save

__all__ = [
    "TU_ORG", "cache_dir", "load_ensemble", "load_hf", "load_repo", "model_kwargs", "read_config",
    "tu_filenames", "tu_source",
]

TU_ORG = "torch-uncertainty"
CACHE_ENV = "JAXUQ_CACHE"
_CACHE_FORMAT = 2  # 2: entries carry jaxuq's marker and a content digest
MAX_CONFIG_BYTES = 1 << 20
#: Largest parsed ``config.yaml``: nodes plus string characters, aliases expanded (a YAML alias bomb
#: of 426 bytes expands 10x per level).
MAX_CONFIG_NODES = 200_000


def cache_dir() -> Path:
    """``$JAXUQ_CACHE/hub`` or ``~/.cache/jaxuq/hub``: where converted hub models are kept."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "jaxuq"
    return Path(root).expanduser() / "hub"


def tu_filenames(weight_id: str, version: int | None = 0) -> tuple[str, str]:
    """TU's ``(checkpoint, safetensors fallback)`` file names for ``weight_id`` and ``version``."""
    ckpt = f"{weight_id}.ckpt" if not version else f"{weight_id}_{version}.ckpt"
    return ckpt, f"{weight_id}_{version}.safetensors"


def _expanded_size(obj, limit: int) -> int:
    """Nodes plus string characters of ``obj`` with shared (aliased) parts counted each time they are
    reached, stopping past ``limit`` (so a recursive alias terminates too)."""
    n, todo = 0, [obj]
    while todo and n <= limit:
        x = todo.pop()
        n += 1 + (len(x) if isinstance(x, str | bytes) else 0)
        if isinstance(x, dict):
            todo.extend(x.keys())
            todo.extend(x.values())
        elif isinstance(x, list | tuple | set):
            todo.extend(x)
    return n


def read_config(repo_id: str, filename: str = "config.yaml", revision: str | None = None) -> dict:
    """The repo's YAML config as a dict (CheckpointError when it is missing, not a YAML mapping, over
    :data:`MAX_CONFIG_BYTES`, or expanding beyond :data:`MAX_CONFIG_NODES` through its aliases)."""
    import yaml  # noqa: PLC0415

    path = resolve_hf(repo_id, filename, revision=revision)
    where = f"hf://{repo_id}/{filename}"
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{where}: {path.stat().st_size:,} bytes, more than a model config needs "
                              f"({MAX_CONFIG_BYTES:,}); refused")
    try:
        cfg = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{where}: not valid YAML ({str(e)[:300]})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{where}: expected a YAML mapping, got {type(cfg).__name__}")
    if _expanded_size(cfg, MAX_CONFIG_NODES) > MAX_CONFIG_NODES:
        raise CheckpointError(f"{where}: its YAML aliases expand to more than {MAX_CONFIG_NODES:,} nodes "
                              "(an alias bomb, or a recursive alias); refused")
    return cfg


def _config_kwargs(cfg: dict) -> dict:
    """Model arguments in a TU/LightningCLI config: ``model.init_args``, ``model``, or the top level."""
    model = cfg.get("model", cfg)
    if isinstance(model, dict) and isinstance(model.get("init_args"), dict):
        model = model["init_args"]
    return dict(model) if isinstance(model, dict) else {}


def _accepted(arch: str, kwargs: dict) -> tuple[dict, list[str]]:
    """``(kwargs the jaxuq model `arch` takes, ignored keys)``."""
    params = inspect.signature(models.factory(arch)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kwargs), []
    keep = {k: v for k, v in kwargs.items() if k in params}
    return keep, sorted(set(kwargs) - set(keep))


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def _cache_key(shas: list[str], arch: str | None, kwargs: dict) -> str:
    blob = json.dumps({"format": _CACHE_FORMAT, "sources": shas, "arch": arch, "kwargs": _jsonable(kwargs)},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _cached(entry: Path, shas: list[str]):
    """``(module, variables, meta)`` from a verified cache entry (``load(strict=True)``: marker, real
    folder, content digest; then the sources' sha256 and the model's shapes), else ``None``."""
    if not os.path.lexists(entry):
        return None
    try:
        module, variables, meta = load(entry, strict=True)
        if [s["sha256"] for s in meta["sources"]] != shas:
            return None
        _, template, _ = mappings.build_template(meta["arch"], **meta["kwargs"])
        m = meta.get("num_members")
        want = jax.tree.map(lambda t: ((m,) if m else ()) + tuple(t.shape), template)
        got = jax.tree.map(lambda a: tuple(a.shape), variables)
        if jax.tree.structure(want) != jax.tree.structure(got) or want != got:
            return None
    except Exception:  # noqa: BLE001 - a corrupt entry fails in many ways (JSON, orbax, shapes): rebuild it
        return None
    return module, variables, meta


def _evict(entry: Path) -> None:
    """Remove what sits at the cache key ``entry`` (``_cached`` refused it): a link or a file is unlinked
    (never its target), a folder removed without following links."""
    if os.path.islink(entry) or (os.path.lexists(entry) and not entry.is_dir()):
        entry.unlink()
    elif entry.is_dir():
        shutil.rmtree(entry, ignore_errors=True)


def model_kwargs(path, arch: str | None, kwargs: dict) -> tuple[dict, list[str]]:
    """``(kwargs, ignored keys)``: the ``kwargs`` (e.g. from a config) that the jaxuq model of the
    checkpoint ``path`` takes — ``arch``, or the architecture recognised from its keys."""
    if arch is None:
        sd, _ = read_state_dict(path)
        guess = mappings.infer(split_members(sd, str(path))[0])
        if guess is None:
            return dict(kwargs), []  # convert() reports the unrecognised architecture
        arch = guess[0]
    return _accepted(arch, kwargs)


def _load_paths(paths: Sequence[Path], *, arch: str | None, kwargs: dict, hub_meta: dict, cache: bool,
                filter_kwargs: bool = False):
    """Convert local checkpoint ``paths`` (several = a stacked ensemble) through the cache."""
    shas = [sha256_file(p) for p in paths]
    entry = cache_dir() / _cache_key(shas, arch, kwargs)
    if cache and entry.parent.is_dir():
        clean_stale(entry, KIND, intact)  # a killed write's leftovers; a replaced entry back if intact
    hit = _cached(entry, shas) if cache else None
    if hit is not None:
        module, variables, meta = hit
        meta["cache"] = {"path": str(entry), "hit": True}
        return module, variables, meta
    if filter_kwargs:
        kwargs, ignored = model_kwargs(paths[0], arch, kwargs)
        hub_meta = {**hub_meta, "ignored_config_keys": ignored}
    res = convert([str(p) for p in paths], arch=arch, kwargs=kwargs or None)
    meta = {**res["meta"], "hub": _jsonable(hub_meta)}
    if cache:
        _evict(entry)
        with contextlib.suppress(FileExistsError):  # a concurrent load cached the same entry first
            save(entry, res["variables"], meta)
    meta["cache"] = {"path": str(entry) if cache else None, "hit": False}
    return res["module"], res["variables"], meta


def load_repo(repo_id: str, filename: str, *, revision: str | None = None, arch: str | None = None,
              kwargs: dict | None = None, cache: bool = True):
    """``(module, variables, meta)`` of the torch checkpoint ``filename`` in the Hub repo ``repo_id``."""
    path = resolve_hf(repo_id, filename, revision=revision)
    hub_meta = {"repo_id": repo_id, "filenames": [filename], "revision": revision}
    return _load_paths([path], arch=arch, kwargs=dict(kwargs or {}), hub_meta=hub_meta, cache=cache)


def load_ensemble(repo_id: str, filenames: Sequence[str], *, revision: str | None = None,
                  arch: str | None = None, kwargs: dict | None = None, cache: bool = True):
    """One stacked ensemble (members on axis 0, in ``filenames`` order) from several files of one repo,
    e.g. ``load_ensemble("ENSTA-U2IS/tutorial-models", [f"version_{i}.ckpt" for i in range(8)])``."""
    filenames = list(filenames)
    if len(filenames) < 2:
        raise CheckpointError(f"load_ensemble({repo_id!r}): give at least two files, got {filenames}")
    paths = [resolve_hf(repo_id, f, revision=revision) for f in filenames]
    hub_meta = {"repo_id": repo_id, "filenames": filenames, "revision": revision}
    return _load_paths(paths, arch=arch, kwargs=dict(kwargs or {}), hub_meta=hub_meta, cache=cache)


def tu_source(weight_id: str, version: int | None = 0, revision: str | None = None):
    """TU's ``load_hf`` lookup: ``(local checkpoint path, hub meta, config kwargs)``.

    Repo ``torch-uncertainty/{weight_id}``; ``{weight_id}.ckpt`` / ``{weight_id}_{version}.ckpt``, else
    ``{weight_id}_{version}.safetensors``; then ``config.yaml`` (required, as in TU). ``weight_id`` is
    one name (no ``/``), ``version`` an int >= 0 (or None, TU's version 0)."""
    check_name(weight_id, "weight id", max_parts=1)  # one name: the repo is torch-uncertainty/<weight id>
    check_hub_names(TU_ORG, "config.yaml", revision)
    if version is not None:
        try:
            check_int(version, "version", 0)  # a non-int: TypeError
        except ValueError as e:
            raise CheckpointError(str(e)) from None
    repo_id = f"{TU_ORG}/{weight_id}"
    ckpt, safetensors = tu_filenames(weight_id, version)
    try:
        path, used = resolve_hf(repo_id, ckpt, revision=revision), ckpt
    except HubEntryNotFoundError:
        try:
            path, used = resolve_hf(repo_id, safetensors, revision=revision), safetensors
        except HubEntryNotFoundError as e:
            raise CheckpointError(
                f"model {weight_id}_{version} not found in hf://{repo_id}: neither {ckpt} nor {safetensors} "
                f"({e})"
            ) from None
    cfg = read_config(repo_id, revision=revision)
    hub_meta = {"repo_id": repo_id, "filenames": [used], "revision": revision, "config": cfg}
    return path, hub_meta, _config_kwargs(cfg)


def load_hf(weight_id: str, version: int | None = 0, *, revision: str | None = None, arch: str | None = None,
            kwargs: dict | None = None, cache: bool = True):
    """TU's ``load_hf(weight_id, version)`` as a jaxuq model: ``(module, variables, meta)`` (see
    :func:`tu_source`); ``kwargs`` override the config's model arguments."""
    path, hub_meta, cfg_kwargs = tu_source(weight_id, version, revision)
    kw = {**cfg_kwargs, **(kwargs or {})}
    return _load_paths([path], arch=arch, kwargs=kw, hub_meta=hub_meta, cache=cache, filter_kwargs=True)
