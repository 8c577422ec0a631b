"""XLA:CPU options vs training throughput through ``jaxuq.train.fit``, with the torch loop anchor.

Every (XLA option, model, batch size, steps_per_call) cell runs ``fit`` in its own subprocess with
its own ``XLA_FLAGS`` (flags are read once, when the backend starts): LeNet on real MNIST and a small
ResNet-18 (TU ``style="cifar"``) row on the real ``cifar10_heads`` CIFAR-10 images, SGD(0.05, 0.9),
on-device data and augmentation. ``fit`` runs ``--epochs`` epochs; the first compiles, the median
images/s of the others is reported. A flag that this jaxlib does not know makes XLA abort: the cell
records the error (this is how the script finds which flags exist). The flags come from
``strings jaxlib/libjax_common.so | grep ^xla_cpu_`` on jaxlib 0.10.2.

The anchor is bench/train.py's plain torch loop (same models, batch sizes, SGD) in the parent
process, in the same run.

    python bench/xla_cpu.py                                   # all options, LeNet + ResNet-18 rows
    python bench/xla_cpu.py --options default onednn --batch-sizes 128 --allow-load   # a quick look
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import bench_parser, markdown_header, markdown_table, start, write_results  # noqa: E402

# name -> (XLA_FLAGS added to the environment's, note)
OPTIONS = {
    "default": ("", "jaxlib defaults"),
    "no_multi_thread_eigen": ("--xla_cpu_multi_thread_eigen=false", "Eigen single-threaded kernels"),
    "single_thread": (
        "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
        "JAX FAQ's one-thread setting",
    ),
    "fast_math": ("--xla_cpu_enable_fast_math=true", "fast math (may change results)"),
    "onednn": ("--xla_cpu_use_onednn=true", "oneDNN kernels"),
    "onednn_custom_call": ("--xla_cpu_experimental_onednn_custom_call=true", "oneDNN custom calls"),
    "xnnpack": ("--xla_cpu_use_xnnpack=true", "XNNPACK kernels"),
    "no_thunk_runtime": ("--xla_cpu_use_thunk_runtime=false", "legacy runtime (deprecated flag)"),
    "vector_width_512": ("--xla_cpu_prefer_vector_width=512", "prefer 512-bit vectors"),
}


def child(cell: dict) -> dict:
    """Run ``fit`` for one cell (in this process, whose XLA_FLAGS were set by the parent)."""
    import jax
    import jax.numpy as jnp  # noqa: F401
    import numpy as np

    from bench.train import jax_model
    from jaxuq.data import CIFAR10_NORM, MNIST_NORM, Preprocess, load_mnist, load_npz
    from jaxuq.train import TrainConfig, fit, torch_sgd

    if cell["model"] == "lenet":
        x, y = load_mnist("train", cell["data_dir"])
        pre = Preprocess(*MNIST_NORM, crop=28, padding=4)
    else:
        x, y = load_npz("cifar10_heads/train_first1000x5.npz", data_dir=cell["data_dir"])
        pre = Preprocess(*CIFAR10_NORM, crop=32, padding=4, flip=True)
    x, y = x[: cell["images"]], y[: cell["images"]]
    model, _ = jax_model(cell["model"])
    cfg = TrainConfig(
        optimizer=torch_sgd(0.05, 0.9),
        epochs=cell["epochs"],
        batch_size=cell["batch"],
        preprocess=pre,
        drop_last=True,
        steps_per_call=cell["steps_per_call"],
        quiet=True,
    )
    h = fit(model, (x, y), cfg).history
    ips = [e["images_per_s"] for e in h[1:]] or [h[0]["images_per_s"]]
    return {
        "images_per_s": float(np.median(ips)),
        "first_epoch_s": h[0]["seconds"],
        "backend": jax.default_backend(),
        "final_loss": h[-1]["train_loss"],
    }


def run_cell(cell: dict, flags: str, timeout: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env["XLA_FLAGS"] = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), flags) if f)
    try:
        p = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(cell)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout} s"}
    if p.returncode != 0:
        lines = [ln for ln in (p.stderr or p.stdout).strip().splitlines() if ln.strip()]
        return {"error": f"exit {p.returncode}: " + (lines[-1][:200] if lines else "")}
    return json.loads(p.stdout.strip().splitlines()[-1])


def torch_anchor(model: str, images: int, batch: int, steps: int, repeats: int, data_dir) -> float:
    import torch

    from bench.train import _torch_data, bench_torch
    from jaxuq.data import CIFAR10_NORM, MNIST_NORM, load_mnist, load_npz

    if model == "lenet":
        (x, y), norm = load_mnist("train", data_dir), MNIST_NORM
    else:
        (x, y), norm = load_npz("cifar10_heads/train_first1000x5.npz", data_dir=data_dir), CIFAR10_NORM
    tx, ty = _torch_data(x[:images], y[:images], *norm, torch.device("cpu"))
    return bench_torch(model, tx, ty, batch, steps, False, torch.device("cpu"), False, repeats)[
        "images_per_s"
    ]


def _measure(args) -> list[dict]:
    """One row per (model, batch): the torch loop's anchor, then each option and steps-per-call cell."""
    rows = []
    for model in args.models:
        n = args.images if model == "lenet" else args.resnet_images
        for batch in args.batch_sizes:
            if batch > n:
                continue
            anchor = torch_anchor(model, n, batch, max(1, min(20, n // batch)), args.repeats, args.data_dir)
            rows.append(
                {"model": model, "batch": batch, "option": "torch loop (anchor)", "images_per_s": anchor}
            )
            print(rows[-1], flush=True)
            for spc in args.steps_per_call:
                for name in args.options:
                    cell = {
                        "model": model,
                        "images": n,
                        "batch": batch,
                        "epochs": args.epochs,
                        "steps_per_call": spc or n // batch,
                        "data_dir": args.data_dir,
                    }
                    r = run_cell(cell, OPTIONS[name][0], args.timeout)
                    rows.append(
                        {
                            "model": model,
                            "batch": batch,
                            "steps_per_call": cell["steps_per_call"],
                            "option": name,
                            "xla_flags": OPTIONS[name][0],
                            "vs_torch": r["images_per_s"] / anchor if "images_per_s" in r else None,
                            **r,
                        }
                    )
                    print(rows[-1], flush=True)
    return rows


def main(argv=None):
    ap = bench_parser(__doc__)
    ap.set_defaults(repeats=3)
    ap.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    ap.add_argument("--models", nargs="+", default=["lenet", "resnet18"], choices=["lenet", "resnet18"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 512])
    ap.add_argument(
        "--steps-per-call",
        nargs="+",
        type=int,
        default=[100],
        help="scan chunk lengths (0: one chunk per epoch)",
    )
    ap.add_argument("--images", type=int, default=10_000, help="LeNet images per epoch")
    ap.add_argument("--resnet-images", type=int, default=512, help="ResNet-18 images per epoch")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per cell (the first compiles)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--child", default=None, help=argparse_hidden())
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    meta = start(args, torch=True)
    rows = _measure(args)
    cols = [(k, k, "{}") for k in ("model", "batch")] + [
        ("steps/call", "steps_per_call", "{}"),
        ("option", "option", "{}"),
        ("XLA_FLAGS", "xla_flags", "`{}`"),
        ("img/s", "images_per_s", "{:,.0f}"),
        ("vs torch", "vs_torch", "{:.2f}"),
        ("error", "error", "{}"),
    ]
    md = markdown_header("XLA:CPU options: training throughput through fit", meta)
    md += [
        f"{args.epochs} epochs per cell (the first compiles; median img/s of the others); LeNet "
        f"{args.images} MNIST images, ResNet-18 {args.resnet_images} CIFAR-10 images; each cell in its own "
        "process. Options: " + "; ".join(f"`{k}` {v[1]}" for k, v in OPTIONS.items()) + ".",
        "",
    ]
    write_results(
        "xla_cpu", meta, {"rows": rows, "options": OPTIONS}, md + markdown_table(rows, cols), args.out_dir
    )
    print("\n".join(md + markdown_table(rows, cols)))


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
