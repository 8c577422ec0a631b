"""converters.hub: TU's load_hf naming and safetensors fallback, config.yaml, the tutorial's 8-LeNet repo over a
loopback hub and from an offline cache, the conversion cache, clear errors (exit 2 on the CLI).

Every hub here is local: ``tests/hub_server.py`` serves folders on 127.0.0.1 (``HF_ENDPOINT``) or writes a
``huggingface_hub`` cache (``HF_HUB_OFFLINE=1``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.helpers import data_path, require
from tests.hub_server import build_hf_cache, hub_env, serve_hub

torch = require("torch")
require("torch_uncertainty")
require("huggingface_hub")

from converters import hub  # noqa: E402
from converters.cli import main as cli_main  # noqa: E402
from converters.io import CheckpointError  # noqa: E402

TUTORIAL_REPO = "ENSTA-U2IS/tutorial-models"
TUTORIAL_FILES = [f"version_{i}.ckpt" for i in range(8)]
WID = "lenet_tiny"  # a torch-uncertainty/<id> repo built here
CONFIG = """\
# a LightningCLI-style config as TU publishes next to its weights
model:
  class_path: torch_uncertainty.models.lenet
  init_args:
    in_channels: 1
    num_classes: 10
    activation: leaky_relu
    loss: CrossEntropyLoss
"""


def _tu_lenet(seed: int):
    from torch.nn import functional as F
    from torch_uncertainty.models.classification import lenet

    torch.manual_seed(seed)
    return lenet(in_channels=1, num_classes=10, activation=F.leaky_relu).eval()


def _tu_repo(root: Path, config: bool = True) -> dict[int, torch.nn.Module]:
    """``root/torch-uncertainty/lenet_tiny``: v0 ``lenet_tiny.ckpt`` (Lightning layout, ``model.`` keys),
    v1 ``lenet_tiny_1.ckpt`` (plain state dict), v2 only ``lenet_tiny_2.safetensors``; ``config.yaml``."""
    from safetensors.torch import save_file

    repo = root / "torch-uncertainty" / WID
    repo.mkdir(parents=True)
    models = {v: _tu_lenet(seed=10 + v) for v in (0, 1, 2)}
    sd = {f"model.{k}": t for k, t in models[0].state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 10}, repo / f"{WID}.ckpt")
    torch.save(models[1].state_dict(), repo / f"{WID}_1.ckpt")
    save_file({k: t.contiguous() for k, t in models[2].state_dict().items()}, str(repo / f"{WID}_2.safetensors"))
    if config:
        (repo / "config.yaml").write_text(CONFIG)
    return models


def _x(n=5, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 28, 28, 1), dtype=np.float32)


def _torch_logits(m, x):
    with torch.no_grad():
        return m(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


def _counting_convert(monkeypatch) -> list:
    calls: list = []
    real = hub.convert

    def counted(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(hub, "convert", counted)
    return calls


def test_load_hf_naming_fallback_and_config_over_loopback(tmp_path, monkeypatch):
    models = _tu_repo(tmp_path / "srv")
    x = _x()
    with serve_hub(tmp_path / "srv") as (endpoint, log):
        hub_env(monkeypatch, endpoint=endpoint, hf_cache=tmp_path / "hf", jaxuq_cache=tmp_path / "jx")
        for v, fname in ((0, f"{WID}.ckpt"), (1, f"{WID}_1.ckpt"), (2, f"{WID}_2.safetensors")):
            module, variables, meta = hub.load_hf(WID, version=v)
            assert meta["hub"]["filenames"] == [fname] and meta["hub"]["repo_id"] == f"torch-uncertainty/{WID}"
            assert meta["arch"] == "lenet" and meta["kwargs"]["activation"] == "leaky_relu"  # from config.yaml
            assert meta["hub"]["ignored_config_keys"] == ["loss"]
            got = np.asarray(module.apply(variables, x))
            np.testing.assert_allclose(got, _torch_logits(models[v], x), atol=1e-5, rtol=0)
        heads = [p for m, p in log if m == "HEAD"]
        # TU's order: the .ckpt first, then the safetensors fallback
        assert heads.index(f"/torch-uncertainty/{WID}/resolve/main/{WID}_2.ckpt") < heads.index(
            f"/torch-uncertainty/{WID}/resolve/main/{WID}_2.safetensors")
        with pytest.raises(CheckpointError, match=rf"{WID}_3.ckpt nor {WID}_3.safetensors"):
            hub.load_hf(WID, version=3)


def test_load_hf_offline_cache_and_conversion_cache(tmp_path, monkeypatch):
    _tu_repo(tmp_path / "srv")
    build_hf_cache(tmp_path / "hf", f"torch-uncertainty/{WID}", tmp_path / "srv" / "torch-uncertainty" / WID)
    hub_env(monkeypatch, hf_cache=tmp_path / "hf", jaxuq_cache=tmp_path / "jx", offline=True)
    calls = _counting_convert(monkeypatch)
    _, v1, m1 = hub.load_hf(WID, version=2)  # offline: the .ckpt is not cached -> safetensors fallback
    assert m1["hub"]["filenames"] == [f"{WID}_2.safetensors"] and not m1["cache"]["hit"] and len(calls) == 1
    _, v2, m2 = hub.load_hf(WID, version=2)
    assert m2["cache"]["hit"] and len(calls) == 1  # no conversion the second time
    assert m2["cache"]["path"] == m1["cache"]["path"]
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(v1), jax.tree.leaves(v2)))
    entry = Path(m1["cache"]["path"])
    # corrupt entries are rebuilt, not trusted: broken JSON, then missing arrays
    (entry / "meta.json").write_text("{not json")
    _, v3, m3 = hub.load_hf(WID, version=2)
    assert not m3["cache"]["hit"] and len(calls) == 2
    shutil.rmtree(entry / "variables")
    (entry / "variables").mkdir()
    _, v4, m4 = hub.load_hf(WID, version=2)
    assert not m4["cache"]["hit"] and len(calls) == 3
    for v in (v3, v4):
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(v1), jax.tree.leaves(v)))
    assert hub.load_hf(WID, version=2)[2]["cache"]["hit"] and len(calls) == 3
    # a changed source (other sha256) is a different entry
    _, _, m5 = hub.load_hf(WID, version=0)
    assert m5["cache"]["path"] != m1["cache"]["path"] and len(calls) == 4


def test_missing_repo_file_and_config_errors(tmp_path, monkeypatch, capsys):
    _tu_repo(tmp_path / "srv", config=False)
    with serve_hub(tmp_path / "srv") as (endpoint, _):
        hub_env(monkeypatch, endpoint=endpoint, hf_cache=tmp_path / "hf", jaxuq_cache=tmp_path / "jx")
        with pytest.raises(CheckpointError, match="RepositoryNotFoundError"):
            hub.load_repo("nobody/nothing", "weights.ckpt")
        with pytest.raises(CheckpointError, match=r"hf://torch-uncertainty/lenet_tiny/config.yaml"):
            hub.load_hf(WID)  # TU's load_hf needs config.yaml too
        with pytest.raises(CheckpointError, match="at least two files"):
            hub.load_ensemble(f"torch-uncertainty/{WID}", [f"{WID}.ckpt"])
        for argv, needle in (
            (["--hf-repo", "nobody/nothing", "--hf-file", "w.ckpt"], "RepositoryNotFoundError"),
            (["--hf-repo", f"torch-uncertainty/{WID}", "--hf-file", "nope.ckpt"], "nope.ckpt"),
            (["--hf-id", "nothing_here"], "torch-uncertainty/nothing_here/nothing_here.ckpt"),
            (["--hf-id", WID, "--hf-version", "5"], f"{WID}_5.ckpt nor {WID}_5.safetensors"),
        ):
            out = tmp_path / "out"
            rc = cli_main(["convert", *argv, "-o", str(out)])
            err = capsys.readouterr().err
            assert rc == 2 and needle in err and "Traceback" not in err, err
            assert not out.exists()
    assert not (tmp_path / "jx").exists()  # nothing cached on failure


def test_cli_hf_id_and_ensemble(tmp_path, monkeypatch, capsys):
    models = _tu_repo(tmp_path / "srv")
    build_hf_cache(tmp_path / "hf", f"torch-uncertainty/{WID}", tmp_path / "srv" / "torch-uncertainty" / WID)
    hub_env(monkeypatch, hf_cache=tmp_path / "hf", jaxuq_cache=tmp_path / "jx", offline=True)
    from jaxuq import models as jm

    assert cli_main(["convert", "--hf-id", WID, "--hf-version", "1", "-o", str(tmp_path / "one")]) == 0
    module, variables, meta = jm.load(tmp_path / "one")
    assert meta["kwargs"]["activation"] == "leaky_relu"
    x = _x()
    np.testing.assert_allclose(np.asarray(module.apply(variables, x)), _torch_logits(models[1], x), atol=1e-5)
    rc = cli_main(["convert", "--hf-repo", f"torch-uncertainty/{WID}", "--hf-file", f"{WID}.ckpt",
                   "--hf-file", f"{WID}_1.ckpt", "-k", "activation=leaky_relu", "-o", str(tmp_path / "ens")])
    assert rc == 0, capsys.readouterr().err
    module, variables, meta = jm.load(tmp_path / "ens")
    assert meta["num_members"] == 2
    got = np.asarray(jax.vmap(lambda v: module.apply(v, x))(variables))
    for i in (0, 1):
        np.testing.assert_allclose(got[i], _torch_logits(models[i], x), atol=1e-5)


@pytest.mark.realdata
def test_tutorial_ensemble_over_loopback_then_offline_cache(tmp_path, monkeypatch):
    """The 8 hub LeNets: downloaded over loopback (8 GETs), then from an offline HF cache built from the
    folder, then from jaxuq's conversion cache; member i equals TU's lenet with version_i's weights."""
    from torch_uncertainty.models.classification import lenet

    root = data_path("hub")
    calls = _counting_convert(monkeypatch)
    with serve_hub(root) as (endpoint, log):
        hub_env(monkeypatch, endpoint=endpoint, hf_cache=tmp_path / "hf", jaxuq_cache=tmp_path / "jx1")
        module, online, meta = hub.load_ensemble(TUTORIAL_REPO, TUTORIAL_FILES)
    assert sorted(p for m, p in log if m == "GET") == sorted(
        f"/{TUTORIAL_REPO}/resolve/main/{f}" for f in TUTORIAL_FILES)
    assert meta["arch"] == "lenet" and meta["num_members"] == 8 and len(calls) == 1
    build_hf_cache(tmp_path / "hf_offline", TUTORIAL_REPO, root / TUTORIAL_REPO)
    hub_env(monkeypatch, hf_cache=tmp_path / "hf_offline", jaxuq_cache=tmp_path / "jx2", offline=True)
    _, offline, meta2 = hub.load_ensemble(TUTORIAL_REPO, TUTORIAL_FILES)
    assert not meta2["cache"]["hit"] and len(calls) == 2
    _, cached, meta3 = hub.load_ensemble(TUTORIAL_REPO, TUTORIAL_FILES)
    assert meta3["cache"]["hit"] and len(calls) == 2
    for other in (offline, cached):
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(online), jax.tree.leaves(other)))
    x = _x(4)
    got = np.asarray(jax.vmap(lambda v: module.apply(v, x))(cached))
    for i, f in enumerate(TUTORIAL_FILES):
        sd = torch.load(root / TUTORIAL_REPO / f, map_location="cpu", weights_only=True)["state_dict"]
        m = lenet(in_channels=1, num_classes=10)
        m.load_state_dict({k.replace("model.", ""): t for k, t in sd.items()})
        np.testing.assert_allclose(got[i], _torch_logits(m.eval(), x), atol=1e-5, rtol=0)


def test_import_converters_hub_does_not_import_torch():
    """Hub loading has one public home, ``converters.hub``; importing it (and the CLI) needs no torch,
    and ``jaxuq`` has no hub module (it never imports ``converters``)."""
    import subprocess
    import sys

    code = ("import sys, jaxuq, converters.hub as h, converters.cli; assert callable(h.load_hf); "
            "assert not hasattr(jaxuq, 'hub') and 'hub' not in dir(jaxuq); "
            "print(any(k == 'torch' or k.startswith('torch.') for k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_resolve_hf_reads_hub_environment_at_call_time(tmp_path, monkeypatch):
    """HF_ENDPOINT / HF_HUB_OFFLINE / HF_HUB_CACHE set after huggingface_hub was imported are honoured
    (before, they were read once at import), and a missing file is a HubEntryNotFoundError."""
    import huggingface_hub  # noqa: F401 - imported before the environment changes

    from converters.io import HubEntryNotFoundError, resolve_hf

    _tu_repo(tmp_path / "srv")
    repo = f"torch-uncertainty/{WID}"
    with serve_hub(tmp_path / "srv") as (endpoint, log):
        hub_env(monkeypatch, endpoint=endpoint, hf_cache=tmp_path / "hf", jaxuq_cache=tmp_path / "jx")
        p = resolve_hf(repo, "config.yaml")
        assert p.read_text() == CONFIG and p.is_relative_to(tmp_path / "hf")
        assert ("GET", f"/{repo}/resolve/main/config.yaml") in log
        with pytest.raises(HubEntryNotFoundError, match="absent.ckpt"):
            resolve_hf(repo, "absent.ckpt")
    hub_env(monkeypatch, hf_cache=tmp_path / "hf", jaxuq_cache=tmp_path / "jx", offline=True)
    assert resolve_hf(repo, "config.yaml") == p  # offline: from the cache, no request
    with pytest.raises(HubEntryNotFoundError, match="HF_HUB_OFFLINE=1"):
        resolve_hf(repo, f"{WID}.ckpt")  # never downloaded
