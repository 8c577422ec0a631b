"""Zero (jaxuq.tta.zero_vote) against TU 0.13.0's ``Zero`` on the same test-time views (injected:
noisy, shifted copies of real MNIST test images, built once in numpy) through a TU-trained hub LeNet."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import data_path, require

torch = require("torch")
require("torch_uncertainty")

from torch import nn  # noqa: E402
from torch_uncertainty.methods import Zero as TUZero  # noqa: E402
from torch_uncertainty.models.classification import lenet as tu_lenet  # noqa: E402

from converters import mappings  # noqa: E402
from jaxuq.data import MNIST_NORM, load_mnist  # noqa: E402
from jaxuq.tta import zero_vote  # noqa: E402

pytestmark = [pytest.mark.parity, pytest.mark.realdata]


@pytest.fixture(scope="module")
def views():
    sd = torch.load(data_path("hub/ENSTA-U2IS/tutorial-models/version_1.ckpt"), map_location="cpu",
                    weights_only=True)["state_dict"]
    sd = {k.replace("model.", "", 1): v for k, v in sd.items()}
    tm = tu_lenet(in_channels=1, num_classes=10)
    tm.load_state_dict(sd)
    tm.eval()
    model, variables = mappings.convert_state_dict("lenet", {k: v.numpy() for k, v in sd.items()},
                                                   in_channels=1, num_classes=10)
    x, _ = load_mnist("test", data_dir=data_path("MNIST").parent)
    rng = np.random.default_rng(0)
    v = 10
    imgs = (x[:24].astype(np.float32) / 255 - MNIST_NORM[0][0]) / MNIST_NORM[1][0]
    out = []
    for img in imgs:  # sample-major: the V views of image 0, then of image 1, ...
        for _ in range(v):
            shifted = np.roll(img, tuple(rng.integers(-4, 5, 2)), axis=(0, 1))
            out.append(shifted + rng.normal(0, 1.5, img.shape).astype(np.float32))
    xs = np.stack(out).astype(np.float32)
    logits = np.asarray(model.apply(variables, xs))
    return tm, xs, logits, v


def _tu(core, xs, v, filt):
    z = TUZero(core, num_tta=v, filter_views=filt)
    z.eval()
    with torch.no_grad():
        return z(torch.from_numpy(np.ascontiguousarray(xs.transpose(0, 3, 1, 2)))).numpy()


@pytest.mark.parametrize("filt", [0.1, 0.2, 0.5])
def test_zero_matches_tu_on_probabilities(views, filt):
    tm, xs, logits, v = views
    ref = _tu(nn.Sequential(tm, nn.Softmax(dim=-1)), xs, v, filt)  # TU's entr on probabilities: Zero's definition
    got = np.asarray(zero_vote(logits, v, filt))
    votes = np.exp(ref) - 1e-8
    ties = int(np.sum(np.round(votes * v).sum(1) > int(filt * v)))  # samples where extra views voted
    err = float(np.max(np.abs(got - ref)))
    print(f"Zero filter {filt}: max|Δ| {err:.1e}; {ties}/{len(ref)} samples needed tie-breaking views")
    assert err <= 1e-6
    if filt == 0.2:
        assert ties > 0  # the tie-breaking loop is exercised


def test_tu_ranks_views_by_the_entropy_of_logits(views):
    """TU's own Zero on the logits model: entr(logits) is -inf for any negative logit, so its
    ranking (and vote) is not Zero's; jaxuq keeps the softmax entropy (deviation, README)."""
    tm, xs, logits, v = views
    ent = torch.special.entr(torch.from_numpy(logits)).sum(1).numpy()
    assert np.mean(np.isneginf(ent)) > 0.9
    ref = _tu(tm, xs, v, 0.2)
    got = np.asarray(zero_vote(logits, v, 0.2))
    assert np.max(np.abs(got - ref)) > 1.0  # the votes differ on some samples
