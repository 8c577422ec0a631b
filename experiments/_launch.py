"""The one experiment launcher: discovery, config parsing, the run, the four outputs.

An experiment is any module ``experiments/<name>.py`` (name not starting with ``_``) that defines
``get_config() -> dict`` (flat JSON-able defaults: the tutorial's own size), ``SMALL: dict``
(overrides for a CI-sized run) and ``run(config, out_dir) -> (results, table_text)``. Its
docstring's first line is its summary; the docstring documents every config key.

    python -m experiments                                   # list the experiments
    python -m experiments <name> --help                     # config keys and defaults
    python -m experiments <name> [--small] [--set k=v ...] [--out DIR]
    python -m experiments.<name> [...]                      # the same

Every run writes ``DIR/config.json``, ``DIR/results.json`` (stamped with date, machine, versions and
wall-clock seconds: :func:`jaxuq._env.stamp`), ``DIR/table.txt`` and the experiment's plots into a
fresh folder beside ``DIR`` that replaces ``DIR`` only when the run succeeded; a failed or interrupted
run leaves ``DIR`` as it was. ``DIR`` follows the one output-folder rule (:func:`jaxuq._io.check_output_dir`,
checked before the run): it is missing, empty, or a folder the launcher marked as its own experiment
output (a previous run, which is replaced); a file, a link, the working folder or any other folder
(a data folder, a project) is refused. ``results.json`` holds no folder of the machine: a
path under the data folder reads ``<data_dir>/...``, under the run folder ``<run>/...``, under the home
folder ``~/...`` (:func:`jaxuq._env.portable_paths`); ``config.json`` is the settings as given.
``--set`` values are checked against the key's default: an int default takes an int (within int64), a
float default a finite number, a bool default a bool; no value may hold NaN or inf.
Exit status 2 on bad input (unknown key, bad value, refused output folder, missing data, a write error
such as a full disk), with one line on stderr; 130 on Ctrl-C, after removing the temporary folder.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import json
import math
import shutil
import sys
import time
from pathlib import Path

from jaxuq import _env
from jaxuq._io import (
    check_output_dir,
    new_output_tmp,
    publish_dir,
    sigint_deferred,
    write_json_atomic,
    write_text_atomic,
)

__all__ = ["EXPERIMENTS_DIR", "discover", "launch", "launch_module", "parse_overrides", "stamp"]

EXPERIMENTS_DIR = Path(__file__).resolve().parent
PACKAGE = "experiments"
KIND = "experiment"  # the output-folder marker's kind


class UsageError(Exception):
    """Bad command-line input: printed on stderr, exit status 2."""


def _summary(tree: ast.Module) -> str:
    doc = ast.get_docstring(tree) or ""
    return doc.strip().splitlines()[0] if doc.strip() else "(no docstring)"


def discover(folder: Path = EXPERIMENTS_DIR) -> dict[str, str]:
    """``{name: summary line}`` of every module in ``folder`` that defines ``get_config`` and
    ``run`` at top level (read from the source, nothing is imported), sorted by name."""
    found = {}
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        defs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        if {"get_config", "run"} <= defs:
            found[path.stem] = _summary(tree)
    return found


def _nonfinite(value) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_nonfinite(v) for v in value.values())
    return isinstance(value, list) and any(_nonfinite(v) for v in value)


def _checked(key: str, raw: str, value, default):
    """``value`` (``raw`` parsed) if it suits ``key``'s default; else ``UsageError`` naming both."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    want = None
    if isinstance(default, bool):
        want = None if isinstance(value, bool) else "true or false"
    elif isinstance(default, int):
        want = None if is_int and -(2**63) <= value < 2**63 else "an integer within int64"
    elif isinstance(default, float):
        want = None if is_int or isinstance(value, float) else "a number"
    if want is None and _nonfinite(value):
        want = "finite (no NaN or inf)"
    if want is not None:
        got = f"the string {value!r}" if isinstance(value, str) else json.dumps(value)
        raise UsageError(f"--set {key}={raw}: {key} must be {want} (its default is {json.dumps(default)}), "
                         f"got {got[:80]}")
    return value


def parse_overrides(pairs: list[str], config: dict) -> dict:
    """``["key=value", ...]`` -> ``{key: value}``; the value is parsed as JSON, else kept as a
    string, and checked against the key's default (:func:`_checked`). Raises ``UsageError`` for a pair
    without ``=``, an unknown key (listing the valid keys, with a did-you-mean) or a bad value."""
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise UsageError(f"--set expects key=value, got {pair!r}")
        if key not in config:
            close = difflib.get_close_matches(key, list(config), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"unknown config key {key!r}{hint}; valid keys: {', '.join(config)}")
        try:
            value = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            value = raw
        out[key] = _checked(key, raw, value, config[key])
    return out


def _config_help(module) -> str:
    lines = ["config keys (defaults; --small overrides in brackets):"]
    small = getattr(module, "SMALL", {})
    for key, value in module.get_config().items():
        extra = f"  [{json.dumps(small[key])}]" if key in small else ""
        lines.append(f"  {key} = {json.dumps(value)}{extra}")
    return "\n".join(lines)


def _parser(name: str, module) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=f"python -m experiments {name}",
        description=module.__doc__,
        epilog=_config_help(module),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--small", action="store_true", help="the small CI-sized config (SMALL)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (value parsed as JSON, else a string); repeatable",
    )
    ap.add_argument("--out", type=Path, default=None, help=f"output folder (default: runs/{name}/)")
    return ap


def stamp(wall_seconds: float) -> dict:
    """Date (UTC), machine, package versions (:func:`jaxuq._env.stamp`, as the benches) and
    wall-clock seconds of a run."""
    return {**_env.stamp(), "wall_seconds": wall_seconds}


def _roots(config: dict, out: Path, staging: Path) -> dict:
    """``{folder: token}`` for :func:`jaxuq._env.portable_paths`: the run folder (and the staging
    folder that becomes it) and the run's data folder (``data_dir`` or ``$JAXUQ_DATA_DIR``)."""
    roots = {out: "<run>", staging: "<run>"}
    try:
        roots[_env.data_dir(config.get("data_dir"))] = "<data_dir>"
    except FileNotFoundError:
        pass
    return roots


def execute(name: str, module, config: dict, out: Path) -> dict:
    """Run ``module`` with ``config`` into a fresh marked folder beside ``out`` (plots, then config.json,
    results.json, table.txt), which replaces ``out`` only when the run succeeded. ``out`` is checked
    before the run (:func:`jaxuq._io.check_output_dir`: missing, empty, or a previous experiment
    output; ``ValueError`` otherwise)."""
    check_output_dir(out, KIND, replace=True)
    staging = new_output_tmp(out, KIND)
    try:
        t0 = time.perf_counter()
        results, table = module.run(dict(config), staging)
        results = {"experiment": name, **results, **stamp(time.perf_counter() - t0)}
        results = _env.portable_paths(results, _roots(config, Path(out).absolute(), staging))
        write_json_atomic(staging / "config.json", config, indent=2)
        write_json_atomic(staging / "results.json", results, indent=2)
        write_text_atomic(staging / "table.txt", table)
        with sigint_deferred():
            publish_dir(staging, out, KIND, replace=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return results


def launch(name: str, argv: list[str], module=None) -> int:
    """Parse ``argv`` for experiment ``name`` (imported unless ``module`` is given), run it, print
    its table. 0 on success, 2 on bad input, a refused output folder, missing data or a write error
    (one line on stderr), 130 on Ctrl-C (the temporary folder removed, ``--out`` as it was)."""
    if module is None:
        module = importlib.import_module(f"{PACKAGE}.{name}")
    args = _parser(name, module).parse_args(argv)
    config = module.get_config()
    out = args.out if args.out is not None else Path("runs") / name
    try:
        if args.small:
            config.update(module.SMALL)
        config.update(parse_overrides(args.set, config))
        results = execute(name, module, config, out)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"error: {e}\n(set JAXUQ_DATA_DIR to the data folder, or --set data_dir=PATH)", file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted; {out} left as it was", file=sys.stderr)
        return 130
    print((out / "table.txt").read_text())
    print(
        f"{name}: config.json, results.json, table.txt and plots in {out} ({results['wall_seconds']:.1f} s)"
    )
    return 0


def launch_module(module_name: str, argv: list[str] | None = None) -> int:
    """Entry of ``python -m experiments.<name>``: call as ``launch_module(__name__)`` at the end of
    the module; it runs that module object (not a second import of it)."""
    module = sys.modules[module_name]
    spec = getattr(module, "__spec__", None)
    if spec is None:
        print(f"error: run it as `python -m experiments.<name>` (got {module.__file__})", file=sys.stderr)
        return 2
    name = spec.name.rpartition(".")[2]
    return launch(name, sys.argv[1:] if argv is None else argv, module)
