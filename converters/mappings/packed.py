"""Mapping family ``packed``: TU Packed-Ensembles checkpoints (``packed_lenet``, ``packed_resnet``,
``packed_wideresnet28x10``, ``packed_vgg``).

The explicit table (torch key -> Flax path + transform) is generated from the Flax template of the
model with one rule per leaf kind, then applied strictly with :func:`converters.mappings.apply_table`:

================================================  =====================================  =================
Flax leaf                                         torch key                              transform
================================================  =====================================  =================
``params/<p>/conv/kernel`` [kh, kw, I/G, O]       ``<p>.conv.weight`` (O, I/G, kh, kw)   ``oihw->hwio``
``params/<p>/conv/bias``                          ``<p>.conv.bias``                      id
``params/<packed linear>/kernel`` [G, o, i]       ``<p>.weight`` (G, o, i)               id
``params/<bn>/scale``, ``bias``                   ``<p>.weight``, ``<p>.bias``           id
``batch_stats/<bn>/mean``, ``var``                ``<p>.running_mean``, ``running_var``  id
--                                                ``<p>.num_batches_tracked``            consumed
================================================  =====================================  =================

Path rule: Flax module names ``layer1_0`` / ``shortcut_1`` are torch's ``layer1.0`` / ``shortcut.1``
(``<name>_<int>`` -> ``<name>.<int>``). A grouped conv keeps torch's contiguous group layout, so the
plain OIHW -> HWIO transpose gives the ``feature_group_count`` kernel.
Architectures and kwargs (TU's): ``packed_lenet(in_channels, num_classes, num_estimators, alpha, gamma)``,
``packed_resnet(in_channels, num_classes, arch, num_estimators, alpha, gamma, style, ...)``,
``packed_wideresnet28x10(in_channels, num_classes, num_estimators, alpha, gamma, ...)``,
``packed_vgg(in_channels, num_classes, arch, alpha, num_estimators, gamma, ...)``.

The rest of TU's packed layers (``jaxuq.nn.packed``) follow the same rules: a ``conv`` (1/2/3-d) or
``conv_transpose`` kernel moves channels last (``(O, I/G, *k) -> (*k, I/G, O)``; the transposed conv's
``(I, O/G, *k) -> (*k, O/G, I)``), a ``PackedLayerNorm``'s ``weight`` is ``scale``, and the attention's
``in_proj_weight``, ``q/k/v_proj_weight``, ``in_proj_bias``, ``bias_k``, ``bias_v``, ``out_proj_weight``,
``out_proj_bias`` keep their names and layouts. One entry helper per layer builds its rows of a table
(``packed_conv_entries``, ``packed_conv_transpose_entries``, ``packed_linear_entries``,
``packed_layer_norm_entries``, ``packed_mha_entries``, ``packed_transformer_encoder_layer_entries``,
``packed_transformer_decoder_layer_entries``) for :func:`converters.mappings.apply_table`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from converters.mappings import Entry, Table, apply_table, channels_last, flax_leaf_to_torch, template_table
from converters.mappings._shapes import shape, style_of, template, wrn_widen
from converters.mappings.vgg import vgg_kwargs
from jaxuq.models.lenet import packed_lenet
from jaxuq.models.resnet import BASIC_ARCHS as _BASIC
from jaxuq.models.resnet import RESNET_BLOCKS, packed_resnet
from jaxuq.models.vgg import packed_vgg
from jaxuq.models.wideresnet import packed_wideresnet28x10

__all__ = [
    "ARCHS", "build", "flax_leaf_to_torch", "infer", "packed_conv_entries", "packed_conv_transpose_entries",
    "packed_layer_norm_entries", "packed_linear_entries", "packed_mha_entries",
    "packed_transformer_decoder_layer_entries", "packed_transformer_encoder_layer_entries", "table",
    "torch_reference", "torch_to_flax",
]


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def packed_conv_entries(torch_prefix: str, flax_path: tuple[str, ...], *, bias: bool = True,
                        spatial_dims: int = 2) -> Table:
    """TU ``PackedConv{1,2,3}d`` -> :class:`jaxuq.nn.packed.PackedConv`: ``<p>.conv.weight (O, I/G, *k)`` ->
    ``params/<path>/conv/kernel (*k, I/G, O)``; ``<p>.conv.bias`` -> ``conv/bias``."""
    nd = spatial_dims + 2
    t = {_key(torch_prefix, "conv.weight"): Entry(("params", *flax_path, "conv", "kernel"), channels_last,
                                                  "(o, i/g, *k)->(*k, i/g, o)", nd)}
    if bias:
        t[_key(torch_prefix, "conv.bias")] = Entry(("params", *flax_path, "conv", "bias"), torch_ndim=1)
    return t


def packed_conv_transpose_entries(torch_prefix: str, flax_path: tuple[str, ...], *, bias: bool = True,
                                  spatial_dims: int = 2) -> Table:
    """TU ``PackedConvTranspose2d`` -> :class:`jaxuq.nn.packed.PackedConvTranspose`:
    ``<p>.conv_transpose.weight (I, O/G, *k)`` -> ``conv_transpose/kernel (*k, O/G, I)``; ``.bias``."""
    path = ("params", *flax_path, "conv_transpose")
    t = {_key(torch_prefix, "conv_transpose.weight"): Entry((*path, "kernel"), channels_last,
                                                            "(i, o/g, *k)->(*k, o/g, i)", spatial_dims + 2)}
    if bias:
        t[_key(torch_prefix, "conv_transpose.bias")] = Entry((*path, "bias"), torch_ndim=1)
    return t


def packed_linear_entries(torch_prefix: str, flax_path: tuple[str, ...], *, bias: bool = True) -> Table:
    """TU ``PackedLinear`` -> ``PackedDense``: ``<p>.weight (G, o, i)`` -> ``kernel`` as is; ``<p>.bias``."""
    t = {_key(torch_prefix, "weight"): Entry(("params", *flax_path, "kernel"), name="id (G, o, i)",
                                             torch_ndim=3)}
    if bias:
        t[_key(torch_prefix, "bias")] = Entry(("params", *flax_path, "bias"), torch_ndim=1)
    return t


def packed_layer_norm_entries(torch_prefix: str, flax_path: tuple[str, ...], *, affine: bool = True) -> Table:
    """TU ``PackedLayerNorm`` (a GroupNorm): ``<p>.weight`` -> ``scale``, ``<p>.bias`` -> ``bias``."""
    if not affine:
        return {}
    return {_key(torch_prefix, "weight"): Entry(("params", *flax_path, "scale"), torch_ndim=1),
            _key(torch_prefix, "bias"): Entry(("params", *flax_path, "bias"), torch_ndim=1)}


def packed_mha_entries(torch_prefix: str, flax_path: tuple[str, ...], *, same_embed_dim: bool = True,
                       bias: bool = True, add_bias_kv: bool = False) -> Table:
    """TU ``PackedMultiheadAttention``: every parameter keeps its name and layout (``in_proj_weight`` or
    ``q/k/v_proj_weight``, ``in_proj_bias``, ``bias_k``/``bias_v``, ``out_proj_weight``,
    ``out_proj_bias``)."""
    names = [("in_proj_weight", 3)] if same_embed_dim else [(f"{n}_proj_weight", 3) for n in "qkv"]
    names += [("in_proj_bias", 1)] if bias else []
    names += [("bias_k", 3), ("bias_v", 3)] if add_bias_kv else []
    names += [("out_proj_weight", 3)] + ([("out_proj_bias", 1)] if bias else [])
    return {_key(torch_prefix, n): Entry(("params", *flax_path, n), torch_ndim=nd) for n, nd in names}


def _transformer_entries(torch_prefix: str, flax_path: tuple[str, ...], attentions: tuple[str, ...],
                         norms: int, bias: bool) -> Table:
    t: Table = {}
    for a in attentions:
        t.update(packed_mha_entries(_key(torch_prefix, a), (*flax_path, a), bias=bias))
    for lin in ("linear1", "linear2"):
        t.update(packed_linear_entries(_key(torch_prefix, lin), (*flax_path, lin), bias=bias))
    for i in range(1, norms + 1):
        t.update(packed_layer_norm_entries(_key(torch_prefix, f"norm{i}"), (*flax_path, f"norm{i}")))
    return t


def packed_transformer_encoder_layer_entries(torch_prefix: str, flax_path: tuple[str, ...], *,
                                             bias: bool = True) -> Table:
    """TU ``PackedTransformerEncoderLayer``: ``self_attn``, ``linear1``, ``linear2``, ``norm1``, ``norm2``."""
    return _transformer_entries(torch_prefix, flax_path, ("self_attn",), 2, bias)


def packed_transformer_decoder_layer_entries(torch_prefix: str, flax_path: tuple[str, ...], *,
                                             bias: bool = True) -> Table:
    """TU ``PackedTransformerDecoderLayer``: ``self_attn``, ``multihead_attn``, ``linear1``, ``linear2``,
    ``norm1``..``norm3``."""
    return _transformer_entries(torch_prefix, flax_path, ("self_attn", "multihead_attn"), 3, bias)


def _template(model_name: str, kwargs: dict):
    # not converters.mappings.build_template: its positional ``arch`` collides with TU's ``arch=18`` kwarg

    module, shape = ARCHS[model_name](**kwargs)
    return module, jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(shape, jnp.float32)))


def table(model_name: str, /, **kwargs) -> Table:
    """The explicit mapping table of ``model_name`` built with ``kwargs``."""
    return template_table(_template(model_name, kwargs)[1])


def torch_to_flax(state_dict: Mapping[str, Any], template: Any, source: str = "<state_dict>"):
    """Strict conversion of a TU packed state dict into ``template``'s variables (float32 numpy)."""
    return apply_table(state_dict, template_table(template), template, source)


def _packed_lenet(**kw):

    return packed_lenet(**kw), (1, 28, 28, kw.get("in_channels", 1))


def _packed_resnet(**kw):

    size = 32 if str(kw.get("style", "imagenet")) in ("cifar", "ResNetStyle.CIFAR") else 64
    return packed_resnet(**kw), (1, size, size, kw["in_channels"])


def _packed_wrn(**kw):

    return template(packed_wideresnet28x10, kw)


def _packed_vgg(**kw):

    return template(packed_vgg, kw)


ARCHS = {"packed_lenet": _packed_lenet, "packed_resnet": _packed_resnet,
         "packed_wideresnet28x10": _packed_wrn, "packed_vgg": _packed_vgg}


def build(model_name: str, state_dict: Mapping[str, Any], /, *, source: str = "<state_dict>", **kwargs):
    """``(module, variables)``: ``model_name`` (``packed_lenet`` / ``packed_resnet``) built with TU's
    ``kwargs``, loaded strictly from ``state_dict``."""
    if model_name not in ARCHS:
        raise ValueError(f"unknown packed model {model_name!r}; known: {sorted(ARCHS)}")
    module, template = _template(model_name, kwargs)
    return module, torch_to_flax(state_dict, template, source)


def infer(state_dict: Mapping[str, Any]) -> tuple[str, dict] | None:
    """Recognise a TU ``packed_resnet`` / ``packed_wideresnet28x10`` (their heads use gamma=1, so
    ``linear.weight`` is ``(M, C, ...)``) or ``packed_vgg`` (assuming gamma=1: its head is ``(M*gamma,
    C/gamma, ...)``, so M and gamma are confounded; pass ``--arch`` for gamma > 1). ``packed_lenet`` is not
    inferable (M and gamma are confounded): pass ``--arch``."""
    if "features.0.conv.weight" in state_dict:
        return _infer_vgg(state_dict)
    if "conv1.conv.weight" not in state_dict or "linear.weight" not in state_dict:
        return None
    w = np.shape(state_dict["linear.weight"])
    stem = np.shape(state_dict["conv1.conv.weight"])
    if len(w) != 3 or len(stem) != 4:
        return None
    if wrn_widen(state_dict, "{}.conv.weight") == 10:
        return _infer_wrn(state_dict)
    return _infer_resnet(state_dict)


def _gamma(sd: Mapping[str, Any], m: int) -> int:
    """The largest gamma a block's grouped conv actually uses (after TU's reduction)."""
    gamma = 1
    for k, v in sd.items():
        if re.match(r"layer\d+\.\d+\.(conv2|conv3)\.conv\.weight$", k):
            src = _input_channels(sd, k)
            if src:
                gamma = max(gamma, src // np.shape(v)[1] // m)
    return gamma


def _alpha(width: int, nominal: int):
    alpha = width / nominal
    return int(alpha) if float(alpha).is_integer() else float(alpha)


def _infer_resnet(state_dict: Mapping[str, Any]) -> tuple[str, dict] | None:
    w = np.shape(state_dict["linear.weight"])
    stem = np.shape(state_dict["conv1.conv.weight"])
    m, c = int(w[0]), int(w[1])
    blocks = [
        len({k.split(".")[1] for k in state_dict if k.startswith(f"layer{i}.")}) for i in (1, 2, 3, 4)
    ]
    bottleneck = any(k.endswith("conv3.conv.weight") for k in state_dict)

    blocks = [b for b in blocks if b]
    arch = next((a for a, nb in RESNET_BLOCKS.items() if nb == blocks and (a not in _BASIC) == bottleneck),
                None)
    if arch is None:
        return None
    in_planes = 16 if arch in (20, 44, 56, 110, 1202) else 64
    kw = dict(in_channels=int(stem[1]), num_classes=c, arch=arch, num_estimators=m,
              alpha=_alpha(stem[0], in_planes), gamma=_gamma(state_dict, m), style=style_of(stem),
              conv_bias="conv1.conv.bias" in state_dict)
    return "packed_resnet", kw


def _infer_wrn(sd: Mapping[str, Any]) -> tuple[str, dict]:
    m, c = shape(sd, "linear.weight")[:2]
    stem = shape(sd, "conv1.conv.weight")
    kw = dict(in_channels=stem[1], num_classes=c, num_estimators=m, alpha=_alpha(stem[0], 16),
              gamma=_gamma(sd, m), conv_bias="conv1.conv.bias" in sd, style=style_of(stem))
    return "packed_wideresnet28x10", kw


def _infer_vgg(sd: Mapping[str, Any]) -> tuple[str, dict] | None:

    if "cls_head.6.weight" not in sd or len(shape(sd, "cls_head.0.weight")) != 3:
        return None
    alpha = _alpha(shape(sd, "features.0.conv.weight")[0], 64)
    kw = vgg_kwargs(sd, ".conv.weight", shape(sd, "cls_head.0.weight"), alpha)
    if kw is None:
        return None
    m, c = shape(sd, "cls_head.6.weight")[:2]
    return "packed_vgg", {"in_channels": kw.pop("in_channels"), "num_classes": c, **kw, "alpha": alpha,
                          "num_estimators": m, "gamma": 1}


def _input_channels(sd: Mapping[str, Any], key: str) -> int | None:
    """Number of input channels of the conv ``key`` = the width of the BN feeding it."""
    m = re.match(r"(layer\d+)\.(\d+)\.(conv2|conv3)\.conv\.weight$", key)
    layer, idx, which = m.groups()
    bn = f"{layer}.{idx}.{'bn1' if which == 'conv2' else 'bn2'}.weight"
    return int(np.shape(sd[bn])[0]) if bn in sd else None


def torch_reference(arch: str, /, **kwargs):
    """TU's torch module with the same state-dict keys (for ``jaxuq-convert convert --verify``)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown packed arch {arch!r}")
    from converters.torch_refs import torch_model  # noqa: PLC0415

    return torch_model(arch, **kwargs)
