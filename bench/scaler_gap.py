"""Vector/matrix scaling: jaxuq vs torch-uncertainty 0.13.0 losses on the real CIFAR-10 logits.

    JAXUQ_DATA_DIR=/work/shared/data python bench/scaler_gap.py [--n 500] [--perms 5] [--allow-load]

For each checkpoint's reference logits (first ``n`` test images): the calibration loss (mean CE,
evaluated in float64 from the float32 scaled logits) of TU's fitted scaler and of ours, in float32
(TU's setting) and in float64 (same algorithm, no float32 rounding), and TU's own spread when the
same samples are fed in ``perms`` other orders (the same loss, other float32 summation orders).
Writes bench/results/scaler_gap.{json,md} (harness: bench/_common.py). Needs torch +
torch-uncertainty.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # float64 runs below; float32 ones pass float32 arrays

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench._common import bench_parser, markdown_header, start, write_results  # noqa: E402
from jaxuq._env import data_file  # noqa: E402
from jaxuq.calibration import scaling as S  # noqa: E402
from jaxuq.calibration.lbfgs import lbfgs_torch  # noqa: E402

MODELS = ("resnet20", "resnet56", "tiniest")


def ce64(out, y) -> float:
    o = np.asarray(out, np.float64)
    o = o - o.max(1, keepdims=True)
    return float(-(o - np.log(np.exp(o).sum(1, keepdims=True)))[np.arange(len(y)), y].mean())


def tu_loss(kind: str, z, y, dtype=None) -> float:
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from torch_uncertainty.post_processing import MatrixScaler, VectorScaler

    cls = MatrixScaler if kind == "matrix" else VectorScaler
    s = cls(num_classes=z.shape[1])
    zt = torch.tensor(z)
    if dtype is not None:
        s, zt = s.to(dtype), zt.to(dtype)
    logging.disable(logging.WARNING)
    s.fit(DataLoader(TensorDataset(zt, torch.tensor(y)), batch_size=len(y)), progress=False)
    logging.disable(logging.NOTSET)
    with torch.no_grad():
        return ce64(s._scale(zt).numpy(), y)


def ours_loss(kind: str, z, y) -> float:
    fit, app = (S.matrix_fit, S.matrix_apply) if kind == "matrix" else (S.vector_fit, S.vector_apply)
    return ce64(np.asarray(app(fit(z, y), z)), y)


def ours_loss64(kind: str, z, y) -> float:
    """The same torch-LBFGS port, in float64."""
    c = z.shape[1]
    zj, yj = jnp.asarray(z, jnp.float64), jnp.asarray(y)
    if kind == "matrix":
        scale, x0 = S._matrix_flat, jnp.concatenate([jnp.eye(c).ravel(), jnp.zeros(c)])
    else:
        scale, x0 = S._scale_flat, jnp.ones(c)

    def f(x):
        lp = jax.nn.log_softmax(scale(x, zj), -1)
        return -jnp.mean(jnp.take_along_axis(lp, yj[:, None], -1))

    x = lbfgs_torch(f, x0.astype(jnp.float64), lr=0.1, max_iter=200).x
    return ce64(np.asarray(scale(x, zj)), y)


def main(argv=None) -> int:
    import torch

    ap = bench_parser(__doc__)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--perms", type=int, default=5)
    args = ap.parse_args(argv)
    meta = start(args, torch=True)
    ref = np.load(data_file("checkpoints/reference_logits_first1000.npz"))
    rows = []
    for model in MODELS:
        z, y = ref[model].astype(np.float32)[: args.n], ref["labels"][: args.n]
        for kind in ("vector", "matrix"):
            perms = [np.random.default_rng(s).permutation(len(y)) for s in range(1, args.perms + 1)]
            tu_p = [tu_loss(kind, z[p], y[p]) for p in perms]
            ours_p = [ours_loss(kind, z[p], y[p]) for p in perms]
            row = {"model": model, "scaler": kind, "tu_f32": tu_loss(kind, z, y),
                   "ours_f32": ours_loss(kind, z, y), "tu_f64": tu_loss(kind, z, y, torch.float64),
                   "ours_f64": ours_loss64(kind, z, y)}
            row["gap_f32"] = abs(row["tu_f32"] - row["ours_f32"])
            row["gap_f64"] = abs(row["tu_f64"] - row["ours_f64"])
            row["tu_spread_over_orders"] = max(tu_p + [row["tu_f32"]]) - min(tu_p + [row["tu_f32"]])
            row["ours_spread_over_orders"] = max(ours_p + [row["ours_f32"]]) - min(ours_p + [row["ours_f32"]])
            row["lower_f32"] = "ours" if row["ours_f32"] < row["tu_f32"] else "TU"
            rows.append(row)
            print(json.dumps(row), flush=True)
    lines = markdown_header(f"Vector/matrix scaling: jaxuq vs TU losses on real CIFAR-10 logits "
                            f"(first {args.n} test images)", meta) + [
             "Mean CE after the fit (float64 evaluation); spread = max - min over the original and "
             f"{args.perms} permuted sample orders.", "",
             "| model | scaler | TU f32 | ours f32 | gap f32 | TU spread (orders) | ours spread | lower "
             "| TU f64 | ours f64 | gap f64 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['scaler']} | {r['tu_f32']:.7f} | {r['ours_f32']:.7f} "
                     f"| {r['gap_f32']:.1e} | {r['tu_spread_over_orders']:.1e} "
                     f"| {r['ours_spread_over_orders']:.1e} | {r['lower_f32']} "
                     f"| {r['tu_f64']:.9f} | {r['ours_f64']:.9f} | {r['gap_f64']:.1e} |")
    write_results("scaler_gap", meta, {"n": args.n, "perms": args.perms, "rows": rows}, lines, args.out_dir)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
