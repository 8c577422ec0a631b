"""Checksum-verified, atomic downloads into torchvision's layout (only where a network exists).

A download goes to a temporary file in the destination folder, is verified against its md5 and
only then renamed into place (``os.replace``): an interrupted or corrupt download never leaves a
file that a reader would take as valid. URLs and md5s are torchvision's.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from jaxuq._progress import progress_bar
from jaxuq.data.readers import SVHN_MD5, DataFileError

__all__ = [
    "download_url",
    "download_mnist",
    "download_fashion_mnist",
    "download_cifar10",
    "download_cifar100",
    "download_svhn",
    "MNIST_MIRRORS",
    "FASHION_MNIST_MIRRORS",
]

MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
FASHION_MNIST_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
# md5 of the .gz files as served (torchvision's resources lists).
MNIST_GZ_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
FASHION_MNIST_GZ_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
CIFAR10_URL = ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")
CIFAR100_URL = (
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    "eb9058c3a382ffc7106e4002c42a8d85",
)
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"


def download_url(url: str, dest: str | os.PathLike, md5: str | None = None, timeout: float = 60.0,
                 *, quiet: bool = False) -> Path:
    """Download ``url`` to ``dest`` atomically; verify ``md5`` before the file appears.

    A progress bar shows the bytes received (process 0 only; none with ``quiet=True``).
    An existing ``dest`` whose md5 matches is kept (no network access). Raises
    ``DataFileError`` on a checksum mismatch (the partial file is removed) and ``OSError``
    naming the URL on network errors.
    """
    dest = Path(dest)
    if dest.exists() and md5 is not None:
        h = hashlib.md5(dest.read_bytes(), usedforsecurity=False).hexdigest()
        if h == md5:
            return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        h = hashlib.md5(usedforsecurity=False)
        req = urllib.request.Request(url, headers={"User-Agent": "jaxuq"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp, os.fdopen(fd, "wb") as out:
                size = resp.headers.get("Content-Length")
                total = int(size) if size and size.isdigit() else None
                with progress_bar(dest.name, total, quiet=quiet, unit="bytes") as advance:
                    while block := resp.read(1 << 20):
                        h.update(block)
                        out.write(block)
                        advance(len(block))
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            raise OSError(f"download of {url} failed: {e}") from e
        if md5 is not None and h.hexdigest() != md5:
            raise DataFileError(f"downloaded {url}: checksum mismatch: md5 {h.hexdigest()}, expected {md5}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def _download_idx(kind: str, mirrors, md5s, root, decompress: bool) -> Path:
    folder = Path(root) / kind / "raw"
    for name, md5 in md5s.items():
        errors = []
        for mirror in mirrors:
            try:
                path = download_url(mirror + name, folder / name, md5)
                break
            except OSError as e:  # try the next mirror
                errors.append(str(e))
        else:
            raise OSError(f"could not download {name} from any mirror: {'; '.join(errors)}")
        if decompress:
            raw = folder / name[:-3]
            tmp = raw.with_name(raw.name + ".part")
            with gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, raw)
    return folder


def download_mnist(root: str | os.PathLike, mirrors=MNIST_MIRRORS, decompress: bool = False) -> Path:
    """MNIST ``.gz`` files into ``root/MNIST/raw`` (``decompress=True`` also writes the raw files
    that torchvision's reader wants)."""
    return _download_idx("MNIST", mirrors, MNIST_GZ_MD5, root, decompress)


def download_fashion_mnist(root, mirrors=FASHION_MNIST_MIRRORS, decompress: bool = False) -> Path:
    return _download_idx("FashionMNIST", mirrors, FASHION_MNIST_GZ_MD5, root, decompress)


def _download_tar(url: str, md5: str, root, folder_name: str) -> Path:
    root = Path(root)
    archive = download_url(url, root / url.rsplit("/", 1)[1], md5)
    tmpdir = Path(tempfile.mkdtemp(prefix=".extract.", dir=root))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(tmpdir, filter="data")
        target = root / folder_name
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmpdir / folder_name, target)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return target


def download_cifar10(root, url: str = CIFAR10_URL[0], md5: str = CIFAR10_URL[1]) -> Path:
    """``cifar-10-python.tar.gz`` -> ``root/cifar-10-batches-py``."""
    return _download_tar(url, md5, root, "cifar-10-batches-py")


def download_cifar100(root, url: str = CIFAR100_URL[0], md5: str = CIFAR100_URL[1]) -> Path:
    return _download_tar(url, md5, root, "cifar-100-python")


def download_svhn(root, split: str = "test", base_url: str = SVHN_URL) -> Path:
    """``{split}_32x32.mat`` into ``root`` (torchvision's place for SVHN)."""
    name = f"{split}_32x32.mat"
    return download_url(base_url + name, Path(root) / name, SVHN_MD5[name])
