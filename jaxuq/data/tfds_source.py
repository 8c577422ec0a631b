"""tensorflow-datasets as an alternative source (extra ``tfds``), without TensorFlow.

Uses ``tfds.data_source`` (ArrayRecord random access; needs ``tensorflow-datasets`` and
``array_record``, not ``tensorflow``). The dataset must already be prepared in ArrayRecord format
under ``data_dir`` (``tfds build --file_format=array_record`` where a network exists).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["load_tfds", "tfds_batches"]


def _source(name: str, split: str, data_dir):
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            "the tfds source needs `pip install jaxuq[tfds]` (tensorflow-datasets, array_record)"
        ) from e
    return tfds.data_source(name, split=split, data_dir=None if data_dir is None else str(data_dir))


def _stack(examples, image_key, label_key, name):
    try:
        images = np.stack([np.asarray(ex[image_key]) for ex in examples])
        labels = np.asarray([ex[label_key] for ex in examples], np.int64)
    except KeyError as e:
        raise KeyError(f"tfds dataset {name!r} has no feature {e}; pass image_key/label_key") from e
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8:
        raise ValueError(
            f"tfds dataset {name!r}: feature {image_key!r} is {images.dtype}, expected uint8 images"
        )
    return images, labels


def load_tfds(
    name: str,
    split: str = "train",
    data_dir=None,
    image_key: str = "image",
    label_key: str = "label",
    limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """All (or the first ``limit``) examples as ``(images uint8 [N, H, W, C], labels int64 [N])``."""
    src = _source(name, split, data_dir)
    n = len(src) if limit is None else min(limit, len(src))
    return _stack([src[i] for i in range(n)], image_key, label_key, name)


def tfds_batches(
    name: str,
    split: str,
    batch_size: int,
    data_dir=None,
    image_key: str = "image",
    label_key: str = "label",
    shuffle_seed: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Streaming host batches by random access (for sets that do not fit on the device); feed them
    to ``jaxuq.data.prefetch_to_device``."""
    src = _source(name, split, data_dir)
    n = len(src)
    order = np.arange(n) if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(n)
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size].tolist()
        yield _stack([src[j] for j in idx], image_key, label_key, name)
