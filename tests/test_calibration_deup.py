"""DEUP: parity with TU 0.13.0 on the tutorial's synthetic setup, with TU's initial weights copied."""

import logging

import jax
import numpy as np
import pytest

from jaxuq.calibration import deup as D
from jaxuq.ood import criteria as K
from tests.helpers import require

# Adam over 40 (here 30) full-batch steps, 6 MLPs in sequence, float32 on both sides: sums are
# reduced in a different order (masked full-batch loss vs indexed subset), so the scores agree
# to ~1e-6 absolute, not bit for bit. 1e-4 leaves room for BLAS differences across machines.
ATOL = 1e-4


def tu_fit(torch, model, loader, n_classes, hidden_dim, max_epochs):
    """TU's ``DEUP.fit`` on ``loader``; returns ``(deup, inits)``, ``inits`` being copies of the
    initial weights of TU's 6 error predictors (fit() draws the loader's base seed, then builds
    them), for ``deup_fit(init_params=inits)``."""
    from torch_uncertainty.post_processing import DEUP
    from torch_uncertainty.post_processing.deup import _ErrorPredictor

    deup = DEUP(task="classification", model=model, num_folds=5, hidden_dim=hidden_dim,
                max_epochs=max_epochs, device="cpu")
    state = torch.get_rng_state()
    iter(loader)
    inits = []
    for _ in range(6):
        net = _ErrorPredictor(n_classes + 2, hidden_dim).net
        inits.append({"w1": net[0].weight.detach().numpy().copy(), "b1": net[0].bias.detach().numpy().copy(),
                      "w2": net[2].weight.detach().numpy().copy(), "b2": net[2].bias.detach().numpy().copy()})
    torch.set_rng_state(state)
    logging.disable(logging.WARNING)
    try:
        deup.fit(loader)
    finally:
        logging.disable(logging.NOTSET)
    return deup, inits


def _tutorial(torch, hidden_dim=32, max_epochs=30, seed=0):
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    n_cal, in_dim, n_classes = 100, 8, 5
    x_cal = torch.randn(n_cal, in_dim)
    y_cal = torch.randint(0, n_classes, (n_cal,))
    loader = DataLoader(TensorDataset(x_cal, y_cal), batch_size=32)
    model = nn.Sequential(nn.Linear(in_dim, 32), nn.ReLU(), nn.Linear(32, n_classes))
    deup, inits = tu_fit(torch, model, loader, n_classes, hidden_dim, max_epochs)
    x_test = torch.randn(10, in_dim)
    with torch.no_grad():
        return dict(
            scores=deup(x_test).numpy(), cal_logits=model(x_cal).numpy(), y=y_cal.numpy(),
            test_logits=model(x_test).numpy(), inits=inits, deup=deup,
            cal_scores=deup(x_cal).numpy(),
        )


@pytest.mark.parity
@pytest.mark.parametrize("hidden_dim,max_epochs", [(32, 30), (64, 40)])
def test_deup_matches_tu_tutorial(hidden_dim, max_epochs):
    torch = require("torch")
    require("torch_uncertainty")
    r = _tutorial(torch, hidden_dim, max_epochs)
    p = D.deup_fit(r["cal_logits"], r["y"], num_folds=5, hidden_dim=hidden_dim, max_epochs=max_epochs,
                   init_params=r["inits"])
    ours = np.asarray(D.deup_score(p, r["test_logits"]))
    np.testing.assert_allclose(ours, r["scores"], atol=ATOL)
    np.testing.assert_allclose(np.asarray(D.deup_score(p, r["cal_logits"])), r["cal_scores"], atol=ATOL)
    np.testing.assert_array_equal(np.asarray(K.score("deup", ours)), ours)
    # features and errors are the same functions as TU's
    feats_tu = r["deup"]._outputs_to_features(torch.tensor(r["cal_logits"])).numpy()
    np.testing.assert_allclose(np.asarray(D.deup_features(r["cal_logits"])), feats_tu, atol=1e-6)


def test_deup_basic_behaviour_and_errors():
    rng = np.random.default_rng(0)
    n, c = 203, 4
    y = rng.integers(0, c, n)
    z = rng.normal(size=(n, c)).astype(np.float32)
    z[np.arange(n), y] += rng.uniform(-2, 6, n).astype(np.float32)
    p = D.deup_fit(z, y, key=jax.random.key(1), max_epochs=200, lr=1e-2)
    s = np.asarray(D.deup_score(p, z))
    assert s.shape == (n,) and (s >= 0).all()
    # the predicted error correlates with the real per-sample CE
    assert np.corrcoef(s, np.asarray(p["errors"]))[0, 1] > 0.3
    with pytest.raises(ValueError, match="num_folds"):
        D.deup_fit(z, y, num_folds=1)
    with pytest.raises(ValueError, match="at least"):
        D.deup_fit(z[:3], y[:3])
    bad = z.copy()
    bad[5, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        D.deup_fit(bad, y)
    # regression task
    pr = D.deup_fit(z[:, 0], z[:, 1], task="regression", key=jax.random.key(2))
    assert np.asarray(D.deup_score(pr, z[:, 0])).shape == (n,)
