"""ABNN (jaxuq.nn.abnn.ABNN, jaxuq.losses.abnn, jaxuq.train.optim.optim_abnn) against TU 0.13.0:
``_replace_bn_layers`` + ``BatchNormAdapter2d`` on a TU LeNet with BatchNorm, its Gaussian noise
recorded (``torch.randn_like`` wrapped) and injected; eval and train forward, running statistics,
TU's random-prior class weights (``torch.randperm`` recorded), the weighted cross-entropy and two
``optim_abnn`` fine-tuning steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.helpers import require

torch = require("torch")
require("torch_uncertainty")

from torch_uncertainty.optim_recipes import optim_abnn as tu_optim_abnn  # noqa: E402
from torch_uncertainty.post_processing.abnn import ABNN as TUABNN  # noqa: E402
from torch_uncertainty.post_processing.abnn import _replace_bn_layers  # noqa: E402

from converters import mappings  # noqa: E402
from jaxuq.losses.abnn import WeightedCrossEntropy, abnn_class_weights  # noqa: E402
from jaxuq.nn.abnn import ABNN  # noqa: E402
from jaxuq.train.optim import optim_abnn  # noqa: E402
from tests.torch_models import randomize_, state_dict_numpy, torch_model  # noqa: E402

pytestmark = pytest.mark.parity

KW = dict(in_channels=1, num_classes=10, norm="batchnorm")
ALPHA = 0.3


def _maxdiff(a, b) -> float:
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))),
                                            a, b)))


@pytest.fixture()
def nets():
    torch.manual_seed(0)
    tm = randomize_(torch_model("lenet", **KW), seed=3)
    model, variables = mappings.convert_state_dict("lenet", state_dict_numpy(tm), "t", **KW)
    _replace_bn_layers(tm, ALPHA)
    assert type(tm.norm1).__name__ == "BatchNormAdapter2d"
    x = np.random.default_rng(0).standard_normal((6, 28, 28, 1)).astype(np.float32)
    return tm, ABNN(model, ALPHA), variables, x


def _recorded(monkeypatch):
    draws = []
    randn_like = torch.randn_like

    def rec(t, *a, **k):
        out = randn_like(t, *a, **k)
        draws.append(out.detach().numpy().transpose(0, 2, 3, 1).copy())  # NCHW -> NHWC
        return out

    monkeypatch.setattr(torch, "randn_like", rec)
    return draws


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_abnn_forward_with_injected_noise(nets, monkeypatch, train):
    tm, abnn, variables, x = nets
    tm.train(train)
    draws = _recorded(monkeypatch)
    with torch.no_grad():
        ref = tm(_nchw(x)).numpy()
    monkeypatch.undo()
    assert len(draws) == 2
    if train:
        got, upd = abnn.apply(variables, x, train=True, noise=draws, mutable=["batch_stats"])
        bs_ref = mappings.convert_state_dict("lenet", state_dict_numpy(tm), "t", **KW)[1]
        err_bs = _maxdiff(upd["batch_stats"], bs_ref["batch_stats"])
    else:
        got, err_bs = abnn.apply(variables, x, noise=draws), 0.0
    err = float(np.max(np.abs(np.asarray(got) - ref)))
    plain = float(np.max(np.abs(np.asarray(abnn.model.apply(variables, x, train=train, mutable=["batch_stats"])[0])
                                - ref)))
    print(f"ABNN {'train' if train else 'eval'}: logits max|Δ| {err:.1e}, running stats {err_bs:.1e} "
          f"(the noise moves the logits by {plain:.2f})")
    assert err <= 1e-5 and err_bs <= 1e-6 and plain > 1e-2


def test_random_prior_weights_loss_and_two_finetuning_steps(nets, monkeypatch):
    tm, abnn, variables, x = nets
    perms = []
    randperm = torch.randperm
    monkeypatch.setattr(torch, "randperm", lambda *a, **k: perms.append(randperm(*a, **k)) or perms[-1])
    tu = TUABNN(num_classes=10, random_prior=2.5, alpha=ALPHA, num_models=3, num_samples=2, base_lr=0.05,
                device="cpu")
    monkeypatch.undo()
    chosen = np.stack([p.numpy()[:3] for p in perms])  # int(sqrt(10)) = 3 classes per model
    w = abnn_class_weights(None, 10, 3, 2.5, chosen=chosen)
    np.testing.assert_array_equal(w, np.stack([t.numpy() for t in tu.weights]))

    # two SGD steps of model 0 with TU's optim_abnn and CrossEntropyLoss(weight) (TU's fit loop body)
    y = np.random.default_rng(1).integers(0, 10, len(x))
    tm.train()
    opt = tu_optim_abnn(tm, lr=0.05)["optimizer"]
    loss_t = torch.nn.CrossEntropyLoss(weight=tu.weights[0])
    loss_fn = WeightedCrossEntropy(tuple(float(v) for v in w[0]))
    tx = optim_abnn(0.05)(10)
    params, bs = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)
    for _ in range(2):
        draws = _recorded(monkeypatch)
        opt.zero_grad()
        lt = loss_t(tm(_nchw(x)), torch.from_numpy(y))
        lt.backward()
        opt.step()
        monkeypatch.undo()

        def f(p, stats, noise):
            out, upd = abnn.apply({"params": p, "batch_stats": stats}, x, train=True, noise=noise,
                                  mutable=["batch_stats"])
            return loss_fn(out, jnp.asarray(y)), upd["batch_stats"]

        (lj, bs), g = jax.value_and_grad(f, has_aux=True)(params, bs, draws)
        upd, opt_state = tx.update(g, opt_state, params)
        params = optax.apply_updates(params, upd)
        assert abs(float(lj) - float(lt)) <= 1e-6 * max(1.0, abs(float(lt)))
    ref = mappings.convert_state_dict("lenet", state_dict_numpy(tm), "t", **KW)[1]
    err = _maxdiff(params, ref["params"])
    print(f"ABNN: loss {float(lt):.6f}, params after 2 optim_abnn steps max|Δ| {err:.1e}")
    assert err <= 1e-5
