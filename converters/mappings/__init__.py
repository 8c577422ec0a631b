"""Architecture-family mapping tables: torch state_dict key -> Flax variable path + transform.

Every module in this package is one *family* and is imported automatically (``pkgutil``) the first
time the registry is used; nothing has to be registered by hand. Built-in families: ``lenet``
(TU ``lenet``), ``resnet`` (TU ``resnet``), ``resnet_cifar`` (He et al. ResNet-20/32/44/56/110,
option-A shortcut), ``tiniest`` (scio's Tiniest), ``packed`` (``packed_lenet`` / ``packed_resnet`` /
``packed_wideresnet28x10`` / ``packed_vgg``), ``batched`` (BatchEnsemble), ``masked`` (Masksembles),
``mimo``, ``wideresnet`` and ``vgg`` (TU's plain ones).

How to add a family
-------------------
Create ``converters/mappings/<family>.py`` defining, at module level:

``ARCHS: dict[str, Callable[..., tuple[flax.linen.Module, tuple[int, ...]]]]`` (required)
    Architecture name -> ``factory(**kwargs) -> (module, sample_input_shape)``. The name must be
    the ``jaxuq.models.get`` name of the model (``jaxuq.models.load`` rebuilds it from the JSON
    meta with ``get(arch, **kwargs)``); ``kwargs`` are the model's keyword arguments (JSON-able);
    ``sample_input_shape`` is one NHWC batch shape ``(1, H, W, C)`` used for ``module.init``
    (through ``jax.eval_shape``: no real initialisation) and for ``--verify``.

``torch_to_flax(state_dict, template, source) -> variables`` (required)
    Strict conversion of ``state_dict`` (``{torch_key: numpy array}``) into a pytree shaped like
    ``template`` (``{"params": ..., "batch_stats": ...}`` of ``jax.ShapeDtypeStruct``). It must
    raise ``ValueError`` whose message names ``source`` and lists every missing torch key,
    unexpected torch key and shape mismatch (expected/actual). The simplest way is to build an
    explicit :data:`Table` (torch key -> :class:`Entry`) and return
    :func:`apply_table` ``(state_dict, table, template, source)``, which does all the checks
    (every torch key used, every Flax leaf filled, every shape checked, ``num_batches_tracked``
    consumed). Families receive the state dict after prefix stripping (``module.``, ``model.``).

Optional:

``infer(state_dict) -> tuple[str, dict] | None``
    Recognise the architecture and its kwargs from the keys/shapes (used by
    ``jaxuq-convert inspect`` and by ``convert`` without ``--arch``). Return ``None`` if not ours.

``complete(model_name, state_dict, kwargs) -> dict``
    With ``--arch model_name`` given: the full kwargs from the state dict and the user's partial
    ``kwargs`` (for families whose keys do not identify them, e.g. MIMO needs only ``num_estimators``).
    Raises ``ValueError`` with what is missing.

``torch_reference(model_name, **kwargs) -> torch.nn.Module``
    A torch module with the same state-dict keys, for ``jaxuq-convert convert --verify``.

``table(model_name, **kwargs) -> Table``
    The explicit table itself (for documentation / ``inspect``).

Only ``converters`` (never ``jaxuq``) may import torch, and only lazily inside functions. Families
import their ``jaxuq.models`` module at the top: ``converters`` depends on ``jaxuq``, never the reverse.

Registry API: :func:`families`, :func:`arch_names`, :func:`family_of`, :func:`build_template`,
:func:`convert_state_dict`, :func:`infer`.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Entry",
    "Table",
    "apply_table",
    "arch_names",
    "bn_entries",
    "channels_last",
    "build_template",
    "conv_entries",
    "convert_state_dict",
    "dense_entries",
    "families",
    "family_of",
    "infer",
    "ln_entries",
    "flax_leaf_to_torch",
    "template_table",
    "template_torch_to_flax",
]


# ----------------------------------------------------------------------------------------- tables
def _identity(t: np.ndarray) -> np.ndarray:
    return t


def oihw_to_hwio(t: np.ndarray) -> np.ndarray:
    """Conv weight (O, I/G, kh, kw) -> Flax kernel (kh, kw, I/G, O)."""
    return np.transpose(t, (2, 3, 1, 0))


def linear_to_dense(t: np.ndarray) -> np.ndarray:
    """Linear weight (out, in) -> Flax Dense kernel (in, out)."""
    return np.transpose(t)


def flatten(t: np.ndarray) -> np.ndarray:
    return np.reshape(t, (-1,))


@dataclass(frozen=True)
class Entry:
    """One row of a mapping table.

    ``path``: Flax variable path ``(collection, module, ..., leaf)``, e.g.
    ``("params", "layer1_0", "conv1", "kernel")``; ``None`` = consumed but not stored
    (``num_batches_tracked``). ``transform``: numpy function torch layout -> Flax layout.
    ``name``: the transform's name for docs (``"oihw->hwio"``, ``".T"``, ``"id"``).
    ``torch_ndim``: the expected number of torch dimensions (checked before the transform).
    ``required``: ``False`` for keys that may be absent (``num_batches_tracked``: older torch versions
    did not save it); when present they are still checked. ``check``: an extra value check
    (``arr -> error message or None``), e.g. masks must be binary.
    """

    path: tuple[str, ...] | None
    transform: Callable[[np.ndarray], np.ndarray] = _identity
    name: str = "id"
    torch_ndim: int | None = None
    required: bool = True
    check: Callable[[np.ndarray], str | None] | None = None


Table = dict  # dict[str, Entry]: torch key -> Entry


def conv_entries(torch_prefix: str, flax_path: tuple[str, ...], bias: bool) -> Table:
    """``<prefix>.weight`` (O, I/G, kh, kw) -> ``params/<path>/kernel``; optional ``.bias``."""
    t = {f"{torch_prefix}.weight": Entry(("params", *flax_path, "kernel"), oihw_to_hwio, "oihw->hwio", 4)}
    if bias:
        t[f"{torch_prefix}.bias"] = Entry(("params", *flax_path, "bias"), torch_ndim=1)
    return t


def dense_entries(torch_prefix: str, flax_path: tuple[str, ...], bias: bool = True) -> Table:
    """``<prefix>.weight`` (out, in) -> ``params/<path>/kernel`` (in, out); ``.bias``."""
    t = {f"{torch_prefix}.weight": Entry(("params", *flax_path, "kernel"), linear_to_dense, ".T", 2)}
    if bias:
        t[f"{torch_prefix}.bias"] = Entry(("params", *flax_path, "bias"), torch_ndim=1)
    return t


def bn_entries(torch_prefix: str, flax_path: tuple[str, ...]) -> Table:
    """BatchNorm2d: weight/bias -> params scale/bias; running_mean/var -> batch_stats mean/var;
    ``num_batches_tracked`` consumed (checked to be a scalar)."""
    return {
        f"{torch_prefix}.weight": Entry(("params", *flax_path, "scale"), torch_ndim=1),
        f"{torch_prefix}.bias": Entry(("params", *flax_path, "bias"), torch_ndim=1),
        f"{torch_prefix}.running_mean": Entry(("batch_stats", *flax_path, "mean"), torch_ndim=1),
        f"{torch_prefix}.running_var": Entry(("batch_stats", *flax_path, "var"), torch_ndim=1),
        f"{torch_prefix}.num_batches_tracked": Entry(None, torch_ndim=0, required=False),
    }


def ln_entries(torch_prefix: str, flax_path: tuple[str, ...]) -> Table:
    """LayerNorm: weight -> scale, bias -> bias."""
    return {
        f"{torch_prefix}.weight": Entry(("params", *flax_path, "scale"), torch_ndim=1),
        f"{torch_prefix}.bias": Entry(("params", *flax_path, "bias"), torch_ndim=1),
    }


def _leaf_paths(template: Any) -> dict[tuple[str, ...], Any]:
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
        out[tuple(str(getattr(p, "key", getattr(p, "name", p))) for p in path)] = leaf
    return out


def _value(k: str, e: Entry, arr: np.ndarray, leaves: dict, errors: list[str]) -> np.ndarray | None:
    """The Flax value of torch key ``k`` through ``e`` (float32), or None after appending the problem
    (number of dimensions, shape after the transform, dtype, NaN/inf, ``e.check``) to ``errors``."""
    if e.torch_ndim is not None and arr.ndim != e.torch_ndim:
        exp = tuple(leaves[e.path].shape) if e.path in leaves else f"{e.torch_ndim}-d"
        errors.append(f"shape mismatch for {k!r}: got {arr.shape}, expected {e.torch_ndim}-d (Flax {exp})")
        return None
    if e.path is None:
        return None
    out = e.transform(arr)
    if e.path in leaves and tuple(out.shape) != tuple(leaves[e.path].shape):
        errors.append(f"shape mismatch for {k!r}: torch {arr.shape} -> {e.name} -> {tuple(out.shape)}, "
                      f"expected {tuple(leaves[e.path].shape)} for Flax {'/'.join(e.path)}")
        return None
    if not np.issubdtype(out.dtype, np.floating):
        errors.append(f"{k!r}: dtype {out.dtype}, expected a floating tensor")
        return None
    if not np.all(np.isfinite(out)):
        errors.append(f"{k!r}: contains NaN/inf")
        return None
    problem = e.check(out) if e.check is not None else None
    if problem:
        errors.append(f"{k!r} {arr.shape}: {problem}")
        return None
    return np.ascontiguousarray(out, dtype=np.float32)


def apply_table(state_dict: Mapping[str, Any], table: Table, template: Any, source: str = "<state_dict>"):
    """Fill ``template`` from ``state_dict`` through ``table``; strict.

    Checks: every torch key is in the table (else "unexpected key"); every table key is in the state
    dict (else "missing key"); the table's Flax paths are exactly the template's leaves (a family
    bug otherwise); each transformed array has the template leaf's shape; values are finite.
    Returns the variables as a nested dict of float32 numpy arrays. Raises ``ValueError`` naming
    ``source`` with all problems at once.
    """
    leaves = _leaf_paths(template)
    errors: list[str] = []
    missing = [k for k, e in table.items() if k not in state_dict and e.required]
    unexpected = [k for k in state_dict if k not in table]
    for k in missing:
        e = table[k]
        where = "/".join(e.path) if e.path else "(consumed)"
        exp = tuple(leaves[e.path].shape) if e.path in leaves else "?"
        errors.append(f"missing torch key {k!r} (for Flax {where}, shape {exp})")
    for k in unexpected:
        errors.append(f"unexpected torch key {k!r} shape {tuple(np.shape(state_dict[k]))}")
    table_paths = {e.path for e in table.values() if e.path is not None}
    for p in sorted(set(leaves) - table_paths):
        errors.append(f"Flax leaf {'/'.join(p)} {tuple(leaves[p].shape)} has no torch key (mapping bug)")
    for p in sorted(table_paths - set(leaves)):
        errors.append(f"mapping names Flax leaf {'/'.join(p)} that the model does not have (mapping bug)")
    values: dict[tuple[str, ...], np.ndarray] = {}
    for k, e in table.items():
        if k in state_dict:
            out = _value(k, e, np.asarray(state_dict[k]), leaves, errors)
            if out is not None:
                values[e.path] = out
    if errors:
        raise ValueError(f"{source}: cannot convert ({len(errors)} problem(s)):\n  " + "\n  ".join(errors))
    flat = jax.tree_util.tree_flatten_with_path(template)[0]
    ordered = [values[tuple(str(getattr(p, "key", getattr(p, "name", p))) for p in path)] for path, _ in flat]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), ordered)


# ------------------------------------------------------------------------- tables from a template
_IDX = re.compile(r"^(.*)_(\d+)$")


def torch_module_path(names: tuple[str, ...]) -> str:
    """Flax module names -> torch's dotted module path (``layer1_0`` -> ``layer1.0``)."""
    parts = []
    for n in names:
        m = _IDX.match(n)
        parts.extend([m.group(1), m.group(2)] if m else [n])
    return ".".join(parts)


def _binary(arr: np.ndarray) -> str | None:
    return None if np.all((arr == 0) | (arr == 1)) else "a Masksembles mask must hold only 0 and 1"


_MHA_LEAVES = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias", "bias_k",
               "bias_v", "out_proj_weight", "out_proj_bias")


def channels_last(t: np.ndarray) -> np.ndarray:
    """A torch conv weight ``(O, I/G, *k)`` (or a transposed conv's ``(I, O/G, *k)``) -> ``(*k, I/G, O)``
    (``(*k, O/G, I)``): ``oihw->hwio`` for any number of spatial axes."""
    return np.transpose(t, (*range(2, t.ndim), 1, 0))


def flax_leaf_to_torch(collection: str, names: tuple[str, ...], ndim: int) -> tuple[str, Entry]:
    """``(torch_key, Entry)`` for the Flax leaf ``collection/names...`` of a model whose submodule names
    mirror torch's (``<name>_<i>`` = torch's ``<name>.<i>``): conv kernels (4-d, OIHW -> HWIO), dense
    kernels (2-d, transposed), packed dense kernels (3-d ``(G, o, i)``, as is), BatchNorm scale/bias/
    running statistics, BatchEnsemble ``r_group``/``s_group``/``bias``, Masksembles ``masks``, and the
    packed family's 1/2/3-d ``conv``/``conv_transpose`` kernels and attention leaves."""
    *mod, leaf = names
    base = torch_module_path(tuple(mod))
    path = (collection, *names)
    if collection == "params":
        if leaf == "kernel" and mod and mod[-1] in ("conv", "conv_transpose"):  # packed convs, 1/2/3-d
            return f"{base}.weight", Entry(path, channels_last, "(o, i/g, *k)->(*k, i/g, o)", ndim)
        if leaf == "kernel" and ndim == 4:
            return f"{base}.weight", Entry(path, oihw_to_hwio, "oihw->hwio", 4)
        if leaf == "kernel" and ndim == 3:
            return f"{base}.weight", Entry(path, name="id (G, o, i)", torch_ndim=3)
        if leaf == "kernel" and ndim == 2:
            return f"{base}.weight", Entry(path, linear_to_dense, ".T", 2)
        if leaf == "scale":
            return f"{base}.weight", Entry(path, torch_ndim=1)
        if leaf in ("bias", "r_group", "s_group"):
            return f"{base}.{leaf}", Entry(path, torch_ndim=ndim)
        if leaf in _MHA_LEAVES:  # PackedMultiheadAttention keeps torch's names and layouts
            return f"{base}.{leaf}" if base else leaf, Entry(path, torch_ndim=ndim)
    if collection == "batch_stats" and leaf in ("mean", "var"):
        return f"{base}.running_{leaf}", Entry(path, torch_ndim=1)
    if collection == "constants" and leaf == "masks":
        return f"{base}.masks", Entry(path, name="id (0/1)", torch_ndim=2, check=_binary)
    raise ValueError(f"no torch key rule for Flax leaf {collection}/{'/'.join(names)} ({ndim}-d)")


def template_table(template: Any) -> Table:
    """The explicit table of a model built from the :func:`flax_leaf_to_torch` rules, one row per Flax
    leaf, plus ``num_batches_tracked`` for every BatchNorm."""

    t: Table = {}
    bns = set()
    for p, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
        names = tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in p)
        key, entry = flax_leaf_to_torch(names[0], names[1:], len(leaf.shape))
        t[key] = entry
        if names[0] == "batch_stats" and names[-1] == "mean":
            bns.add(torch_module_path(names[1:-1]))
    for b in sorted(bns):
        t[f"{b}.num_batches_tracked"] = Entry(None, torch_ndim=0)
    return t


def template_torch_to_flax(state_dict: Mapping[str, Any], template: Any, source: str = "<state_dict>"):
    """Strict conversion through :func:`template_table` (a family's ``torch_to_flax``)."""
    return apply_table(state_dict, template_table(template), template, source)


# --------------------------------------------------------------------------------------- registry
_FAMILIES: dict[str, ModuleType] | None = None


def families() -> dict[str, ModuleType]:
    """``{family_name: module}`` of every module in this package (imported once, sorted)."""
    global _FAMILIES
    if _FAMILIES is None:
        fams = {}
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
            if info.name.startswith("_"):
                continue
            mod = importlib.import_module(f"{__name__}.{info.name}")
            if not isinstance(getattr(mod, "ARCHS", None), dict) or not callable(
                getattr(mod, "torch_to_flax", None)
            ):
                raise ImportError(
                    f"converters.mappings.{info.name} lacks ARCHS / torch_to_flax (see docstring)"
                )
            fams[info.name] = mod
        _FAMILIES = fams
    return _FAMILIES


def arch_names() -> list[str]:
    return sorted(a for f in families().values() for a in f.ARCHS)


def family_of(model_name: str) -> ModuleType:
    for f in families().values():
        if model_name in f.ARCHS:
            return f
    raise ValueError(f"unknown architecture {model_name!r}; known: {', '.join(arch_names())}")


def build_template(model_name: str, **kwargs):
    """``(module, template, sample_shape)``: the Flax module and its variables' shapes (no compute)."""
    module, shape = family_of(model_name).ARCHS[model_name](**kwargs)
    template = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(shape, jnp.float32)))
    return module, template, tuple(shape)


def convert_state_dict(model_name: str, state_dict: Mapping[str, Any], source: str = "<state_dict>",
                       **kwargs):
    """``(module, variables)`` for ``model_name`` built with ``kwargs`` from a (prefix-stripped) state dict.
    (``model_name``, not ``arch``: TU's ``resnet`` has an ``arch`` kwarg.)"""
    fam = family_of(model_name)
    module, template, _ = build_template(model_name, **kwargs)
    sd = {k: np.asarray(v) for k, v in state_dict.items()}
    return module, fam.torch_to_flax(sd, template, source)


def infer(state_dict: Mapping[str, Any]) -> tuple[str, dict] | None:
    """The first family's guess ``(arch, kwargs)`` for a state dict, or ``None``."""
    for f in families().values():
        fn = getattr(f, "infer", None)
        if fn is None:
            continue
        try:
            got = fn(state_dict)
        except (KeyError, ValueError, IndexError):
            got = None
        if got is not None:
            return got
    return None
