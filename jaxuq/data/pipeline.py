"""Device-side batching, shuffling and augmentation; a prefetching iterator for larger data;
zero-padded evaluation batches (one compiled shape for every batch).

Datasets that fit in device memory are kept there as uint8 ``[N, H, W, C]``; an epoch's order is a
permutation drawn from ``fold_in(key, epoch)`` and batches are gathered and augmented inside the
jitted train step. Augmentations follow torchvision's semantics as TU's datamodules use them:
``RandomCrop(size, padding=p)`` pads the uint8 image with zeros then crops at a uniform offset in
``[0, 2p]``; ``RandomHorizontalFlip()`` flips with p = 0.5; then ``ToDtype(scale=True)``
(``x / 255``) and ``Normalize(mean, std)``.
"""

from __future__ import annotations

import dataclasses
import math
import queue
import threading
from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Preprocess",
    "MNIST_NORM",
    "CIFAR10_NORM",
    "random_crop",
    "random_flip",
    "normalize",
    "epoch_permutation",
    "train_val_split",
    "prefetch_to_device",
    "numpy_batches",
    "padded_batches",
    "num_batches",
]

MNIST_NORM = ((0.1307,), (0.3081,))
CIFAR10_NORM = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))


def normalize(images: jax.Array, mean, std) -> jax.Array:
    """uint8 ``[..., H, W, C]`` -> float32 ``(x / 255 - mean) / std`` (torchvision ToDtype+Normalize)."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def random_crop(key: jax.Array, images: jax.Array, size: int, padding: int) -> jax.Array:
    """torchvision ``RandomCrop(size, padding)`` with zero fill, one offset per image.

    images: ``[B, H, W, C]`` -> ``[B, size, size, C]``.
    """
    b, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    ky, kx = jax.random.split(key)
    oy = jax.random.randint(ky, (b,), 0, h + 2 * padding - size + 1)
    ox = jax.random.randint(kx, (b,), 0, w + 2 * padding - size + 1)

    def crop(img, y, x):
        return jax.lax.dynamic_slice(img, (y, x, 0), (size, size, img.shape[-1]))

    return jax.vmap(crop)(padded, oy, ox)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Horizontal flip with probability 0.5 per image. images: ``[B, H, W, C]``."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Train/eval transform applied on device.

    ``crop``/``padding``: RandomCrop (training only; None = off). ``flip``: RandomHorizontalFlip
    (training only). ``mean``/``std``: Normalize after scaling to [0, 1].
    """

    mean: tuple = (0.0,)
    std: tuple = (1.0,)
    crop: int | None = None
    padding: int = 0
    flip: bool = False

    def train(self, key: jax.Array, images: jax.Array) -> jax.Array:
        kc, kf = jax.random.split(key)
        if self.crop is not None:
            images = random_crop(kc, images, self.crop, self.padding)
        if self.flip:
            images = random_flip(kf, images)
        return normalize(images, self.mean, self.std)

    def eval(self, images: jax.Array) -> jax.Array:
        return normalize(images, self.mean, self.std)


def epoch_permutation(key: jax.Array, epoch: int | jax.Array, n: int) -> jax.Array:
    """The shuffled order of epoch ``epoch``: ``permutation(fold_in(key, epoch), n)`` (int32 [n]).

    Deterministic in (key, epoch), so a resumed run recomputes the same order.
    """
    return jax.random.permutation(jax.random.fold_in(key, epoch), n)


def train_val_split(n: int, val_split: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded random train/val split with TU's sizes.

    TU (``create_train_val_split``): ``val_size = max(1, round(n * val_split))``,
    ``random_split(dataset, [n - val_size, val_size])``; the validation part uses the test
    transform. TU draws from torch's global RNG; this split draws from ``seed`` (numpy), so the
    sizes match TU and the membership is reproducible but not torch's.
    """
    if not 0 < val_split < 1:
        raise ValueError(f"val_split must be in (0, 1), got {val_split}")
    val_size = max(1, round(n * val_split))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n - val_size]), np.sort(perm[n - val_size :])


def numpy_batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    shuffle_seed: int | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Host-side batches (for data that does not fit on the device). Yields (images, labels)."""
    n = len(images)
    order = np.arange(n) if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(n)
    stop = n - n % batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        idx = order[i : i + batch_size]
        yield images[idx], labels[idx]


_END = object()


def prefetch_to_device(iterator: Iterable, size: int = 2, sharding=None) -> Iterator:
    """Overlap host->device copies with compute: a thread ``jax.device_put``s up to ``size``
    items (pytrees) ahead of the consumer. ``sharding`` (e.g. a batch-sharded NamedSharding) is
    passed to ``device_put``. Exceptions in the producer are re-raised in the consumer.
    """
    q: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def producer():
        try:
            for item in iterator:
                if stop.is_set():
                    return
                item = jax.device_put(item, sharding) if sharding is not None else jax.device_put(item)
                q.put(item)
            q.put(_END)
        except BaseException as e:  # noqa: BLE001 - forwarded to the consumer
            q.put(e)

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


# ----------------------------------------------------------------------------- padded batches
def is_arrays(data) -> bool:
    """``data`` is a tuple of same-length arrays, not an iterable of batches."""
    return isinstance(data, tuple) and all(hasattr(a, "shape") for a in data)


def _batch_rows(n: int, batch_size: int, mesh) -> int:
    """Rows of one compiled batch: ``min(batch_size, n)`` rounded up to a multiple of the mesh size."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows = max(1, min(int(batch_size), n))
    return rows if mesh is None else math.ceil(rows / mesh.size) * mesh.size


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    if len(x) == rows:
        return x
    return np.concatenate([x, np.zeros((rows - len(x),) + x.shape[1:], x.dtype)])


def padded_batches(data, batch_size: int, mesh=None) -> Iterator[tuple[int, tuple]]:
    """``(n_valid, batch)`` over ``data``, every batch zero-padded to one shape.

    ``data``: a tuple of same-length host arrays ``([N, ...], ...)`` cut into ``batch_size`` rows
    (rounded up to a multiple of ``mesh.size``), or an iterable of such tuples (each batch padded
    to the largest size seen so far). ``batch``: the padded tuple; ``n_valid``: its real rows.
    An empty ``data`` or an empty batch is a ValueError.
    """
    if is_arrays(data):
        arrays = tuple(np.asarray(a) for a in data)
        n = len(arrays[0])
        if n == 0:
            raise ValueError(f"`data` is empty (shape {arrays[0].shape})")
        rows = _batch_rows(n, batch_size, mesh)
        for i in range(0, n, rows):
            yield min(rows, n - i), tuple(_pad_rows(a[i : i + rows], rows) for a in arrays)
        return
    rows = 0
    for i, batch in enumerate(data):
        batch = tuple(np.asarray(a) for a in (batch if isinstance(batch, tuple | list) else (batch,)))
        k = len(batch[0])
        if k == 0:
            raise ValueError(f"batch {i} of `data` is empty (shape {batch[0].shape}): every batch needs "
                             "at least one row")
        if k > rows:
            rows = _batch_rows(k, k, mesh)
        yield k, tuple(_pad_rows(a, rows) for a in batch)


def num_batches(data, batch_size: int, mesh=None) -> int | None:
    """How many batches :func:`padded_batches` yields (None for an iterable without a length)."""
    if is_arrays(data):
        n = len(data[0])
        return math.ceil(n / _batch_rows(n, batch_size, mesh)) if n else 0
    return len(data) if hasattr(data, "__len__") else None
