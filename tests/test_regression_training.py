"""TU's deep-evidential-regression training through ``jaxuq.train.fit``: TU's ``mlp(1, 1, [64, 64],
dist_family="nig")`` converted to jaxuq (no ``--arch``), then both sides train full-batch from the same
weights on the same cubic data with ``DERLoss(reg_weight=1e-2)`` and Adam (lr 5e-4), 50 steps; the
per-step losses agree to 1e-5 (TU side: its routine's training step, ``Independent(NIG(**out), 1)`` on
``targets.unsqueeze(-1)``)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from tests.helpers import require

pytestmark = pytest.mark.parity
STEPS, LR, REG = 50, 5e-4, 1e-2


def _tu_losses(torch, tu, x, y):
    from torch.distributions import Independent
    from torch_uncertainty.losses import DERLoss
    from torch_uncertainty.utils.distributions import get_dist_class

    loss_fn, opt = DERLoss(reg_weight=REG), torch.optim.Adam(tu.parameters(), lr=LR)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).unsqueeze(-1)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = loss_fn(Independent(get_dist_class("nig")(**tu(xt)), 1), yt)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return np.array(losses)


@pytest.mark.slow  # 50 s on the loaded 2-core machine (jit compile + TU's 50 steps)
def test_der_tutorial_training_matches_tu_for_50_full_batch_steps():
    torch = require("torch")
    require("torch_uncertainty")
    import optax
    from torch_uncertainty.models.mlp import mlp as tu_mlp

    from converters import mappings
    from converters.core import _resolve_arch
    from jaxuq.losses.regression import DERLoss
    from jaxuq.train import TrainConfig, create_train_state, fit
    from tests.torch_models import state_dict_numpy

    torch.manual_seed(0)
    tu = tu_mlp(in_features=1, num_outputs=1, hidden_dims=[64, 64], dist_family="nig")
    sd = state_dict_numpy(tu)
    arch, kw = _resolve_arch(None, {"dist_family": "nig"}, sd, "tu")
    module, variables = mappings.convert_state_dict(arch, sd, **kw)
    rng = np.random.default_rng(0)
    x = np.linspace(-4, 4, 256, dtype=np.float32)[:, None]
    y = (x[:, 0] ** 3 + rng.normal(0, 3, 256)).astype(np.float32)
    ref = _tu_losses(torch, tu, x, y)
    tx = optax.adam(LR)
    st = create_train_state(module, tx, jax.random.key(0), x[:1])
    st = st.replace(params=variables["params"], opt_state=tx.init(variables["params"]))
    cfg = TrainConfig(optimizer=tx, epochs=STEPS, batch_size=len(x), loss_fn=DERLoss(reg_weight=REG),
                      preprocess=None, quiet=True)
    got = np.array([r["train_loss"] for r in fit(module, (x, y), cfg, init_state=st).history])
    assert got.shape == (STEPS,)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * max(1.0, float(np.abs(ref).max())))
    assert ref[-1] < ref[0]  # it trains
