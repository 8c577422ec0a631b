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
