"""Mapping family ``mimo``: TU MIMO checkpoints (``mimo_resnet``, ``mimo_wideresnet28x10``).

A MIMO network is TU's plain ``resnet`` / ``wideresnet28x10`` with ``M * in_channels`` inputs and
``M * num_classes`` outputs, so its state dict is key for key a plain one: the table is the plain
model's (:func:`converters.mappings.template_table`), and nothing in the keys says "MIMO". ``infer``
therefore never claims a checkpoint (without ``--arch`` it converts as the plain model, whose logits
are the same numbers in TU's other layout ``[B, M*C]``); with ``--arch mimo_resnet -k num_estimators=M``
(or ``mimo_wideresnet28x10``) :func:`complete` reads every other kwarg from the shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from converters.mappings import resnet, template_torch_to_flax, wideresnet
from converters.mappings._shapes import template
from jaxuq.models.resnet import mimo_resnet
from jaxuq.models.wideresnet import mimo_wideresnet28x10

__all__ = ["ARCHS", "complete", "torch_to_flax"]


def _resnet(**kw):

    return template(mimo_resnet, kw)


def _wrn(**kw):

    return template(mimo_wideresnet28x10, kw)


ARCHS = {"mimo_resnet": _resnet, "mimo_wideresnet28x10": _wrn}
torch_to_flax = template_torch_to_flax


def complete(model_name: str, state_dict: Mapping[str, Any], kwargs: dict) -> dict:
    """The kwargs of ``model_name`` from the plain model's shapes and ``kwargs["num_estimators"]``."""

    m = kwargs.get("num_estimators")
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"{model_name}: the state dict does not say how many members it has; pass "
                         "-k num_estimators=M")
    plain = (resnet if model_name == "mimo_resnet" else wideresnet).infer(state_dict)
    if plain is None:
        raise ValueError(f"the state dict is not a plain TU {model_name[5:]} (the keys of a {model_name})")
    kw = dict(plain[1])
    for key in ("in_channels", "num_classes"):
        if kw[key] % m:
            raise ValueError(f"{model_name}: {key} {kw[key]} of the network is not a multiple of "
                             f"num_estimators={m}")
        kw[key] //= m
    return kw | {"num_estimators": m, "conv_bias": bool(kw.get("conv_bias", False))}
