"""jaxuq.losses.classification vs TU 0.13.0's classification losses: values and gradients (jax.vjp vs
torch autograd with the same random cotangent), every option; TU's random class (ConflictualLoss) is
injected; bad settings; one ``fit`` step per loss against the same TU loss + SGD step in torch."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxuq.losses import (
    BCEWithLogitsLSLoss,
    ConfidencePenaltyLoss,
    ConflictualLoss,
    CrossEntropyMaxSupLoss,
    DECLoss,
    FocalLoss,
    cross_entropy,
)
from tests.helpers import require

N, C = 12, 5
TOL = 1e-6  # |jaxuq - TU| <= TOL * max(1, |TU|), elementwise, values and gradients
REDUCTIONS = ["mean", "sum", "none"]  # TU's None is "none" (test_none_reduction_is_none)


def _data(seed: int, n: int = N, c: int = C, scale: float = 2.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, c)) * scale).astype(np.float32), rng.integers(0, c, n).astype(np.int64)


def _close(got, ref, what: str) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    diff = np.abs(got - ref)
    assert np.all(diff <= TOL * np.maximum(1.0, np.abs(ref))), (what, float(diff.max()))
    return float(diff.max()) if diff.size else 0.0


def _vjp(loss, jit: bool = True):
    """``(logits, targets, cotangent, *args) -> (loss, d<loss . cotangent>/d logits)``, compiled once."""
    def f(z, t, cot, *args):
        val, pull = jax.vjp(lambda a: loss(a, t, *args), z)
        return val, pull(cot)[0]
    return jax.jit(f) if jit else f


def _torch_vg(torch, loss, logits, targets, cot, *args, squeeze=False, diag=False):
    z = torch.tensor(logits, requires_grad=True)
    t = torch.as_tensor(targets)
    out = loss(z, t, *args)
    if squeeze and out.ndim == 2:  # TU DECLoss "none": [N, 1]
        out = out[:, 0]
    if diag:  # TU ConflictualLoss "none": [N, N] whose diagonal is the per-sample loss
        out = torch.diagonal(out)
    (out * torch.as_tensor(cot)).sum().backward()
    return out.detach().numpy(), z.grad.numpy()


def _check(torch, jloss, tloss, cases, *, jit_only=False, **kw) -> float:
    """For each ``(logits, targets, *args)`` case: value and vjp of ``jloss`` (jitted, and un-jitted unless
    ``jit_only``) equal ``tloss``'s under the same random cotangent; returns the largest |diff|."""
    fns = [_vjp(jloss)] + ([] if jit_only else [_vjp(jloss, jit=False)])
    worst = 0.0
    for z, t, *args in cases:
        shape = jax.eval_shape(jloss, jnp.asarray(z), jnp.asarray(t), *args).shape
        cot = np.random.default_rng(7).normal(size=shape).astype(np.float32)
        tv, tg = _torch_vg(torch, tloss, z, t, cot, *args, **kw)
        for fn in fns:
            jv, jg = fn(jnp.asarray(z), jnp.asarray(t), jnp.asarray(cot), *args)
            worst = max(worst, _close(jv, tv, "value"), _close(jg, tg, "grad"))
    return worst


# ------------------------------------------------------------------------------------ parity with TU
@pytest.mark.parity
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_matches_torch(reduction, weighted, smoothing):
    torch = require("torch")
    w = np.random.default_rng(1).uniform(0.2, 2.0, C).astype(np.float32)
    if weighted:
        def jl(z, t, w):
            return cross_entropy(z, t, weight=w, label_smoothing=smoothing, reduction=reduction)

        def tl(z, t, w):
            return torch.nn.functional.cross_entropy(z, t, weight=torch.as_tensor(np.asarray(w)),
                                                     label_smoothing=smoothing, reduction=reduction)
        cases = [(*_data(s), w) for s in (0, 1)]
    else:
        jl = functools.partial(cross_entropy, label_smoothing=smoothing, reduction=reduction)
        tl = functools.partial(torch.nn.functional.cross_entropy, label_smoothing=smoothing, reduction=reduction)
        cases = [_data(s) for s in (0, 1)]
    _check(torch, jl, tl, cases)


DEC_REGS = {"noreg": {}, "reg_weight": dict(reg_weight=0.3), "annealing": dict(annealing_step=4),
            "annealing+reg_weight": dict(annealing_step=3, reg_weight=0.7)}


def _dec_check(torch, loss_type, reg, reduction, seeds=(1, 2)):
    from torch_uncertainty.losses import DECLoss as TUDECLoss

    tu = TUDECLoss(loss_type=loss_type, reduction=reduction, **reg)
    ours = DECLoss(loss_type=loss_type, reduction=reduction, **reg)
    epochs = [0, 2, 7] if "annealing_step" in reg else [None]
    cases = [(*_data(s), e) for s in seeds for e in epochs]  # the epoch is traced: what fit's objective passes
    return _check(torch, lambda z, t, e: ours(z, t, current_epoch=e), tu, cases, jit_only=True, squeeze=True)


@pytest.mark.parity
@pytest.mark.parametrize("loss_type", ["log", "digamma", "mse"])
@pytest.mark.parametrize("reg", list(DEC_REGS))
def test_dec_loss_matches_tu(loss_type, reg):
    """Per-sample ("none") values and gradients, each loss type and regulariser setting, epochs 0/2/7."""
    _dec_check(require("torch"), loss_type, DEC_REGS[reg], "none")


@pytest.mark.parity
@pytest.mark.parametrize(("loss_type", "reg", "reduction"), [("log", "reg_weight", "mean"),
                                                             ("digamma", "annealing", "sum"),
                                                             ("mse", "annealing+reg_weight", "mean")])
def test_dec_loss_reductions_match_tu(loss_type, reg, reduction):
    torch = require("torch")
    from torch_uncertainty.losses import DECLoss as TUDECLoss

    _dec_check(torch, loss_type, DEC_REGS[reg], reduction)
    z, y = _data(3)  # un-jitted, a Python-int epoch
    ours = DECLoss(loss_type=loss_type, reduction=reduction, **DEC_REGS[reg])(z, y, current_epoch=1)
    tu = TUDECLoss(loss_type=loss_type, reduction=reduction, **DEC_REGS[reg])(
        torch.tensor(z), torch.tensor(y), current_epoch=1)
    _close(ours, tu.numpy(), "un-jitted value")


@pytest.mark.parity
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("reg_weight", "eps"), [(1.0, 1e-6), (0.0, 1e-6), (2.5, 0.1)])
def test_confidence_penalty_matches_tu(reduction, reg_weight, eps):
    torch = require("torch")
    from torch_uncertainty.losses import ConfidencePenaltyLoss as TUConfidencePenalty

    _check(torch, ConfidencePenaltyLoss(reg_weight, reduction, eps), TUConfidencePenalty(reg_weight, reduction, eps),
           [_data(2), _data(3)])


@pytest.mark.parity
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("reg_weight", [1.0, 0.4])
def test_conflictual_loss_matches_tu_with_injected_class(monkeypatch, reduction, reg_weight):
    """TU draws ``class_index = torch.randint(0, C, (1,))`` in forward: it is patched to return k, and
    we pass ``class_index=k``. TU's ``"none"`` is an ``[N, N]`` broadcast whose diagonal is the per-sample loss."""
    torch = require("torch")
    from torch_uncertainty.losses import ConflictualLoss as TUConflictual

    ours, tu = ConflictualLoss(reg_weight, reduction), TUConflictual(reg_weight, reduction)

    def tu_with(z, t, k):
        monkeypatch.setattr(torch, "randint", lambda low, high, size, **kw: torch.full(size, int(k)))
        return tu(z, t)

    cases = [(*_data(3), jnp.int32(k)) for k in (0, 3, C - 1)]
    _check(torch, lambda z, t, k: ours(z, t, class_index=k), tu_with, cases, diag=reduction == "none")


def test_conflictual_loss_draws_a_class_per_key_and_needs_a_source():
    """The class comes from ``class_index``, ``key`` or fit's step context: exactly one of them (no key
    derived from the logits' bits)."""
    from jaxuq.train import StepContext

    z, y = _data(3)
    loss = ConflictualLoss()
    drawn = {int(loss.class_index(jnp.asarray(z), jax.random.key(s))) for s in range(40)}
    assert drawn == set(range(C))  # uniform over all classes
    a = loss(z, y, key=jax.random.key(5))
    b = loss(z, y, class_index=loss.class_index(jnp.asarray(z), jax.random.key(5)))
    assert float(a) == float(b)
    ctx = StepContext(key=jax.random.key(9), step=jnp.int32(3), steps_per_epoch=2)
    k = loss.class_index(jnp.asarray(z), jax.random.fold_in(jax.random.key(9), ConflictualLoss.CLASS_KEY_TAG))
    assert float(loss(z, y, ctx=ctx)) == float(loss(z, y, class_index=k))
    for kw in ({}, {"key": jax.random.key(1), "class_index": 2}):
        with pytest.raises(ValueError, match="exactly one"):
            loss(z, y, **kw)


FOCAL = [("none", g, a) for g in (0, 0.0, 0.5, 2, 3.5) for a in (False, True)] + \
    [("mean", 2.0, True), ("sum", 0.5, False), ("mean", 0, False)]


@pytest.mark.parity
@pytest.mark.parametrize(("reduction", "gamma", "with_alpha"), FOCAL)
def test_focal_loss_matches_tu(reduction, gamma, with_alpha):
    torch = require("torch")
    from torch_uncertainty.losses import FocalLoss as TUFocal

    alpha = np.random.default_rng(5).uniform(0.1, 1.0, C).astype(np.float32) if with_alpha else None
    tu = TUFocal(gamma, None if alpha is None else torch.tensor(alpha), reduction)
    _check(torch, FocalLoss(gamma, alpha, reduction), tu, [_data(4), _data(5)])


BCE = [("none", ls, w, soft) for ls in (0.0, 0.1, 0.45) for w in (False, True) for soft in (False, True)] + \
    [("mean", 0.0, False, False), ("mean", 0.1, True, True), ("sum", 0.2, True, False), ("sum", 0.0, False, True)]


@pytest.mark.parity
@pytest.mark.parametrize(("reduction", "smoothing", "weighted", "soft"), BCE)
def test_bce_with_logits_ls_matches_tu(reduction, smoothing, weighted, soft):
    torch = require("torch")
    from torch_uncertainty.losses import BCEWithLogitsLSLoss as TUBCE

    rng = np.random.default_rng(6)
    w = rng.uniform(0.2, 2.0, N).astype(np.float32) if weighted else None
    cases = []
    for _ in range(2):
        z = (rng.normal(size=N) * 3).astype(np.float32)
        cases.append((z, rng.uniform(0, 1, N).astype(np.float32) if soft else rng.integers(0, 2, N)))
    tu = TUBCE(smoothing, None if w is None else torch.tensor(w), reduction)
    _check(torch, BCEWithLogitsLSLoss(smoothing, w, reduction), tu, cases)


def _maxsup_reference(torch, smoothing, max_sup, w, reduction):
    """The MaxSup definition in torch primitives: per-sample weighted CE + max_sup * (z_max - mean z)."""
    def loss(z, t):
        ce = torch.nn.functional.cross_entropy(z, t, weight=w, label_smoothing=smoothing, reduction=reduction)
        reg = z.topk(1, -1)[0][:, 0] - z.mean(-1)
        return ce + max_sup * {"mean": reg.mean, "sum": reg.sum}.get(reduction, lambda: reg)()
    return loss


@pytest.mark.parity
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("smoothing", "max_sup"), [(0.0, 0.0), (0.1, 0.0), (0.0, 0.5), (0.2, 1.5)])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_maxsup_matches_tu(reduction, smoothing, max_sup, weighted):
    """Equal to TU where TU is right (max_sup=0; mean/sum without weight); else equal to the definition
    written with torch primitives (TU: batch-mean CE in every "none" row; weight broadcast to [N, C])."""
    torch = require("torch")
    from torch_uncertainty.losses import CrossEntropyMaxSupLoss as TUMaxSup

    w = np.random.default_rng(9).uniform(0.2, 2.0, C).astype(np.float32) if weighted else None
    tw = None if w is None else torch.tensor(w)
    ours = CrossEntropyMaxSupLoss(smoothing, max_sup, w, reduction)
    tu = TUMaxSup(smoothing, max_sup, weight=tw, reduction=reduction)
    tu_right = max_sup == 0.0 or (not weighted and reduction != "none")
    ref = tu if tu_right else _maxsup_reference(torch, smoothing, max_sup, tw, reduction)
    _check(torch, ours, ref, [_data(8), _data(9)])
    if not tu_right:  # pin the deviation: TU's value is not the definition here
        z, y = _data(8)
        t = tu(torch.tensor(z), torch.tensor(y)).numpy()
        assert t.shape != np.shape(ours(z, y)) or not np.allclose(t, np.asarray(ours(z, y)), atol=1e-4)


@pytest.mark.parity
def test_special_functions_match_torch():
    """DEC's lgamma/digamma/log and derivatives vs torch's float32 CPU kernels: within 1-2 ulp (of max(|y|, 1))
    (XLA's gammaln is 3 ulp off at x = 40), digamma/trigamma = ATen's algorithm."""
    torch = require("torch")
    from jaxuq import _special as S

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(0.01, 1, 4000), rng.uniform(1, 50, 12000), rng.uniform(50, 5000, 4000)])
    x = x.astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    for name, ours, ref, dref, max_ulp in (
        ("lgamma", S.lgamma, torch.lgamma, torch.digamma, 1.0),
        ("digamma", S.digamma, torch.digamma, lambda v: torch.polygamma(1, v), 2.0),  # XLA vs glibc logf
        ("log", S.log, torch.log, torch.reciprocal, 1.0),
    ):
        val, grad = jax.jit(jax.vmap(jax.value_and_grad(ours)))(jnp.asarray(x))
        tv = ref(xt).detach().numpy()
        ulps = np.abs(np.asarray(val, np.float64) - tv) / np.spacing(np.maximum(np.abs(tv), np.float32(1)))
        differ = np.mean((np.asarray(val) != tv)[x >= 3])  # near the zeros of lgamma/digamma torch is not CR
        assert ulps.max() <= max_ulp and differ < 0.02, (name, ulps.max(), differ)
        np.testing.assert_allclose(np.asarray(grad), dref(xt).detach().numpy(), rtol=2e-6, err_msg=name)
    np.testing.assert_array_equal(np.asarray(S.lgamma(jnp.asarray([1.0, 2.0]))), [0.0, 0.0])
    assert np.all(np.isnan(np.asarray(S.lgamma(jnp.asarray([0.0, -1.5]))))), "domain x > 0"


@pytest.mark.parity
def test_dec_loss_none_shape_deviation_pinned():
    """TU's DECLoss(reduction="none") returns [N, 1]; ours [N] with the same values."""
    torch = require("torch")
    from torch_uncertainty.losses import DECLoss as TUDECLoss

    z, y = _data(1)
    tu = TUDECLoss(reg_weight=0.5, reduction="none")(torch.tensor(z), torch.tensor(y)).numpy()
    ours = np.asarray(jax.jit(DECLoss(reg_weight=0.5, reduction="none"))(z, y))
    assert tu.shape == (N, 1) and ours.shape == (N,)
    _close(ours, tu[:, 0], "value")


@pytest.mark.parity
def test_conflictual_none_deviation_pinned(monkeypatch):
    """TU's ConflictualLoss(reduction="none") is [N, N] (ce[j] + w * reg[i]); ours is its diagonal."""
    torch = require("torch")
    from torch_uncertainty.losses import ConflictualLoss as TUConflictual

    monkeypatch.setattr(torch, "randint", lambda low, high, size, **kw: torch.full(size, 2))
    z, y = _data(3)
    tu = TUConflictual(reduction="none")(torch.tensor(z), torch.tensor(y)).numpy()
    ours = np.asarray(ConflictualLoss(reduction="none")(z, y, class_index=2))
    assert tu.shape == (N, N) and ours.shape == (N,)
    _close(ours, np.diagonal(tu), "value")


def test_none_reduction_is_none():
    """TU accepts ``reduction=None`` (no reduction) on every loss but BCEWithLogitsLSLoss."""
    z, y = _data(0)
    for cls, kw in ((DECLoss, {}), (ConfidencePenaltyLoss, {}), (ConflictualLoss, {}),
                    (FocalLoss, {"gamma": 2.0}), (CrossEntropyMaxSupLoss, {"max_sup": 0.3})):
        a, b = cls(reduction=None, **kw), cls(reduction="none", **kw)
        assert a == b and a.reduction == "none", cls
    np.testing.assert_array_equal(np.asarray(cross_entropy(z, y, reduction=None)),
                                  np.asarray(cross_entropy(z, y, reduction="none")))


# --------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("build", "exc", "match"), [
    (lambda: DECLoss(reg_weight=-1.0), ValueError, "regularization weight"),
    (lambda: DECLoss(annealing_step=0), ValueError, "annealing step"),
    (lambda: DECLoss(annealing_step="5"), TypeError, "annealing_step"),
    (lambda: DECLoss(loss_type="ce"), ValueError, "mse/log/digamma"),
    (lambda: DECLoss(loss_type=1), TypeError, "loss_type"),
    (lambda: DECLoss(reduction="avg"), ValueError, "reduction"),
    (lambda: DECLoss(reg_weight=float("nan")), ValueError, "reg_weight"),
    (lambda: ConfidencePenaltyLoss(eps=-1e-3), ValueError, "epsilon"),
    (lambda: ConfidencePenaltyLoss(reg_weight=-0.1), ValueError, "regularization weight"),
    (lambda: ConfidencePenaltyLoss(reduction=3), TypeError, "reduction"),
    (lambda: ConflictualLoss(reg_weight=-2), ValueError, "regularization weight"),
    (lambda: ConflictualLoss(reg_weight="1"), TypeError, "reg_weight"),
    (lambda: FocalLoss(gamma=-1.0), ValueError, "gamma"),
    (lambda: FocalLoss(gamma="2"), TypeError, "gamma"),
    (lambda: FocalLoss(gamma=True), TypeError, "gamma"),
    (lambda: FocalLoss(gamma=float("inf")), ValueError, "gamma"),
    (lambda: FocalLoss(2.0, alpha="abc"), TypeError, "alpha"),
    (lambda: FocalLoss(2.0, alpha=[[1.0, 2.0]]), ValueError, "alpha"),
    (lambda: FocalLoss(2.0, alpha=[1.0, float("nan")]), ValueError, "alpha"),
    (lambda: FocalLoss(2.0, reduction="mean "), ValueError, "reduction"),
    (lambda: BCEWithLogitsLSLoss(label_smoothing=-0.1), ValueError, "label_smoothing"),
    (lambda: BCEWithLogitsLSLoss(label_smoothing=1.0), ValueError, "label_smoothing"),
    (lambda: BCEWithLogitsLSLoss(reduction=None), TypeError, "reduction"),
    (lambda: BCEWithLogitsLSLoss(reduction="batchmean"), ValueError, "reduction"),
    (lambda: CrossEntropyMaxSupLoss(label_smoothing=1.2), ValueError, "label_smoothing"),
    (lambda: CrossEntropyMaxSupLoss(max_sup=-0.5), ValueError, "max_sup"),
    (lambda: CrossEntropyMaxSupLoss(max_sup=None), TypeError, "max_sup"),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_bad_settings_rejected(build, exc, match):
    with pytest.raises(exc, match=match):
        build()


def test_bad_inputs_rejected():
    z, y = _data(0)
    with pytest.raises(ValueError, match="current_epoch|epoch num"):
        DECLoss(annealing_step=3)(z, y)
    with pytest.raises(TypeError, match="current_epoch"):
        DECLoss(annealing_step=3)(z, y, current_epoch=1.5)
    with pytest.raises(ValueError, match="not both"):
        DECLoss(annealing_step=3)(z, y, current_epoch=1, ctx=object())
    with pytest.raises(NotImplementedError, match="mixup"):
        DECLoss()(z, np.eye(C, dtype=np.float32)[y])
    with pytest.raises(TypeError, match="targets"):
        FocalLoss(2.0)(z, y.astype(np.float32))
    with pytest.raises(ValueError, match="targets"):
        ConfidencePenaltyLoss()(z, y[:-1])
    with pytest.raises(ValueError, match="logits"):
        CrossEntropyMaxSupLoss()(z[0], y[:1])
    with pytest.raises(ValueError, match="weight"):
        cross_entropy(z, y, weight=np.ones(C + 1, np.float32))
    with pytest.raises(ValueError, match="targets"):
        BCEWithLogitsLSLoss()(z[:, 0], y[:, None])
    with pytest.raises(TypeError, match="class_index"):
        ConflictualLoss()(z, y, class_index=1.0)


def test_losses_are_hashable_configs():
    a, b = FocalLoss(2.0, alpha=np.ones(C, np.float32)), FocalLoss(2.0, alpha=[1.0] * C)
    assert a == b and hash(a) == hash(b) and a.alpha == (1.0,) * C
    assert DECLoss(reduction=None).reduction == "none"
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.gamma = 1.0  # type: ignore[misc]


# ------------------------------------------------------------------------- one fit step against TU
def _tiny_model(c: int = C):
    import flax.linen as nn

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            return nn.Dense(c, name="fc")(x.reshape(x.shape[0], -1))

    return Tiny()


@dataclasses.dataclass(frozen=True)
class _OneHotBCE:
    """fit passes class labels [N]; BCE wants targets shaped like the logits (binary routine: phase 2)."""

    bce: BCEWithLogitsLSLoss

    def __call__(self, logits, labels):
        return self.bce(logits, jax.nn.one_hot(labels, logits.shape[-1]))


def _fit_cases(torch):
    from torch_uncertainty import losses as L

    onehot = lambda f: lambda z, y: f(z, torch.nn.functional.one_hot(y, C).float())  # noqa: E731
    return [
        ("dec", DECLoss(reg_weight=0.2, loss_type="digamma"), L.DECLoss(reg_weight=0.2, loss_type="digamma")),
        ("dec_annealing", functools.partial(DECLoss(annealing_step=4, loss_type="mse"), current_epoch=1),
         functools.partial(L.DECLoss(annealing_step=4, loss_type="mse"), current_epoch=1)),
        ("confidence_penalty", ConfidencePenaltyLoss(0.5), L.ConfidencePenaltyLoss(0.5)),
        ("conflictual", ConflictualLoss(0.7), L.ConflictualLoss(0.7)),
        ("focal", FocalLoss(2.0, alpha=[0.5, 1.0, 1.5, 1.0, 0.2]),
         L.FocalLoss(2.0, torch.tensor([0.5, 1.0, 1.5, 1.0, 0.2]))),
        ("bce_ls", _OneHotBCE(BCEWithLogitsLSLoss(0.1)), onehot(L.BCEWithLogitsLSLoss(0.1))),
        ("maxsup", CrossEntropyMaxSupLoss(0.1, 0.3), L.CrossEntropyMaxSupLoss(0.1, 0.3)),
    ]


def _fit_classes(loss: ConflictualLoss, state_key, steps: int, steps_per_epoch: int, c: int) -> list[int]:
    """The classes ``fit``'s steps 0..steps-1 draw for ``loss`` (its step key from the state's run key)."""
    from jaxuq.train import StepContext
    from jaxuq.train.state import step_keys

    out = []
    for s in range(steps):
        ctx = StepContext(key=step_keys(state_key, s)[1], step=jnp.int32(s), steps_per_epoch=steps_per_epoch)
        out.append(int(loss.class_index(jnp.zeros((1, c)), loss.step_key(ctx))))
    return out


def _tu_sgd_step(torch, tloss, w0, b0, x, y, lr):
    lin = torch.nn.Linear(w0.shape[0], w0.shape[1])
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(w0.T))
        lin.bias.copy_(torch.tensor(b0))
    opt = torch.optim.SGD(lin.parameters(), lr=lr)
    loss = tloss(lin(torch.tensor(x)), torch.tensor(y))
    loss.backward()
    opt.step()
    return loss.item(), lin.weight.detach().numpy().T, lin.bias.detach().numpy()


@pytest.mark.parity
def test_each_loss_trains_one_fit_step_like_tu(monkeypatch):
    """``fit(loss_fn=loss)`` one SGD step on a linear model == TU's loss + ``torch.optim.SGD`` step
    (loss and parameters <= 1e-5). ConflictualLoss draws its class inside fit's jitted step from the
    step's key (``ConflictualLoss.step_key``); TU gets that class injected."""
    torch = require("torch")
    import optax

    from jaxuq.train import TrainConfig, create_train_state, fit

    rng = np.random.default_rng(11)
    xu = rng.integers(0, 256, (8, 4, 4, 1)).astype(np.uint8)
    y = rng.integers(0, C, 8)
    x = xu.reshape(8, -1).astype(np.float32) / 255.0  # fit's default Preprocess(): x / 255
    w0 = (rng.normal(size=(16, C)) * 2).astype(np.float32)
    b0 = rng.normal(size=C).astype(np.float32)
    model, tx = _tiny_model(), optax.sgd(0.5)
    for name, jloss, tloss in _fit_cases(torch):
        params = {"fc": {"kernel": jnp.asarray(w0), "bias": jnp.asarray(b0)}}
        st = create_train_state(model, tx, jax.random.key(0), jnp.zeros((1, 4, 4, 1)))
        st = st.replace(params=params, opt_state=tx.init(params))
        cfg = TrainConfig(optimizer=tx, epochs=1, batch_size=8, loss_fn=jloss, quiet=True)
        r = fit(model, (xu, y), cfg, init_state=jax.tree.map(jnp.copy, st))  # the state given is donated
        got = r.history[0]["train_loss"], np.asarray(r.state.params["fc"]["kernel"]), \
            np.asarray(r.state.params["fc"]["bias"])
        if name == "conflictual":
            k = _fit_classes(jloss, st.key, 1, 1, C)[0]
            monkeypatch.setattr(torch, "randint", lambda lo, hi, size, k=k, **kw: torch.full(size, k))
        ref = _tu_sgd_step(torch, tloss, w0, b0, x, y, 0.5)
        assert abs(got[0] - ref[0]) <= 1e-5, (name, got[0], ref[0])
        np.testing.assert_allclose(got[1], ref[1], atol=1e-5, err_msg=name)
        np.testing.assert_allclose(got[2], ref[2], atol=1e-5, err_msg=name)


class _EpochOrders:
    """A torch sampler serving the engine's order of each epoch (``epoch_permutation``) in turn."""

    def __init__(self, orders):
        self.orders, self.epoch = orders, 0

    def __iter__(self):
        order = self.orders[self.epoch]
        self.epoch += 1
        return iter(order.tolist())

    def __len__(self):
        return len(self.orders[0])


def _tu_routine_fit(torch, tloss, w0, b0, x, y, orders, batch_size, lr, num_classes):
    """TU's ``ClassificationRoutine`` + ``TUTrainer.fit`` of a linear model for ``len(orders)`` epochs
    (the engine's batches in its order): the routine passes ``current_epoch`` to DECLoss and squeezes
    the logits / casts the targets of its binary task (``num_classes=1``). Returns (weight [in, out], bias)."""
    from torch.utils.data import DataLoader, TensorDataset
    from torch_uncertainty.routines import ClassificationRoutine

    from experiments._tu import tu_trainer

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(w0.shape[0], w0.shape[1]))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(w0.T))
        model[1].bias.copy_(torch.tensor(b0))
    routine = ClassificationRoutine(model=model, num_classes=num_classes, loss=tloss,
                                    optim_recipe={"optimizer": torch.optim.SGD(model.parameters(), lr=lr)})
    data = TensorDataset(torch.tensor(x), torch.tensor(y))
    loader = DataLoader(data, batch_size=batch_size, sampler=_EpochOrders(orders))
    tu_trainer(max_epochs=len(orders), num_sanity_val_steps=0, limit_val_batches=0).fit(
        routine, train_dataloaders=loader)
    return model[1].weight.detach().numpy().T, model[1].bias.detach().numpy()


@pytest.mark.parity
def test_step_context_losses_over_two_epochs_like_tu_routine(monkeypatch):
    """Two epochs of two steps each through ``fit`` == TU's ``ClassificationRoutine`` + ``TUTrainer`` on the
    same batches: ``DECLoss(annealing_step=2)`` gets fit's epoch (KL weight 0, then 1/2, as TU's
    ``current_epoch``), ``ConflictualLoss`` the classes fit's step keys draw (injected into TU's
    ``torch.randint``), ``BCEWithLogitsLSLoss`` TU's binary routine (a model of output width 1, labels
    0/1). Parameters after the 4 steps within 1e-5."""
    torch = require("torch")
    require("torch_uncertainty")
    import optax
    from torch_uncertainty import losses as L

    from jaxuq.data import epoch_permutation
    from jaxuq.train import TrainConfig, create_train_state, fit

    rng = np.random.default_rng(3)
    n, bs, epochs = 8, 4, 2
    xu = rng.integers(0, 256, (n, 4, 4, 1)).astype(np.uint8)
    x = xu.transpose(0, 3, 1, 2).astype(np.float32) / 255.0  # fit's default Preprocess(): x / 255
    k_data = jax.random.split(jax.random.key(0))[1]  # fit's data key (seed 0)
    orders = [np.asarray(epoch_permutation(k_data, e, n)) for e in range(epochs)]
    cases = [("dec", C, DECLoss(annealing_step=2, loss_type="log"), L.DECLoss(annealing_step=2, loss_type="log")),
             ("conflictual", C, ConflictualLoss(0.7), L.ConflictualLoss(0.7)),
             ("bce_binary", 1, BCEWithLogitsLSLoss(0.1), L.BCEWithLogitsLSLoss(0.1))]
    for name, c, jloss, tloss in cases:
        y = rng.integers(0, max(c, 2), n)
        w0 = (rng.normal(size=(16, c)) * 2).astype(np.float32)
        b0 = rng.normal(size=c).astype(np.float32)
        model, tx = _tiny_model(c), optax.sgd(0.5)
        params = {"fc": {"kernel": jnp.asarray(w0), "bias": jnp.asarray(b0)}}
        st = create_train_state(model, tx, jax.random.key(0), jnp.zeros((1, 4, 4, 1)))
        st = st.replace(params=params, opt_state=tx.init(params))
        if name == "conflictual":
            queue = _fit_classes(jloss, st.key, epochs * 2, 2, c)
            monkeypatch.setattr(torch, "randint", lambda lo, hi, size, q=queue, **kw: torch.full(size, q.pop(0)))
        cfg = TrainConfig(optimizer=tx, epochs=epochs, batch_size=bs, loss_fn=jloss, quiet=True)
        r = fit(model, (xu, y), cfg, init_state=jax.tree.map(jnp.copy, st))
        tw, tb = _tu_routine_fit(torch, tloss, w0, b0, x, y, orders, bs, 0.5, c)
        assert name != "conflictual" or not queue  # TU drew one class per step
        err = max(np.abs(np.asarray(r.state.params["fc"]["kernel"]) - tw).max(),
                  np.abs(np.asarray(r.state.params["fc"]["bias"]) - tb).max())
        moved = np.abs(np.asarray(r.state.params["fc"]["kernel"]) - w0).max()
        print(f"{name}: params max|diff| {err:.2e} after {epochs * 2} steps (moved {moved:.2f})")
        assert moved > 1e-2 and err <= 1e-5, (name, err)
