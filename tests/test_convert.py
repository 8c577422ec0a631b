"""``jaxuq-convert`` CLI and readers: conversions through the CLI with torch parity, stacked ensembles,
inspect, Lightning / safetensors / DataParallel / Hugging Face Hub sources, and every bad input
(exit code 2, one clear message, no traceback, no output written)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.helpers import REPO, require

torch = require("torch")
require("torch_uncertainty")

from converters.cli import main  # noqa: E402
from jaxuq import models  # noqa: E402
from tests.torch_models import randomize_, torch_model  # noqa: E402

pytestmark = pytest.mark.parity

LENET_KW = {"in_channels": 1, "num_classes": 10, "norm": "batchnorm"}


def _lenet_ckpt(path: Path, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = randomize_(torch_model("lenet", **{**LENET_KW, **kw}), seed=seed)
    torch.save(m.state_dict(), path)
    return m.eval()


def _torch_logits(m, x_nhwc):
    with torch.no_grad():
        return m.eval()(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_refused(capsys, tmp_path, argv, *needles, out_name="out"):
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, out, err = _run(capsys, *argv)
    assert rc == 2, (out, err)
    assert "Traceback" not in err and err.startswith("jaxuq-convert: error: ")
    for n in needles:
        assert n in err, err
    assert not (tmp_path / out_name).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temp dirs left behind
    return err


# ---------------------------------------------------------------------------------------- conversions
def test_cli_convert_tu_resnet_verify_and_parity(tmp_path, capsys):
    kw = {"in_channels": 3, "num_classes": 10, "arch": 20, "style": "cifar"}
    torch.manual_seed(0)
    tm = randomize_(torch_model("resnet", **kw), seed=3).eval()
    torch.save(tm.state_dict(), tmp_path / "r.pt")
    # --arch resnet with no kwargs: the kwargs are recognised from the keys/shapes
    rc, out, err = _run(capsys, "convert", tmp_path / "r.pt", "--arch", "resnet", "-o", tmp_path / "out",
                        "--verify")
    assert rc == 0, err
    assert "verify" in out and "max|logits torch - flax|" in out
    module, variables, meta = models.load(tmp_path / "out")
    assert meta["arch"] == "resnet" and meta["kwargs"] == kw and meta["num_members"] is None
    assert meta["sources"][0]["sha256"] == __import__("hashlib").sha256((tmp_path / "r.pt").read_bytes()).hexdigest()
    assert meta["verify"][0]["max_abs_diff"] <= 1e-4
    x = np.random.default_rng(1).standard_normal((4, 32, 32, 3), dtype=np.float32)
    err_ = np.abs(np.asarray(module.apply(variables, x, train=False)) - _torch_logits(tm, x)).max()
    print(f"CLI resnet(arch=20, cifar): max|Δ| = {err_:.2e}")
    assert err_ <= 1e-4


def test_cli_stacked_ensemble(tmp_path, capsys):
    tms = [_lenet_ckpt(tmp_path / f"m{i}.pt", seed=i) for i in range(3)]
    rc, out, err = _run(capsys, "convert", *(tmp_path / f"m{i}.pt" for i in range(3)), "--arch", "lenet",
                        "--kwargs", json.dumps(LENET_KW), "-o", tmp_path / "ens")
    assert rc == 0, err
    assert "(3 members)" in out
    module, variables, meta = models.load(tmp_path / "ens")
    assert meta["num_members"] == 3 and len(meta["sources"]) == 3
    assert all(x.shape[0] == 3 for x in jax.tree.leaves(variables))
    x = np.random.default_rng(0).standard_normal((5, 28, 28, 1), dtype=np.float32)
    logits = np.asarray(jax.vmap(lambda v: module.apply(v, x))(variables))  # [M, N, C]
    assert logits.shape == (3, 5, 10)
    for i, tm in enumerate(tms):
        assert np.abs(logits[i] - _torch_logits(tm, x)).max() <= 1e-5


def test_tu_deep_ensembles_checkpoint_becomes_stacked(tmp_path, capsys):
    from torch_uncertainty.methods import deep_ensembles

    torch.manual_seed(0)
    members = [randomize_(torch_model("lenet", **LENET_KW), seed=i) for i in range(2)]
    de = deep_ensembles(members, reset_model_parameters=False)
    torch.save({"state_dict": {f"model.{k}": v for k, v in de.state_dict().items()}}, tmp_path / "de.ckpt")
    rc, out, err = _run(capsys, "convert", tmp_path / "de.ckpt", "-o", tmp_path / "out")
    assert rc == 0, err
    module, variables, meta = models.load(tmp_path / "out")
    assert meta["num_members"] == 2 and meta["arch"] == "lenet" and meta["kwargs"] == LENET_KW
    x = np.random.default_rng(0).standard_normal((3, 28, 28, 1), dtype=np.float32)
    logits = np.asarray(jax.vmap(lambda v: module.apply(v, x))(variables))
    for i, tm in enumerate(members):
        assert np.abs(logits[i] - _torch_logits(tm, x)).max() <= 1e-5


def test_force_replaces_existing_output(tmp_path, capsys):
    _lenet_ckpt(tmp_path / "a.pt", seed=0)
    assert _run(capsys, "convert", tmp_path / "a.pt", "-o", tmp_path / "out")[0] == 0
    first = (tmp_path / "out" / "meta.json").read_text()
    err = _assert_refused(capsys, tmp_path, ["convert", tmp_path / "a.pt", "-o", tmp_path / "out"], "exists",
                          "--force", out_name="nonexistent")
    assert "out" in err and (tmp_path / "out" / "meta.json").read_text() == first
    _lenet_ckpt(tmp_path / "b.pt", seed=5)
    assert _run(capsys, "convert", tmp_path / "b.pt", "-o", tmp_path / "out", "--force")[0] == 0
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["sources"][0]["path"].endswith("b.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt", "out"]


def test_inspect(tmp_path, capsys):
    _lenet_ckpt(tmp_path / "a.pt", groups=1)
    rc, out, _ = _run(capsys, "inspect", tmp_path / "a.pt")
    assert rc == 0
    assert "conv1.weight" in out and "(6, 1, 5, 5)" in out and "float32" in out
    assert "norm1.num_batches_tracked" in out and "int64" in out
    assert 'architecture: lenet  kwargs: {"in_channels": 1, "num_classes": 10, "norm": "batchnorm"}' in out
    rc, out, _ = _run(capsys, "archs")
    assert rc == 0 and "resnet_cifar: " in out and "tiniest" in out


@pytest.mark.parametrize("fmt", ["lightning", "safetensors", "dataparallel", "nested"])
def test_readers(tmp_path, capsys, fmt):
    tm = _lenet_ckpt(tmp_path / "plain.pt", seed=2)
    sd = tm.state_dict()
    if fmt == "lightning":  # a LightningModule checkpoint: routine keys under "model."
        path = tmp_path / "epoch=3.ckpt"
        torch.save({"epoch": 3, "global_step": 100, "pytorch-lightning_version": "2.6.6",
                    "state_dict": {f"model.{k}": v for k, v in sd.items()}, "optimizer_states": [],
                    "hyper_parameters": {"lr": 0.1}}, path)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif fmt == "dataparallel":
        path = tmp_path / "dp.pth"
        torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    else:
        path = tmp_path / "nested.th"
        torch.save({"best_prec1": 91.2, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    rc, out, err = _run(capsys, "convert", path, "-o", tmp_path / "out")
    assert rc == 0, err
    module, variables, meta = models.load(tmp_path / "out")
    assert meta["arch"] == "lenet" and meta["kwargs"] == LENET_KW
    x = np.random.default_rng(0).standard_normal((3, 28, 28, 1), dtype=np.float32)
    assert np.abs(np.asarray(module.apply(variables, x)) - _torch_logits(tm, x)).max() <= 1e-5


def _hf_cache(root: Path, repo: str, filename: str, payload: bytes, rev: str = "a" * 40) -> Path:
    """A Hugging Face Hub cache in HF_HUB_CACHE layout: models--org--name/{refs/main, snapshots/<rev>/file}."""
    d = root / f"models--{repo.replace('/', '--')}"
    (d / "refs").mkdir(parents=True)
    (d / "refs" / "main").write_text(rev)
    snap = d / "snapshots" / rev
    snap.mkdir(parents=True)
    (snap / filename).write_bytes(payload)
    return snap / filename


def test_hf_hub_offline_cache_and_local_folder(tmp_path, capsys):
    _lenet_ckpt(tmp_path / "m.pt", seed=4)
    cache = tmp_path / "hub"
    _hf_cache(cache, "someorg/lenet-mnist", "lenet.pt", (tmp_path / "m.pt").read_bytes())
    script = f"""
import sys
from converters.cli import main
rc1 = main(["convert", "hf://someorg/lenet-mnist/lenet.pt", "-o", r"{tmp_path / 'out_uri'}"])
rc2 = main(["convert", "--hf-repo", "someorg/lenet-mnist", "--hf-file", "lenet.pt", "-o", r"{tmp_path / 'out_opt'}"])
rc3 = main(["convert", "hf://someorg/not-cached/x.pt", "-o", r"{tmp_path / 'out_missing'}"])
print("RC", rc1, rc2, rc3)
"""
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=REPO,
                       timeout=300)
    assert "RC 0 0 2" in r.stdout, r.stdout + r.stderr
    assert "hf://someorg/not-cached/x.pt" in r.stderr and "HF_HUB_OFFLINE=1" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out_missing").exists()
    for o in ("out_uri", "out_opt"):
        _, _, meta = models.load(tmp_path / o)
        assert meta["arch"] == "lenet"
    # a local folder as the repo id
    folder = tmp_path / "local_repo"
    folder.mkdir()
    (folder / "weights.pt").write_bytes((tmp_path / "m.pt").read_bytes())
    rc, _, err = _run(capsys, "convert", "--hf-repo", folder, "--hf-file", "weights.pt", "-o", tmp_path / "out_dir")
    assert rc == 0, err
    a = models.load(tmp_path / "out_uri")[1]
    b = models.load(tmp_path / "out_dir")[1]
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_python_dash_m_entry_point(tmp_path):
    _lenet_ckpt(tmp_path / "a.pt")
    r = subprocess.run([sys.executable, "-m", "converters", "convert", str(tmp_path / "a.pt"), "--arch", "resnet",
                        "-k", "arch=18", "-k", "in_channels=3", "-k", "num_classes=10", "-o", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=REPO, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "does not match architecture resnet(arch=18" in r.stderr
    assert "looks like lenet(" in r.stderr
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------- bad inputs
def test_wrong_architecture(tmp_path, capsys):
    _lenet_ckpt(tmp_path / "a.pt")
    err = _assert_refused(capsys, tmp_path, ["convert", tmp_path / "a.pt", "--arch", "tiniest", "-o",
                                             tmp_path / "out"],
                          "a.pt does not match architecture tiniest(): ", "looks like lenet(",
                          "missing torch key 'l1.rs'", "unexpected torch key 'norm1.weight' shape (6,)",
                          "shape mismatch for 'conv1.weight': torch (6, 1, 5, 5) -> oihw->hwio -> (5, 5, 1, 6), "
                          "expected (3, 3, 3, 48) for Flax params/conv1/kernel")
    assert "86 missing key(s), 18 unexpected key(s), 2 shape mismatch(es)." in err, err
    assert "... and 3 more unexpected line(s)" in err  # long lists are capped


def test_missing_key(tmp_path, capsys):
    tm = _lenet_ckpt(tmp_path / "a.pt")
    sd = tm.state_dict()
    del sd["norm2.running_var"]
    torch.save(sd, tmp_path / "bad.pt")
    _assert_refused(capsys, tmp_path, ["convert", tmp_path / "bad.pt", "--arch", "lenet", "--kwargs",
                                       json.dumps(LENET_KW), "-o", tmp_path / "out"],
                    "bad.pt", "1 missing key(s), 0 unexpected key(s), 0 shape mismatch(es)", "missing torch key 'norm2.running_var' (for Flax batch_stats/norm2/var, "
                    "shape (16,))")


def test_extra_key(tmp_path, capsys):
    sd = _lenet_ckpt(tmp_path / "a.pt").state_dict()
    sd["fc4.weight"] = torch.zeros(3, 10)
    torch.save(sd, tmp_path / "bad.pt")
    _assert_refused(capsys, tmp_path, ["convert", tmp_path / "bad.pt", "--arch", "lenet", "--kwargs",
                                       json.dumps(LENET_KW), "-o", tmp_path / "out"],
                    "bad.pt", "unexpected torch key 'fc4.weight' shape (3, 10)")


def test_shape_mismatch(tmp_path, capsys):
    sd = _lenet_ckpt(tmp_path / "a.pt").state_dict()
    sd["fc2.weight"] = torch.zeros(80, 120)
    torch.save(sd, tmp_path / "bad.pt")
    _assert_refused(capsys, tmp_path, ["convert", tmp_path / "bad.pt", "--arch", "lenet", "--kwargs",
                                       json.dumps(LENET_KW), "-o", tmp_path / "out"],
                    "bad.pt", "shape mismatch for 'fc2.weight': torch (80, 120) -> .T -> (120, 80), expected "
                    "(120, 84) for Flax params/fc2/kernel")


def test_truncated_file(tmp_path, capsys):
    _lenet_ckpt(tmp_path / "a.pt")
    data = (tmp_path / "a.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    os.remove(tmp_path / "a.pt")
    _assert_refused(capsys, tmp_path, ["convert", tmp_path / "trunc.pt", "-o", tmp_path / "out"],
                    "trunc.pt: truncated or corrupt")


def test_empty_file(tmp_path, capsys):
    (tmp_path / "empty.pt").write_bytes(b"")
    _assert_refused(capsys, tmp_path, ["convert", tmp_path / "empty.pt", "-o", tmp_path / "out"],
                    "empty.pt: empty file (0 bytes)")


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_non_checkpoint_pickle_is_refused_and_not_executed(tmp_path, capsys):
    _Evil.marker = str(tmp_path / "PWNED")
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"conv1.weight": _Evil()}, f)
    _assert_refused(capsys, tmp_path, ["convert", tmp_path / "evil.pt", "--arch", "lenet", "-o", tmp_path / "out"],
                    "evil.pt: refused by torch.load(weights_only=True)")
    assert not (tmp_path / "PWNED").exists()
    # a torch.save'd arbitrary object (zip format) is refused too
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    _assert_refused(capsys, tmp_path, ["convert", tmp_path / "module.pt", "-o", tmp_path / "out"],
                    "module.pt: refused by torch.load(weights_only=True)")
    # and a valid pickle of plain numbers, which is not a state dict
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "nums.pt")
    _assert_refused(capsys, tmp_path, ["convert", tmp_path / "nums.pt", "-o", tmp_path / "out"],
                    "nums.pt: no tensors found")


def test_missing_file(tmp_path, capsys):
    _assert_refused(capsys, tmp_path, ["convert", tmp_path / "nope.pt", "-o", tmp_path / "out"],
                    "nope.pt: no such file")


def test_unwritable_output_parent_is_a_file(tmp_path, capsys):
    _lenet_ckpt(tmp_path / "a.pt")
    (tmp_path / "blocker").write_text("I am a file")
    _assert_refused(capsys, tmp_path, ["convert", tmp_path / "a.pt", "-o", tmp_path / "blocker" / "sub" / "out"],
                    "cannot write the output", "not writable", out_name="blocker/sub")
    assert (tmp_path / "blocker").read_text() == "I am a file"


def test_unwritable_output_readonly_dir(tmp_path, capsys):
    """A read-only (0o555) output folder. As root chmod does not block writes, so then the CLI runs in a
    child process as an unprivileged user (uid 65534) on a world-readable copy of the checkpoint."""
    import shutil
    import tempfile

    if os.geteuid() != 0:
        _lenet_ckpt(tmp_path / "a.pt")
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            _assert_refused(capsys, tmp_path, ["convert", tmp_path / "a.pt", "-o", ro / "out"],
                            "cannot write the output", "not writable", "PermissionError", out_name="ro/out")
        finally:
            ro.chmod(0o700)
        return
    base = Path(tempfile.mkdtemp(prefix="jaxuq-ro-"))
    try:
        base.chmod(0o755)
        _lenet_ckpt(base / "a.pt")
        (base / "a.pt").chmod(0o644)
        ro = base / "ro"
        ro.mkdir(mode=0o555)
        ro.chmod(0o555)
        home = base / "home"
        home.mkdir()
        home.chmod(0o777)
        env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home), "XDG_CACHE_HOME": str(home)}
        try:
            r = subprocess.run([sys.executable, "-m", "converters", "convert", str(base / "a.pt"), "-o",
                                str(ro / "out")], capture_output=True, text=True, cwd=str(home), env=env,
                               user=65534, timeout=300)
        except PermissionError:
            pytest.skip("root, and the interpreter is not executable by an unprivileged user "
                        "(test_unwritable_output_parent_is_a_file covers the unwritable output)")
        assert r.returncode == 2, r.stdout + r.stderr
        assert "Traceback" not in r.stderr
        assert "cannot write the output" in r.stderr and "PermissionError" in r.stderr, r.stderr
        assert list(ro.iterdir()) == []
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_failure_while_writing_leaves_nothing(tmp_path, capsys, monkeypatch):
    _lenet_ckpt(tmp_path / "a.pt")
    import jaxuq.models.io as mio

    class Boom:
        def save(self, *a, **k):
            Path(a[0]).mkdir(parents=True)
            (Path(a[0]) / "partial").write_text("x")
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(mio, "_checkpointer", lambda: Boom())
    _assert_refused(capsys, tmp_path, ["convert", tmp_path / "a.pt", "-o", tmp_path / "out"],
                    "cannot write the output", "No space left on device")


_LOOPBACK_SCRIPT = r'''
import hashlib, http.server, json, os, sys, threading
payload = open(sys.argv[1], "rb").read()
commit = "c" * 40
etag = hashlib.sha256(payload).hexdigest()
log = []

class H(http.server.BaseHTTPRequestHandler):
    def _head(self):
        log.append((self.command, self.path))
        if self.path != "/someorg/lenet-mnist/resolve/main/lenet.pt":
            self.send_response(404); self.send_header("Content-Length", "0"); self.end_headers(); return False
        self.send_response(200)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", '"' + etag + '"')
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        return True
    def do_HEAD(self):
        self._head()
    def do_GET(self):
        if self._head():
            self.wfile.write(payload)
    def log_message(self, *a):
        pass

srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:%d" % srv.server_address[1]
from converters.cli import main
rc1 = main(["convert", "hf://someorg/lenet-mnist/lenet.pt", "-o", sys.argv[2] + "/online"])
gets = sum(1 for c, _ in log if c == "GET")
srv.shutdown(); srv.server_close()
rc2 = main(["convert", "hf://someorg/lenet-mnist/lenet.pt", "-o", sys.argv[2] + "/from_cache"])
print("RESULT", json.dumps({"rc1": rc1, "rc2": rc2, "gets": gets}))
'''


def test_hf_hub_download_from_loopback_server_then_cache(tmp_path):
    """A real hf_hub_download against a loopback HTTP server (HF_ENDPOINT); after the server stops, the
    same source is served from the HF cache."""
    _lenet_ckpt(tmp_path / "m.pt", seed=6)
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update({"HF_HUB_CACHE": str(tmp_path / "hub"), "PYTHONPATH": str(REPO), "NO_PROXY": "127.0.0.1",
                "no_proxy": "127.0.0.1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_ETAG_TIMEOUT": "2",
                "HF_HUB_DOWNLOAD_TIMEOUT": "5"})
    env.pop("HF_HUB_OFFLINE", None)
    r = subprocess.run([sys.executable, "-c", _LOOPBACK_SCRIPT, str(tmp_path / "m.pt"), str(tmp_path)],
                       env=env, capture_output=True, text=True, cwd=REPO, timeout=300)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, r.stdout + r.stderr
    res = json.loads(line[7:])
    assert res == {"rc1": 0, "rc2": 0, "gets": 1}, r.stdout + r.stderr
    snap = tmp_path / "hub" / "models--someorg--lenet-mnist" / "snapshots" / ("c" * 40) / "lenet.pt"
    assert snap.exists() and snap.read_bytes() == (tmp_path / "m.pt").read_bytes()
    a = models.load(tmp_path / "online")
    b = models.load(tmp_path / "from_cache")
    assert a[2]["sources"][0]["sha256"] == b[2]["sources"][0]["sha256"]
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a[1]), jax.tree.leaves(b[1])))
