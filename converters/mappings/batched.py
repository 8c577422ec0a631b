"""Mapping family ``batched``: TU BatchEnsemble checkpoints (``batched_resnet``, ``batched_wideresnet28x10``,
``batchensemble_lenet``).

The table is generated from the Flax template (:func:`converters.mappings.template_table`):

==============================================  ====================================  ============
Flax leaf                                       torch key                             transform
==============================================  ====================================  ============
``params/<p>/conv/kernel`` [kh, kw, I/G, O]     ``<p>.conv.weight`` (O, I/G, kh, kw)  oihw->hwio
``params/<p>/linear/kernel`` [in, out]          ``<p>.linear.weight`` (out, in)       .T
``params/<p>/{r_group, s_group, bias}`` [M, n]  ``<p>.{r_group, s_group, bias}``      id
plain conv / dense / BatchNorm leaves           as in the ``resnet`` family           --
==============================================  ====================================  ============

``batchensemble_lenet``'s keys carry TU's wrapper prefix ``core_model.`` (Flax module ``core_model``).
``infer`` reads M from ``r_group`` and the rest from the shapes; a checkpoint whose member count
differs from the model's ``num_estimators`` is refused with the key and both shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

from converters.mappings import template_torch_to_flax
from converters.mappings._shapes import resnet_arch, shape, style_of, template, wrn_widen
from jaxuq.models.lenet import batchensemble_lenet
from jaxuq.models.resnet import SMALL_PLANES_ARCHS, batched_resnet
from jaxuq.models.wideresnet import batched_wideresnet28x10

__all__ = ["ARCHS", "infer", "torch_to_flax"]


def _resnet(**kw):

    return template(batched_resnet, kw)


def _wrn(**kw):

    return template(batched_wideresnet28x10, kw)


def _lenet(**kw):

    return batchensemble_lenet(**kw), (1, 28, 28, kw.get("in_channels", 1))


ARCHS = {"batched_resnet": _resnet, "batched_wideresnet28x10": _wrn, "batchensemble_lenet": _lenet}


def torch_to_flax(state_dict: Mapping[str, Any], template_: Any, source: str = "<state_dict>"):
    """Strict conversion; first checks that every ``r_group``/``s_group``/per-member ``bias`` has the
    model's member count."""

    leaves = jax.tree_util.tree_flatten_with_path(template_["params"])[0]
    m = next(leaf.shape[0] for p, leaf in leaves if str(getattr(p[-1], "key", p[-1])) == "r_group")
    bad = [f"{k!r} {shape(state_dict, k)}" for k in state_dict
           if k.endswith((".r_group", ".s_group")) and shape(state_dict, k)[0] != m]
    if bad:
        raise ValueError(f"{source}: a BatchEnsemble checkpoint with another number of members than the "
                         f"model's num_estimators={m}: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
    return template_torch_to_flax(state_dict, template_, source)


def _resnet_like(sd) -> dict:
    """kwargs shared by batched_resnet / batched_wideresnet28x10 from their keys and shapes."""
    stem = shape(sd, "conv1.conv.weight")
    first = shape(sd, "layer1.0.conv1.conv.weight")
    groups = stem[0] // first[1]
    kw = {"in_channels": stem[1] * groups, "num_classes": shape(sd, "linear.linear.weight")[0],
          "num_estimators": shape(sd, "conv1.r_group")[0], "conv_bias": "layer1.0.conv1.bias" in sd,
          "style": style_of(stem)}
    if groups != 1:
        kw["groups"] = groups
    return kw


def infer(state_dict: Mapping[str, Any]) -> tuple[str, dict] | None:
    sd = state_dict
    if "core_model.conv1.r_group" in sd and "core_model.fc3.linear.weight" in sd:
        groups = 6 // shape(sd, "core_model.conv2.conv.weight")[1]
        kw = {"in_channels": shape(sd, "core_model.conv1.conv.weight")[1] * groups,
              "num_classes": shape(sd, "core_model.fc3.linear.weight")[0],
              "num_estimators": shape(sd, "core_model.conv1.r_group")[0],
              "norm": "batchnorm" if "core_model.norm1.weight" in sd else "none"}
        return "batchensemble_lenet", kw | ({"groups": groups} if groups != 1 else {})
    if "conv1.r_group" not in sd or "linear.r_group" not in sd:
        return None
    if wrn_widen(sd, "{}.conv.weight") == 10:
        kw = _resnet_like(sd)
        kw["conv_bias"] = "conv1.bias" in sd  # the WRN stem uses conv_bias
        return "batched_wideresnet28x10", kw
    arch = resnet_arch(sd)
    if arch is None:
        return None

    kw = _resnet_like(sd)
    base = shape(sd, "conv1.conv.weight")[0]
    default = 16 if arch in SMALL_PLANES_ARCHS else 64
    if base != default:
        kw["width_multiplier"] = base / default
    return "batched_resnet", {"in_channels": kw.pop("in_channels"), "num_classes": kw.pop("num_classes"),
                              "arch": arch, **kw}
