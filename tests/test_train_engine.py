"""The engine's guards (issue 16): non-finite losses, label ranges, resume with another epoch layout,
a corrupt latest checkpoint, durable epoch records; TrainConfig key checking; callbacks and metric
writers. Tiny random uint8 data, TinyCNN: fast on CPU."""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import numpy as np
import optax
import pytest

from jaxuq.train import Callback, Checkpointer, JsonlLogger, MetricWriterCallback, TrainConfig, fit
from tests.tiny_models import TinyCNN

N, HW = 48, 16


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (N, HW, HW, 1)).astype(np.uint8), rng.integers(0, 10, N).astype(np.int64)


CFG = TrainConfig(optimizer=optax.sgd(0.05), epochs=2, batch_size=16, quiet=True, steps_per_call=1)


def _finite(tree) -> bool:
    return all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(tree))


def _restore_latest(ckdir, data):
    template = fit(TinyCNN(), data, CFG.replace(epochs=0)).state  # a state of the right structure
    ck = Checkpointer(ckdir)
    out = ck.restore(template)
    ck.close()
    return out


def test_diverging_lr_stops_at_first_nonfinite_step_and_keeps_finite_checkpoint(data, tmp_path):
    # sgd(1e30): step 0 is finite and throws the params to ~1e30, step 1's loss is NaN/inf
    cfg = CFG.replace(optimizer=optax.sgd(1e30), checkpoint_every=1, max_to_keep=1)
    with pytest.raises(
        FloatingPointError, match=r"non-finite loss or gradient at step 1 \(epoch 1, batch 2/3\)"
    ):
        fit(TinyCNN(), data, cfg, workdir=tmp_path)
    ck = tmp_path / "checkpoints"
    assert Checkpointer(ck).latest_step() == 1  # the last finite one, kept by max_to_keep=1
    state, meta = _restore_latest(ck, data)
    assert meta["pos"] == 1 and _finite((state.params, state.opt_state, state.batch_stats))


def test_nonfinite_skip_drops_updates_and_runs_to_the_end(data):
    r = fit(TinyCNN(), data, CFG.replace(optimizer=optax.sgd(1e30), on_nonfinite="skip"))
    assert [h["step"] for h in r.history] == [3, 6]
    assert r.history[0]["nonfinite_steps"] == 2 and r.history[1]["nonfinite_steps"] == 3
    assert _finite(r.state.params) and int(r.state.step) == 6


def test_labels_are_range_checked(data):
    x, y = data
    for bad, what in ((-1, "-1 at index 5"), (200, "200 at index 5")):
        yb = y.copy()
        yb[5] = bad
        with pytest.raises(ValueError, match=rf"train labels must be in \[0, 10\) .*got {what}"):
            fit(TinyCNN(), (x, yb), CFG)
    with pytest.raises(ValueError, match="train labels must be integers"):
        fit(TinyCNN(), (x, y.astype(np.float32)), CFG)
    yb = y[:16].copy()
    yb[0] = 10
    with pytest.raises(ValueError, match=r"eval labels must be in \[0, 10\)"):
        fit(TinyCNN(), (x, y), CFG, eval_data=(x[:16], yb))


def test_resume_refuses_another_epoch_layout(data, tmp_path):
    fit(TinyCNN(), data, CFG.replace(epochs=1), workdir=tmp_path)
    with pytest.raises(ValueError, match=r"cannot resume .*steps_per_epoch 3 -> 2, batch_size 16 -> 24"):
        fit(TinyCNN(), data, CFG.replace(batch_size=24), workdir=tmp_path)
    x, y = data
    with pytest.raises(ValueError, match=r"cannot resume .*n_train 48 -> 32"):
        fit(TinyCNN(), (x[:32], y[:32]), CFG, workdir=tmp_path)
    r = fit(TinyCNN(), data, CFG, workdir=tmp_path)  # same layout: resumes
    assert r.resumed_from == 3 and [h["epoch"] for h in r.history] == [2]


def test_corrupt_latest_checkpoint_falls_back_to_newest_intact(data, tmp_path):
    ck = tmp_path / "checkpoints"
    cfg = CFG.replace(epochs=1, checkpoint_every=1, max_to_keep=3)
    fit(TinyCNN(), data, cfg, workdir=tmp_path)
    assert Checkpointer(ck).latest_step() == 3
    for f in (ck / "3" / "state").rglob("*"):  # step 3: every data file truncated to garbage
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(b"garbage")
    shutil.rmtree(ck / "2" / "state")  # step 2: its state folder gone (orbax no longer lists it)
    with pytest.warns(UserWarning) as warned:
        r = fit(TinyCNN(), data, cfg, workdir=tmp_path)
    msgs = [str(w.message) for w in warned if "checkpoint" in str(w.message)]
    assert msgs[0].startswith("checkpoint 3 under") and "unreadable" in msgs[0], msgs
    assert msgs[0].endswith("resuming from the previous step 2 instead"), msgs
    assert msgs[1].startswith("checkpoint 2 under") and msgs[1].endswith("previous step 1 instead"), msgs
    assert r.resumed_from == 1 and r.history[0]["step"] == 3
    state, meta = _restore_latest(ck, data)  # step 3 rewritten by the resumed run: intact again
    assert int(state.step) == 3 and meta["pos"] == 3


def test_epoch_record_is_durable_when_the_run_dies_before_logging(data, tmp_path):
    """The log is written before the epoch-end checkpoint (callbacks may change the state that is
    saved), and the last record of an epoch wins: however a run dies, the resumed run's log holds each
    epoch once, with the uninterrupted run's values."""

    class Die(Callback):
        def __init__(self, hook, step):
            self.hook, self.step = hook, step

        def on_checkpoint(self, step):
            if self.hook == "on_checkpoint" and step == self.step:  # epoch 1's checkpoint is on disk
                raise KeyboardInterrupt

        def on_epoch_end(self, state, record):
            if self.hook == "on_epoch_end" and record["step"] == self.step:  # logged, not yet saved
                raise KeyboardInterrupt
            return state

    ref = fit(TinyCNN(), data, CFG, eval_data=data)
    for hook, step in (("on_checkpoint", 3), ("on_epoch_end", 6)):
        work = tmp_path / hook
        log = work / "metrics.jsonl"
        with pytest.raises(KeyboardInterrupt):  # the logger runs before Die: the epoch is logged
            fit(TinyCNN(), data, CFG, eval_data=data, workdir=work,
                callbacks=[JsonlLogger(log), Die(hook, step)])
        assert [json.loads(s)["step"] for s in log.read_text().splitlines()] == {3: [3], 6: [3, 6]}[step]
        r = fit(TinyCNN(), data, CFG, eval_data=data, workdir=work)  # resumes (a step of epoch 2) and logs
        assert r.resumed_from >= 3 and [h["epoch"] for h in r.history] == [2]
        lines = [json.loads(s) for s in log.read_text().splitlines()]
        assert [d["epoch"] for d in lines] == [1, 2] and "val_acc" in lines[0]
        for a, b in zip(lines, ref.history):
            assert a["train_loss"] == b["train_loss"] and a["val_loss"] == b["val_loss"], (hook, a, b)


def test_config_rejects_unknown_keys_with_a_suggestion():
    with pytest.raises(
        ValueError, match=r"unknown TrainConfig key 'epoch' \(did you mean 'epochs'\?\); valid keys: epochs"
    ):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match=r"'batchsize' \(did you mean 'batch_size'\?\)"):
        dataclasses.replace(CFG, batchsize=3)
    with pytest.raises(ValueError, match=r"'num_member' \(did you mean 'ensemble.num_members'\?\)"):
        CFG.replace(num_member=2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'epochs'"):
        fit(TinyCNN(), (np.zeros((4, HW, HW, 1), np.uint8), np.zeros(4, int)), CFG, epochs=2)  # no **overrides
    with pytest.raises(ValueError, match="on_nonfinite must be"):
        CFG.replace(on_nonfinite="ignore")
    assert "| `ensemble.tu_gradient_scaling` | `False` |" in TrainConfig.describe()


def test_callbacks_and_metric_writer(data):
    seen = []

    class Writer:  # clu MetricWriter-style
        def write_scalars(self, step, scalars):
            seen.append((step, dict(scalars)))

    class Epochs(Callback):
        def on_epoch_end(self, state, record):
            seen.append(("epoch", record["epoch"], int(state.step)))
            return state

    fit(TinyCNN(), data, CFG, callbacks=[MetricWriterCallback(Writer()), Epochs()])  # called in order
    assert [s[0] for s in seen] == [3, "epoch", 6, "epoch"]
    assert seen[1] == ("epoch", 1, 3) and set(seen[0][1]) >= {"train_loss", "train_acc"}


def test_checkpoint_saves_are_sync_on_cpu(tmp_path):
    ck = Checkpointer(tmp_path / "c")
    assert jax.default_backend() != "cpu" or ck.async_save is False
    assert Checkpointer(tmp_path / "d", async_save=True).async_save is True
