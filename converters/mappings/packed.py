"""Mapping family ``packed``: TU Packed-Ensembles checkpoints (``packed_lenet``, ``packed_resnet``).

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
``packed_resnet(in_channels, num_classes, arch, num_estimators, alpha, gamma, style, ...)``.

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

from converters.mappings import Entry, Table, apply_table
from jaxuq.models.packed_lenet import packed_lenet
from jaxuq.models.packed_resnet import packed_resnet
from jaxuq.models.resnet import BASIC_ARCHS, RESNET_BLOCKS, SMALL_PLANES_ARCHS

__all__ = [
    "ARCHS",
    "build",
    "flax_leaf_to_torch",
    "infer",
    "packed_conv_entries",
    "packed_conv_transpose_entries",
    "packed_layer_norm_entries",
    "packed_linear_entries",
    "packed_mha_entries",
    "packed_transformer_decoder_layer_entries",
    "packed_transformer_encoder_layer_entries",
    "table",
    "torch_reference",
    "torch_to_flax",
]

_IDX = re.compile(r"^(.*)_(\d+)$")


def _torch_module_path(names: tuple[str, ...]) -> str:
    parts = []
    for n in names:
        m = _IDX.match(n)
        parts.extend([m.group(1), m.group(2)] if m else [n])
    return ".".join(parts)


_MHA_LEAVES = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias", "bias_k",
               "bias_v", "out_proj_weight", "out_proj_bias")


def channels_last(t: np.ndarray) -> np.ndarray:
    """A torch conv weight ``(O, I/G, *k)`` (or a transposed conv's ``(I, O/G, *k)``) -> ``(*k, I/G, O)``
    (``(*k, O/G, I)``): ``oihw->hwio`` for any number of spatial axes."""
    return np.transpose(t, (*range(2, t.ndim), 1, 0))


def flax_leaf_to_torch(collection: str, names: tuple[str, ...], ndim: int) -> tuple[str, Entry]:
    """``(torch_key, Entry)`` for the Flax leaf ``collection/names...`` of a packed model."""
    *mod, leaf = names
    base = _torch_module_path(tuple(mod))
    path = (collection, *names)
    if collection == "params":
        if leaf == "kernel" and (ndim == 4 or (mod and mod[-1] in ("conv", "conv_transpose"))):
            return f"{base}.weight", Entry(path, channels_last, "(o, i/g, *k)->(*k, i/g, o)", ndim)
        if leaf == "kernel" and ndim == 3:
            return f"{base}.weight", Entry(path, name="id (G, o, i)", torch_ndim=3)
        if leaf == "scale":
            return f"{base}.weight", Entry(path, torch_ndim=1)
        if leaf == "bias":
            return f"{base}.bias", Entry(path, torch_ndim=1)
        if leaf in _MHA_LEAVES:
            return f"{base}.{leaf}" if base else leaf, Entry(path, torch_ndim=ndim)
    if collection == "batch_stats" and leaf in ("mean", "var"):
        return f"{base}.running_{leaf}", Entry(path, torch_ndim=1)
    raise ValueError(f"no torch key rule for Flax leaf {collection}/{'/'.join(names)} ({ndim}-d)")


# ------------------------------------------------------------------------- entry helpers, one per layer
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


def _table_from_template(template: Any) -> Table:
    t: Table = {}
    bns = set()
    for p, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
        names = tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in p)
        key, entry = flax_leaf_to_torch(names[0], names[1:], len(leaf.shape))
        t[key] = entry
        if names[0] == "batch_stats":
            bns.add(_torch_module_path(names[1:-1]))
    for b in sorted(bns):
        t[f"{b}.num_batches_tracked"] = Entry(None, torch_ndim=0)
    return t


def _template(model_name: str, kwargs: dict):
    # not converters.mappings.build_template: its positional ``arch`` collides with TU's ``arch=18`` kwarg
    module, shape = ARCHS[model_name](**kwargs)
    return module, jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(shape, jnp.float32)))


def table(model_name: str, /, **kwargs) -> Table:
    """The explicit mapping table of ``model_name`` built with ``kwargs``."""
    return _table_from_template(_template(model_name, kwargs)[1])


def torch_to_flax(state_dict: Mapping[str, Any], template: Any, source: str = "<state_dict>"):
    """Strict conversion of a TU packed state dict into ``template``'s variables (float32 numpy)."""
    return apply_table(state_dict, _table_from_template(template), template, source)


def _packed_lenet(**kw):
    return packed_lenet(**kw), (1, 28, 28, kw.get("in_channels", 1))


def _packed_resnet(**kw):
    size = 32 if str(kw.get("style", "imagenet")) in ("cifar", "ResNetStyle.CIFAR") else 64
    return packed_resnet(**kw), (1, size, size, kw["in_channels"])


ARCHS = {"packed_lenet": _packed_lenet, "packed_resnet": _packed_resnet}


def build(model_name: str, state_dict: Mapping[str, Any], /, *, source: str = "<state_dict>", **kwargs):
    """``(module, variables)``: ``model_name`` (``packed_lenet`` / ``packed_resnet``) built with TU's
    ``kwargs``, loaded strictly from ``state_dict``."""
    if model_name not in ARCHS:
        raise ValueError(f"unknown packed model {model_name!r}; known: {sorted(ARCHS)}")
    module, template = _template(model_name, kwargs)
    return module, torch_to_flax(state_dict, template, source)


def infer(state_dict: Mapping[str, Any]) -> tuple[str, dict] | None:
    """Recognise a TU ``packed_resnet`` (``linear.weight`` is (M, C, 512*alpha*expansion/M) since TU's
    head uses gamma=1). ``packed_lenet`` is not inferable (M and gamma are confounded): pass ``--arch``."""
    if "conv1.conv.weight" not in state_dict or "linear.weight" not in state_dict:
        return None
    w = np.shape(state_dict["linear.weight"])
    stem = np.shape(state_dict["conv1.conv.weight"])
    if len(w) != 3 or len(stem) != 4:
        return None
    m, c = int(w[0]), int(w[1])
    blocks = [
        len({k.split(".")[1] for k in state_dict if k.startswith(f"layer{i}.")}) for i in (1, 2, 3, 4)
    ]
    bottleneck = any(k.endswith("conv3.conv.weight") for k in state_dict)
    blocks = [b for b in blocks if b]
    arch = next((a for a, nb in RESNET_BLOCKS.items()
                 if nb == blocks and (a not in BASIC_ARCHS) == bottleneck), None)
    if arch is None:
        return None
    in_planes = 16 if arch in SMALL_PLANES_ARCHS else 64
    alpha = stem[0] / in_planes
    alpha = int(alpha) if float(alpha).is_integer() else float(alpha)
    gamma = 1
    for k, v in state_dict.items():  # the largest gamma a grouped conv actually uses (after reduction)
        if re.match(r"layer\d+\.\d+\.(conv2|conv3)\.conv\.weight$", k):
            ipg = np.shape(v)[1]
            src = _input_channels(state_dict, k)
            if src:
                gamma = max(gamma, src // ipg // m)
    style = "cifar" if stem[2] == 3 else "imagenet"
    kw = dict(in_channels=int(stem[1]), num_classes=c, arch=arch, num_estimators=m, alpha=alpha,
              gamma=int(gamma), style=style, conv_bias="conv1.conv.bias" in state_dict)
    return "packed_resnet", kw


def _input_channels(sd: Mapping[str, Any], key: str) -> int | None:
    """Number of input channels of the conv ``key`` = the width of the BN feeding it."""
    m = re.match(r"(layer\d+)\.(\d+)\.(conv2|conv3)\.conv\.weight$", key)
    layer, idx, which = m.groups()
    bn = f"{layer}.{idx}.{'bn1' if which == 'conv2' else 'bn2'}.weight"
    return int(np.shape(sd[bn])[0]) if bn in sd else None


def torch_reference(arch: str, /, **kwargs):
    """TU's torch module with the same state-dict keys (for ``jaxuq-convert convert --verify``)."""
    if arch == "packed_lenet":
        from torch_uncertainty.models.classification.lenet import packed_lenet  # noqa: PLC0415

        return packed_lenet(**kwargs)
    if arch == "packed_resnet":
        from torch_uncertainty.models.classification.resnet.packed import packed_resnet  # noqa: PLC0415

        return packed_resnet(**kwargs)
    raise ValueError(f"unknown packed arch {arch!r}")
