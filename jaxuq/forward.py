"""The one forward pass: model + variables + a batch -> float32 eval-mode outputs.

:func:`forward` sits below training and evaluation: :func:`jaxuq.evaluation.predict`,
:func:`jaxuq.evaluate` and ``fit``'s per-epoch evaluation all run it (jitted by them; ``forward``
itself is a pure, jittable function). It applies the preprocessing, the compute dtype, the member
lowering and the member part of the mesh, and returns one layout per kind of model:

* one model, one set of variables: ``[B, C]``;
* a stacked ensemble (every variable leaf ``[M, ...]``) with ``lowering`` "vmap"/"map"/"unroll":
  ``[M, B, C]``;
* a model with the members folded into the batch (the class attribute
  ``members_in_batch: ClassVar[bool] = True`` and a field ``num_estimators``: Packed-Ensembles,
  BatchEnsemble, MIMO, Masksembles): TU's ``[(M B), C]`` member-major output split to ``[M, B, C]``
  (decided by the marker, never by the output's shape);
* a :class:`Sampler` (MC Dropout masks, Bayesian weight noise, SWAG/Laplace weight samples,
  MC-BatchNorm statistics): ``num_samples`` draws, each from its own key split from ``key``, mapped
  with ``lowering`` -> ``[M, B, C]``.

The kinds compose: a stacked ensemble of packed models gives ``[M1 * M2, B, C]`` (member ``m1``'s
``M2`` estimators first).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from jaxuq.ensembles import apply_members, check_lowering, over_members
from jaxuq.sharding import MeshRoles, batch_sharding, split_mesh

__all__ = ["Sampler", "StackedBatchStats", "forward", "members_in_batch", "split_in_batch"]


@runtime_checkable
class Sampler(Protocol):
    """A sampling method as seen by the forward pass: ``num_samples`` draws of
    ``draw(variables, key) -> (variables_m, rngs_m)``; sample ``m`` runs
    ``model.apply(variables_m, x, train=False, rngs=rngs_m)`` with ``key_m = split(key, M)[m]``.

    ``per_sample`` (optional, default ``()``) names variable collections stacked on a leading
    ``[num_samples, ...]`` axis: the forward pass hands sample ``m`` its slice ``m`` of them (the other
    collections are shared), so index-based methods (M sets of BatchNorm statistics, checkpoint
    snapshots) and key-based ones (dropout masks, weight noise) use the same hook. ``draw`` must be
    jittable; a sampler is hashable (a frozen dataclass), since it is part of the compiled program.

    Optional attributes: ``lowering`` (``"vmap"``/``"map"``/``"unroll"``: how the samples run when the
    caller gives none; TU's ``on_batch=True`` is ``"vmap"``, a loop ``"map"``) and ``random`` (default
    True; False: ``draw`` ignores its key, so none is needed).
    """

    num_samples: int

    def draw(self, variables, key) -> tuple[Any, dict]: ...


@dataclasses.dataclass(frozen=True)
class StackedBatchStats:
    """``num_samples`` sets of BatchNorm statistics for one set of parameters (MC-BatchNorm's layout:
    ``variables["batch_stats"]`` leaves ``[M, ...]``, ``variables["params"]`` one model's): sample
    ``m`` is the model with statistics ``m``. Draws nothing at random."""

    num_samples: int
    per_sample: ClassVar[tuple[str, ...]] = ("batch_stats",)
    random: ClassVar[bool] = False

    def draw(self, variables, key):
        return variables, {}


def members_in_batch(model) -> bool:
    """True for a model whose ``__call__`` returns TU's ``[(M B), ...]`` layout (the class marker)."""
    return bool(getattr(type(model), "members_in_batch", False))


def split_in_batch(model, out, rows: int, row_axis: int = 0):
    """Split a ``members_in_batch`` model's ``[..., (M B), ...]`` output (rows on ``row_axis``) into
    ``[M, B, ...]``, merged with any leading member/sample axis (``[M1 * M, B, ...]``); other models'
    outputs unchanged."""
    if not members_in_batch(model):
        return out
    m = int(model.num_estimators)

    def one(a):
        if a.shape[row_axis] != m * rows:
            raise ValueError(f"{type(model).__name__} (members_in_batch, num_estimators={m}) returned "
                             f"{a.shape[row_axis]} rows for a batch of {rows}; expected {m * rows}")
        a = a.reshape(a.shape[:row_axis] + (m, rows) + a.shape[row_axis + 1 :])
        return a.reshape((-1,) + a.shape[row_axis + 1 :])

    return jax.tree.map(one, out)


def _cast_params(variables, dtype: str):
    if dtype == "float32":
        return variables
    cast = lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a  # noqa: E731
    return dict(variables, params=jax.tree.map(cast, variables["params"]))


def _check_sampler(sampler, key) -> int:
    if not isinstance(sampler, Sampler):
        raise TypeError("sampler must have `num_samples` and `draw(variables, key)`, got "
                        f"{type(sampler).__name__}")
    m = sampler.num_samples
    if not isinstance(m, int) or isinstance(m, bool):
        raise TypeError(f"sampler.num_samples must be an int, got {type(m).__name__}")
    if m < 1:
        raise ValueError(f"sampler.num_samples must be >= 1, got {m}")
    if key is None and getattr(sampler, "random", True):
        raise ValueError("a sampler needs `key` (a jax.random.key): each sample draws from split(key, M)")
    return m


def _sampled(model, variables, x, sampler, key, lowering, mesh, dtype: str):
    """``[M, B, ...]``: sample ``m`` = ``model.apply(*draw(variables with slice m of per_sample, key_m))``."""
    m = _check_sampler(sampler, key)
    per = tuple(getattr(sampler, "per_sample", ()))
    missing = [c for c in per if c not in variables]
    if missing:
        raise ValueError(f"{type(sampler).__name__} needs the variable collections {missing}, got "
                         f"{list(variables)}")
    stacked = {c: variables[c] for c in per}
    for leaf in jax.tree.leaves(stacked):
        if leaf.shape[:1] != (m,):
            raise ValueError(f"{type(sampler).__name__}: collections {list(per)} need a leading axis of "
                             f"num_samples={m}, got a leaf of shape {leaf.shape}")
    shared = {c: v for c, v in variables.items() if c not in per}
    keys = jax.random.split(jax.random.key(0) if key is None else key, m)  # no key: the sampler draws nothing

    def one(k, st, base, xs):
        v, rngs = sampler.draw({**base, **st}, k)
        return model.apply(_cast_params(v, dtype), xs, train=False, rngs=rngs or {})

    lowering = lowering or getattr(sampler, "lowering", None)
    return over_members(one, lowering, keys, stacked, shared=(shared, x), mesh=mesh)


def forward(model, variables, x, *, preprocess=None, compute_dtype="float32", lowering=None, mesh=None,
            sampler: Sampler | None = None, key=None):
    """Eval-mode outputs of ``model`` on one batch ``x [B, ...]``, float32 (see the module doc).

    Args:
      model: a Flax module ``__call__(x, train: bool)``.
      variables: its variables; stacked ``[M, ...]`` on every leaf when ``lowering`` is given and no
        ``sampler`` (a deep ensemble); one model's otherwise.
      x: the batch; ``preprocess`` (a :class:`jaxuq.data.Preprocess`) maps uint8 images through its
        ``.eval``; None: ``x`` is used as it is (already preprocessed, or non-image features).
      compute_dtype: "float32" or "bfloat16": float parameters and float inputs are cast to it; the
        outputs are float32.
      lowering: "vmap" / "map" / "unroll": how the member or sample axis is run
        (:mod:`jaxuq.ensembles`). Given without a sampler, ``variables`` are a stacked ensemble; with a
        sampler, None takes the sampler's ``lowering`` (TU's ``on_batch``), else the backend's default.
      mesh: a ``Mesh`` or :class:`jaxuq.sharding.MeshRoles`; a member mesh splits the members/samples
        over devices, a data mesh constrains the batch to its ``data`` axis.
      sampler, key: a :class:`Sampler` and the typed key its samples are split from (None for a
        sampler with ``random = False``, e.g. :class:`StackedBatchStats`).
    Returns:
      ``[B, C]``, or ``[M, B, C]`` for a stacked ensemble, a ``members_in_batch`` model or a sampler.
    """
    check_lowering(lowering)
    roles, dtype = split_mesh(mesh), jnp.dtype(compute_dtype).name
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', got {compute_dtype!r}")
    x = x if preprocess is None else preprocess.eval(x)
    x = _constrain(x, roles)
    if dtype != "float32" and jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(dtype)
    if sampler is not None:
        out, row_axis = _sampled(model, variables, x, sampler, key, lowering, roles.members, dtype), 1
    elif lowering is not None:
        v = _cast_params(variables, dtype)
        out, row_axis = apply_members(model, v, x, lowering=lowering, mesh=roles.members), 1
    elif roles.members is not None:
        raise ValueError("a member mesh needs stacked variables (lowering=...) or a sampler")
    else:
        out, row_axis = model.apply(_cast_params(variables, dtype), x, train=False), 0
    out = jax.tree.map(lambda a: a.astype(jnp.float32), out)
    return split_in_batch(model, out, x.shape[0], row_axis)


def _constrain(x, roles: MeshRoles):
    mesh = roles.data
    if mesh is None or x.shape[0] % mesh.size:
        return x
    return jax.lax.with_sharding_constraint(x, batch_sharding(mesh))
