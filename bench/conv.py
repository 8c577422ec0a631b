"""Benchmark: the convolution lowerings of ``jaxuq.nn.conv`` per layer shape, as in training.

For each shape, forward + both gradients (``jax.vjp``; a network's first layer, whose input is the data,
only the weight gradient), ``--steps`` steps inside one ``lax.scan`` (how ``fit`` runs an epoch),
compiled with the XLA options of ``fit``'s programs (:data:`jaxuq.nn.conv.XLA_CPU_OPTIONS`), for
each lowering of :func:`jaxuq.nn.conv.conv_lowering`:
``lax`` (``lax.conv_general_dilated`` and JAX's gradients), ``conv`` (lax forward, both gradients as
channels-last convs) and ``gemm`` (patches by slicing + one matrix product). The candidates are
interleaved (round-robin, ``--repeats`` rounds) in one process, so a load change hits every candidate
alike; the median per candidate is reported with the max |diff| of the outputs against ``lax``.
``auto`` is jaxuq's default: the per-shape choice of forward with its explicit gradients. The ensemble
rows run 8 members of a LeNet layer over one shared batch (TU's deep-ensemble recipe): ``grouped`` is
``jax.vmap`` of ``lax.conv``; ``vmap``, ``gemm`` and ``map`` are the member lowerings of
:mod:`jaxuq.ensembles` with jaxuq's convolution (``vmap``: its member batching rules).

Usage: ``python bench/conv.py [--steps 10] [--repeats 5]``; writes bench/results/conv.json and .md
through ``bench._common`` (``--allow-load`` on a busy machine). Runs unchanged on GPU (there ``auto``
is ``lax``; the CPU-only rewrites fall back to ``lax`` off CPU, so the rows then compare equal programs).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import bench_parser, markdown_header, markdown_table, start, write_results  # noqa: E402

# (name, batch, h, w, c_in, c_out, kernel, stride, pad); a first layer (input = data) has no input gradient
SHAPES = [
    ("LeNet conv1 B128 (first layer)", 128, 28, 28, 1, 6, 5, 1, 0),
    ("LeNet conv2 B128", 128, 12, 12, 6, 16, 5, 1, 0),
    ("issue B128 32x32 1->6 (first layer)", 128, 32, 32, 1, 6, 5, 1, 0),
    ("ResNet-20 3x3 16->16 B128", 128, 32, 32, 16, 16, 3, 1, 1),
    ("ResNet-20 3x3 32->32 s1 B128", 128, 16, 16, 32, 32, 3, 1, 1),
    ("ResNet-20 3x3 16->32 s2 B128", 128, 32, 32, 16, 32, 3, 2, 1),
    ("ResNet-20 3x3 64->64 B128", 128, 8, 8, 64, 64, 3, 1, 1),
    ("ResNet-18 3x3 64->64 B32", 32, 32, 32, 64, 64, 3, 1, 1),
]
CONV_CANDIDATES = ("lax", "conv", "gemm", "auto")
MEMBER_CANDIDATES = ("grouped", "vmap", "gemm", "map")
# member rows: (name, x shape, kernel (k, c_in, c_out)); a first layer has no input gradient
MEMBER_LAYERS = [("LeNet conv1 B128 (first layer)", (128, 28, 28, 1), (5, 1, 6)),
                 ("LeNet conv2 B128", (128, 12, 12, 6), (5, 6, 16))]


def _scan_step(loss_fn, steps, input_grad=True):
    import jax

    from jaxuq.nn.conv import XLA_CPU_OPTIONS

    def run(x, w, ct):
        def body(carry, _):
            w = carry
            if input_grad:
                y, vjp = jax.vjp(loss_fn, x, w)
                dx, dw = vjp(ct)
            else:
                y, vjp = jax.vjp(lambda w: loss_fn(x, w), w)
                (dw,), dx = vjp(ct), y
            return w - 1e-6 * dw, (y.sum(), dx.sum())

        return jax.lax.scan(body, w, None, length=steps)

    return jax.jit(run, compiler_options=XLA_CPU_OPTIONS)


def _conv_fns(shape, steps):
    import jax
    from jax import lax

    from jaxuq.nn import conv as C

    _, b, h, w, cin, cout, k, s, p = shape
    x = jax.random.normal(jax.random.key(0), (b, h, w, cin))
    wt = jax.random.normal(jax.random.key(1), (k, k, cin, cout)) * 0.1
    dn = lax.conv_dimension_numbers(x.shape, wt.shape, ("NHWC", "HWIO", "NHWC"))
    fns = {}
    for low in CONV_CANDIDATES:
        def f(x, w, low=low):
            with C.conv_lowering(low):
                return C.conv_general_dilated(x, w, (s, s), ((p, p), (p, p)), dimension_numbers=dn)

        ct = jax.random.normal(jax.random.key(2), jax.eval_shape(f, x, wt).shape)
        fns[low] = (_scan_step(f, steps, input_grad="first layer" not in shape[0]), (x, wt, ct), f)
    return fns


def _member_fns(m, steps, layer):
    """``m`` members of one LeNet layer over one shared batch, per member lowering: ``grouped`` is
    ``jax.vmap`` of ``lax.conv`` (a grouped convolution), ``vmap`` the same with jaxuq's convolution (its
    member batching rules), ``gemm`` and ``map`` the member lowerings of :mod:`jaxuq.ensembles`."""
    import jax
    from jax import lax

    from jaxuq import ensembles as E
    from jaxuq.nn import conv as C

    name, xshape, (k, cin, cout) = layer
    x = jax.random.normal(jax.random.key(0), xshape)
    wt = jax.random.normal(jax.random.key(1), (m, k, k, cin, cout)) * 0.1
    dn = lax.conv_dimension_numbers(x.shape, wt.shape[1:], ("NHWC", "HWIO", "NHWC"))

    def one_lax(w, x):
        with C.conv_lowering("lax"):
            return C.conv_general_dilated(x, w, (1, 1), ((0, 0), (0, 0)), dimension_numbers=dn)

    def one_auto(w, x):
        return C.conv_general_dilated(x, w, (1, 1), ((0, 0), (0, 0)), dimension_numbers=dn)

    fns = {}
    for low in MEMBER_CANDIDATES:
        body = one_lax if low == "grouped" else one_auto

        def f(x, w, low="vmap" if low == "grouped" else low, body=body):
            return E.over_members(body, low, w, shared=(x,))

        ct = jax.random.normal(jax.random.key(2), jax.eval_shape(f, x, wt).shape)
        fns[low] = (_scan_step(f, steps, input_grad="first layer" not in name), (x, wt, ct), f)
    return fns


def _interleaved(fns, repeats):
    import jax
    import numpy as np

    ref = None
    diffs, first = {}, {}
    for low, (fn, args, f) in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        first[low] = time.perf_counter() - t0
        y = np.asarray(jax.jit(f)(*args[:2]))
        ref = y if ref is None else ref
        diffs[low] = float(np.abs(y - ref).max())
    times = {low: [] for low in fns}
    for _ in range(repeats):
        for low, (fn, args, _f) in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[low].append(time.perf_counter() - t0)
    return {low: {"median_s": statistics.median(ts), "times_s": ts, "first_s": first[low],
                  "max_abs_diff": diffs[low]} for low, ts in times.items()}


def main(argv=None):
    ap = bench_parser(__doc__)
    ap.add_argument("--steps", type=int, default=10, help="training steps inside one lax.scan")
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--shapes", type=int, nargs="*", default=None, help="indices into SHAPES (default all)")
    args = ap.parse_args(argv)
    meta = start(args)
    rows = []
    for i, shape in enumerate(SHAPES):
        if args.shapes is not None and i not in args.shapes:
            continue
        res = _interleaved(_conv_fns(shape, args.steps), args.repeats)
        rows.append(_row(shape[0], res, CONV_CANDIDATES))
        print(rows[-1], flush=True)
    for layer in MEMBER_LAYERS:
        res = _interleaved(_member_fns(args.members, args.steps, layer), args.repeats)
        rows.append(_row(f"{args.members} members, {layer[0]}, shared batch", res, MEMBER_CANDIDATES))
        print(rows[-1], flush=True)
    names = ("lax", "conv", "gemm", "auto", "grouped", "vmap", "map")
    cols = [("shape", "shape", "{}")] + [(f"{c} ms", f"{c}_ms", "{:,.1f}") for c in names]
    cols += [("fastest", "best", "{}"), ("max abs diff", "max_abs_diff", "{:.1e}")]
    md = markdown_header(f"Convolution lowerings, fwd + both grads, {args.steps} steps in lax.scan", meta)
    md += [f"Median of {args.repeats} interleaved rounds per candidate (ms per {args.steps} steps).", ""]
    md += markdown_table(rows, cols)
    write_results("conv", meta, {"steps": args.steps, "rows": rows}, md, args.out_dir)


def _row(name, res, candidates):
    row = {"shape": name, "candidates": res, "best": min(res, key=lambda c: res[c]["median_s"]),
           "max_abs_diff": max(r["max_abs_diff"] for r in res.values())}
    for c in candidates:
        row[f"{c}_ms"] = 1e3 * res[c]["median_s"]
    return row


if __name__ == "__main__":
    main()
