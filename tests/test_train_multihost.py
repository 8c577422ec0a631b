"""Multi-host data parallel, for real: two processes on localhost (4 CPU devices each, gloo
collectives, ``jax.distributed`` through ``jaxuq.train.initialize_distributed``), one global mesh
of 8 devices, each process feeding only its rows of every global batch (streaming; with an orbax
checkpoint/resume between the epochs) or holding the data on device. Losses and final params/batch
stats must equal the 1-device run and the single-process 8-device run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from tests.helpers import REPO, data_path

_COMMON = """
import json, sys
import jax, numpy as np
from jaxuq.data import MNIST_NORM, Preprocess, load_mnist
from jaxuq.train import TrainConfig, fit, make_mesh, torch_sgd
from tests.tiny_models import TinyCNN

def run(mesh=None, workdir=None, **changes):
    x, y = load_mnist("train")
    xt, yt = load_mnist("test")
    cfg = TrainConfig(optimizer=torch_sgd(0.01, 0.9), epochs=2, batch_size=64, seed=0, quiet=True, steps_per_call=4,
                      preprocess=Preprocess(*MNIST_NORM, crop=28, padding=4), drop_last=True).replace(**changes)
    return fit(TinyCNN(), (x[:256], y[:256]), cfg, eval_data=(xt[:128], yt[:128]), mesh=mesh, workdir=workdir)

def dump(path, runs):
    arrays, hist = {}, {}
    for name, r in runs.items():
        hist[name] = r.history
        for i, a in enumerate(jax.tree.leaves((r.state.params, r.state.batch_stats))):
            arrays[f"{name}_{i}"] = np.asarray(a)  # replicated: every process reads its local copy
    np.savez(path, **arrays)
    return hist
"""

_REF = _COMMON + textwrap.dedent(
    """
    assert jax.device_count() == 8 and jax.process_count() == 1
    hist = dump(sys.argv[1], {"one": run(), "dp8": run(mesh=make_mesh())})
    print(json.dumps({"hist": hist}))
    """
)

_WORKER = (
    "import sys\n"
    "from jaxuq.train import initialize_distributed\n"
    "initialize_distributed(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))\n"
    + _COMMON
    + textwrap.dedent(
        """
        from jaxuq.sharding import process_batch_slice
        mesh = make_mesh()
        # streaming (this process gathers/sends its 32 rows of each batch only), with orbax checkpoints
        # in a folder both processes share: epoch 1, then a second call resumes it for epoch 2
        ck = dict(mesh=mesh, on_device=False, workdir=sys.argv[4], checkpoint_every=2)
        st1 = run(epochs=1, **ck)
        st = run(**ck)
        assert st1.resumed_from is None and st.resumed_from == 4, (st1.resumed_from, st.resumed_from)
        st.history[:0] = st1.history
        dev = run(mesh=mesh)  # on-device data (each process holds the set), global indices
        leaf = jax.tree.leaves(st.state.params)[0]
        info = {"process_count": jax.process_count(), "device_count": jax.device_count(),
                "local_devices": jax.local_device_count(), "fully_addressable": leaf.is_fully_addressable,
                "replicated": leaf.is_fully_replicated, "ndev": len(leaf.sharding.device_set),
                "rows": str(process_batch_slice(mesh, 64))}
        hist = dump(sys.argv[3], {"mh_stream": st, "mh_dev": dev})
        print(json.dumps({"info": info, "hist": hist}))
        """
    )
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(ndev: int) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={ndev}",
    }


def _metrics(hist: dict) -> dict:
    drop = {"seconds", "images_per_s"}
    return {k: [{m: v for m, v in e.items() if m not in drop} for e in h] for k, h in hist.items()}


@pytest.mark.realdata
@pytest.mark.slow
def test_two_processes_match_one_and_eight_devices(tmp_path):
    data_path("MNIST/raw/train-images-idx3-ubyte.gz")
    (tmp_path / "ref.py").write_text(_REF)
    (tmp_path / "worker.py").write_text(_WORKER)
    addr = f"127.0.0.1:{_free_port()}"
    ck = str(tmp_path / "ckpt")  # shared by both processes, as a cluster's shared file system
    procs = [
        subprocess.Popen(
            [sys.executable, str(tmp_path / "ref.py"), str(tmp_path / "ref.npz")],
            env=_env(8),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    ]
    for pid in (0, 1):
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(tmp_path / "worker.py"),
                    addr,
                    str(pid),
                    str(tmp_path / f"w{pid}.npz"),
                    ck,
                ],
                env=_env(4),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = []
    deadline = time.monotonic() + 300
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert p.returncode == 0, (p.args, err[-4000:])
            outs.append(out)
    finally:
        for p in procs:  # on any failure or timeout: no process left behind
            if p.poll() is None:
                p.kill()
                p.wait()

    ref = json.loads(outs[0].strip().splitlines()[-1])
    workers = [json.loads(o.strip().splitlines()[-1]) for o in outs[1:]]
    for w, rows in zip(workers, ("slice(0, 32, None)", "slice(32, 64, None)")):
        assert w["info"] == {
            "process_count": 2,
            "device_count": 8,
            "local_devices": 4,
            "fully_addressable": False,  # a global array: half of its devices are in the other process
            "replicated": True,
            "ndev": 8,
            "rows": rows,
        }
    # both processes see the same global values (timings aside)
    assert _metrics(workers[0]["hist"]) == _metrics(workers[1]["hist"])

    one = ref["hist"]["one"]
    assert [e["step"] for e in one] == [4, 8]
    runs = {"dp8": ref["hist"]["dp8"], **workers[0]["hist"]}
    for name, hist in runs.items():
        for a, b in zip(one, hist, strict=True):
            # the tolerances of the single-process 8-device test (tests/test_train_loop.py)
            assert abs(a["train_loss"] - b["train_loss"]) < 1e-5, (name, a, b)
            assert abs(a["val_loss"] - b["val_loss"]) < 1e-5 * max(1.0, abs(a["val_loss"])), (name, a, b)
            assert a["val_acc"] == b["val_acc"] and a["train_acc"] == b["train_acc"], (name, a, b)

    r = np.load(tmp_path / "ref.npz")
    w0, w1 = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    n_leaves = len([k for k in r.files if k.startswith("one_")])
    assert n_leaves == 10  # conv1, bn1, conv2, linear: kernel/scale + bias each; bn1 mean + var
    for name, src in (("dp8", r), ("mh_stream", w0), ("mh_dev", w0)):
        for i in range(n_leaves):
            a, b = r[f"one_{i}"], src[f"{name}_{i}"]
            assert a.shape == b.shape
            assert np.max(np.abs(a - b)) < 1e-4, (name, i, float(np.max(np.abs(a - b))))
    for k in w0.files:  # the two processes end with bitwise the same replicated state
        assert np.array_equal(w0[k], w1[k]), k
    # multi-process vs single-process 8 devices: same mesh, same reduction -> measured equal
    for i in range(n_leaves):
        np.testing.assert_allclose(w0[f"mh_stream_{i}"], r[f"dp8_{i}"], atol=1e-6)
