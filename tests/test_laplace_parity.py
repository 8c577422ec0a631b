"""Last-layer Laplace (jaxuq.calibration.laplace) against TU 0.13.0's ``LaplaceApprox`` (laplace-torch
0.3) on a TU-trained MNIST LeNet (hub ``version_0.ckpt``, converted), fitted on the first 300 MNIST
training images, predicting the first 200 test images: diag and KFAC, probit and MC (TU's standard
normal draw recorded and injected), prior precision by marginal likelihood on both sides."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tests.helpers import data_path, require

torch = require("torch")
require("torch_uncertainty")
require("laplace")

from torch.utils.data import DataLoader, TensorDataset  # noqa: E402
from torch_uncertainty.models.classification import lenet as tu_lenet  # noqa: E402
from torch_uncertainty.post_processing import LaplaceApprox as TULaplace  # noqa: E402

from converters import mappings  # noqa: E402
from jaxuq.calibration.laplace import LaplaceApprox, laplace_fit, last_layer_features, log_marginal_likelihood  # noqa: E402
from jaxuq.data import MNIST_NORM, load_mnist  # noqa: E402

pytestmark = [pytest.mark.parity, pytest.mark.realdata]


def _norm(x):
    mean, std = MNIST_NORM
    return ((x.astype(np.float32) / 255.0 - np.float32(mean[0])) / np.float32(std[0])).astype(np.float32)


@pytest.fixture(scope="module")
def setup():
    ckpt = data_path("hub/ENSTA-U2IS/tutorial-models/version_0.ckpt")
    root = data_path("MNIST").parent
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    sd = {k.replace("model.", "", 1): v for k, v in sd.items()}
    tm = tu_lenet(in_channels=1, num_classes=10)
    tm.load_state_dict(sd)
    tm.eval()
    model, variables = mappings.convert_state_dict("lenet", {k: v.numpy() for k, v in sd.items()},
                                                   in_channels=1, num_classes=10)
    x, y = load_mnist("train", data_dir=root)
    xt, _ = load_mnist("test", data_dir=root)
    return dict(tm=tm, model=model, variables=variables, x=_norm(x[:300]), y=y[:300].astype(np.int64),
                xt=_norm(xt[:200]), tu={})


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _tu(setup, hs):
    """TU's LaplaceApprox fitted once per Hessian structure (marglik prior precision)."""
    if hs not in setup["tu"]:
        la = TULaplace(task="classification", model=setup["tm"], hessian_struct=hs)
        loader = DataLoader(TensorDataset(nchw(setup["x"]), torch.from_numpy(setup["y"])), batch_size=128)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            la.fit(loader)
        setup["tu"][hs] = la
    return setup["tu"][hs]


@pytest.mark.parametrize("hs", ["diag", "kron"])
@pytest.mark.parametrize("link", ["probit", "mc"])
def test_laplace_predictive_matches_tu(setup, hs, link, monkeypatch):
    tu = _tu(setup, hs)
    la = LaplaceApprox(hessian_structure=hs, link_approx=link)
    post = la.fit(setup["model"], setup["variables"], setup["x"], setup["y"])
    prior_t = float(tu.la.prior_precision)
    prior_err = abs(float(post.prior_precision) - prior_t) / prior_t
    noise = None
    if link == "mc":  # TU draws torch.randn((C, 100)) once per call: record it, inject it here
        z = torch.randn(10, 100, generator=torch.Generator().manual_seed(0))
        randn = torch.randn
        monkeypatch.setattr(torch, "randn", lambda *a, **k: z.clone() if a and a[0] == (10, 100) else randn(*a, **k))
        noise = z.numpy()
    tu.link_approx = link
    with torch.no_grad():
        ref = tu(nchw(setup["xt"])).numpy()
    monkeypatch.undo()
    got = np.asarray(la.predict(post, setup["model"], setup["variables"], setup["xt"], noise=noise))
    err = float(np.max(np.abs(got - ref)))
    # the same prior precision on both sides isolates the curvature and the predictive
    at_tu = np.asarray(la.predict(post._replace(prior_precision=np.float32(prior_t)), setup["model"],
                                  setup["variables"], setup["xt"], noise=noise))
    err_same = float(np.max(np.abs(at_tu - ref)))
    print(f"Laplace {hs}/{link}: prior {float(post.prior_precision):.6f} vs TU {prior_t:.6f} (rel {prior_err:.1e}); "
          f"probs max|Δ| {err:.1e} (at TU's prior {err_same:.1e})")
    assert prior_err <= 1e-5
    assert err <= 1e-4 and err_same <= 1e-4
    assert float(np.max(np.abs(got - np.asarray(_softmax(setup, setup["xt"]))))) > 1e-3  # not the MAP


def _softmax(setup, x):
    logits = last_layer_features(setup["model"], setup["variables"], x)[1]
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("hs", ["diag", "kron"])
def test_laplace_marglik_matches_tu(setup, hs):
    tu = _tu(setup, hs)
    feats, logits = last_layer_features(setup["model"], setup["variables"], setup["x"])
    fc3 = setup["variables"]["params"]["fc3"]
    post = laplace_fit(feats, setup["y"], fc3["kernel"], fc3["bias"], logits=logits, hessian_structure=hs)
    keep = tu.la.prior_precision.clone()
    errs = []
    for d in (0.3, 1.0, 4.0):
        ref = float(tu.la.log_marginal_likelihood(torch.tensor([d])))
        errs.append(abs(float(log_marginal_likelihood(post, d)) - ref) / abs(ref))
    tu.la.prior_precision = keep  # log_marginal_likelihood(prior) sets it
    print(f"Laplace {hs}: loss {float(post.loss):.6f} vs TU {float(tu.la.loss):.6f}; marglik rel err {max(errs):.1e}")
    assert abs(float(post.loss) - float(tu.la.loss)) <= 1e-5 * float(tu.la.loss)
    assert max(errs) <= 1e-5
