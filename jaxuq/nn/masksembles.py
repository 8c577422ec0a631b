"""Masksembles layers (Durasov et al., CVPR 2021), exact to TU 0.13.0
(``torch_uncertainty/layers/masksembles.py``).

Member ``m`` sees only the input channels where its binary mask ``masks[m]`` is 1; the batch holds
the members (rows ``m*B/M .. (m+1)*B/M - 1`` are member ``m``, so ``B`` must be a multiple of ``M``), and
the models repeat the input ``M`` times at evaluation: the output is ``[(M B), C]`` member-major.

**Masks.** TU draws them at construction with ``generation_wrapper(channels, M, scale)``, a search
over the overlap scale that calls ``np.random.default_rng()`` (OS entropy) for every candidate set.
:func:`generation_wrapper` here is that code line for line with the generator passed in, and a
layer draws its masks from ``np.random.default_rng(seed)``: the masks are a pure function of
``(channels, num_estimators, scale, seed)``, and equal TU's when TU's calls get that generator
(tests/test_zoo_layers.py feeds it to TU's own code). TU's searches have no iteration bound; here a
search that does not finish in ``MAX_TRIES`` steps raises ``ValueError`` instead of looping forever.

**Storage.** The masks are a non-trainable variable ``masks [M, channels]`` (float32, 0/1) in the
collection :data:`MASKS_COLLECTION` = ``"constants"``: model constants that the training engine
(``TrainState.constants``), its checkpoints, the forward/evaluation path (it hands ``variables`` to
the model whole) and the converter carry beside ``params``, so a converted TU checkpoint's masks (torch
key ``<layer>.mask.masks``, a ``requires_grad=False`` float64 parameter) travel with the model. A train
step differentiates ``params`` only and applies the model with ``constants`` immutable, so it cannot
change them; ``batch_stats`` holds BatchNorm statistics only, so what works on those (MC-BatchNorm,
``bn_update``, ``StackedBatchStats``) never sees a mask.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxuq.nn.batch_ensemble import _pair
from jaxuq.nn.conv import Conv
from jaxuq.nn.init import torch_kernel_init, torch_uniform_init

__all__ = ["MASKS_COLLECTION", "MAX_TRIES", "Mask", "MaskedConv", "MaskedDense", "apply_masks", "check_scale",
           "generate_masks", "generation_wrapper", "mask_array"]

MASKS_COLLECTION = "constants"
MAX_TRIES = 100_000


def _generate_masks(m: int, n: int, s: float, rng: np.random.Generator) -> np.ndarray:
    """TU's ``_generate_masks``: ``n`` random ``m``-subsets of ``int(m*s)`` positions, empty columns
    dropped."""
    total_positions = int(m * s)
    masks = []
    for _ in range(n):
        new_vector = np.zeros([total_positions])
        idx = rng.choice(range(total_positions), m, replace=False)
        new_vector[idx] = 1
        masks.append(new_vector)
    masks = np.array(masks)
    return masks[:, ~np.all(masks == 0, axis=0)]


def generate_masks(m: int, n: int, s: float, rng: np.random.Generator) -> np.ndarray:
    """TU's ``generate_masks``: redraw until the mask set has its expected width."""
    masks = _generate_masks(m, n, s, rng)
    expected_size = int(m * s * (1 - (1 - 1 / s) ** n))
    tries = 1
    while masks.shape[1] != expected_size:
        if tries >= MAX_TRIES:
            raise ValueError(f"masksembles: no mask set of width {expected_size} in {MAX_TRIES} draws "
                             f"(m={m}, n={n}, s={s}); TU would loop forever here")
        masks = _generate_masks(m, n, s, rng)
        tries += 1
    return masks


def check_scale(scale) -> float:
    """``scale`` as TU validates it (None, < 1, > 6 refused; NaN/inf and non-numbers too) -> float."""
    if scale is None:
        raise ValueError("You must specify the value of the arg. `scale`")
    if isinstance(scale, bool) or not isinstance(scale, int | float | np.integer | np.floating):
        raise TypeError(f"`scale` must be a number, got {type(scale).__name__}")
    if not math.isfinite(scale) or scale < 1:
        raise ValueError(f"Attribute `scale` should be >= 1, not {scale}.")
    if scale > 6.0:
        raise ValueError(f"Masksembles cannot be used when the scale parameter is larger than 6. "
                         f"Current value is (scale={scale}).")
    return float(scale)


def generation_wrapper(c: int, n: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """TU's ``generation_wrapper``: ``n`` binary masks (float64 ``[n, c]``) over ``c`` channels, every
    random draw taken from ``rng`` in TU's order (including the first set, which TU discards)."""
    if c < 10:
        raise ValueError(
            "Masksembles cannot be used when the number of channels is less than 10. "
            f"Current value is (channels={c}). Increase the number of features "
            "or remove this Masksembles instance from your architecture."
        )
    scale = check_scale(scale)
    active_features = int(int(c) / (scale * (1 - (1 - 1 / scale) ** n)))
    masks = generate_masks(active_features, n, scale, rng)
    up = 4 * scale
    down = max(0.2 * scale, 1.0)
    s = (down + up) / 2
    im_s = -1
    steps = 0
    while im_s != c:
        if steps >= MAX_TRIES:
            raise ValueError(f"masksembles: the scale search for channels={c}, n={n}, scale={scale} did not "
                             f"end in {MAX_TRIES} steps; TU would loop forever here")
        masks = generate_masks(active_features, n, s, rng)
        im_s = masks.shape[-1]
        if im_s < c:
            down = s
            s = (down + up) / 2
        elif im_s > c:
            up = s
            s = (down + up) / 2
        steps += 1
    return masks


@functools.lru_cache(maxsize=256)
def _mask_array(channels: int, num_estimators: int, scale: float, seed) -> np.ndarray:
    out = generation_wrapper(channels, num_estimators, scale, np.random.default_rng(seed)).astype(np.float32)
    out.setflags(write=False)
    return out


def mask_array(channels: int, num_estimators: int, scale: float, seed: int | Sequence[int] = 0) -> np.ndarray:
    """The masks ``float32 [num_estimators, channels]`` that TU's ``generation_wrapper`` draws from
    ``np.random.default_rng(seed)`` (read-only; cached). ``seed``: an int or a tuple of ints."""
    seed = tuple(int(v) for v in seed) if isinstance(seed, Sequence) else int(seed)
    return _mask_array(int(channels), int(num_estimators), check_scale(scale), seed)


def apply_masks(x, masks):
    """TU's ``Mask1d`` / ``Mask2d`` forward: ``x [B, ..., C]`` with ``B = M*b``; rows of chunk ``m``
    (``m*b .. m*b+b-1``) are multiplied by ``masks[m] [C]``."""
    m, c = masks.shape
    if x.shape[0] % m:
        raise ValueError(f"masksembles: the batch ({x.shape[0]} rows) must be a multiple of "
                         f"num_estimators={m}")
    if x.shape[-1] != c:
        raise ValueError(f"masksembles: masks are [{m}, {c}] but the input has {x.shape[-1]} channels")
    xs = x.reshape(m, x.shape[0] // m, *x.shape[1:])
    out = xs * masks.reshape(m, *(1,) * (x.ndim - 1), c).astype(x.dtype)
    return out.reshape(x.shape)


class Mask(nn.Module):
    """TU ``Mask1d``/``Mask2d``: holds ``masks [num_estimators, channels]`` in :data:`MASKS_COLLECTION`."""

    channels: int
    num_estimators: int
    scale: float
    seed: int | tuple[int, ...] = 0

    @nn.compact
    def __call__(self, x):
        check_scale(self.scale)
        masks = self.variable(MASKS_COLLECTION, "masks", lambda: jnp.asarray(
            mask_array(self.channels, self.num_estimators, self.scale, self.seed)))
        if masks.value.shape != (self.num_estimators, self.channels):
            raise ValueError(f"{self.name}: masks have shape {masks.value.shape}, expected "
                             f"({self.num_estimators}, {self.channels})")
        return apply_masks(x, masks.value)


class MaskedDense(nn.Module):
    """TU ``MaskedLinear``: ``x [M*b, in_features] -> [M*b, out_features]``; children ``mask``, ``linear``
    (torch's default init law)."""

    in_features: int
    out_features: int
    num_estimators: int
    scale: float
    use_bias: bool = True
    seed: int | tuple[int, ...] = 0

    @nn.compact
    def __call__(self, x):
        x = Mask(self.in_features, self.num_estimators, self.scale, self.seed, name="mask")(x)
        return nn.Dense(self.out_features, use_bias=self.use_bias, kernel_init=torch_kernel_init,
                        bias_init=torch_uniform_init(self.in_features), name="linear")(x)


class MaskedConv(nn.Module):
    """TU ``MaskedConv2d`` on NHWC: ``x [M*b, H, W, in_channels] -> [M*b, H', W', out_channels]``;
    children ``mask``, ``conv`` (torch's default init law)."""

    in_channels: int
    out_channels: int
    kernel_size: int | Sequence[int]
    num_estimators: int
    scale: float
    stride: int | Sequence[int] = 1
    padding: int | Sequence[int] = 0
    dilation: int | Sequence[int] = 1
    groups: int = 1
    use_bias: bool = True
    seed: int | tuple[int, ...] = 0

    @nn.compact
    def __call__(self, x):
        kh, kw = _pair(self.kernel_size)
        ph, pw = _pair(self.padding)
        fan_in = self.in_channels // self.groups * kh * kw
        x = Mask(self.in_channels, self.num_estimators, self.scale, self.seed, name="mask")(x)
        return Conv(self.out_channels, (kh, kw), strides=_pair(self.stride), padding=((ph, ph), (pw, pw)),
                    kernel_dilation=_pair(self.dilation), feature_group_count=self.groups,
                    use_bias=self.use_bias, kernel_init=torch_kernel_init,
                    bias_init=torch_uniform_init(fan_in), name="conv")(x)
