"""Memory of the batched OOD detectors and the scalers for a 50,000-sample calibration set.

    python bench/ood_memory.py [--n-calib 50000] [--batch-size 256] [--models resnet20 tiniest]
                               [--run | --no-run] [--allow-load]

For each model (ResNet-20 and scio's Tiniest, the architectures of our tests; weights from
``init``: memory depends on shapes only) and each detector (GradNorm, Gram, KNN, Mahalanobis,
ODIN with the scio tutorial's layers), and for the three scalers on ``[N, 10]`` logits:

* **compiled programs** (always): the two per-batch programs every detector runs --
  ``jaxuq.ood.detectors.batch_features`` (the calibration pass: forward + per-sample
  features/statistics) and ``batch_conformity`` (scoring) -- lowered for one batch and compiled,
  with XLA's ``compiled.memory_analysis()``: argument, output and temp (scratch) bytes. This is
  XLA's buffer assignment for the program; it is the same accounting on CPU and GPU (the numbers
  differ a little with the backend's fusion decisions). The model's variables (both programs) and
  the fitted state (scoring) are *arguments* of these programs, so the argument bytes include them;
  they are also reported on their own:
* **state**: ``model_bytes`` (the variables), ``state_bytes`` (the fitted state scoring reads: KNN's
  ``[N, D]`` reference features and norms, Gram's per-class bounds, Mahalanobis' means and
  precisions), and ``fit_host_bytes`` (what ``fit`` accumulates on the host over the N samples
  before reducing it: per-sample Gram statistics, KNN features, Mahalanobis features + logits).
  The detectors are fitted on ``2 * batch_size`` inputs; only KNN's state depends on N, and its
  score program is compiled for an ``[N, D]`` reference set (abstract: nothing allocated).
* ``device_bytes_bound`` = the larger program total (arguments + outputs + temp) -- what the device
  holds at most while fitting or scoring, if nothing else is resident -- against a 16 GB GPU.
* **run** (default on a GPU, ``--run`` elsewhere): fit and score every detector on N inputs for
  real, each in a fresh process, and report ``jax.devices()[0].memory_stats()["peak_bytes_in_use"]``
  (GPU) and the peak host RSS. Slow on CPU (GradNorm: one per-sample gradient per input).

Writes bench/results/ood_memory.{json,md} (harness: bench/_common.py). No torch needed (no
anchor: TU has no batched detectors; scio's need Python >= 3.12).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench._common import bench_parser, markdown_header, start, write_results  # noqa: E402

# model -> (block feature map, pooled features, logits), as in the scio tutorial for Tiniest
LAYERS = {"tiniest": ("l3", "avgpool", "fc"), "resnet20": ("layer3_2", "linear:input", "linear")}
DETECTORS = ("GradNorm", "Gram", "KNN", "Mahalanobis", "ODIN")
SCALERS = ("temperature", "vector", "matrix")
MIB = 2**20


def make_detector(name: str, model: str, n_calib: int, batch_size: int):
    from jaxuq.ood import KNN, ODIN, GradNorm, Gram, Mahalanobis

    block, feats, logits = LAYERS[model]
    kw = {"batch_size": batch_size}
    return {
        "GradNorm": lambda: GradNorm([logits], **kw),
        "Gram": lambda: Gram([block, feats, logits], **kw),
        "KNN": lambda: KNN([feats], k=int(n_calib**0.4), **kw),
        "Mahalanobis": lambda: Mahalanobis([feats], **kw),
        "ODIN": lambda: ODIN(temperature=1000.0, epsilon=0.0014, **kw),
    }[name]()


def model_and_variables(model: str):
    from jaxuq import models

    module = models.get(model)
    return module, module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32))


def program_memory(fn, *args) -> dict:
    """XLA's buffer sizes (bytes) of ``fn`` (jitted, or wrapped in ``jax.jit``) compiled for ``args``
    (arrays, pytrees or ShapeDtypeStructs; a jitted ``fn``'s static arguments as it declares them)."""
    jfn = fn if hasattr(fn, "lower") else jax.jit(fn)
    m = jfn.lower(*args).compile().memory_analysis()
    if m is None:  # a backend without memory analysis
        return {"argument": None, "output": None, "temp": None, "total": None}
    out = {"argument": int(m.argument_size_in_bytes), "output": int(m.output_size_in_bytes),
           "temp": int(m.temp_size_in_bytes)}
    out["total"] = out["argument"] + out["output"] + out["temp"] - int(m.alias_size_in_bytes)
    return out


def _nbytes(tree) -> int:
    """Bytes of the arrays (or ShapeDtypeStructs) of ``tree``."""
    return int(sum(np.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree)))


def detector_row(model: str, name: str, n_calib: int, batch_size: int, module, variables) -> dict:
    """Compiled fit/score programs and state sizes of one detector for ``n_calib`` samples."""
    from jaxuq.ood.detectors import KNNState, batch_conformity, batch_features

    det = make_detector(name, model, n_calib, batch_size)  # KNN: k = int(n_calib ** 0.4), as scio
    rng = np.random.default_rng(0)
    n_fit = 2 * batch_size
    det.fit(module, variables, rng.random((n_fit, 32, 32, 3), dtype=np.float32), rng.integers(0, 10, n_fit))
    cfg, net, state = det.config, det.net, det.state
    xb = jax.ShapeDtypeStruct((batch_size, 32, 32, 3), jnp.float32)
    row = {"model": model, "detector": repr(det), "n_calib": n_calib, "batch_size": batch_size,
           "model_bytes": _nbytes(variables)}
    if cfg.records:
        row["fit_program"] = program_memory(batch_features, cfg, net, xb)
        per_batch = jax.eval_shape(batch_features, cfg, net, xb)
        row["fit_host_bytes"] = _nbytes(per_batch) * n_calib // batch_size
    else:
        row["fit_program"], row["fit_host_bytes"] = None, 0
    if isinstance(state, KNNState):  # the only state that grows with N: the [N, D] reference features
        d = state.features.shape[1]
        state = KNNState(jax.ShapeDtypeStruct((n_calib, d), jnp.float32),
                         jax.ShapeDtypeStruct((n_calib,), jnp.float32))
    row["score_program"] = program_memory(batch_conformity, cfg, state, net, xb)
    row["state_bytes"] = _nbytes(state)
    progs = [p["total"] for p in (row["fit_program"], row["score_program"]) if p and p["total"] is not None]
    row["device_bytes_bound"] = max(progs, default=row["model_bytes"] + row["state_bytes"])
    return row


def scaler_row(name: str, n_calib: int, num_classes: int = 10) -> dict:
    """The scaler's whole fit (full-batch, like TU): one compiled LBFGS program on [N, C] logits."""
    from jaxuq.calibration import scaling as S

    c = num_classes
    scale, p = {"temperature": (S._scale_flat, 1), "vector": (S._scale_flat, c),
                "matrix": (S._matrix_flat, c * c + c)}[name]
    max_iter = 100 if name == "temperature" else 200
    specs = (jax.ShapeDtypeStruct((n_calib, c), jnp.float32), jax.ShapeDtypeStruct((n_calib,), jnp.int32),
             jax.ShapeDtypeStruct((p,), jnp.float32))
    prog = program_memory(lambda z, y, x0: S._fit_flat(scale, z, y, x0, "tu", 0.1, max_iter), *specs)
    return {"model": "-", "detector": f"{name} scaling (LBFGS, {max_iter} it.)", "n_calib": n_calib,
            "batch_size": n_calib, "model_bytes": 0, "fit_program": prog, "fit_host_bytes": 0,
            "score_program": None, "state_bytes": 4 * p, "device_bytes_bound": prog["total"] + 4 * p}


RUN_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[5])
import jax, numpy as np
from bench.ood_memory import make_detector, model_and_variables
model, name, n, bs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
module, variables = model_and_variables(model)
rng = np.random.default_rng(0)
x = rng.random((n, 32, 32, 3), dtype=np.float32)
y = rng.integers(0, 10, n)
det = make_detector(name, model, n, bs)
t0 = time.perf_counter(); det.fit(module, variables, x, y); t1 = time.perf_counter()
det.confidence(x[:1000]); t2 = time.perf_counter()
stats = jax.devices()[0].memory_stats() or {}
print(json.dumps({"fit_s": t1 - t0, "score_1000_s": t2 - t1,
                  "device_peak_bytes": stats.get("peak_bytes_in_use"),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_row(model: str, name: str, n_calib: int, batch_size: int) -> dict:
    cmd = [sys.executable, "-c", RUN_CHILD, model, name, str(n_calib), str(batch_size), str(REPO)]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"run {model}/{name} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _mib(b) -> str:
    return "-" if b is None else f"{b / MIB:.2f}"


def markdown(meta: dict, setting: dict, rows: list[dict]) -> list[str]:
    lines = markdown_header(f"OOD detectors and scalers: memory for N = {setting['n_calib']} "
                            "calibration samples", meta) + [
             f"Device {setting['device']}, batch {setting['batch_size']}.", "",
             "XLA `compiled.memory_analysis()` of the per-batch programs (argument + output + temp, MiB; "
             "the arguments hold the model, and for scoring the state); model/state: those arguments on "
             "their own; fit host: per-sample results `fit` gathers on the host; bound = the larger "
             "program (vs 16 GiB = 16384 MiB).", "",
             "| model | detector | fit prog (arg/out/temp) | score prog (arg/out/temp) | model | state "
             "| fit host | device bound | run: device peak | run: peak RSS |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def prog(p):
        return "-" if not p or p["total"] is None else (
            f"{_mib(p['total'])} ({_mib(p['argument'])}/{_mib(p['output'])}/{_mib(p['temp'])})")

    for r in rows:
        run = r.get("run") or {}
        rss = run.get("peak_rss_mib")
        cells = [r["model"], r["detector"], prog(r["fit_program"]), prog(r["score_program"]),
                 _mib(r["model_bytes"]), _mib(r["state_bytes"]), _mib(r["fit_host_bytes"]),
                 _mib(r["device_bytes_bound"]), _mib(run.get("device_peak_bytes")),
                 "-" if rss is None else f"{rss:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    ap = bench_parser(__doc__)
    ap.add_argument("--n-calib", type=int, default=50_000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--models", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    ap.add_argument("--run", action=argparse.BooleanOptionalAction, default=None,
                    help="fit/score for real on N inputs (default: only on a GPU)")
    args = ap.parse_args(argv)
    if args.n_calib < 2 * args.batch_size or args.batch_size < 1:
        ap.error(f"need --batch-size >= 1 and --n-calib >= 2 * batch size; "
                 f"got {args.n_calib}, {args.batch_size}")
    meta = start(args)
    do_run = jax.default_backend() == "gpu" if args.run is None else args.run
    rows = []
    for model in args.models:
        module, variables = model_and_variables(model)
        for name in DETECTORS:
            row = detector_row(model, name, args.n_calib, args.batch_size, module, variables)
            if do_run:
                row["run"] = run_row(model, name, args.n_calib, args.batch_size)
            rows.append(row)
            print(json.dumps(row), flush=True)
    for name in SCALERS:
        rows.append(scaler_row(name, args.n_calib))
        print(json.dumps(rows[-1]), flush=True)
    setting = {"device": str(jax.devices()[0]), "n_calib": args.n_calib, "batch_size": args.batch_size,
               "run": do_run}
    lines = markdown(meta, setting, rows)
    write_results("ood_memory", meta, {"setting": setting, "rows": rows}, lines, args.out_dir)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
