"""Packaging: pyproject metadata, the built wheel (py.typed, licence, extras) and the lazy top-level API."""

import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRESENT = ["calibration", "data", "ensembles", "evaluation", "metrics", "models", "nn", "ood", "report", "train"]


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(req: str) -> str:
    return req.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].split("!")[0].strip()


def test_pyproject_metadata():
    p = _pyproject()
    assert p["requires-python"] == ">=3.11"  # jax 0.10 / flax 0.12 / orbax 0.12 need 3.11
    assert p["license"] == "Apache-2.0" and p["license-files"] == ["LICENSE"]
    deps = {_name(d): d for d in p["dependencies"]}
    assert {"jax", "flax", "optax", "orbax-checkpoint", "numpy", "rich", "scipy"} <= set(deps)
    assert "matplotlib" not in deps
    capped = [d for d in p["dependencies"] if "<" in d or "==" in d or "~=" in d]
    assert capped == [], f"runtime dependencies must have lower bounds only: {capped}"
    extras = p["optional-dependencies"]
    assert {"plots", "cuda12", "cuda13", "tpu", "torch", "tfds", "examples", "dev"} <= set(extras)
    assert [_name(r) for r in extras["plots"]] == ["matplotlib"]
    for extra in ["cuda12", "cuda13", "tpu"]:
        assert extras[extra][0].startswith(f"jax[{extra}]"), extra
    dev = {_name(d): d for d in extras["dev"]}
    for pkg in ["jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "torch", "torch-uncertainty", "pdoc"]:
        assert "==" in dev[pkg], f"[dev] pins {pkg} exactly: {dev[pkg]}"
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert build == ["setuptools>=77"]  # SPDX `license` strings and `license-files`


@pytest.mark.slow
def test_wheel_ships_py_typed_licence_and_metadata(tmp_path):
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for d in ["jaxuq", "converters"]:
        shutil.copytree(ROOT / d, src / d, ignore=ignore)
    for f in ["pyproject.toml", "README.md", "LICENSE"]:
        shutil.copy(ROOT / f, src / f)
    # build isolation: pip fetches setuptools>=77 as [build-system] asks, whatever this venv holds
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
           str(tmp_path / "dist"), str(src)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    (wheel,) = (tmp_path / "dist").glob("jaxuq-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(z.read(meta_name).decode())
    assert "jaxuq/py.typed" in names and "jaxuq/_progress.py" in names and "converters/cli.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta["Requires-Python"] == ">=3.11"
    assert {"plots", "cuda12", "cuda13", "tpu", "dev"} <= set(meta.get_all("Provides-Extra"))
    runtime = [r for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    assert not [r for r in runtime if "<" in r], runtime


def test_lazy_subpackages_and_dir():
    code = textwrap.dedent(f"""
        import sys
        import jaxuq
        assert not [m for m in sys.modules if m.startswith("jaxuq.")], "import jaxuq loads no subpackage"
        assert not hasattr(jaxuq, "hub"), "hub loading lives in converters.hub (converters imports jaxuq)"
        assert callable(jaxuq.metrics.ece) and "jaxuq.metrics" in sys.modules
        for name in {PRESENT!r}:
            assert getattr(jaxuq, name) is sys.modules["jaxuq." + name], name
        for name in ("evaluate", "predict", "classification_table"):  # one name per meaning
            assert getattr(jaxuq, name) is getattr(jaxuq.evaluation, name), name
        assert callable(jaxuq.evaluate) and not hasattr(jaxuq.evaluate, "__path__")
        listed = set(dir(jaxuq))
        want = set({PRESENT!r}) | {{"evaluate", "predict", "classification_table"}}
        assert want <= listed, want - listed
        try:
            jaxuq.no_such_thing
        except AttributeError as e:
            assert "no_such_thing" in str(e)
        else:
            raise AssertionError("jaxuq.no_such_thing did not raise AttributeError")
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "ok", out.stderr


def test_progress_draws_on_process_0_only_and_not_when_quiet(monkeypatch):
    import rich.progress

    from jaxuq import _progress

    assert list(_progress.track(range(5), "steps")) == [0, 1, 2, 3, 4]
    assert list(_progress.track(iter("ab"), "no len")) == ["a", "b"]

    def no_bar(*a, **k):
        raise AssertionError("a bar was drawn")

    monkeypatch.setattr(_progress, "Progress", no_bar)
    assert list(_progress.track(range(3), "quiet", quiet=True)) == [0, 1, 2]
    monkeypatch.setattr(_progress.jax, "process_index", lambda: 1)
    assert not _progress.enabled()
    with _progress.progress_bar("bytes", 10, unit="bytes") as advance:
        advance(4)
    monkeypatch.setattr(_progress.jax, "process_index", lambda: 0)
    seen = {}

    class Spy(rich.progress.Progress):
        def stop(self):
            t = self.tasks[0]
            seen.update(completed=t.completed, description=t.description, loss=t.fields["loss"])
            super().stop()

    monkeypatch.setattr(_progress, "Progress", Spy)  # a real bar: extra field, resumed start, new description
    with _progress.progress_bar("fit", 10, completed=4, columns=("loss {task.fields[loss]:.2f}",),
                                loss=float("nan")) as advance:
        advance(3, description="fit epoch 2/2", loss=0.5)
        advance()
    assert seen == {"completed": 8, "description": "fit epoch 2/2", "loss": 0.5}
    monkeypatch.setattr(_progress, "Progress", no_bar)
    assert _progress.enabled() and not _progress.enabled(quiet=True)
    with pytest.raises(AssertionError, match="a bar was drawn"):
        list(_progress.track(range(3), "drawn"))
