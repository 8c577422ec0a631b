"""jaxuq.nn: layers with PyTorch semantics (NHWC). Depends only on jax/flax/numpy.

- :class:`BatchNorm` — torch ``BatchNorm2d`` parity (unbiased running variance, momentum 0.9 == torch 0.1).
- :class:`Dropout` — torch ``Dropout``/``Dropout2d``; MC Dropout switches it on at eval (``jaxuq.sampling``).
- :class:`LayerNorm` — torch ``LayerNorm(C)`` over the last axis.
- :class:`Conv` — ``flax.linen.Conv`` whose weight gradient stays fast inside ``lax.scan`` on XLA:CPU.
- :class:`DepthwiseConv2d` — torch depthwise ``Conv2d`` (groups = channels), fast on XLA:CPU.
- :func:`adaptive_avg_pool2d`, :func:`max_pool2d` — torch pooling semantics on NHWC;
  :func:`conv_max_pool` / :class:`ConvMaxPool` — a convolution fused with the max pool after it.
- ``jaxuq.nn.packed`` — Packed-Ensembles layers (``PackedConv`` 1/2/3-d, ``PackedConvTranspose``,
  ``PackedDense``, ``PackedLayerNorm``, ``PackedMultiheadAttention``, ``PackedTransformerEncoderLayer`` /
  ``PackedTransformerDecoderLayer``).
- ``jaxuq.nn.batch_ensemble`` — BatchEnsemble layers (``BatchConv``, ``BatchDense``) and TU's
  ``BatchEnsemble`` wrapper; ``jaxuq.nn.masksembles`` — Masksembles (``MaskedConv``, ``MaskedDense``, TU's
  mask generation); ``jaxuq.nn.mimo`` — MIMO's input/output rearranges.
- ``jaxuq.nn.init`` — torch's default Conv/Linear initialisation as Flax initialisers.
"""

from jaxuq.nn.conv import Conv, DepthwiseConv2d
from jaxuq.nn.dropout import Dropout
from jaxuq.nn.init import torch_bias_init, torch_kernel_init, torch_uniform_init
from jaxuq.nn.norm import BatchNorm, LayerNorm
from jaxuq.nn.pool import ConvMaxPool, adaptive_avg_pool2d, conv_max_pool, max_pool2d

__all__ = ["BatchNorm", "Conv", "ConvMaxPool", "DepthwiseConv2d", "Dropout", "LayerNorm",
           "adaptive_avg_pool2d", "conv_max_pool", "max_pool2d", "torch_bias_init", "torch_kernel_init",
           "torch_uniform_init"]
