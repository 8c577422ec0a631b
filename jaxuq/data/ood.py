"""Out-of-distribution sets used by the tutorials.

- MNIST models: Fashion-MNIST, the first 10k images (TU tutorial "DE -> PE"; TU's MNIST
  datamodule reads ``FashionMNIST(root)``, i.e. the *train* split, by default).
- CIFAR models: the SVHN test split (TU's CIFAR-10 datamodule). SVHN must be present as
  ``test_32x32.mat``; otherwise a ``FileNotFoundError`` names where it was looked for.
- scio's synthetic shifts on float images in [0, 1]: vertical flip (``ind.flip(2)`` in NCHW,
  i.e. axis 1 in NHWC), darker (``ind * 0.5``) and uniform noise (``rand_like``; here from a key).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxuq.data.readers import load_fashion_mnist, load_svhn

__all__ = ["fashion_mnist_ood", "svhn_ood", "vertical_flip", "darker", "uniform_noise", "synthetic_shifts"]


def fashion_mnist_ood(data_dir=None, n: int = 10_000, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` Fashion-MNIST images: uint8 ``[n, 28, 28, 1]``, labels ``[n]``."""
    images, labels = load_fashion_mnist(split, data_dir)
    return images[:n], labels[:n]


def svhn_ood(data_dir=None, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """SVHN test images uint8 ``[N, 32, 32, 3]``; raises FileNotFoundError if absent."""
    return load_svhn(split, data_dir)


def vertical_flip(images: jax.Array) -> jax.Array:
    """images ``[N, H, W, C]`` -> upside down (scio's ``ind.flip(2)`` on NCHW)."""
    return images[:, ::-1]


def darker(images: jax.Array, factor: float = 0.5) -> jax.Array:
    """float images in [0, 1] -> ``images * factor``."""
    return images * factor


def uniform_noise(key: jax.Array, images: jax.Array) -> jax.Array:
    """U[0, 1) images of the same shape (float32)."""
    return jax.random.uniform(key, images.shape, jnp.float32)


def synthetic_shifts(key: jax.Array, images: jax.Array) -> dict[str, jax.Array]:
    """scio's three scenarios on float images in [0, 1] ``[N, H, W, C]``."""
    return {
        "Vertical flip": vertical_flip(images),
        "Darker": darker(images),
        "Uniformly random": uniform_noise(key, images),
    }
