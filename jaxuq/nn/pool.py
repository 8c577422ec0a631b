"""Pooling with torch semantics on NHWC arrays."""

from __future__ import annotations

import itertools

import jax.numpy as jnp
from flax import linen as nn

__all__ = ["adaptive_avg_pool2d", "max_pool2d"]


def adaptive_avg_pool2d(x, output_size: int | tuple[int, int]):
    """``torch.nn.AdaptiveAvgPool2d`` on ``x: [N, H, W, C]`` -> ``[N, oh, ow, C]``.

    Bin ``i`` spans rows ``[floor(i*H/oh), ceil((i+1)*H/oh))`` (same for columns). Identity when the
    size already matches; a plain mean when the output is 1x1.
    """
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    h, w = x.shape[1], x.shape[2]
    if (h, w) == (oh, ow):
        return x
    if (oh, ow) == (1, 1):
        return jnp.mean(x, axis=(1, 2), keepdims=True)
    rows = []
    for i in range(oh):
        r0, r1 = (i * h) // oh, -((-(i + 1) * h) // oh)
        cols = []
        for j in range(ow):
            c0, c1 = (j * w) // ow, -((-(j + 1) * w) // ow)
            cols.append(jnp.mean(x[:, r0:r1, c0:c1, :], axis=(1, 2)))
        rows.append(jnp.stack(cols, axis=1))
    return jnp.stack(rows, axis=1)


def max_pool2d(x, kernel_size: int, stride: int | None = None, padding: int = 0):
    """``torch.nn.functional.max_pool2d`` (floor mode) on NHWC; padding uses -inf.

    Non-overlapping windows without padding (``stride == kernel_size``, LeNet's and VGG's 2x2) are a
    chain of ``where((v > best) | isnan(v), v, best)`` over the ``k*k`` window positions in torch's
    row-major order: the same values, and autodiff sends each output's gradient to the element torch's
    kernel picks (the first maximum; a NaN wins), through elementwise selects. On XLA:CPU this is several
    times faster than ``reduce_window`` and the ``select_and_scatter`` of its gradient (LeNet training:
    about 1 ms of 13 per step). Other windows use ``flax.linen.max_pool``.
    """
    stride = kernel_size if stride is None else stride
    if stride == kernel_size and padding == 0:
        return _max_pool_tiled(x, kernel_size)
    pad = ((padding, padding), (padding, padding))
    return nn.max_pool(x, (kernel_size, kernel_size), strides=(stride, stride), padding=pad)


def _max_pool_tiled(x, k: int):
    n, h, w, c = x.shape
    ho, wo = h // k, w // k
    win = x[:, : ho * k, : wo * k].reshape(n, ho, k, wo, k, c)
    best = win[:, :, 0, :, 0]
    for i, j in itertools.product(range(k), range(k)):
        if i or j:
            v = win[:, :, i, :, j]
            best = jnp.where((v > best) | jnp.isnan(v), v, best)
    return best
