"""SWA, EMA, SWAG and CheckpointCollector (jaxuq.train.averaging) against TU 0.13.0's method objects,
driven directly with fake epoch hooks (``update_wrapper(epoch)``) on a TU LeNet with BatchNorm.

The same parameter snapshots go to both sides (torch state dicts -> the converter); TU's statistics
are converted back through the same mapping table. SWAG's Gaussian noise is recorded on the TU side
(``torch.randn_like``/``torch.randn`` wrapped) and injected into jaxuq as :class:`SWAGNoise`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import require

torch = require("torch")
require("torch_uncertainty")

from torch_uncertainty.methods import EMA as TU_EMA  # noqa: E402
from torch_uncertainty.methods import SWA as TU_SWA  # noqa: E402
from torch_uncertainty.methods import SWAG as TU_SWAG  # noqa: E402
from torch_uncertainty.methods import CheckpointCollector as TU_Collector  # noqa: E402

from converters import mappings  # noqa: E402
from converters.mappings import lenet as lenet_map  # noqa: E402
from jaxuq.train.averaging import EMA, SWA, SWAG, CheckpointCollector, SWAGNoise, bn_update  # noqa: E402
from tests.torch_models import randomize_, state_dict_numpy, torch_model  # noqa: E402

pytestmark = pytest.mark.parity

KW = dict(in_channels=1, num_classes=10, norm="batchnorm")
TABLE = lenet_map.table(norm="batchnorm")
MODEL, TEMPLATE, _ = mappings.build_template("lenet", **KW)


def _maxdiff(a, b) -> float:
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))),
                                            a, b)), default=0.0)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    tm = randomize_(torch_model("lenet", **KW), seed=1)
    names = [n for n, _ in tm.named_parameters()]
    base = state_dict_numpy(tm)
    rng = np.random.default_rng(0)
    # 10 epochs of parameters: the trajectory the methods see (one parameter set per epoch)
    epochs = [{n: base[n] + 0.05 * rng.standard_normal(base[n].shape).astype(np.float32) for n in names}
              for _ in range(10)]
    xs = [rng.standard_normal((b, 28, 28, 1)).astype(np.float32) for b in (8, 8, 5)]
    return tm, names, base, epochs, xs


def to_flax(base, override=None):
    """Flax variables of a torch LeNet state dict with ``override`` ({torch name: array}) applied."""
    sd = {k: np.asarray(v) for k, v in dict(base, **(override or {})).items()}
    return lenet_map.torch_to_flax(sd, TEMPLATE, "test")


def params_tree(base, per_name):
    """A Flax ``params`` pytree from {torch param name: torch-layout array}."""
    return to_flax(base, per_name)["params"]


def leaf_tree(template, per_name, fn):
    """A pytree like ``template`` (params) whose leaf for torch name n is ``fn(per_name[n])`` (no transform)."""
    out = jax.tree.map(lambda a: None, template)
    for n, v in per_name.items():
        node = out
        path = TABLE[n].path[1:]
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = fn(v)
    return out


def set_params(tm, params: dict):
    with torch.no_grad():
        for n, p in tm.named_parameters():
            p.copy_(torch.from_numpy(params[n]))


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def test_swa_average_and_bn_update(net):
    tm, names, base, epochs, xs = net
    swa_t = TU_SWA(tm, cycle_start=1, cycle_length=2)
    swa = SWA(cycle_start=1, cycle_length=2)
    st = swa.init(params_tree(base, {}))
    st_tu = swa.init(params_tree(base, {}))  # jaxuq fed TU's double-counted first snapshot
    upd = jax.jit(swa.update)
    taken, first = [], None
    for e, ps in enumerate(epochs):
        set_params(tm, ps)
        before = int(swa_t.num_avgd_models)
        swa_t.update_wrapper(e)
        if int(swa_t.num_avgd_models) != before:
            taken.append(e)
        p = params_tree(base, ps)
        st = upd(st, p, e)
        st_tu = upd(st_tu, p, e)
        if swa.collects(e) and first is None:
            first = e
            st_tu = upd(st_tu, p, e)  # TU counts its first snapshot twice
    assert taken == [e for e in range(10) if swa.collects(e)] == [1, 3, 5, 7, 9]
    assert int(st.count) == 5
    tu_avg = params_tree(base, {n: p.detach().numpy() for n, p in swa_t.swa_model.named_parameters()})
    err_tu = _maxdiff(st_tu.mean, tu_avg)
    mean5 = params_tree(base, {n: np.mean([epochs[e][n] for e in taken], 0) for n in names})
    err_mean = _maxdiff(st.mean, mean5)
    dev = _maxdiff(st.mean, tu_avg)
    print(f"SWA: jaxuq(TU's weights) vs TU {err_tu:.1e}; jaxuq vs mean of 5 {err_mean:.1e}; TU's bias {dev:.1e}")
    assert err_tu <= 1e-6 and err_mean <= 1e-6
    assert dev > 1e-3  # the deviation is real: TU weighs the first snapshot 2/6

    # BN update (torch.optim.swa_utils.update_bn) on the same batches, then eval logits
    swa_t.bn_update([nchw(x) for x in xs], device="cpu")
    v = {"params": st_tu.mean, "batch_stats": to_flax(base)["batch_stats"]}
    stats = bn_update(MODEL, v, xs)
    ref = to_flax(state_dict_numpy(swa_t.swa_model))
    err_bn = _maxdiff(stats, ref["batch_stats"])
    swa_t.eval()
    with torch.no_grad():
        logits_t = swa_t(nchw(xs[0])).numpy()
    model = MODEL
    logits = model.apply({"params": swa.params(st_tu, v["params"]), "batch_stats": stats}, xs[0])
    err_lg = float(np.max(np.abs(np.asarray(logits) - logits_t)))
    print(f"SWA bn_update stats max|Δ| {err_bn:.1e}, logits {err_lg:.1e}")
    assert err_bn <= 1e-5 and err_lg <= 1e-5


def test_ema_per_step(net):
    tm, names, base, epochs, _ = net
    set_params(tm, {n: base[n] for n in names})
    ema_t = TU_EMA(tm, momentum=0.9)
    ema = EMA(momentum=0.9)
    st = ema.init(params_tree(base, {}))
    for ps in epochs[:5]:
        set_params(tm, ps)
        ema_t.update_wrapper()
        st = jax.jit(ema.update)(st, params_tree(base, ps))
    ref = params_tree(base, {n: p.detach().numpy() for n, p in ema_t.ema_model.named_parameters()})
    err = _maxdiff(st.params, ref)
    print(f"EMA after 5 steps: max|Δ| {err:.1e}")
    assert err <= 1e-6
    assert _maxdiff(st.params, params_tree(base, {})) > 1e-3


def _recording(monkeypatch):
    draws = []
    randn_like, randn = torch.randn_like, torch.randn

    def rl(*a, **k):
        out = randn_like(*a, **k)
        draws.append(("like", out.clone()))
        return out

    def rn(*a, **k):
        out = randn(*a, **k)
        draws.append(("randn", out.clone()))
        return out

    monkeypatch.setattr(torch, "randn_like", rl)
    monkeypatch.setattr(torch, "randn", rn)
    return draws


def _noises(draws, names, base, swag: SWAG, template):
    """TU's recorded draws -> one SWAGNoise per TU sample."""
    per = 1 if swag.diag_covariance else 2
    assert len(draws) == swag.num_estimators * len(names) * per
    out = []
    for s in range(swag.num_estimators):
        chunk = draws[s * len(names) * per:(s + 1) * len(names) * per]
        diag = {n: chunk[i * per][1].numpy() for i, n in enumerate(names)}
        assert all(chunk[i * per][0] == "like" for i in range(len(names)))
        cov = None
        if not swag.diag_covariance:
            raw = {n: chunk[i * per + 1][1].numpy() for i, n in enumerate(names)}
            cov = leaf_tree(template, raw, lambda z: jnp.pad(jnp.asarray(z), (0, swag.max_num_models - len(z))))
        out.append(SWAGNoise(params_tree(base, diag), cov))
    return out


@pytest.mark.parametrize("diag", [False, True], ids=["lowrank", "diag"])
def test_swag_moments_deviations_samples(net, monkeypatch, diag):
    tm, names, base, epochs, xs = net
    cfg = dict(cycle_start=0, cycle_length=1, scale=0.5, diag_covariance=diag, max_num_models=3,
               var_clamp=1e-6, num_estimators=3)
    # Lightning puts the model in eval mode before on_validation_start (where TU calls update_wrapper):
    # TU's samples are deepcopies in that mode and, being a plain list, stay in it
    tm.eval()
    swag_t = TU_SWAG(tm, **cfg)
    swag = SWAG(**cfg)
    template = params_tree(base, {})
    st = swag.init(template)
    upd = jax.jit(swag.update)
    taken = []
    for e, ps in enumerate(epochs[:6]):
        set_params(tm, ps)
        before = int(swag_t.num_avgd_models)
        if e == 5:
            draws = _recording(monkeypatch)
        swag_t.update_wrapper(e)
        if int(swag_t.num_avgd_models) != before:
            taken.append(e)
        st = upd(st, params_tree(base, ps), e)
    monkeypatch.undo()
    assert taken == [e for e in range(6) if swag.collects(e)] == [1, 2, 3, 4, 5] and int(st.count) == 5
    stats = swag_t.swag_stats
    pre = swag_t.prfx
    mean = params_tree(base, {n: stats[pre + n + "_mean"].numpy() for n in names})
    sq = params_tree(base, {n: stats[pre + n + "_sq_mean"].numpy() for n in names})
    err_m, err_sq = _maxdiff(st.mean, mean), _maxdiff(st.sq_mean, sq)
    err_dev = 0.0
    if not diag:
        devs = swag.deviations(st)
        for n in names:
            rows = stats[pre + n + "_covariance_sqrt"].numpy()
            assert rows.shape[0] == 3  # max_num_models: the first two of 5 dropped
            shape = base[n].shape
            conv = np.stack([TABLE[n].transform(r.reshape(shape)) for r in rows])
            node = devs
            for p in TABLE[n].path[1:]:
                node = node[p]
            err_dev = max(err_dev, float(np.max(np.abs(np.asarray(node) - conv))))
    print(f"SWAG {'diag' if diag else 'low-rank'}: mean {err_m:.1e}, sq_mean {err_sq:.1e}, deviations {err_dev:.1e}")
    assert max(err_m, err_sq, err_dev) <= 1e-6

    # samples from TU's own noise
    noises = _noises(draws, names, base, swag, template)
    model = MODEL
    err_s = 0.0
    sample = jax.jit(swag.sample)
    for noise, sample_t in zip(noises, swag_t.samples):
        got = sample(st, noise)
        ref = params_tree(base, {n: p.detach().numpy() for n, p in sample_t.named_parameters()})
        err_s = max(err_s, _maxdiff(got, ref))
    print(f"  samples from injected noise: max|Δ| {err_s:.1e}")
    assert err_s <= 1e-5

    # BN update of every sample (vmapped over the stack) and the ensemble's logits [(M B), C]
    swag_t.bn_update([nchw(x) for x in xs], device="cpu")
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[sample(st, z) for z in noises])
    bs = to_flax(base)["batch_stats"]
    v = {"params": stacked, "batch_stats": jax.tree.map(lambda a: jnp.stack([a] * 3), bs)}
    v["batch_stats"] = bn_update(model, v, xs, stacked=True)
    swag_t.eval()
    with torch.no_grad():
        ref_logits = swag_t(nchw(xs[0])).numpy().reshape(3, len(xs[0]), -1)
    logits = jax.vmap(lambda w: model.apply(w, xs[0]))(v)
    err_l = float(np.max(np.abs(np.asarray(logits) - ref_logits)))
    print(f"  BN-updated sample logits: max|Δ| {err_l:.1e}")
    assert err_l <= 1e-5


@pytest.mark.parametrize("kw", [dict(), dict(cycle_start=1, cycle_length=3),
                                dict(save_schedule=[0, 4, 5]), dict(save_schedule=[2], use_final_model=False)],
                         ids=["all", "cycle", "schedule", "schedule_nofinal"])
def test_checkpoint_collector_epochs_and_ensemble(net, kw):
    tm, names, base, epochs, xs = net
    col_t = TU_Collector(tm, **kw)
    col = CheckpointCollector(**{k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()})
    n_ep = 8
    kept = col.kept_epochs(n_ep)
    v0 = to_flax(base, epochs[0])
    st = col.init(v0, capacity=max(1, len(kept)))
    upd = jax.jit(col.update)
    for e in range(n_ep):
        set_params(tm, epochs[e])
        col_t.update_wrapper(e)
        st = upd(st, to_flax(base, epochs[e]), e)
    # which epochs TU kept: identify each saved copy by its parameters
    tu_kept = [next(e for e in range(n_ep) if np.array_equal(m.fc3.bias.detach().numpy(), epochs[e]["fc3.bias"]))
               for m in col_t.saved_models]
    assert tu_kept == kept and int(st.count) == len(kept)
    print(f"CheckpointCollector {kw}: TU and jaxuq keep epochs {kept}")
    members = col.members(st, to_flax(base, epochs[n_ep - 1]))
    model = MODEL
    col_t.eval()
    with torch.no_grad():
        ref = col_t(nchw(xs[0])).numpy()
    got = np.asarray(jax.vmap(lambda w: model.apply(w, xs[0]))(members)).reshape(ref.shape)
    err = float(np.max(np.abs(got - ref)))
    print(f"  ensemble logits [(M B), C] = {ref.shape}: max|Δ| {err:.1e}")
    assert err <= 1e-5
