"""Mapping family ``mlp``: TU 0.13.0's regression MLPs (``mlp``, ``packed_mlp``, ``batched_mlp``,
``mimo_mlp``, ``bayesian_mlp``; ``torch_uncertainty/models/mlp.py``), point or distribution heads.

=========================================  ===========================================  ==========
torch key                                  Flax leaf                                     transform
=========================================  ===========================================  ==========
layers.{i}.weight / .bias                  params/layers_{i}/kernel / bias               .T / id
  packed: (G, o, i) / (G*o,)               params/layers_{i}/kernel / bias               id
  batched: .linear.weight, .r_group, ...   params/layers_{i}/linear/kernel, r_group, ...  .T / id
final_layer.*                              params/final_layer/*                          as above
final_layer.base_layer.* (a head)          params/final_layer/base_layer/*               as above
core_model.* (bayesian_mlp)                ``weight_mu``/``weight_sigma``/``bias_*`` (bayesian family)
=========================================  ===========================================  ==========

The form is read from the keys (3-d weights: packed; ``r_group``: batched; ``weight_mu``: Bayesian; else
plain); a MIMO MLP is key for key a plain one (``--arch mimo_mlp -k num_estimators=M``, as ``mimo_resnet``).
What a state dict cannot say is taken from ``-k``: a head's ``dist_family`` (its width is ``P * D``, and
normal/laplace/cauchy/gamma all have P = 2; ``dist_args`` for Student-t's ``fixed_df``), and for packed
MLPs ``num_estimators`` and ``alpha`` (only ``alpha * width`` is stored).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from converters.mappings import apply_table, template_torch_to_flax
from converters.mappings.bayesian import check_copies, layer_entries
from jaxuq.models import mlp as _mlp
from jaxuq.nn.distributions import num_params

__all__ = ["ARCHS", "complete", "infer", "torch_reference", "torch_to_flax"]

FORMS = ("mlp", "packed_mlp", "batched_mlp", "mimo_mlp", "bayesian_mlp")
PREFIX = "core_model."


def _factory(name: str):
    def build(**kw):
        return getattr(_mlp, name)(**kw), (1, int(kw.get("in_features", 1)))

    return build


ARCHS = {name: _factory(name) for name in FORMS}


def _strip(sd: Mapping[str, Any]) -> dict:
    if sd and all(k.startswith(PREFIX) for k in sd):
        return {k[len(PREFIX):]: v for k, v in sd.items()}
    return dict(sd)


def _layers(sd: dict) -> tuple[list[str], str]:
    """Torch prefixes of the hidden layers and of the final Linear (``final_layer[.base_layer]``)."""
    n = 0
    while any(k.startswith(f"layers.{n}.") for k in sd):
        n += 1
    head = "final_layer.base_layer"
    head = head if any(k.startswith(f"{head}.") for k in sd) else "final_layer"
    return [f"layers.{i}" for i in range(n)], head


def _form(sd: dict) -> str:
    if any(k.endswith("weight_mu") for k in sd):
        return "bayesian_mlp"
    if any(k.endswith("r_group") for k in sd):
        return "batched_mlp"
    if np.ndim(sd["final_layer.base_layer.weight" if "final_layer.base_layer.weight" in sd
                  else "final_layer.weight"]) == 3:
        return "packed_mlp"
    return "mlp"


def _weight(sd: dict, prefix: str, form: str) -> tuple[int, int]:
    """(out, in) widths of a layer as stored (packed: ``(G*o, G*i)``, extended by alpha)."""
    key = {"batched_mlp": "linear.weight", "bayesian_mlp": "weight_mu"}.get(form, "weight")
    s = np.shape(sd[f"{prefix}.{key}"])
    return (int(s[0] * s[1]), int(s[0] * s[2])) if len(s) == 3 else (int(s[0]), int(s[1]))


def _head_outputs(kwargs: dict, width: int, has_head: bool, fold: int) -> dict:
    """``num_outputs`` (+ ``dist_family``) from the final layer's width."""
    if not has_head:
        return {"num_outputs": width // fold}
    family = kwargs.get("dist_family")
    if family is None:
        raise ValueError("the checkpoint has a distribution head (final_layer.base_layer), whose family "
                         "the state dict does not record; pass "
                         "-k dist_family=normal|laplace|cauchy|gamma|student|nig")
    p = num_params(family, kwargs.get("dist_args") or ())
    if width % (p * fold):
        raise ValueError(f"a {family!r} head of width {width} does not split into {p} parameters x {fold}")
    return {"num_outputs": width // (p * fold), "dist_family": family}


def complete(model_name: str, state_dict: Mapping[str, Any], kwargs: dict) -> dict:
    """The kwargs of ``model_name`` from the state dict's shapes and the user's ``kwargs`` (``dist_family``;
    ``num_estimators`` for MIMO and packed, ``alpha`` for packed)."""
    sd = _strip(state_dict)
    form = "mlp" if model_name == "mimo_mlp" else _form(sd)
    hidden, head = _layers(sd)
    widths = [_weight(sd, p, form) for p in [*hidden, head]]
    kw = {k: v for k, v in kwargs.items() if k in ("activation", "dropout_rate", "dist_args", "num_samples")}
    fold, alpha = 1, 1
    if model_name in ("mimo_mlp", "packed_mlp"):
        m = kwargs.get("num_estimators")
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"{model_name}: the state dict does not say how many members it has; pass "
                             "-k num_estimators=M" + (" -k alpha=A" if model_name == "packed_mlp" else ""))
        kw["num_estimators"] = m
        fold = m
    if model_name == "packed_mlp":
        alpha = kwargs.get("alpha")
        if not isinstance(alpha, int | float) or isinstance(alpha, bool):
            raise ValueError("packed_mlp: the state dict stores alpha x width only; pass -k alpha=A")
        groups = int(np.shape(sd[f"{(hidden[1:] or [head])[0]}.weight"])[0])
        kw |= {"alpha": alpha, "gamma": max(groups // fold, 1)}
    if model_name == "batched_mlp":
        kw["num_estimators"] = int(np.shape(sd[f"{head}.r_group"])[0])
    in_features = widths[0][1] // (fold if model_name == "mimo_mlp" else 1)
    kw |= {"in_features": in_features, "hidden_dims": [int(round(w[0] / alpha)) for w in widths[:-1]]}
    head_fold = fold if model_name in ("mimo_mlp", "packed_mlp") else 1
    return kw | _head_outputs(kwargs, widths[-1][0], head.endswith("base_layer"), head_fold)


def infer(state_dict: Mapping[str, Any]) -> tuple[str, dict] | None:
    """``(form, kwargs)`` of an MLP state dict (every key under ``layers.`` / ``final_layer.``); the kwargs
    the shapes give (``dist_family``, and packed ``num_estimators``/``alpha``, come from ``-k`` through
    :func:`complete`)."""
    sd = _strip(state_dict)
    if not sd or not all(k.startswith(("layers.", "final_layer.")) for k in sd):
        return None
    form = _form(sd)
    try:
        return form, complete(form, sd, {})
    except ValueError:
        return form, {}


def torch_to_flax(state_dict, template, source="<state_dict>"):
    sd = _strip(state_dict)
    if not any(k.endswith("weight_mu") for k in sd):
        return template_torch_to_flax(sd, template, source)
    hidden, head = _layers(sd)
    check_copies(sd, source, [*hidden, head])
    table = {}
    for prefix in [*hidden, head]:
        path = tuple(prefix.replace("layers.", "layers_").split("."))
        table |= layer_entries(prefix, conv=False, path=path)
    return apply_table(sd, table, template, source)


def torch_reference(arch: str, /, **kwargs):
    """TU's MLP with the same state-dict keys (``--verify``; not ``bayesian_mlp``, which samples)."""
    if arch not in ARCHS or arch == "bayesian_mlp":
        raise ValueError(f"no deterministic torch reference for {arch!r}")
    import torch.nn.functional as F  # noqa: PLC0415
    from torch_uncertainty.models import mlp as tu  # noqa: PLC0415

    kw = dict(kwargs)
    kw["activation"] = getattr(F, kw.get("activation", "relu"))
    kw["dist_args"] = {k: v for k, v in dict(kw.get("dist_args") or ()).items()} or None
    return getattr(tu, arch)(**kw)
