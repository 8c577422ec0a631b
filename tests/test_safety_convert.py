"""Converter reliability and security (issue 16, section 2): what --force may delete, no-replace final
rename, stale temporary folders, SIGINT, disk full, bad CLI input, format sniffing, zip bombs, float64
overflow, NaN verification. Each test fails on the code before the fix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO, require

torch = require("torch")
require("torch_uncertainty")

import jaxuq.models.io as mio  # noqa: E402
from converters.cli import main  # noqa: E402
from jaxuq._io import clean_stale  # noqa: E402
from tests.torch_models import randomize_, torch_model  # noqa: E402

pytestmark = pytest.mark.parity
LENET_KW = {"in_channels": 1, "num_classes": 10, "norm": "batchnorm"}


def _sd(seed=0):
    return randomize_(torch_model("lenet", **LENET_KW), seed=seed).state_dict()


def _ckpt(path: Path, seed=0) -> Path:
    torch.save(_sd(seed), path)
    return path


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _refused(capsys, *argv, needle=""):
    rc, out, err = _run(capsys, *argv)
    assert rc == 2, (out, err)
    assert err.startswith("jaxuq-convert: error: ") and "Traceback" not in err
    assert needle in err, err
    return err


# --------------------------------------------------------------------------------- what --force deletes
def test_force_refuses_a_folder_that_is_not_a_jaxuq_output(tmp_path, capsys):
    notes = tmp_path / "project"
    notes.mkdir()
    (notes / "notes.md").write_text("keep me")
    _refused(capsys, "convert", _ckpt(tmp_path / "a.pt"), "-o", notes, "--force",
             needle="jaxuq did not create it as a 'model' output")
    assert (notes / "notes.md").read_text() == "keep me"


def test_force_never_deletes_the_input_or_its_folder(tmp_path, capsys):
    src = _ckpt(tmp_path / "a.pt")
    assert _run(capsys, "convert", src, "-o", tmp_path / "out")[0] == 0
    inner = _ckpt(tmp_path / "out" / "b.pt", seed=1)  # a jaxuq output that now also holds an input
    _refused(capsys, "convert", inner, "-o", tmp_path / "out", "--force", needle="folder holding it")
    assert inner.is_file() and (tmp_path / "out" / "meta.json").is_file()
    _refused(capsys, "convert", src, "-o", src, "--force", needle="is the input")
    assert src.is_file()


def test_force_never_deletes_the_working_folder(tmp_path, capsys, monkeypatch):
    src = _ckpt(tmp_path / "a.pt")
    assert _run(capsys, "convert", src, "-o", tmp_path / "out")[0] == 0
    (tmp_path / "out" / "mine.txt").write_text("x")
    monkeypatch.chdir(tmp_path / "out")
    _refused(capsys, "convert", src, "-o", ".", "--force", needle="working folder")
    monkeypatch.chdir(tmp_path / "out" / "variables")
    _refused(capsys, "convert", src, "-o", "..", "--force", needle="working folder")
    assert (tmp_path / "out" / "mine.txt").exists()


def test_force_still_replaces_a_previous_output(tmp_path, capsys):
    assert _run(capsys, "convert", _ckpt(tmp_path / "a.pt"), "-o", tmp_path / "out")[0] == 0
    assert _run(capsys, "convert", _ckpt(tmp_path / "b.pt", 1), "-o", tmp_path / "out", "--force")[0] == 0
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["sources"][0]["path"].endswith("b.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt", "out"]


# --------------------------------------------------------------------------------- no-replace rename
def test_output_appearing_while_writing_is_not_replaced(tmp_path, capsys, monkeypatch):
    real = mio._checkpointer

    class Racer:  # another conversion finishes first, while this one is writing
        def __init__(self):
            self.c = real()

        def save(self, *a, **k):
            (tmp_path / "out").mkdir()
            (tmp_path / "out" / "meta.json").write_text('{"format": "jaxuq-model", "winner": 1}')
            return self.c.save(*a, **k)

        def __getattr__(self, name):
            return getattr(self.c, name)

    monkeypatch.setattr(mio, "_checkpointer", Racer)
    _refused(capsys, "convert", _ckpt(tmp_path / "a.pt"), "-o", tmp_path / "out", needle="appeared while writing")
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["winner"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "out"]


@pytest.mark.parametrize("native", [True, False])
def test_rename_noreplace(tmp_path, monkeypatch, native):
    import jaxuq._io as jio
    from jaxuq._io import rename_noreplace

    if not native:  # the portable fallback (mkdir + rename for folders, link for files)
        monkeypatch.setattr(jio, "_renameat2", lambda s, d: False)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("new")
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="appeared while writing"):
        rename_noreplace(tmp_path / "d", tmp_path / "taken")  # an EMPTY folder: os.rename would replace it
    rename_noreplace(tmp_path / "d", tmp_path / "e")
    assert (tmp_path / "e" / "f").read_text() == "new" and not (tmp_path / "d").exists()
    (tmp_path / "g").write_text("1")
    with pytest.raises(FileExistsError):
        rename_noreplace(tmp_path / "g", tmp_path / "e" / "f")
    assert (tmp_path / "e" / "f").read_text() == "new"


# --------------------------------------------------------------------------------- interrupted saves
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporary_folders_are_cleaned_on_the_next_run(tmp_path, capsys):
    stale = tmp_path / f".out.tmp-{_dead_pid()}-abcd1234"
    (stale / "variables").mkdir(parents=True)
    live = tmp_path / f".out.tmp-{os.getpid()}-live0000"  # a running save: left alone
    live.mkdir()
    assert _run(capsys, "convert", _ckpt(tmp_path / "a.pt"), "-o", tmp_path / "out")[0] == 0
    assert not stale.exists() and live.exists()
    # a --force replacement killed between its two renames: the previous output is put back
    (tmp_path / "out").rename(tmp_path / "keep")
    old = tmp_path / f".out.old-{_dead_pid()}-abcd1234"
    old.mkdir()
    (tmp_path / "keep").rename(old / "x")
    assert clean_stale(tmp_path / "out", mio.KIND, mio.intact) == [old]
    assert (tmp_path / "out" / "meta.json").is_file() and not old.exists()


@pytest.mark.slow
def test_sigint_during_a_real_save_leaves_nothing_and_no_traceback(tmp_path):
    """A 94 MB ResNet-50 checkpoint, SIGINT at several moments of orbax's write. Before the fix, 0.5 s
    into the write left `.out.tmp-*` and printed orbax tracebacks from its writer threads."""
    torch.save(torch_model("resnet", in_channels=3, num_classes=10, arch=50, style="cifar").state_dict(),
               tmp_path / "big.pt")
    script = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "  # a background
              "from converters.cli import main; sys.exit(main())")  # job starts with SIGINT ignored
    for delay in (0.1, 0.5, 1.0):
        work = tmp_path / f"w{delay}"
        work.mkdir()
        p = subprocess.Popen([sys.executable, "-c", script, "convert", str(tmp_path / "big.pt"), "-o",
                              str(work / "out")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        t0 = time.monotonic()
        while not list(work.glob(".out.tmp-*/variables*")) and p.poll() is None and time.monotonic() - t0 < 300:
            time.sleep(0.002)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=300)
        left = sorted(x.name for x in work.iterdir())
        assert "Traceback" not in err, (delay, err[-3000:])
        if p.returncode == 0:  # the save was complete before the signal: a whole output
            assert left == ["out"] and (work / "out" / "meta.json").is_file(), (delay, left)
        else:
            assert p.returncode == 130 and left == [], (delay, p.returncode, left, err[-2000:])


# --------------------------------------------------------------------------------- errors, not tracebacks
def test_disk_full_is_exit_2(tmp_path, capsys, monkeypatch):
    class Full:  # what tensorstore raises on ENOSPC (a ValueError, not an OSError)
        def save(self, path, *a, **k):
            Path(path).mkdir(parents=True)
            raise ValueError(f'OUT_OF_RANGE: Error writing "params" at local file "{path}": Failed to write '
                             "4096 bytes to file 4: No space left on device [os_error_code='28']")

        def wait_until_finished(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr(mio, "_checkpointer", Full)
    _refused(capsys, "convert", _ckpt(tmp_path / "a.pt"), "-o", tmp_path / "out", needle="No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]


def test_kwargs_must_be_a_json_object(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["convert", str(_ckpt(tmp_path / "a.pt")), "--kwargs", "[1,2]", "-o", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "expected a JSON object" in err and "Traceback" not in err


def test_non_utf8_output_path(tmp_path, capsys):
    bad = tmp_path / b"out-\xff".decode("utf-8", "surrogateescape")
    _refused(capsys, "convert", _ckpt(tmp_path / "a.pt"), "-o", bad, needle="not valid UTF-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]


def test_safetensors_named_pt_is_read_by_content(tmp_path, capsys):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in _sd().items()}, str(tmp_path / "model.pt"))
    rc, out, err = _run(capsys, "convert", tmp_path / "model.pt", "-o", tmp_path / "out")
    assert rc == 0, err
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["sources"][0]["format"] == "safetensors"
    rc, out, _ = _run(capsys, "inspect", tmp_path / "model.pt")
    assert rc == 0 and "detected from the content" in out


def test_zip_bomb_checkpoint_is_refused_before_inflating(tmp_path, capsys):
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\0" * (64 << 20))  # 64 MiB -> ~64 KB
    assert bomb.stat().st_size < 200_000
    _refused(capsys, "convert", bomb, "--arch", "lenet", "-o", tmp_path / "out", needle="zip bomb")


# --------------------------------------------------------------------------------- silent wrong results
def test_float64_beyond_float32_range_is_refused(tmp_path, capsys):
    sd = {k: (v.double() if v.is_floating_point() else v) for k, v in _sd().items()}
    sd["fc1.weight"][0, 0] = 1e39  # finite in float64, inf in float32
    torch.save(sd, tmp_path / "big.pt")
    _refused(capsys, "convert", tmp_path / "big.pt", "-o", tmp_path / "out", needle="'fc1.weight'")
    assert not (tmp_path / "out").exists()


def test_verify_fails_on_a_nan_difference(tmp_path, capsys, monkeypatch):
    import converters.core as core

    monkeypatch.setattr(core, "verify_with_torch", lambda *a, **k: [{"max_abs_diff": float("nan"), "max_abs": 1.0}])
    _refused(capsys, "convert", _ckpt(tmp_path / "a.pt"), "-o", tmp_path / "out", "--verify",
             needle="--verify failed")
    assert not (tmp_path / "out").exists()


def test_meta_json_is_strict_json(tmp_path):
    def no_constants(c):
        raise AssertionError(f"bare {c} in meta.json")

    mio.save(tmp_path / "o", {"params": {"w": np.ones(2, np.float32)}},
             {"arch": "lenet", "kwargs": {}, "verify": [{"max_abs_diff": float("nan")}], "x": float("inf")})
    meta = json.loads((tmp_path / "o" / "meta.json").read_text(), parse_constant=no_constants)
    assert meta["verify"][0]["max_abs_diff"] == "nan" and meta["x"] == "inf"
