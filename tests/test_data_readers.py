"""Readers for standard files: real MNIST/FashionMNIST/CIFAR heads, files written in the exact
on-disk formats (CIFAR python batches, SVHN .mat, idx), corrupt/missing files, offline downloads."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import pickle
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from jaxuq.data import download as dl
from jaxuq.data import readers
from jaxuq.data.readers import DataFileError
from tests.helpers import data_path


def _idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int32: 0x0C}[arr.dtype.type]
    head = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _write_mnist(root: Path, n=7, gz=True, kind="MNIST", seed=0):
    rng = np.random.default_rng(seed)
    raw = root / kind / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labs = rng.integers(0, 10, n).astype(np.uint8)
    out = {}
    for stem, arr in (
        ("train-images-idx3-ubyte", imgs),
        ("train-labels-idx1-ubyte", labs),
        ("t10k-images-idx3-ubyte", imgs[:3]),
        ("t10k-labels-idx1-ubyte", labs[:3]),
    ):
        data = _idx_bytes(arr)
        out[stem] = data
        if gz:
            (raw / (stem + ".gz")).write_bytes(gzip.compress(data))
        else:
            (raw / stem).write_bytes(data)
    return imgs, labs, out


# ---------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_mnist_and_fashion_verify():
    root = data_path("MNIST/raw").parent.parent
    x, y = readers.load_mnist("train", root)
    assert x.shape == (60000, 28, 28, 1) and x.dtype == np.uint8
    assert np.bincount(y).tolist()[:2] == [5923, 6742]  # MNIST's published class counts
    xt, yt = readers.load_mnist("test", root)
    assert xt.shape == (10000, 28, 28, 1) and yt[:5].tolist() == [7, 2, 1, 0, 4]
    xf, yf = readers.load_fashion_mnist("test", root)
    assert xf.shape == (10000, 28, 28, 1) and np.bincount(yf).tolist() == [1000] * 10


@pytest.mark.realdata
def test_real_cifar_heads_npz():
    path = data_path("cifar10_heads/test_first1000.npz")
    x, y = readers.load_npz(path)
    assert x.shape == (1000, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    with np.load(path) as z:
        assert np.array_equal(y, z["labels_all"][:1000])


def test_mnist_checksum_mismatch_names_file(tmp_path):
    _write_mnist(tmp_path)
    with pytest.raises(DataFileError, match=r"train-images-idx3-ubyte.gz: checksum mismatch.*6bbc9ace"):
        readers.load_mnist("train", tmp_path)
    x, y = readers.load_mnist("train", tmp_path, verify=False)  # structurally fine
    assert x.shape == (7, 28, 28, 1)


def test_idx_raw_and_gz_agree(tmp_path):
    imgs, labs, _ = _write_mnist(tmp_path / "a", gz=True)
    _write_mnist(tmp_path / "b", gz=False)
    xa, ya = readers.load_mnist("train", tmp_path / "a", verify=False)
    xb, yb = readers.load_mnist("train", tmp_path / "b", verify=False)
    assert np.array_equal(xa[..., 0], imgs) and np.array_equal(xb, xa) and np.array_equal(ya, labs)


def test_idx_matches_torchvision_reader(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    imgs, labs, _ = _write_mnist(tmp_path, gz=False)
    ds = torchvision.datasets.MNIST(str(tmp_path), train=True, download=False)
    x, y = readers.load_mnist("train", tmp_path, verify=False)
    assert np.array_equal(ds.data.numpy(), x[..., 0]) and np.array_equal(ds.targets.numpy(), y)


def test_corrupt_idx_files(tmp_path):
    _, _, raw = _write_mnist(tmp_path, gz=False)
    p = tmp_path / "MNIST/raw/train-images-idx3-ubyte"
    p.write_bytes(raw["train-images-idx3-ubyte"][:-5])
    with pytest.raises(
        DataFileError, match=r"train-images-idx3-ubyte: wrong size: header says shape \(7, 28, 28\)"
    ):
        readers.load_mnist("train", tmp_path, verify=False)
    p.write_bytes(b"\x12\x34\x08\x03" + raw["train-images-idx3-ubyte"][4:])
    with pytest.raises(DataFileError, match="wrong magic number 12340803"):
        readers.load_mnist("train", tmp_path, verify=False)
    p.unlink()
    gz = tmp_path / "MNIST/raw/train-images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(raw["train-images-idx3-ubyte"])[:200])
    with pytest.raises(DataFileError, match="train-images-idx3-ubyte.gz: corrupt or truncated gzip"):
        readers.load_mnist("train", tmp_path, verify=False)
    gz.unlink()
    with pytest.raises(FileNotFoundError, match=r"MNIST/raw/train-images-idx3-ubyte\[.gz\]"):
        readers.load_mnist("train", tmp_path)


def test_missing_data_dir_is_clear(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXUQ_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="JAXUQ_DATA_DIR"):
        readers.load_mnist("train")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        readers.load_cifar10("test", tmp_path / "nope")


def _cifar_batch(n, key="labels", seed=0, classes=10):
    rng = np.random.default_rng(seed)
    return {
        "batch_label": "testing batch 1 of 1",
        key: rng.integers(0, classes, n).tolist(),
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        "filenames": [f"img_{i}.png" for i in range(n)],
    }


def test_cifar10_python_batches_format(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        b = _cifar_batch(4, seed=i)
        batches.append(b)
        with open(folder / name, "wb") as f:
            pickle.dump(b, f)
    x, y = readers.load_cifar10("train", tmp_path, verify=False)
    assert x.shape == (20, 32, 32, 3) and x.dtype == np.uint8
    # CHW row layout -> HWC: pixel (r, c) of channel k is data[k*1024 + r*32 + c]
    d = batches[0]["data"][1]
    assert x[1, 5, 7, 2] == d[2 * 1024 + 5 * 32 + 7] and x[1, 0, 3, 0] == d[3]
    assert y[4:8].tolist() == batches[1]["labels"]
    # torchvision's parsing (vstack, reshape(-1, 3, 32, 32), transpose to HWC) of the same files
    data = (
        np.vstack(
            [
                pickle.load(open(folder / f"data_batch_{k}", "rb"), encoding="latin1")["data"]
                for k in range(1, 6)
            ]
        )
        .reshape(-1, 3, 32, 32)
        .transpose(0, 2, 3, 1)
    )
    assert np.array_equal(data, x)
    with pytest.raises(
        DataFileError, match=r"data_batch_1: checksum mismatch.*c99cafc152244af753f735de768cd75f"
    ):
        readers.load_cifar10("train", tmp_path)


def test_cifar100_fine_labels_and_corrupt_pickle(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    b = _cifar_batch(6, key="fine_labels", classes=100)
    b["coarse_labels"] = [0] * 6
    raw = pickle.dumps(b)
    (folder / "test").write_bytes(raw)
    x, y = readers.load_cifar100("test", tmp_path, verify=False)
    assert x.shape == (6, 32, 32, 3) and y.tolist() == b["fine_labels"]
    (folder / "test").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataFileError, match="cifar-100-python/test: not a readable CIFAR python batch"):
        readers.load_cifar100("test", tmp_path, verify=False)
    b["data"] = b["data"][:, :100]
    (folder / "test").write_bytes(pickle.dumps(b))
    with pytest.raises(DataFileError, match=r"'data' must be uint8 \[N, 3072\], got uint8 \(6, 100\)"):
        readers.load_cifar100("test", tmp_path, verify=False)


def test_svhn_mat(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    y = np.array([[10], [1], [2], [10], [9]], np.uint8)
    scipy_io.savemat(tmp_path / "test_32x32.mat", {"X": X, "y": y})
    x, labels = readers.load_svhn("test", tmp_path, verify=False)
    assert x.shape == (5, 32, 32, 3) and np.array_equal(x[2], X[:, :, :, 2])
    assert labels.tolist() == [0, 1, 2, 0, 9]
    with pytest.raises(DataFileError, match="test_32x32.mat: checksum mismatch"):
        readers.load_svhn("test", tmp_path)
    with pytest.raises(FileNotFoundError, match="missing SVHN file train_32x32.mat"):
        readers.load_svhn("train", tmp_path)


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((3, 4, 4, 3), np.uint8), labels=np.zeros(2))
    with pytest.raises(DataFileError, match=r"a.npz: 'labels' must have shape \(3,\), got \(2,\)"):
        readers.load_npz(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", x=np.zeros(3))
    with pytest.raises(DataFileError, match=r"b.npz: missing arrays \['images', 'labels'\]"):
        readers.load_npz(tmp_path / "b.npz")
    (tmp_path / "c.npz").write_bytes(b"not a zip")
    with pytest.raises(DataFileError, match="c.npz: not a readable .npz"):
        readers.load_npz(tmp_path / "c.npz")


# ---------------------------------------------------------------- downloads (loopback server)


@pytest.fixture
def http_root(tmp_path):
    served = tmp_path / "served"
    served.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(served), **k)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_mnist_verified_and_atomic(tmp_path, http_root, monkeypatch):
    served, url = http_root
    _, _, raw = _write_mnist(served / "src", gz=True)
    for f in (served / "src/MNIST/raw").iterdir():
        shutil.copy(f, served / f.name)
    md5s = {f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in (served / "src/MNIST/raw").iterdir()}
    monkeypatch.setattr(dl, "MNIST_GZ_MD5", md5s)
    dest = tmp_path / "data"
    folder = dl._download_idx("MNIST", ["http://127.0.0.1:1/bad/", url], md5s, dest, decompress=True)
    x, y = readers.load_mnist("train", dest, verify=False)
    assert x.shape == (7, 28, 28, 1)
    assert (folder / "train-images-idx3-ubyte").read_bytes() == raw["train-images-idx3-ubyte"]
    # a corrupted file on the server: checksum error, no file (and no partial file) left behind
    (served / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    target = tmp_path / "x" / "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(DataFileError, match="checksum mismatch"):
        dl.download_url(url + "t10k-labels-idx1-ubyte.gz", target, md5s["t10k-labels-idx1-ubyte.gz"])
    assert not target.exists() and os.listdir(target.parent) == []
    with pytest.raises(OSError, match="download of .*missing.gz failed"):
        dl.download_url(url + "missing.gz", tmp_path / "y" / "missing.gz")


def test_download_cifar10_tarball(tmp_path, http_root):
    served, url = http_root
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
            payload = pickle.dumps(_cifar_batch(2, seed=len(name)))
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    (served / "cifar-10-python.tar.gz").write_bytes(buf.getvalue())
    md5 = hashlib.md5(buf.getvalue()).hexdigest()
    dl.download_cifar10(tmp_path / "d", url=url + "cifar-10-python.tar.gz", md5=md5)
    x, y = readers.load_cifar10("test", tmp_path / "d", verify=False)
    assert x.shape == (2, 32, 32, 3)
    with pytest.raises(DataFileError, match="checksum mismatch"):
        dl.download_cifar10(tmp_path / "e", url=url + "cifar-10-python.tar.gz", md5="0" * 32)
    assert not (tmp_path / "e" / "cifar-10-batches-py").exists()
