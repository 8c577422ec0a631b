"""Issue 24: the launcher, the converter, the hub cache, the readers and fit under hostile or careless
input. One section per numbered defect of the issue; each test failed on the code before its fix
(834f71e; see the README's safety section for what is guaranteed and which test pins it).

Principles under test: one output-folder rule (jaxuq's marker, never a link, a file or a foreign
folder), names validated before they become paths, decoded sizes bounded before allocation, cached
artefacts verified by a digest, numeric settings validated at the boundary (TypeError for a wrong type,
ValueError for a value out of range, both naming the argument)."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import require


# ============================================================================ 1. launcher --out
def _fake(run, config=None):
    return types.SimpleNamespace(
        __doc__="Fake experiment.\n\nConfig keys:\n  a: a number.\n",
        get_config=lambda: dict(config or {"a": 1}),
        SMALL={},
        run=run,
    )


def _launch(capsys, argv, run=None, config=None):
    from experiments._launch import launch

    calls = []

    def default_run(cfg, out_dir):
        calls.append(dict(cfg))
        (out_dir / "plot.png").write_bytes(b"\x89PNG")
        return {"n": 1}, "table\n"

    rc = launch("fake", [str(a) for a in argv], _fake(run or default_run, config))
    out, err = capsys.readouterr()
    return rc, err, calls


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() and not p.is_symlink() else "dir")
            for p in sorted(folder.rglob("*"))}


def _one_line_refusal(rc, err, calls, needle):
    assert rc == 2 and not calls, (rc, err)  # refused before the run
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err, err


def test_launcher_refuses_folders_it_does_not_own(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"  # a data folder that happens to hold files of the launcher's names
    data.mkdir()
    for name in ("config.json", "results.json", "table.txt", "train.bin"):
        (data / name).write_text(f"keep {name}")
    before = _tree(tmp_path)
    _one_line_refusal(*_launch(capsys, ["--out", data]), needle="jaxuq did not create it as a 'experiment' output")
    monkeypatch.chdir(data)
    _one_line_refusal(*_launch(capsys, ["--out", "."]), needle="working folder")
    (tmp_path / "link").symlink_to(data)
    _one_line_refusal(*_launch(capsys, ["--out", tmp_path / "link"]), needle="symbolic link")
    assert _tree(tmp_path) == {**before, "link": "dir"}


def test_launcher_out_naming_a_file_fails_before_the_run(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    _one_line_refusal(*_launch(capsys, ["--out", tmp_path / "notes.txt"]), needle="is not a folder")
    assert (tmp_path / "notes.txt").read_text() == "mine" and os.listdir(tmp_path) == ["notes.txt"]


def test_launcher_replaces_only_its_own_previous_run(tmp_path, capsys):
    out = tmp_path / "run"
    rc, err, calls = _launch(capsys, ["--out", out])
    assert rc == 0 and len(calls) == 1, err
    (out / "stale.png").write_bytes(b"old plot")
    rc, err, calls = _launch(capsys, ["--out", out, "--set", "a=2"])
    assert rc == 0 and calls == [{"a": 2}], err
    assert sorted(os.listdir(out)) == [".jaxuq-output", "config.json", "plot.png", "results.json", "table.txt"]
    assert json.loads((out / "config.json").read_text()) == {"a": 2}
    assert os.listdir(tmp_path) == ["run"]  # no staging or .old folder left
    # a folder marked by the converter (kind "model") is not an experiment output
    (out / ".jaxuq-output").write_text(json.dumps({"format": "jaxuq-output", "kind": "model"}))
    _one_line_refusal(*_launch(capsys, ["--out", out]), needle="did not create it as a 'experiment' output")
    # a marker that is a link to a real marker is not trusted (lstat / O_NOFOLLOW)
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "m").write_text(json.dumps({"format": "jaxuq-output", "kind": "experiment"}))
    (out / ".jaxuq-output").unlink()
    (out / ".jaxuq-output").symlink_to(tmp_path / "real" / "m")
    _one_line_refusal(*_launch(capsys, ["--out", out]), needle="did not create it as a 'experiment' output")


def test_launcher_ctrl_c_is_exit_130_and_leaves_the_output(tmp_path, capsys):
    out = tmp_path / "run"
    assert _launch(capsys, ["--out", out])[0] == 0
    before = _tree(out)

    def interrupted(cfg, out_dir):
        (out_dir / "half.png").write_bytes(b"half")
        raise KeyboardInterrupt

    rc, err, _ = _launch(capsys, ["--out", out], run=interrupted)
    assert rc == 130 and "interrupted" in err and "Traceback" not in err
    assert _tree(out) == before and os.listdir(tmp_path) == ["run"]


# ============================================================================ 3. converter --force
@pytest.fixture
def lenet_ckpt(tmp_path):
    torch = require("torch")
    require("torch_uncertainty")
    from tests.torch_models import randomize_, torch_model

    def make(name="a.pt", seed=0):
        sd = randomize_(torch_model("lenet", in_channels=1, num_classes=10, norm="batchnorm"), seed=seed)
        torch.save(sd.state_dict(), tmp_path / name)
        return tmp_path / name

    return make


def _convert(capsys, *argv):
    from converters.cli import main

    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def test_force_refuses_a_folder_whose_meta_json_links_to_a_real_one(tmp_path, capsys, lenet_ckpt):
    src = lenet_ckpt()
    assert _convert(capsys, "convert", src, "-o", tmp_path / "real")[0] == 0
    proj = tmp_path / "project"
    proj.mkdir()
    (proj / "thesis.tex").write_text("keep me")
    (proj / "meta.json").symlink_to(tmp_path / "real" / "meta.json")
    rc, err = _convert(capsys, "convert", src, "-o", proj, "--force")
    assert rc == 2 and "jaxuq did not create it as a 'model' output" in err, err
    assert (proj / "thesis.tex").read_text() == "keep me"
    (tmp_path / "alias").symlink_to(tmp_path / "real")  # --force onto a link to a real output
    rc, err = _convert(capsys, "convert", src, "-o", tmp_path / "alias", "--force")
    assert rc == 2 and "symbolic link" in err, err
    assert _convert(capsys, "convert", src, "-o", tmp_path / "real", "--force")[0] == 0  # its own: replaced


# ============================================================================ 10. launcher --set values
SETTINGS = {"epochs": 3, "seed": 0, "lr": 0.05, "crop": True, "model": "lenet", "data_dir": None}


@pytest.mark.parametrize(("pair", "needle"), [
    ("epochs=abc", "epochs must be an integer within int64"),
    ("epochs=1.5", "epochs must be an integer"),
    ("epochs=1e400", "epochs must be an integer"),
    ("seed=1.5", "seed must be an integer"),
    ("seed=1e23", "seed must be an integer"),
    ("seed=100000000000000000000000", "seed must be an integer within int64"),
    ("lr=fast", "lr must be a number"),
    ("lr=1e400", "lr must be finite"),
    ("lr=NaN", "lr must be finite"),
    ("crop=1", "crop must be true or false"),
    ("data_dir=[1e400]", "data_dir must be finite"),
])
def test_launcher_bad_values_are_exit_2_one_line(tmp_path, capsys, pair, needle):
    rc, err, calls = _launch(capsys, ["--set", pair, "--out", tmp_path / "o"], config=SETTINGS)
    _one_line_refusal(rc, err, calls, f"--set {pair}: {needle}")
    assert not (tmp_path / "o").exists()


def test_launcher_good_values_still_parse(tmp_path, capsys):
    argv = ["--set", "epochs=2", "--set", "lr=1", "--set", "crop=false", "--set", "model=vgg",
            "--set", "data_dir=/x", "--out", tmp_path / "o"]
    rc, err, calls = _launch(capsys, argv, config=SETTINGS)
    assert rc == 0, err
    assert calls == [{"epochs": 2, "seed": 0, "lr": 1, "crop": False, "model": "vgg", "data_dir": "/x"}]


# ============================================================================ 2. hub names that become paths
def _files(folder: Path, skip: Path | None = None) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not (skip is not None and p.is_relative_to(skip))}


@pytest.mark.parametrize("revision", ["../../../somewhere/notes.txt", "/abs/notes", "main/../../x", "..", ""])
def test_hub_revision_is_validated_before_any_request(tmp_path, monkeypatch, capsys, revision):
    require("huggingface_hub")
    from converters.io import CheckpointError, resolve_hf
    from tests.hub_server import hub_env, serve_hub

    repo = tmp_path / "srv" / "org" / "name"
    repo.mkdir(parents=True)
    (repo / "w.ckpt").write_bytes(b"weights")
    (tmp_path / "somewhere").mkdir()
    (tmp_path / "somewhere" / "notes.txt").write_text("my notes")
    before = _files(tmp_path, skip=tmp_path / "hf")
    with serve_hub(tmp_path / "srv") as (endpoint, log):
        hub_env(monkeypatch, endpoint=endpoint, hf_cache=tmp_path / "hf" / "cache", jaxuq_cache=tmp_path / "jx")
        with pytest.raises(CheckpointError, match="revision"):
            resolve_hf("org/name", "w.ckpt", revision=revision)
        rc, err = _convert(capsys, "convert", f"hf://org/name/w.ckpt@{revision}", "-o", tmp_path / "out")
        assert rc == 2 and "revision" in err and "Traceback" not in err, err
        rc, err = _convert(capsys, "convert", "--hf-repo", "org/name", "--hf-file", "w.ckpt",
                           "--revision", revision, "-o", tmp_path / "out")
        assert rc == 2 and "revision" in err, err
        assert log == []  # refused before any request
    assert _files(tmp_path, skip=tmp_path / "hf") == before  # nothing written outside the cache
    assert (tmp_path / "somewhere" / "notes.txt").read_text() == "my notes"


@pytest.mark.parametrize(("repo_id", "filename", "what"), [
    ("org/../../etc", "w.ckpt", "repo id"), ("org/name/extra", "w.ckpt", "repo id"),
    ("org/name", "../../secret", "file name"), ("org/name", "/etc/passwd", "file name"),
])
def test_hub_repo_id_and_file_name_are_validated(tmp_path, monkeypatch, repo_id, filename, what):
    require("huggingface_hub")
    from converters import hub
    from converters.io import CheckpointError, resolve_hf
    from tests.hub_server import hub_env

    hub_env(monkeypatch, hf_cache=tmp_path / "hf", jaxuq_cache=tmp_path / "jx", offline=True)
    with pytest.raises(CheckpointError, match=what):
        resolve_hf(repo_id, filename)
    local = tmp_path / "local"  # a local folder as the repo: the file name may not leave it
    local.mkdir()
    (tmp_path / "secret").write_text("s")
    with pytest.raises(CheckpointError, match="file name"):
        resolve_hf(str(local), "../secret")
    with pytest.raises(CheckpointError, match="weight id"):
        hub.tu_source("../lenet")
    with pytest.raises(ValueError, match="version"):
        hub.tu_source("lenet", version=-1)
    with pytest.raises(TypeError, match="version"):
        hub.tu_source("lenet", version=1.5)


# ============================================================================ 5. YAML alias bomb
def _alias_bomb(depth: int) -> str:
    lines = ['a0: &a0 ["xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]']
    for i in range(1, depth + 1):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + f"\nmodel:\n  init_args:\n    in_channels: 1\n    bomb: *a{depth}\n"


def test_yaml_alias_bomb_is_refused_before_meta_json(tmp_path):
    require("yaml")
    from converters import hub
    from converters.io import CheckpointError

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "config.yaml").write_text(_alias_bomb(6))  # ~0.5 kB -> 10**6 lists of a 50-char string
    assert (repo / "config.yaml").stat().st_size < 1000
    with pytest.raises(CheckpointError, match="alias"):
        hub.read_config(str(repo))
    (repo / "config.yaml").write_text("model: &m\n  init_args: {in_channels: 1}\n  again: *m\nx: &x [*x]\n")
    with pytest.raises(CheckpointError, match="alias"):  # a recursive alias
        hub.read_config(str(repo))
    (repo / "config.yaml").write_text("base: &b {num_classes: 10}\nmodel:\n  init_args: *b\n")
    assert hub.read_config(str(repo))["model"]["init_args"] == {"num_classes": 10}  # plain aliases still work


# ============================================================================ 7, 14. the hub conversion cache
@pytest.fixture
def cached_repo(tmp_path, monkeypatch, lenet_ckpt):
    """A local-folder repo holding one LeNet checkpoint, loaded once into a fresh conversion cache.
    Returns ``(load, entry, variables, meta)``; ``load()`` loads it again and counts conversions."""
    import jax

    from converters import hub

    monkeypatch.setenv("JAXUQ_CACHE", str(tmp_path / "jx"))
    repo = tmp_path / "repo"
    repo.mkdir()
    lenet_ckpt("a.pt").rename(repo / "a.ckpt")
    calls = []
    real = hub.convert

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(hub, "convert", counted)

    def load():
        n = len(calls)
        module, variables, meta = hub.load_repo(str(repo), "a.ckpt")
        return module, jax.tree.map(np.asarray, variables), meta, len(calls) > n

    _, variables, meta, converted = load()
    assert converted and not meta["cache"]["hit"]
    return load, Path(meta["cache"]["path"]), variables, meta


def _same(a, b) -> bool:
    import jax

    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _rebuilt(load, variables, meta):
    """The next load converts again and gives the true model; the one after is a verified hit."""
    module, v, m, converted = load()
    assert converted and not m["cache"]["hit"] and _same(v, variables) and m["kwargs"] == meta["kwargs"]
    _, v2, m2, converted = load()
    assert not converted and m2["cache"]["hit"] and _same(v2, variables)


def test_cache_flipped_byte_is_rebuilt(cached_repo):
    load, entry, variables, meta = cached_repo
    big = max((p for p in (entry / "variables").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    raw = bytearray(big.read_bytes())
    raw[len(raw) // 2] ^= 0x40  # orbax decodes it to other weights (no error of its own)
    big.write_bytes(bytes(raw))
    _rebuilt(load, variables, meta)


def test_cache_swapped_variables_and_tampered_kwargs_are_rebuilt(cached_repo):
    import orbax.checkpoint as ocp

    load, entry, variables, meta = cached_repo
    swapped = {**variables, "batch_stats": {**variables["batch_stats"]}}
    bn = swapped["batch_stats"]["norm1"]
    swapped["batch_stats"]["norm1"] = {"mean": bn["var"], "var": bn["mean"]}  # same shapes, other names
    import shutil

    shutil.rmtree(entry / "variables")
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(entry / "variables", swapped)
    ckptr.wait_until_finished()
    ckptr.close()
    _rebuilt(load, variables, meta)
    doc = json.loads((entry / "meta.json").read_text())
    doc["kwargs"]["activation"] = "tanh"
    (entry / "meta.json").write_text(json.dumps(doc))
    _rebuilt(load, variables, meta)


def test_cache_links_files_and_foreign_folders_are_replaced(cached_repo, tmp_path):
    import shutil

    load, entry, variables, meta = cached_repo
    shutil.copytree(entry, tmp_path / "copy", symlinks=True)  # a valid entry elsewhere, then a link to it
    shutil.rmtree(entry)
    entry.symlink_to(tmp_path / "copy")
    _rebuilt(load, variables, meta)
    assert not entry.is_symlink() and (tmp_path / "copy" / "meta.json").is_file()  # the target is untouched
    shutil.rmtree(entry)
    entry.write_text("not a folder")  # a file where an entry should be
    _rebuilt(load, variables, meta)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("keep")
    shutil.rmtree(entry)
    entry.symlink_to(tmp_path / "mine")  # a link to a folder that is not a jaxuq entry
    _rebuilt(load, variables, meta)
    assert (tmp_path / "mine" / "keep.txt").read_text() == "keep"


def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_cache_leftover_old_folder_is_checked_before_use(cached_repo):
    import shutil

    load, entry, variables, meta = cached_repo
    old = entry.parent / f".{entry.name}.old-{_dead_pid()}-abcd1234"
    old.mkdir()
    shutil.copytree(entry, old / "x")
    (old / "x" / "meta.json").write_text((old / "x" / "meta.json").read_text().replace('"lenet"', '"vgg"'))
    shutil.rmtree(entry)
    _rebuilt(load, variables, meta)  # the tampered .old is removed, not moved into place
    assert not old.exists()
    old.mkdir()
    entry.rename(old / "x")  # an intact .old (a replacement killed between its renames) is put back
    _, v, m, converted = load()
    assert not converted and m["cache"]["hit"] and _same(v, variables) and not old.exists()


def test_cache_truncated_entry_is_rebuilt_without_tracebacks(cached_repo, capfd, monkeypatch):
    """orbax's reader threads, failing midway, used to print "Event loop is closed" tracebacks (through
    sys.unraisablehook); the files are now checked against their recorded sizes and digests first."""
    import sys
    import time

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    load, entry, variables, meta = cached_repo
    for pattern in ("variables/manifest.ocdbt", "variables/d/*", "variables/ocdbt.process_0/d/*"):
        p = max(entry.glob(pattern), key=lambda q: q.stat().st_size)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        capfd.readouterr()
        _rebuilt(load, variables, meta)
        time.sleep(0.5)  # late callbacks of reader threads
        err = capfd.readouterr().err
        assert "Traceback" not in err and "Event loop is closed" not in err, (pattern, err[-2000:])
        assert not unraisable, (pattern, [str(u.exc_value) for u in unraisable][:3])


# ============================================================================ 8, 15, 16. numeric settings
def _logits(n=120, c=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    z = rng.normal(size=(n, c)).astype(np.float32)
    z[np.arange(n), y] += 3.0
    return z, y


def _raises(exc, needle, fn):
    with pytest.raises(exc, match=needle):
        fn()


@pytest.mark.parametrize("case", ["temp_lr_nan", "temp_lr_inf", "vector_lr_nan", "temp_eps_neg", "ts_lr_nan",
                                  "ts_max_iter_float"])
def test_optimiser_settings_are_finite_and_in_range(case):
    from jaxuq.calibration import conformal as C
    from jaxuq.calibration import scaling as S

    z, y = _logits()
    nan, inf = float("nan"), float("inf")
    fn, exc, needle = {
        "temp_lr_nan": (lambda: S.temperature_fit(z, y, lr=nan), ValueError, "`lr` must be finite"),
        "temp_lr_inf": (lambda: S.temperature_fit(z, y, lr=inf), ValueError, "`lr` must be finite"),
        "vector_lr_nan": (lambda: S.vector_fit(z, y, lr=nan), ValueError, "`lr` must be finite"),
        "temp_eps_neg": (lambda: S.temperature_fit(z, y, eps=-1), ValueError, "`eps` must be > 0"),
        "ts_lr_nan": (lambda: C.conformal_fit(z, y, enable_ts=True, ts_lr=nan), ValueError, "`ts_lr`"),
        "ts_max_iter_float": (lambda: C.conformal_fit(z, y, enable_ts=True, ts_max_iter=1.5), TypeError,
                              "`ts_max_iter`"),
    }[case]
    _raises(exc, needle, fn)


def test_coverage_rate_checks_labels_for_both_averages_as_tu_raises():
    from jaxuq.calibration.conformal import coverage_rate

    sets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], bool)
    _raises(ValueError, "`num_classes` must be >= 2", lambda: coverage_rate(sets, [0, 1, 2], average="macro",
                                                                             num_classes=1))
    _raises(TypeError, "`num_classes` must be an int", lambda: coverage_rate(sets, [0, 1, 2], average="macro",
                                                                              num_classes=3.0))
    _raises(ValueError, "but `sets` has 3 columns", lambda: coverage_rate(sets, [0, 1, 2], average="macro",
                                                                           num_classes=5))
    for average in ("micro", "macro"):  # was 1.0 (micro) and a silently dropped label (macro)
        _raises(ValueError, r"`labels` values must lie in \[0, 2\]",
                lambda a=average: coverage_rate(sets, [0, 1, 5], average=a))
    _raises(ValueError, "average must be", lambda: coverage_rate(sets, [0, 1, 2], average="weighted"))
    assert float(coverage_rate(sets, [0, 1, 2])) == pytest.approx(2 / 3)
    assert float(coverage_rate(sets, [0, 1, 2], average="macro", num_classes=3)) == pytest.approx(2 / 3)


def test_cov_at_risk_does_not_coerce_strings():
    import jax

    from jaxuq.metrics import streaming
    from jaxuq.metrics.selective import cov_at_risk, risk_at_cov

    z, y = _logits()
    p = np.asarray(jax.nn.softmax(z))
    _raises(TypeError, "`risk` must be a real number", lambda: cov_at_risk(p, y, risk="0.5"))
    _raises(TypeError, "`risk` must be a real number", lambda: streaming.cov_at_risk(risk="0.5"))
    _raises(ValueError, "`risk` must be finite", lambda: cov_at_risk(p, y, risk=float("nan")))
    _raises(ValueError, "`cov` must be in", lambda: streaming.risk_at_cov(cov=1.5))
    _raises(TypeError, "`cov` must be a real number", lambda: risk_at_cov(p, y, cov="0.8"))


@pytest.mark.parametrize("layer", ["dense", "conv"])
@pytest.mark.parametrize("kw, exc, needle", [
    ({"num_estimators": None}, ValueError, "`num_estimators`"),   # TU: ValueError (was int(None) TypeError)
    ({"num_estimators": 1.5}, TypeError, "`num_estimators` should be an int"),  # TU: TypeError (was ValueError)
    ({"num_estimators": 0}, ValueError, "`num_estimators` should be >= 1"),
    ({"gamma": 0.5}, TypeError, "`gamma` should be an int"),
    ({"gamma": 0}, ValueError, "`gamma` should be >= 1"),
    ({"alpha": None}, ValueError, "`alpha`"),
    ({"alpha": float("nan")}, ValueError, "`alpha` should be > 0"),
])
def test_packed_layers_raise_tu_exception_types(layer, kw, exc, needle):
    import jax
    import jax.numpy as jnp

    from jaxuq.nn.packed import PackedConv, PackedDense

    base = {"alpha": 2, "num_estimators": 2, **kw}
    if layer == "dense":
        m, x = PackedDense(in_features=4, out_features=4, **base), jnp.ones((1, 8))
    else:
        m, x = PackedConv(in_channels=4, out_channels=4, kernel_size=1, **base), jnp.ones((1, 2, 2, 8))
    _raises(exc, needle, lambda: m.init(jax.random.key(0), x))


def test_raps_regularization_rank_type_is_a_type_error():
    from jaxuq.calibration.conformal import conformal_fit

    z, y = _logits()
    _raises(TypeError, "regularization_rank should be an integer",
            lambda: conformal_fit(z, y, method="raps", regularization_rank=0.1))
    _raises(ValueError, "regularization_rank should be strictly positive",
            lambda: conformal_fit(z, y, method="raps", regularization_rank=0))


# ============================================================================ 6, 9, 13. fit
@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (32, 16, 16, 1)).astype(np.uint8), rng.integers(0, 10, 32).astype(np.int64)


def _cfg(**kw):
    import optax

    from jaxuq.train import TrainConfig

    return TrainConfig(**{"optimizer": optax.sgd(0.05), "epochs": 1, "batch_size": 16, "quiet": True, **kw})


@pytest.mark.slow  # 36-45 s on the loaded 2-core box (compiles two fits)
def test_an_epoch_with_every_step_skipped_logs_nan_not_zero(tiny):
    import jax.numpy as jnp

    from jaxuq.train import fit
    from tests.tiny_models import TinyCNN

    def nan_loss(out, y):
        return jnp.mean(out) * jnp.nan

    with pytest.warns(RuntimeWarning, match="every step had a non-finite loss and was skipped"):
        r = fit(TinyCNN(), tiny, _cfg(on_nonfinite="skip", loss_fn=nan_loss))
    h = r.history[0]
    assert np.isnan(h["train_loss"]) and np.isnan(h["train_acc"]) and h["nonfinite_steps"] == 2


@pytest.mark.parametrize("change, needle", [
    ("lr", "the optimizer .* changed"), ("seed", "seed 0 -> 1"), ("data", "the training set changed"),
])
def test_resume_with_another_lr_seed_or_training_set_is_refused(tiny, tmp_path, change, needle):
    import optax

    from jaxuq.train import fit
    from tests.tiny_models import TinyCNN

    fit(TinyCNN(), tiny, _cfg(), workdir=tmp_path)
    x, y = tiny
    cfg, data = _cfg(epochs=2), tiny
    if change == "lr":
        cfg = cfg.replace(optimizer=optax.sgd(0.5))
    elif change == "seed":
        cfg = cfg.replace(seed=1)
    else:
        data = (x[::-1].copy(), y)
    with pytest.raises(ValueError, match=f"cannot resume from checkpoint 2 .*{needle}"):
        fit(TinyCNN(), data, cfg, workdir=tmp_path)


def test_fit_labels_are_checked_in_their_original_dtype(tiny):
    from jaxuq.train import fit
    from tests.tiny_models import TinyCNN

    x, y = tiny
    for bad in (np.int64(2**32), np.int64(-(2**32) + 1)):
        yb = y.copy()
        yb[3] = bad  # int32 would wrap it to class 0 / 1
        with pytest.raises(ValueError, match=r"train labels must be in \[0, 10\)"):
            fit(TinyCNN(), (x, yb), _cfg())
    with pytest.raises(ValueError, match=r"train labels must be in \[0, 10\)"):
        fit(TinyCNN(), (x, y.astype(np.uint64) + np.uint64(2**32)), _cfg())


def test_a_log_path_that_is_a_directory_fails_before_training(tiny, tmp_path):
    from jaxuq.train import JsonlLogger, fit
    from tests.tiny_models import TinyCNN

    (tmp_path / "metrics.jsonl").mkdir()
    with pytest.raises(ValueError, match="is not a regular file"):
        JsonlLogger(tmp_path / "metrics.jsonl")
    with pytest.raises(ValueError, match="is not a regular file"):
        fit(TinyCNN(), tiny, _cfg(), workdir=tmp_path)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_evaluate_refuses_an_empty_batch_and_a_fractional_batch_size(tiny):
    """Item 13: an iterable with an empty batch was a ZeroDivisionError, ``batch_size=1.5`` a bare
    TypeError; both now name the input (``fit``'s batch size is checked by ``TrainConfig``)."""
    import jax

    from jaxuq import evaluate
    from jaxuq.train import TrainConfig
    from tests.tiny_models import TinyCNN

    x, y = tiny
    x = x.astype(np.float32)
    m = TinyCNN()
    v = m.init(jax.random.key(0), x[:1])
    with pytest.raises(ValueError, match=r"batch 1 of `data` is empty"):
        evaluate(m, v, iter([(x[:4], y[:4]), (x[:0], y[:0])]), progress=False)
    with pytest.raises(TypeError, match="batch_size must be an int, got float"):
        evaluate(m, v, (x, y), batch_size=1.5, progress=False)
    with pytest.raises(TypeError, match="batch_size must be an int, got float"):
        TrainConfig(batch_size=1.5)


# ============================================================================ 11, 12. Ctrl-C and a full disk in fit
class _SaveFails:
    """Patches orbax's CheckpointManager.save: the ``n``-th save leaves a tmp step folder, then raises."""

    def __init__(self, monkeypatch, n: int, exc: BaseException):
        import orbax.checkpoint as ocp

        self.real, self.n, self.exc, self.calls = ocp.CheckpointManager.save, n, exc, 0
        monkeypatch.setattr(ocp.CheckpointManager, "save", self)

    def __get__(self, manager, owner):  # bound like a method
        return lambda step, *a, **k: self(manager, step, *a, **k)

    def __call__(self, manager, step, *a, **k):
        self.calls += 1
        if self.calls < self.n:
            return self.real(manager, step, *a, **k)
        (Path(manager.directory) / f"{step}.orbax-checkpoint-tmp-1234").mkdir()
        raise self.exc


def _left(ckdir: Path) -> list[str]:
    return sorted(p.name for p in ckdir.iterdir())


@pytest.mark.slow  # 36-45 s on the loaded 2-core box (compiles two fits)
def test_ctrl_c_in_fit_is_a_clean_stop_that_says_how_to_resume(tiny, tmp_path, monkeypatch):
    from jaxuq.train import fit
    from tests.tiny_models import TinyCNN

    _SaveFails(monkeypatch, 2, KeyboardInterrupt())  # Ctrl-C while the second checkpoint is written
    with pytest.raises(KeyboardInterrupt, match="last checkpoint: step 2 under .*same workdir .*to resume"):
        fit(TinyCNN(), tiny, _cfg(epochs=2), workdir=tmp_path)
    assert _left(tmp_path / "checkpoints") == ["2"]  # the last checkpoint kept, no *.orbax-checkpoint-tmp*
    monkeypatch.undo()
    r = fit(TinyCNN(), tiny, _cfg(epochs=2), workdir=tmp_path)
    assert r.resumed_from == 2 and [h["epoch"] for h in r.history] == [2]


def test_a_full_disk_in_fit_is_one_line_and_leaves_no_tmp_folder(tiny, tmp_path, monkeypatch):
    from jaxuq.train import fit
    from tests.tiny_models import TinyCNN

    full = ValueError('RESOURCE_EXHAUSTED: Error writing "params": Failed to write 4096 bytes: No space left '
                      "on device [os_error_code='28']")  # what tensorstore raises
    _SaveFails(monkeypatch, 1, full)
    with pytest.raises(OSError, match="no space left on device: checkpoint 2 under .* to resume") as e:
        fit(TinyCNN(), tiny, _cfg(), workdir=tmp_path)
    assert e.value.__cause__ is None and e.value.__suppress_context__ and "\n" not in str(e.value)
    assert _left(tmp_path / "checkpoints") == []
