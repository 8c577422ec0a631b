"""optax recipes vs torch.optim on the same params and gradient sequence (<= 1e-6), and per-epoch
schedules vs torch's MultiStepLR / CosineAnnealingLR stepped once per epoch (as Lightning does)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxuq.train.optim import RECIPES, cosine_lr, multistep_lr, recipe, torch_adam, torch_sgd
from tests.helpers import require

pytestmark = pytest.mark.parity


def _run_both(make_torch_opt, tx, steps=6, steps_per_epoch=None, make_sched=None):
    torch = require("torch")
    rng = np.random.default_rng(0)
    p0 = {"w": rng.standard_normal((5, 3)).astype(np.float32), "b": rng.standard_normal(3).astype(np.float32)}
    grads = [
        {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in p0.items()} for _ in range(steps)
    ]
    tp = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in p0.items()}
    opt = make_torch_opt(list(tp.values()))
    sched = make_sched(opt) if make_sched else None
    for i, g in enumerate(grads):
        for k in tp:
            tp[k].grad = torch.from_numpy(g[k].copy())
        opt.step()
        if sched is not None and (i + 1) % steps_per_epoch == 0:
            sched.step()
    params = jax.tree.map(jnp.asarray, p0)
    state = tx.init(params)
    for g in grads:
        upd, state = tx.update(jax.tree.map(jnp.asarray, g), state, params)
        params = optax.apply_updates(params, upd)
    return {k: tp[k].detach().numpy() for k in tp}, jax.tree.map(np.asarray, params)


@pytest.mark.parametrize(
    "momentum,wd,nesterov",
    [(0.0, 0.0, False), (0.9, 5e-4, True), (0.9, 1e-4, False), (0.875, 3.0517578125e-5, False)],
)
def test_sgd_matches_torch(momentum, wd, nesterov):
    torch = require("torch")
    ref, ours = _run_both(
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=momentum, weight_decay=wd, nesterov=nesterov),
        torch_sgd(0.1, momentum, wd, nesterov),
    )
    for k in ref:
        np.testing.assert_allclose(ours[k], ref[k], atol=1e-6, rtol=0)


@pytest.mark.parametrize("wd", [0.0, 1e-6, 1e-2])
def test_adam_matches_torch(wd):
    torch = require("torch")
    ref, ours = _run_both(
        lambda p: torch.optim.Adam(p, lr=5e-3, weight_decay=wd), torch_adam(5e-3, weight_decay=wd)
    )
    for k in ref:
        np.testing.assert_allclose(ours[k], ref[k], atol=1e-6, rtol=0)


def test_multistep_per_epoch_matches_torch_lightning_stepping():
    torch = require("torch")
    spe = 2
    ref, ours = _run_both(
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True),
        torch_sgd(multistep_lr(0.1, [1, 2], 0.1, spe), 0.9, 5e-4, True),
        steps=8,
        steps_per_epoch=spe,
        make_sched=lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [1, 2], 0.1),
    )
    for k in ref:
        np.testing.assert_allclose(ours[k], ref[k], atol=1e-6, rtol=0)


def test_schedule_values_match_torch():
    torch = require("torch")
    p = [torch.nn.Parameter(torch.zeros(1))]
    # explicit check: the LR during 0-based epoch e equals torch's after e scheduler steps
    for milestones, gamma, spe in [([25, 50], 0.1, 7), ([60, 120, 160], 0.2, 3)]:
        opt = torch.optim.SGD(p, lr=0.1)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma)
        f = multistep_lr(0.1, milestones, gamma, spe)
        for e in range(170):
            for s in (0, spe - 1):
                np.testing.assert_allclose(
                    float(f(jnp.asarray(e * spe + s))), opt.param_groups[0]["lr"], rtol=1e-6
                )
            opt.step()
            sched.step()
    opt = torch.optim.SGD(p, lr=0.256)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 90)
    f = cosine_lr(0.256, 90, 5)
    for e in range(90):
        np.testing.assert_allclose(
            float(f(jnp.asarray(e * 5 + 4))), opt.param_groups[0]["lr"], rtol=1e-5, atol=1e-8
        )
        opt.step()
        sched.step()


def test_recipes_build_and_reject_unknown():
    params = {"w": jnp.ones(3)}
    for name in RECIPES:
        tx = recipe(name, steps_per_epoch=10)
        tx.update({"w": jnp.ones(3)}, tx.init(params), params)
    with pytest.raises(KeyError, match="unknown optimisation recipe 'nope'"):
        recipe("nope", 10)
    with pytest.raises(ValueError, match="nesterov"):
        torch_sgd(0.1, 0.0, 0.0, True)
