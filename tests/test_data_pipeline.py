"""Device-side augmentation/normalisation vs torchvision, splits vs TU, prefetching, OOD sets, tfds."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxuq.data import (
    MNIST_NORM,
    Preprocess,
    epoch_permutation,
    prefetch_to_device,
    random_crop,
    random_flip,
    synthetic_shifts,
    train_val_split,
)
from tests.helpers import data_path, require


def test_random_crop_is_zero_pad_then_window():
    rng = np.random.default_rng(0)
    imgs = rng.integers(1, 256, (64, 28, 28, 1), dtype=np.uint8)  # no zeros: padding is visible
    out = np.asarray(random_crop(jax.random.key(3), jnp.asarray(imgs), 28, 4))
    assert out.shape == imgs.shape and out.dtype == np.uint8
    padded = np.pad(imgs, ((0, 0), (4, 4), (4, 4), (0, 0)))
    offsets = set()
    for i in range(len(imgs)):
        hits = [
            (y, x)
            for y in range(9)
            for x in range(9)
            if np.array_equal(padded[i, y : y + 28, x : x + 28], out[i])
        ]
        assert len(hits) == 1
        offsets.add(hits[0])
    # offsets are uniform over [0, 8]^2: 64 draws hit many distinct cells incl. non-centre ones
    assert len(offsets) > 30 and any(y in (0, 8) or x in (0, 8) for y, x in offsets)


def test_flip_and_normalize_match_torchvision():
    torch = require("torch")
    from torchvision.transforms import v2

    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)
    flipped = np.asarray(random_flip(jax.random.key(0), jnp.asarray(imgs)))
    is_flipped = [np.array_equal(f, i[:, ::-1]) for f, i in zip(flipped, imgs)]
    is_same = [np.array_equal(f, i) for f, i in zip(flipped, imgs)]
    assert all(a or b for a, b in zip(is_flipped, is_same)) and 4 < sum(is_flipped) < 28
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    ref = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])(
        torch.from_numpy(imgs).permute(0, 3, 1, 2)
    )
    ours = np.asarray(Preprocess(mean, std).eval(jnp.asarray(imgs)))
    np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(), atol=1e-6)


def test_preprocess_train_is_jittable_and_keyed():
    pre = Preprocess(*MNIST_NORM, crop=28, padding=4, flip=True)
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8))
    a = jax.jit(pre.train)(jax.random.key(1), x)
    b = pre.train(jax.random.key(1), x)  # un-jitted path
    c = jax.jit(pre.train)(jax.random.key(2), x)
    assert a.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)  # same crops and flips
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_epoch_permutation_deterministic():
    k = jax.random.key(0)
    p0, p0b, p1 = (np.asarray(epoch_permutation(k, e, 100)) for e in (0, 0, 1))
    assert np.array_equal(p0, p0b) and not np.array_equal(p0, p1) and sorted(p0) == list(range(100))


def test_train_val_split_sizes_match_tu():
    tu_utils = require("torch_uncertainty.datasets.utils")
    torch = require("torch")
    for n, frac in [(60000, 0.1), (1000, 0.05), (7, 0.3), (10, 0.001)]:
        ds = torch.utils.data.TensorDataset(torch.arange(n))
        tr, va = tu_utils.create_train_val_split(ds, frac, None)
        ours_tr, ours_va = train_val_split(n, frac, seed=0)
        assert (len(ours_tr), len(ours_va)) == (len(tr), len(va))
        assert len(np.intersect1d(ours_tr, ours_va)) == 0 and len(ours_tr) + len(ours_va) == n
    a = train_val_split(100, 0.2, seed=5)
    b = train_val_split(100, 0.2, seed=5)
    assert np.array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="val_split"):
        train_val_split(10, 0.0)


def test_prefetch_order_overlap_and_errors():
    produced = []

    def gen():
        for i in range(5):
            produced.append(i)
            yield {"x": np.full((2,), i)}

    it = prefetch_to_device(gen(), size=2)
    first = next(it)
    time.sleep(0.2)
    assert isinstance(first["x"], jax.Array) and int(first["x"][0]) == 0
    assert len(produced) >= 3  # the thread ran ahead while the consumer "computed"
    assert [int(b["x"][0]) for b in it] == [1, 2, 3, 4]

    def bad():
        yield np.zeros(1)
        raise RuntimeError("reader failed at item 1")

    with pytest.raises(RuntimeError, match="reader failed at item 1"):
        list(prefetch_to_device(bad()))


def test_synthetic_shifts_follow_scio():
    torch = require("torch")
    x = np.random.default_rng(0).random((4, 8, 8, 3)).astype(np.float32)
    shifts = synthetic_shifts(jax.random.key(0), jnp.asarray(x))
    t = torch.from_numpy(x).permute(0, 3, 1, 2)  # scio works on NCHW
    np.testing.assert_array_equal(np.asarray(shifts["Vertical flip"]), t.flip(2).permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(np.asarray(shifts["Darker"]), (t * 0.5).permute(0, 2, 3, 1).numpy())
    u = np.asarray(shifts["Uniformly random"])
    assert u.shape == x.shape and u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.1


@pytest.mark.realdata
def test_fashion_ood_first_10k():
    from jaxuq.data import fashion_mnist_ood, load_fashion_mnist

    root = data_path("FashionMNIST/raw").parent.parent
    x, y = fashion_mnist_ood(root)
    full, _ = load_fashion_mnist("train", root)
    assert x.shape == (10000, 28, 28, 1) and np.array_equal(x, full[:10000])


def test_svhn_ood_missing_is_clear(tmp_path):
    from jaxuq.data import svhn_ood

    with pytest.raises(FileNotFoundError, match="missing SVHN file test_32x32.mat"):
        svhn_ood(tmp_path)


def test_tfds_source_with_mock_data():
    tfds = require("tensorflow_datasets")
    from jaxuq.data.tfds_source import load_tfds, tfds_batches

    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        x, y = load_tfds("mnist", "train")
        assert x.shape == (12, 28, 28, 1) and x.dtype == np.uint8 and y.shape == (12,)
        ref = tfds.data_source("mnist", split="train")
        assert np.array_equal(x[3], ref[3]["image"]) and y[3] == ref[3]["label"]
        batches = list(tfds_batches("mnist", "train", 5))
        assert [len(b[0]) for b in batches] == [5, 5, 2] and np.array_equal(batches[1][0][0], x[5])
        with pytest.raises(KeyError, match="no feature 'pixels'"):
            load_tfds("mnist", "train", image_key="pixels")
