"""fit's surface and the seams the next methods plug into: non-image and regression data, label
checks in the original dtype, the Objective protocol (several forward samples, sown collections, the
epoch), TrainState.extras with in-jit ``on_step`` callbacks (resumed bitwise), config validation,
and the size rules (fit's parameters, functions <= 60 lines, no cycle-dodging imports)."""

from __future__ import annotations

import ast
import dataclasses
import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxuq.data.pipeline import epoch_permutation
from jaxuq.losses import cross_entropy
from jaxuq.train import (
    Callback,
    EnsembleConfig,
    SampledLoss,
    TrainConfig,
    create_train_state,
    fit,
    tu_deep_ensembles,
)
from tests.helpers import REPO

N, F, C = 24, 4, 3


class _KLDense(nn.Module):
    """A dense layer that sows a KL-like penalty (0.5 |W|^2) into the "losses" collection."""

    features: int

    @nn.compact
    def __call__(self, x):
        k = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        self.sow("losses", "kl", 0.5 * jnp.sum(k**2))
        return x @ k


class _MLP(nn.Module):
    """Tabular features [B, F] -> [B, out]; dropout before the sowing head."""

    out: int = C

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.relu(nn.Dense(8, name="fc1")(x))
        h = nn.Dropout(0.5, deterministic=not train)(h)
        return _KLDense(self.out, name="head")(h)


@dataclasses.dataclass(frozen=True)
class _CEPlusKL:
    """An ELBO-shaped objective: CE + weight * (sum of what the layers sowed into "losses")."""

    weight: float

    def __call__(self, apply, params, x, y, ctx):
        out, cols = apply(params, x)
        return cross_entropy(out, y) + self.weight * sum(jax.tree.leaves(cols["losses"])), {"outputs": out}


@dataclasses.dataclass(frozen=True)
class _EpochLoss:
    """loss = the 0-based epoch (ctx.epoch): pins the StepContext."""

    def __call__(self, apply, params, x, y, ctx):
        out, _ = apply(params, x)
        return 0.0 * jnp.sum(out) + ctx.epoch.astype(jnp.float32), {}


def _mse(outputs, targets):
    return jnp.mean(jnp.square(outputs.reshape(targets.shape) - targets))


@pytest.fixture(scope="module")
def tabular():
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, F)).astype(np.float64), rng.integers(0, C, N)  # float64: cast to float32


CFG = TrainConfig(optimizer=optax.sgd(0.1), epochs=1, batch_size=N, preprocess=None, quiet=True)


def _first_batch(x, y, seed=0):
    """The rows of step 0 (one full batch): the engine's documented order."""
    _, k_data = jax.random.split(jax.random.key(seed))
    perm = np.asarray(epoch_permutation(k_data, 0, len(x)))
    return jnp.asarray(x[perm], jnp.float32), jnp.asarray(y[perm])


def _one_step(model, x, y, cfg, objective_value):
    """fit one full-batch SGD step from a known state, and the hand-written loss / updated params."""
    st = create_train_state(model, optax.sgd(0.1), jax.random.key(5), jnp.zeros((1, F)))
    r = fit(model, (x, y), cfg, init_state=jax.tree.map(jnp.copy, st))  # the state given is donated
    xb, yb = _first_batch(x, y)
    k_drop = jax.random.split(jax.random.fold_in(st.key, 0))[1]
    loss, grads = jax.value_and_grad(lambda p: objective_value(p, xb, yb, k_drop))(st.params)
    want = jax.tree.map(lambda p, g: p - 0.1 * g, st.params, grads)
    return r, float(loss), want


def _assert_tree_close(a, b, atol=1e-6):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=atol)


def test_two_sample_objective_equals_the_hand_written_average(tabular):
    x, y = tabular
    model = _MLP()

    def hand(p, xb, yb, k_drop):  # mean of CE over two dropout draws, keys split(k_drop, 2)
        ks = jax.random.split(k_drop, 2)
        return jnp.mean(jnp.stack([
            cross_entropy(model.apply({"params": p}, xb, train=True, rngs={"dropout": jax.random.split(k, 1)[0]}), yb)
            for k in ks
        ]))

    r, loss, want = _one_step(model, x, y, CFG.replace(objective=SampledLoss(cross_entropy, 2)), hand)
    assert abs(r.history[0]["train_loss"] - loss) <= 1e-6 and "train_acc" in r.history[0]
    _assert_tree_close(r.state.params, want)


def test_objective_reads_what_the_layers_sow(tabular):
    x, y = tabular
    model = _MLP()

    def hand(p, xb, yb, k_drop):
        out, cols = model.apply({"params": p}, xb, train=True, rngs={"dropout": k_drop}, mutable=["losses"])
        return cross_entropy(out, yb) + 0.01 * cols["losses"]["head"]["kl"][0]

    r, loss, want = _one_step(model, x, y, CFG.replace(objective=_CEPlusKL(0.01)), hand)
    assert abs(r.history[0]["train_loss"] - loss) <= 1e-6
    _assert_tree_close(r.state.params, want)


def test_step_context_gives_the_epoch(tabular):
    x, y = tabular
    r = fit(_MLP(), (x, y), CFG.replace(objective=_EpochLoss(), epochs=2, batch_size=8))
    assert [h["train_loss"] for h in r.history] == [0.0, 1.0]
    assert "train_acc" not in r.history[0]  # no aux["outputs"]: no correct count


def test_tabular_features_and_regression_targets(tabular):
    x, y = tabular
    r = fit(_MLP(), (x, y), CFG.replace(batch_size=8, epochs=2), eval_data=(x, y))  # preprocess=None: identity
    assert [h["step"] for h in r.history] == [3, 6] and 0 <= r.history[-1]["val_acc"] <= 1
    t1 = (x @ np.arange(1.0, F + 1) / 10).astype(np.float32)  # [N] float targets
    t2 = np.stack([t1, -t1], axis=1)  # [N, 2]
    for targets, out in ((t1, 1), (t2, 2)):
        cfg = CFG.replace(batch_size=8, epochs=3, loss_fn=_mse)
        r = fit(_MLP(out=out), (x, targets), cfg, eval_data=(x, targets))
        assert "train_acc" not in r.history[0] and "val_acc" not in r.history[0]
        pred = _MLP(out=out).apply({"params": r.state.params}, jnp.asarray(x, jnp.float32))
        assert abs(r.history[-1]["val_loss"] - float(_mse(pred, targets))) <= 1e-6
    with pytest.raises(ValueError, match="train labels must be integers .* float .* need a loss_fn"):
        fit(_MLP(out=1), (x, t1), CFG)
    with pytest.raises(ValueError, match=r"train targets must have shape \(24,\) or \(24, D\)"):
        fit(_MLP(out=1), (x, t1[:, None, None]), CFG.replace(loss_fn=_mse))


def test_labels_checked_in_their_own_dtype_and_inputs_validated(tabular):
    x, y = tabular
    big = y.astype(np.int64)
    big[3] = 2**32  # int32 would wrap it to class 0; it trained as class 0 before
    with pytest.raises(ValueError, match=r"train labels must be in \[0, 3\) .*got 4294967296 at index 3"):
        fit(_MLP(), (x, big), CFG)
    with pytest.raises(ValueError, match=r"eval labels must be in \[0, 3\) .*got 4294967296 at index 3"):
        fit(_MLP(), (x, y), CFG, eval_data=(x, big))
    bad = x.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="train inputs contains NaN or inf"):
        fit(_MLP(), (bad, y), CFG)
    with pytest.raises(ValueError, match="train inputs must fit int32"):
        fit(_MLP(), (np.full((N, F), 2**40), y), CFG)
    with pytest.raises(ValueError, match="train inputs must be numeric"):
        fit(_MLP(), (x.astype(bool), y), CFG)
    with pytest.raises(TypeError, match=r"train data must be a tuple \(inputs"):
        fit(_MLP(), x, CFG)
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        fit(_MLP(), (x, y), {"epochs": 1})


@dataclasses.dataclass(frozen=True)
class _EMA(Callback):
    decay: float = 0.5

    def on_fit_start(self, state):
        return state.replace(extras={"ema": state.params, "n": jnp.zeros_like(state.step)})

    def on_step(self, state):
        ema = jax.tree.map(lambda e, p: self.decay * e + (1 - self.decay) * p, state.extras["ema"], state.params)
        return state.replace(extras={"ema": ema, "n": state.extras["n"] + 1})


def test_extras_updated_in_the_step_are_checkpointed_and_resumed(tabular, tmp_path):
    """An EMA in ``state.extras``, updated by ``on_step`` inside the jitted scan (one model and a
    3-member ensemble): an interrupted-then-resumed run equals the uninterrupted one bitwise."""
    x, y = tabular
    for ens in (None, EnsembleConfig(3, lowering="map")):
        cfg = CFG.replace(batch_size=8, epochs=2, ensemble=ens, checkpoint_every=2)
        ref = fit(_MLP(), (x, y), cfg, callbacks=[_EMA()])
        n = np.asarray(ref.state.extras["n"])
        assert np.all(n == 6) and n.shape == (() if ens is None else (3,))
        work = tmp_path / str(ens is None)
        fit(_MLP(), (x, y), cfg.replace(epochs=1), workdir=work, callbacks=[_EMA()])
        res = fit(_MLP(), (x, y), cfg, workdir=work, callbacks=[_EMA()])
        assert res.resumed_from == 3
        for a, b in zip(jax.tree.leaves((ref.state.params, ref.state.extras)),
                        jax.tree.leaves((res.state.params, res.state.extras)), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_record_steps_gives_every_step_loss_across_chunks(tabular):
    """``record_steps``: the epoch record lists every step's loss ([S], or [S][M] for an ensemble), across
    lax.scan chunks, and their count-weighted mean is ``train_loss`` (3 steps of 8, 8, 8 rows)."""
    x, y = tabular
    for ens in (None, EnsembleConfig(2, lowering="map")):
        cfg = CFG.replace(batch_size=8, steps_per_call=2, ensemble=ens, record_steps=True)
        rec = fit(_MLP(), (x, y), cfg).history[0]
        steps = np.asarray(rec["train_loss_steps"])
        assert steps.shape == ((3,) if ens is None else (3, 2))
        np.testing.assert_allclose(steps.mean(), rec["train_loss"], rtol=1e-6)
    assert "train_loss_steps" not in fit(_MLP(), (x, y), CFG).history[0]
    with pytest.raises(TypeError, match="record_steps"):
        CFG.replace(record_steps=1)


def test_callback_contracts(tabular):
    x, y = tabular

    @dataclasses.dataclass  # eq=True, not frozen: unhashable
    class Unhashable(Callback):
        decay: float = 0.5

        def on_step(self, state):
            return state

    class Forgets(Callback):
        def on_epoch_end(self, state, record):
            record["extra"] = 1  # may extend the record, must return the state

    with pytest.raises(TypeError, match="must be hashable"):
        fit(_MLP(), (x, y), CFG, callbacks=[Unhashable()])
    with pytest.raises(TypeError, match="Forgets.on_epoch_end must return the state"):
        fit(_MLP(), (x, y), CFG, callbacks=[Forgets()])


def test_config_surface():
    assert len(inspect.signature(fit).parameters) <= 8
    cfg = TrainConfig.from_dict({"epochs": 2, "ensemble": {"num_members": 4, "lowering": "map"}})
    assert cfg.ensemble == EnsembleConfig(4, lowering="map") and cfg.num_members == 4
    with pytest.raises(ValueError, match=r"unknown EnsembleConfig key 'members'"):
        TrainConfig(ensemble={"members": 4})
    with pytest.raises(ValueError, match=r"'member_shuffle' \(did you mean 'ensemble.shared_order'\?\)"):
        TrainConfig(member_shuffle=False)
    for bad, err in (({"epochs": 1.5}, TypeError), ({"batch_size": 0}, ValueError), ({"quiet": 1}, TypeError),
                     ({"preprocess": "mnist"}, TypeError), ({"ensemble": 3}, TypeError),
                     ({"loss_fn": cross_entropy, "objective": _EpochLoss()}, ValueError)):
        with pytest.raises(err):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match="ensemble.lowering must be one of"):
        EnsembleConfig(2, lowering="loop")
    with pytest.raises(ValueError, match="ensemble.num_members must be >= 1"):
        EnsembleConfig(0)
    de = tu_deep_ensembles(3, 0.05, cfg)
    assert de.ensemble == EnsembleConfig(3, lowering="map", shared_order=True, tu_gradient_scaling=True,
                                         shared_augmentation=True)
    assert de.epochs == 2 and isinstance(de.optimizer, optax.GradientTransformation)
    for lr in (float("nan"), 0.0, -1.0):
        with pytest.raises(ValueError, match="lr must be finite and > 0"):
            tu_deep_ensembles(2, lr)
    with pytest.raises(TypeError, match="lr must be a number"):
        tu_deep_ensembles(2, "0.1")


# the seams' modules (this branch's scope); the rest of jaxuq/ is checked by the package-boundary work
_OWNED = ["jaxuq/train", "jaxuq/evaluation.py", "jaxuq/ensembles.py", "jaxuq/forward.py", "jaxuq/sharding.py",
          "jaxuq/_validate.py", "jaxuq/metrics/suite.py", "jaxuq/metrics/streaming.py", "jaxuq/_progress.py",
          "jaxuq/data", "jaxuq/losses"]
_LAZY_OK = {"scipy.io", "tensorflow_datasets"}  # optional/heavy dependencies imported on first use


def _owned_functions():
    for entry in _OWNED:
        path = REPO / entry
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield f.relative_to(REPO), node


def test_functions_are_short_and_import_at_module_top():
    long = [f"{f}:{n.name} ({n.end_lineno - n.lineno + 1} lines)" for f, n in _owned_functions()
            if n.end_lineno - n.lineno + 1 > 60]
    assert not long, long
    inner = [f"{f}:{n.name} imports {i.module if isinstance(i, ast.ImportFrom) else i.names[0].name}"
             for f, n in _owned_functions() for i in ast.walk(n) if isinstance(i, ast.Import | ast.ImportFrom)
             and (i.module if isinstance(i, ast.ImportFrom) else i.names[0].name) not in _LAZY_OK]
    assert not inner, inner
    assert not (REPO / "jaxuq" / "train" / "testing.py").exists()  # the test model lives in tests/
