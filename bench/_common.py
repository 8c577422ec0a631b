"""The one bench harness: metadata, the quiet-machine check, the timer and the JSON + markdown writer.

Every script in ``bench/`` uses it the same way::

    from bench._common import bench_parser, start, timeit, write_results

    ap = bench_parser(__doc__)            # --out-dir, --max-load, --allow-load, --repeats
    args = ap.parse_args(argv)
    meta = start(args, torch=True)        # load average + thread settings, refuses a loaded machine
    t = timeit(lambda: f(x), repeats=args.repeats)          # warm-up excluded, median of k
    write_results("metrics", meta, {"rows": rows, ...}, markdown_lines, args.out_dir)

``start`` records, before anything is timed, the 1/5/15-minute load averages and the thread settings
of both sides (``torch.get_num_threads()``, ``XLA_FLAGS``, the JAX backend and devices). When the
1-minute load is above ``--max-load`` (default 1.0) it refuses to run, unless ``--allow-load`` is
given; the result is then flagged ``under_load`` in the JSON and in the markdown header. The date,
machine and versions come from :func:`jaxuq._env.stamp`, the same stamp as the experiments' results,
and the JSON goes through :func:`jaxuq._env.portable_paths` (no folder of this machine in it).
Run benches as ``python -m bench.<name>`` or ``python bench/<name>.py`` from the repository root (each
script puts the root on ``sys.path`` itself before importing this module).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jaxuq._env import portable_paths, stamp, versions
from jaxuq._io import write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

__all__ = [
    "RESULTS", "ROOT", "bench_parser", "markdown_header", "markdown_table", "start", "timeit",
    "write_results",
]  # fmt: skip


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the options every bench has."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=RESULTS, help="where <name>.json/.md go")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    ap.add_argument("--max-load", type=float, default=1.0,
                    help="refuse to run when the 1-minute load average is above this")
    ap.add_argument("--allow-load", action="store_true",
                    help="run on a loaded machine anyway; the results are flagged under_load")
    return ap


def _threads(torch: bool) -> dict:
    import jax

    out = {
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    if torch:
        try:
            import torch as _t

            out["torch_threads"] = _t.get_num_threads()
            out["torch_interop_threads"] = _t.get_num_interop_threads()
            out["torch_device"] = "cuda" if _t.cuda.is_available() else "cpu"
        except ImportError:
            out["torch_threads"] = None
    return out


def start(args: argparse.Namespace, *, torch: bool = False) -> dict:
    """Record the metadata and check the load before anything is timed.

    Raises ``SystemExit(2)`` with a message when the machine is loaded and ``--allow-load`` was not
    given. Returns the metadata dict that ``write_results`` stamps on the results.
    """
    load = os.getloadavg()
    under_load = load[0] > args.max_load
    if under_load and not args.allow_load:
        raise SystemExit(
            f"bench: 1-minute load average {load[0]:.2f} > --max-load {args.max_load} on "
            f"{os.cpu_count()} CPUs: timings would measure the other processes. Rerun on an idle "
            "machine, or pass --allow-load (the results are then flagged under_load)."
        )
    return {
        **stamp(),
        "threads": _threads(torch),
        "load_avg_start": [round(x, 2) for x in load],
        "max_load": args.max_load,
        "under_load": under_load,
    }


def _sync(out: Any) -> None:
    """Wait for asynchronous work: JAX arrays are blocked on, CUDA tensors synchronised."""
    try:
        import jax

        jax.block_until_ready(out)
    except ImportError:  # pragma: no cover
        pass
    mod = type(out).__module__ if out is not None else ""
    if mod.startswith("torch"):
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


def timeit(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> dict:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls (compile, caches).

    Each call's output is waited for (``jax.block_until_ready``; CUDA synchronise for torch), so
    asynchronous dispatch is inside the timing. Returns ``{median_s, min_s, max_s, times_s,
    first_s}`` where ``first_s`` is the first warm-up call (compile + run)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    first = None
    for _ in range(warmup):
        t0 = time.perf_counter()
        _sync(fn())
        first = time.perf_counter() - t0 if first is None else first
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _sync(fn())
        ts.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "times_s": ts,
            "first_s": first}


def markdown_header(title: str, meta: dict) -> list[str]:
    """Title, date, machine, versions, thread settings and load, as markdown lines."""
    th, m = meta["threads"], meta["machine"]
    threads = f"JAX backend `{th['jax_backend']}` ({len(th['jax_devices'])} device(s))"
    if th.get("xla_flags"):
        threads += f", XLA_FLAGS `{th['xla_flags']}`"
    if th.get("torch_threads") is not None:
        threads += f", torch {th['torch_threads']} threads on `{th.get('torch_device', 'cpu')}`"
    load = meta["load_avg_start"]
    flag = " **UNDER LOAD: timings are not reliable**" if meta["under_load"] else ""
    return [
        f"# {title}",
        "",
        f"Date {meta['date']}; machine {m['platform']}, {m['processor']}, {m['cpu_count']} CPUs; "
        f"{threads}.",
        f"Load average before timing (1/5/15 min): {load[0]} / {load[1]} / {load[2]}"
        f" (limit {meta['max_load']}){flag}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".",
        "",
    ]


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> list[str]:
    """``columns``: ``(header, key, format)``, e.g. ``("img/s", "img_per_s", "{:,.0f}")``; a missing
    or None value prints as an empty cell."""
    out = ["| " + " | ".join(c[0] for c in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for _, key, fmt in columns:
            v = r.get(key)
            cells.append("" if v is None else fmt.format(v))
        out.append("| " + " | ".join(cells) + " |")
    return out


def write_results(name: str, meta: dict, result: dict, markdown: Sequence[str],
                  out_dir: str | os.PathLike = RESULTS) -> tuple[Path, Path]:
    """Write ``out_dir/<name>.json`` (``meta`` + ``result``) and ``out_dir/<name>.md`` (``markdown``),
    each atomically; paths in the JSON are made portable (:func:`jaxuq._env.portable_paths`, the
    repository root as ``<repo>``). Returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(meta, load_avg_end=[round(x, 2) for x in os.getloadavg()])
    record = portable_paths({**meta, **result}, {ROOT: "<repo>"})
    js = write_json_atomic(out_dir / f"{name}.json", record, indent=2)
    md = write_text_atomic(out_dir / f"{name}.md", "\n".join(markdown).rstrip("\n") + "\n")
    return js, md


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(versions(), indent=2))
