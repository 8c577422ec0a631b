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
wall-clock seconds: :func:`jaxuq._env.stamp`), ``DIR/table.txt`` and the experiment's plots, each file
atomically; a failed run leaves ``DIR`` as it was. ``results.json`` holds no folder of the machine: a
path under the data folder reads ``<data_dir>/...``, under the run folder ``<run>/...``, under the home
folder ``~/...`` (:func:`jaxuq._env.portable_paths`); ``config.json`` is the settings as given.
Exit status 2 on bad input (unknown key, bad value, missing data).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from jaxuq import _env
from jaxuq._io import write_json_atomic, write_text_atomic

__all__ = ["EXPERIMENTS_DIR", "discover", "launch", "launch_module", "parse_overrides", "stamp"]

EXPERIMENTS_DIR = Path(__file__).resolve().parent
PACKAGE = "experiments"


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


def parse_overrides(pairs: list[str], config: dict) -> dict:
    """``["key=value", ...]`` -> ``{key: value}``; the value is parsed as JSON, else kept as a
    string. Raises ``UsageError`` for a pair without ``=`` or an unknown key (listing the valid
    keys, with a did-you-mean)."""
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
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
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


def _publish(staging: Path, out: Path) -> None:
    """Move every file of ``staging`` into ``out`` with ``os.replace`` (atomic per file)."""
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(staging.iterdir()):
        os.replace(f, out / f.name)


def execute(name: str, module, config: dict, out: Path) -> dict:
    """Run ``module`` with ``config``; plots go to a staging folder beside ``out`` and are moved in
    only when the run succeeded; then config.json, results.json and table.txt are written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        t0 = time.perf_counter()
        results, table = module.run(dict(config), staging)
        results = {"experiment": name, **results, **stamp(time.perf_counter() - t0)}
        results = _env.portable_paths(results, _roots(config, out, staging))
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_json_atomic(out / "config.json", config, indent=2)
    write_json_atomic(out / "results.json", results, indent=2)
    write_text_atomic(out / "table.txt", table)
    return results


def launch(name: str, argv: list[str], module=None) -> int:
    """Parse ``argv`` for experiment ``name`` (imported unless ``module`` is given), run it, print
    its table. 0 on success, 2 on bad input or missing data."""
    if module is None:
        module = importlib.import_module(f"{PACKAGE}.{name}")
    args = _parser(name, module).parse_args(argv)
    config = module.get_config()
    try:
        if args.small:
            config.update(module.SMALL)
        config.update(parse_overrides(args.set, config))
        out = args.out if args.out is not None else Path("runs") / name
        results = execute(name, module, config, out)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"error: {e}\n(set JAXUQ_DATA_DIR to the data folder, or --set data_dir=PATH)", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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
