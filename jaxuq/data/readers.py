"""Readers for standard dataset files in torchvision's on-disk layout.

Every reader returns ``(images, labels)`` as numpy arrays: ``images`` uint8 ``[N, H, W, C]`` (NHWC),
``labels`` int64 ``[N]``. Files are looked up under ``data_dir`` (explicit) or ``$JAXUQ_DATA_DIR``.

Layouts (as torchvision writes them)::

    MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    FashionMNIST/raw/...                        (same names)
    cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta
    cifar-100-python/train, test, meta
    SVHN: {train,test,extra}_32x32.mat          (torchvision puts them directly under root)

Integrity: MNIST/FashionMNIST are checked against the md5 of their *uncompressed* bytes (so a
re-gzipped copy still verifies), CIFAR batches against torchvision's md5 list, SVHN against
torchvision's md5s. Structural checks (idx magic number, header sizes vs payload, pickle keys,
array shapes) always run; a failure raises :class:`DataFileError` naming the file and what was
expected. A missing file raises ``FileNotFoundError`` naming the path.
"""

from __future__ import annotations

import hashlib
import math
import os
import zlib
from pathlib import Path

import numpy as np

from jaxuq._env import data_dir as _data_dir
from jaxuq._io import check_zip_sizes, gunzip_capped, load_pickle_restricted

__all__ = [
    "DataFileError",
    "MNIST_MD5",
    "FASHION_MNIST_MD5",
    "CIFAR10_MD5",
    "CIFAR100_MD5",
    "SVHN_MD5",
    "md5_bytes",
    "md5_file",
    "read_idx",
    "load_mnist",
    "load_fashion_mnist",
    "load_cifar10",
    "load_cifar100",
    "load_cifar_batch",
    "load_svhn",
    "load_npz",
]


class DataFileError(ValueError):
    """A data file exists but is corrupt, truncated, of the wrong format or fails its checksum."""


# md5 of the UNCOMPRESSED idx files (the .gz md5 depends on the gzip wrapper; the data does not).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
# torchvision's md5s of the python-batch files.
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
CIFAR100_MD5 = {
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}
SVHN_MD5 = {
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
    "extra_32x32.mat": "a93ce644f1a588dc4d68dda5feec44a7",
}

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _root(data_dir) -> Path:
    return _data_dir(data_dir)


def _idx_header(data: bytes, path: Path) -> tuple[np.dtype, int, tuple[int, ...], int]:
    """``(dtype, header bytes, dims, total bytes)`` declared by the start of an idx file."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataFileError(
            f"{path}: wrong magic number {data[:4].hex() or '(empty file)'}; "
            "expected 0x0000 + dtype code (0x08 uint8 ...) + ndim (an idx file)"
        )
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    header = 4 + 4 * data[3]
    if len(data) < header:
        raise DataFileError(f"{path}: truncated header ({len(data)} bytes, expected >= {header})")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(data[3]))
    return dtype, header, dims, header + math.prod(dims) * dtype.itemsize


def _read_idx_bytes(path: Path) -> bytes:
    """The uncompressed bytes of an idx file; a ``.gz`` is inflated only up to the size its idx header
    declares (a gzip bomb fails before it fills memory)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise FileNotFoundError(f"cannot read data file {path}: {e}") from e
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        head = zlib.decompressobj(wbits=31).decompress(raw, 4 + 4 * 255)
        return gunzip_capped(raw, path, limit=_idx_header(head, path)[3])
    except (EOFError, zlib.error) as e:
        raise DataFileError(f"{path}: corrupt or truncated gzip stream ({e})") from e
    except ValueError as e:  # gunzip_capped: inflates beyond the declared size
        raise DataFileError(f"{e}") from None


def read_idx(path: str | os.PathLike, expected_md5: str | None = None) -> np.ndarray:
    """Read one idx file (``.gz`` or raw) into a numpy array of its declared shape.

    Checks the magic number (0x0000 + dtype code + ndim), that the payload size matches the
    header dimensions, and (if given) the md5 of the uncompressed bytes.
    """
    path = Path(path)
    data = _read_idx_bytes(path)
    dtype, header, dims, expected = _idx_header(data, path)
    if len(data) != expected:
        raise DataFileError(
            f"{path}: wrong size: header says shape {dims} ({expected} bytes uncompressed), "
            f"file has {len(data)} bytes"
        )
    if expected_md5 is not None:
        got = md5_bytes(data)
        if got != expected_md5:
            raise DataFileError(
                f"{path}: checksum mismatch: md5 of uncompressed bytes is {got}, expected {expected_md5}"
            )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(f"missing data file {folder / stem}[.gz]")


def _load_idx_dataset(
    kind: str, split: str, data_dir, verify: bool, md5s: dict
) -> tuple[np.ndarray, np.ndarray]:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = _root(data_dir) / kind / "raw"
    prefix = "train" if split == "train" else "t10k"
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    ipath, lpath = (_find_idx(folder, s) for s in stems)
    images = read_idx(ipath, md5s[stems[0]] if verify else None)
    labels = read_idx(lpath, md5s[stems[1]] if verify else None)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataFileError(f"{ipath}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataFileError(
            f"{lpath}: expected {images.shape[0]} labels (as in {ipath.name}), got {labels.shape}"
        )
    return images[..., None], labels.astype(np.int64)


def load_mnist(split: str = "train", data_dir=None, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """MNIST: images uint8 ``[N, 28, 28, 1]``, labels int64 ``[N]`` (60k train / 10k test)."""
    return _load_idx_dataset("MNIST", split, data_dir, verify, MNIST_MD5)


def load_fashion_mnist(
    split: str = "train", data_dir=None, verify: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST: images uint8 ``[N, 28, 28, 1]``, labels int64 ``[N]``."""
    return _load_idx_dataset("FashionMNIST", split, data_dir, verify, FASHION_MNIST_MD5)


def _cifar_labels(values, n: int, num_classes: int | None, path: Path, key: str) -> np.ndarray:
    """``values`` (a list of Python ints, or an integer ndarray ``[n]``) as int64 ``[n]``, checked in
    their original form first: a float (1.7 would truncate to 1), a string, a bool or a value outside
    ``[0, num_classes)`` (or int64) is refused; the length is checked before anything is converted."""
    if isinstance(values, np.ndarray):
        if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
            raise DataFileError(f"{path}: '{key}' must be integer class indices [N], got {values.dtype} "
                                f"{values.shape}")
    elif not isinstance(values, list | tuple) or not all(type(v) is int for v in values):
        bad = next((v for v in values if type(v) is not int), values) if isinstance(values, list | tuple) \
            else values
        raise DataFileError(f"{path}: '{key}' must be a list of integer class indices, got "
                            f"{type(bad).__name__} {str(bad)[:40]!r}")
    if len(values) != n:
        raise DataFileError(f"{path}: '{key}' must have {n} entries (one per image), got {len(values)}")
    lo, hi = (int(min(values)), int(max(values))) if n else (0, 0)
    top = num_classes if num_classes is not None else 2**63
    if lo < 0 or hi >= top:
        raise DataFileError(f"{path}: '{key}' must lie in [0, {top}) (class indices), got range [{lo}, {hi}]")
    return np.asarray(values, dtype=np.int64)


def load_cifar_batch(
    path: str | os.PathLike, expected_md5: str | None = None, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch (pickle dict, ``data`` uint8 [N, 3072] in CHW order, ``labels`` or
    ``fine_labels``) -> images uint8 ``[N, 32, 32, 3]``, labels int64 ``[N]`` in ``[0, num_classes)``.

    The pickle is read by :func:`jaxuq._io.load_pickle_restricted` (arrays only from their own bytes:
    memory is bounded by the file size); ``data`` must be a uint8 array and the labels integers, checked
    before any conversion (even without ``expected_md5``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"missing data file {path}")
    if expected_md5 is not None:
        got = md5_file(path)
        if got != expected_md5:
            raise DataFileError(f"{path}: checksum mismatch: md5 {got}, expected {expected_md5}")
    try:
        entry = load_pickle_restricted(path)
    except Exception as e:  # truncated pickles raise EOFError/UnpicklingError/...
        raise DataFileError(
            f"{path}: not a readable CIFAR python batch (pickle): {type(e).__name__}: {e}"
        ) from e
    if not isinstance(entry, dict) or "data" not in entry:
        raise DataFileError(f"{path}: expected a pickle dict with key 'data', got {type(entry).__name__}")
    key = "labels" if "labels" in entry else "fine_labels" if "fine_labels" in entry else None
    if key is None:
        raise DataFileError(f"{path}: expected key 'labels' or 'fine_labels', found {sorted(entry)}")
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else f"a {type(data).__name__}"
        raise DataFileError(f"{path}: 'data' must be uint8 [N, 3072], got {what}")
    labels = _cifar_labels(entry[key], data.shape[0], num_classes, path, key)
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def load_cifar10(split: str = "train", data_dir=None, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 from ``cifar-10-batches-py``: images uint8 ``[N, 32, 32, 3]``, labels int64."""
    folder = _root(data_dir) / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    parts = [load_cifar_batch(folder / n, CIFAR10_MD5[n] if verify else None, 10) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_cifar100(split: str = "train", data_dir=None, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-100 (fine labels) from ``cifar-100-python/{train,test}``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    path = _root(data_dir) / "cifar-100-python" / split
    return load_cifar_batch(path, CIFAR100_MD5[split] if verify else None, 100)


def load_svhn(split: str = "test", data_dir=None, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """SVHN ``{split}_32x32.mat`` (torchvision: directly under root; ``SVHN/`` is also searched).

    ``X`` is uint8 ``[32, 32, 3, N]``, ``y`` ``[N, 1]`` with 10 meaning digit 0 -> images
    ``[N, 32, 32, 3]``, labels in 0..9.
    """
    if split not in SVHN_MD5 and f"{split}_32x32.mat" not in SVHN_MD5:
        raise ValueError(f"split must be 'train', 'test' or 'extra', got {split!r}")
    name = f"{split}_32x32.mat"
    root = _root(data_dir)
    candidates = [root / name, root / "SVHN" / name, root / "svhn" / name]
    path = next((p for p in candidates if p.exists()), None)
    if path is None:
        raise FileNotFoundError(
            f"missing SVHN file {name}: looked for {', '.join(str(p) for p in candidates)} "
            "(SVHN is not in the shared data folder; download it where a network exists: "
            "jaxuq.data.download.download_svhn)"
        )
    if verify:
        got = md5_file(path)
        if got != SVHN_MD5[name]:
            raise DataFileError(f"{path}: checksum mismatch: md5 {got}, expected {SVHN_MD5[name]}")
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:
        raise DataFileError(f"{path}: not a readable MATLAB .mat file: {type(e).__name__}: {e}") from e
    if "X" not in mat or "y" not in mat:
        raise DataFileError(
            f"{path}: expected variables 'X' and 'y', found {sorted(k for k in mat if k[0] != '_')}"
        )
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.shape[0]:
        raise DataFileError(
            f"{path}: 'X' must be [32, 32, 3, N] with N = len(y) = {y.shape[0]}, got {x.shape}"
        )
    labels = y.astype(np.int64)
    labels[labels == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2).astype(np.uint8)), labels


def load_npz(
    path: str | os.PathLike, images_key: str = "images", labels_key: str = "labels", data_dir=None
) -> tuple[np.ndarray, np.ndarray]:
    """An ``.npz`` with uint8 ``images`` ``[N, H, W, C]`` (C in 1, 3, 4; ``[N, H, W]`` is read as C = 1)
    and non-negative integer ``labels`` ``[N]``.

    A relative ``path`` is taken under the data folder (e.g. ``cifar10_heads/test_first1000.npz``).
    The zip's declared sizes are checked before anything is inflated (:func:`jaxuq._io.check_zip_sizes`).
    """
    path = Path(path)
    if not path.is_absolute():
        path = _root(data_dir) / path
    if not path.exists():
        raise FileNotFoundError(f"missing data file {path}")
    try:
        check_zip_sizes(path)
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in (images_key, labels_key) if k not in z.files]
            if missing:
                raise DataFileError(f"{path}: missing arrays {missing}; found {z.files}")
            images, labels = z[images_key], z[labels_key]
    except DataFileError:
        raise
    except Exception as e:
        raise DataFileError(f"{path}: not a readable .npz: {type(e).__name__}: {e}") from e
    if images.ndim == 3:
        images = images[..., None]
    _check_nhwc(images, path, images_key)
    if labels.shape != (images.shape[0],):
        raise DataFileError(
            f"{path}: '{labels_key}' must have shape ({images.shape[0]},), got {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataFileError(
            f"{path}: '{labels_key}' must hold integer class indices, got dtype {labels.dtype}; "
            "store them with labels.astype(np.int64) after checking they are whole numbers"
        )
    if labels.size and int(labels.min()) < 0:
        raise DataFileError(f"{path}: '{labels_key}' must be >= 0 (class indices), got min {labels.min()}")
    return images, labels.astype(np.int64)


def _check_nhwc(images: np.ndarray, path: Path, key: str) -> None:
    if images.dtype != np.uint8 or images.ndim != 4:
        raise DataFileError(f"{path}: '{key}' must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    if images.shape[-1] not in (1, 3, 4):
        hint = ("; it looks channels-first [N, C, H, W]: store images.transpose(0, 2, 3, 1)"
                if images.shape[1] in (1, 3, 4) else "")
        raise DataFileError(
            f"{path}: '{key}' must be channels-last [N, H, W, C] with C in (1, 3, 4), got shape "
            f"{images.shape}{hint}"
        )
