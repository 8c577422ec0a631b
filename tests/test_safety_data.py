"""Data readers against crafted files (issue 16, section 2): pickles that run code, zip and gzip bombs,
channels-first / float-label .npz. Each test fails on the code before the fix."""

from __future__ import annotations

import gzip
import os
import pickle
import zipfile

import numpy as np
import pytest

from jaxuq.data import readers
from jaxuq.data.readers import DataFileError
from tests.helpers import data_path


class _Evil:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def _batch(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"batch_label": "b", "labels": rng.integers(0, 10, n).tolist(),
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}


@pytest.mark.parametrize("where", ["value", "top"])
def test_cifar_batch_that_runs_a_command_is_refused(tmp_path, where):
    _Evil.marker = str(tmp_path / "PWNED")
    b = _batch()
    payload = {**b, "labels": _Evil()} if where == "value" else _Evil()
    (tmp_path / "cifar-10-batches-py").mkdir()
    for name in ("test_batch", "direct"):
        with open(tmp_path / "cifar-10-batches-py" / name, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(DataFileError, match="posix.system is not allowed|os.system is not allowed"):
        readers.load_cifar10("test", tmp_path, verify=False)
    with pytest.raises(DataFileError, match="not allowed"):
        readers.load_cifar_batch(tmp_path / "cifar-10-batches-py" / "direct")
    assert not (tmp_path / "PWNED").exists()


def test_object_arrays_are_refused(tmp_path):
    with open(tmp_path / "b", "wb") as f:
        pickle.dump({**_batch(), "labels": np.array([1, 2, 3], dtype=object)}, f)
    with pytest.raises(DataFileError, match="holds Python objects"):
        readers.load_cifar_batch(tmp_path / "b")


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_restricted_unpickler_reads_every_protocol(tmp_path, protocol):
    b = _batch(seed=protocol)
    with open(tmp_path / "b", "wb") as f:
        pickle.dump(b, f, protocol=protocol)
    x, y = readers.load_cifar_batch(tmp_path / "b")
    assert y.tolist() == b["labels"] and x[1, 0, 3, 0] == b["data"][1, 3]


def test_restricted_unpickler_reads_the_real_cifar10_meta():
    from jaxuq._io import load_pickle_restricted

    meta = load_pickle_restricted(data_path("cifar10_heads/batches.meta"))
    assert meta["label_names"][:2] == ["airplane", "automobile"] and meta["num_vis"] == 3072


# ----------------------------------------------------------------------------------------- bombs
def _idx_gz(path, dims, payload_len):
    head = bytes([0, 0, 0x08, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)
    path.write_bytes(gzip.compress(head + b"\0" * payload_len, compresslevel=1))


def test_gzip_bomb_idx_stops_at_the_declared_size(tmp_path):
    # header: 3 images of 28x28 (2,352 bytes); the stream inflates to 256 MiB
    _idx_gz(tmp_path / "bomb-idx3-ubyte.gz", (3, 28, 28), 256 << 20)
    assert (tmp_path / "bomb-idx3-ubyte.gz").stat().st_size < 2_000_000
    with pytest.raises(DataFileError, match="gzip bomb"):
        readers.read_idx(tmp_path / "bomb-idx3-ubyte.gz")


def test_gzip_bomb_with_lying_trailer(tmp_path):
    _idx_gz(tmp_path / "b.gz", (3, 28, 28), 64 << 20)
    raw = bytearray((tmp_path / "b.gz").read_bytes())
    raw[-4:] = (2368).to_bytes(4, "little")  # ISIZE claims the honest size
    (tmp_path / "b.gz").write_bytes(bytes(raw))
    with pytest.raises(DataFileError, match="inflates to more than the 2,368 bytes expected"):
        readers.read_idx(tmp_path / "b.gz")


def test_gz_idx_still_reads(tmp_path):
    arr = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    head = bytes([0, 0, 0x08, 3]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    (tmp_path / "ok.gz").write_bytes(gzip.compress(head + arr.tobytes()) + gzip.compress(b""))  # 2 members
    (tmp_path / "ok").write_bytes(gzip.compress(head + arr.tobytes()))
    assert np.array_equal(readers.read_idx(tmp_path / "ok"), arr)
    assert np.array_equal(readers.read_idx(tmp_path / "ok.gz"), arr)


def test_npz_zip_bomb_refused_before_inflating(tmp_path):
    with zipfile.ZipFile(tmp_path / "b.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("images.npy", b"\0" * (128 << 20))
        z.writestr("labels.npy", b"\0" * 128)
    with pytest.raises(DataFileError, match="zip bomb"):
        readers.load_npz(tmp_path / "b.npz")


# ----------------------------------------------------------------------------------------- npz content
def test_npz_channels_first_is_refused(tmp_path):
    np.savez(tmp_path / "chw.npz", images=np.zeros((2, 3, 32, 32), np.uint8), labels=np.array([0, 1]))
    with pytest.raises(DataFileError, match=r"channels-first.*transpose\(0, 2, 3, 1\)"):
        readers.load_npz(tmp_path / "chw.npz")


@pytest.mark.parametrize(("labels", "msg"), [(np.array([0.0, 1.7]), "integer class indices"),
                                              (np.array([0, -1]), ">= 0")])
def test_npz_bad_labels_are_refused(tmp_path, labels, msg):
    np.savez(tmp_path / "l.npz", images=np.zeros((2, 32, 32, 3), np.uint8), labels=labels)
    with pytest.raises(DataFileError, match=msg):
        readers.load_npz(tmp_path / "l.npz")


# ------------------------------------------------------------------ issue 24, items 4 and 6 (CIFAR reader)
class _Strided:
    """``numpy.ndarray((n, 3072), 'u1', buf, 0, strides=(0, 1))``: a 3 kB buffer viewed as n x 3072 bytes."""

    def __init__(self, n):
        self.n = n

    def __reduce__(self):
        return (np.ndarray, ((self.n, 3072), np.dtype("u1"), b"\0" * 3072, 0, (0, 1)))


def test_strided_ndarray_bomb_is_refused_before_allocating(tmp_path):
    with open(tmp_path / "b", "wb") as f:
        pickle.dump({"labels": [0] * 4, "data": _Strided(1_000_000)}, f, protocol=2)
    assert os.path.getsize(tmp_path / "b") < 8000  # would be 3 GB once copied
    with pytest.raises(DataFileError, match="numpy.ndarray.*not allowed"):
        readers.load_cifar_batch(tmp_path / "b")


@pytest.mark.parametrize("labels, msg", [
    (np.array([0, 2**32, 1], dtype=np.int64), r"\[0, 10\)"),
    (np.array([0, 2**32, 1], dtype=np.uint64), r"\[0, 10\)"),
    (np.array([0, -2**32 + 1, 1], dtype=np.int64), r"\[0, 10\)"),
    ([0, 1.7, 2], "integer class indices"),
    ([0, "3", 2], "integer class indices"),
    (np.array([0.0, 1.0, 2.0]), "integer class indices"),
    ([0, 1], "3 entries"),
])
def test_cifar_labels_checked_in_their_original_dtype(tmp_path, labels, msg):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({**_batch(), "labels": labels}, f, protocol=2)
    with pytest.raises(DataFileError, match=msg):
        readers.load_cifar10("test", tmp_path, verify=False)


def test_cifar_uint64_beyond_int64_refused_without_num_classes(tmp_path):
    with open(tmp_path / "b", "wb") as f:
        pickle.dump({**_batch(), "labels": np.array([0, 2**64 - 1, 1], dtype=np.uint64)}, f)
    with pytest.raises(DataFileError, match="must lie in"):
        readers.load_cifar_batch(tmp_path / "b")
