"""Training throughput (images/s): jaxuq vs a plain torch loop vs TU's Lightning trainer, one run.

Workloads: LeNet on MNIST (real, 28x28x1) and ResNet-18 (TU ``style="cifar"``) on the 5000 real
CIFAR-10 training images of ``cifar10_heads``; fp32 and bf16; batch 128 and 512. Each side trains
``--steps`` optimisation steps after its warm-up (compilation for jaxuq/torch.compile, the first
steps for torch and Lightning), ``--repeats`` times (the median is reported; for TU the median step
interval), SGD(lr 0.05, momentum 0.9), cross-entropy.

- jaxuq: uint8 data on device, one jitted ``lax.scan`` over the steps (gather + RandomCrop(pad 4)
  + normalise + forward/backward + update), state donated: the engine's ``train_chunk``, as ``fit``
  runs it; the compiled program is timed alone.
- torch: a plain loop over pre-normalised tensors already on the device (no augmentation), bf16 via
  ``torch.autocast``; on GPU ``--torch-compile`` adds channels_last + ``torch.compile``.
- TU: ``ClassificationRoutine`` + ``TUTrainer`` (Lightning; ``precision="bf16-mixed"`` for bf16) on a
  DataLoader over the same tensors; timed from the end of the warm-up batches to the last batch.

Timing: ``bench._common.timeit`` (median of ``--repeats`` after a warm-up that compiles). Writes
bench/results/train.json and train.md through ``bench._common.write_results``.

    python bench/train.py                                  # CPU defaults (small step counts)
    python bench/train.py --models lenet --steps 50        # one workload
    python bench/train.py --torch-compile                  # on a GPU
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import bench_parser, markdown_header, markdown_table, start, timeit, write_results
from jaxuq.data import CIFAR10_NORM, MNIST_NORM, Preprocess, load_mnist, load_npz
from jaxuq.train import StepSettings, create_train_state, torch_sgd, train_chunk

LR, MOMENTUM = 0.05, 0.9


def jax_model(name):
    from jaxuq import models

    if name == "lenet":
        return models.get("lenet", num_classes=10, in_channels=1), "jaxuq.models lenet"
    return models.get(
        "resnet", arch=18, style="cifar", num_classes=10, in_channels=3
    ), "jaxuq.models resnet18"


def bench_jaxuq(name, images, labels, pre, batch, steps, dtype, repeats):
    """The engine's hot path: ``train_chunk`` (gather + augment + ``lax.scan`` of ``train_step``, state
    donated) on the uint8 set on device, exactly as ``fit`` runs it."""
    model, desc = jax_model(name)
    state = create_train_state(model, torch_sgd(LR, MOMENTUM), jax.random.key(0),
                               jnp.zeros((1,) + images.shape[1:], jnp.float32))
    settings = StepSettings(pre, compute_dtype=jnp.dtype(dtype).name)
    X, Y = jax.device_put(images), jax.device_put(labels.astype(np.int32))
    idx = jnp.asarray(np.random.default_rng(0).integers(0, len(images), (steps, batch)))
    held = {"state": state}

    def run():
        held["state"], m = train_chunk(held["state"], X, Y, idx, settings)
        return m

    t = timeit(run, repeats=repeats)
    return {"images_per_s": steps * batch / t["median_s"], "seconds": t["median_s"],
            "all_seconds": t["times_s"], "compile_s": t["first_s"], "model": desc,
            "final_loss": float(run()["loss"][-1])}


def _torch_data(images, labels, mean, std, device):
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    return x.to(device), torch.from_numpy(labels).long().to(device)


def torch_model(name):
    from torch_uncertainty.models.classification import lenet, resnet

    if name == "lenet":
        return lenet(in_channels=1, num_classes=10)
    return resnet(in_channels=3, num_classes=10, arch=18, style="cifar")


def bench_torch(name, x, y, batch, steps, bf16, device, compile_, repeats):
    import torch

    torch.manual_seed(0)
    model = torch_model(name).to(device)
    if compile_:
        model = model.to(memory_format=torch.channels_last)
        model = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    lossf = torch.nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    warm = 3 if compile_ else 2

    def one():
        idx = torch.randint(0, len(x), (batch,), generator=g).to(device)
        xb = x[idx]
        if compile_:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = lossf(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    for _ in range(warm):
        one()

    def run():
        for _ in range(steps):
            loss = one()
        return loss.detach()

    t = timeit(run, repeats=repeats, warmup=0)
    return {"images_per_s": steps * batch / t["median_s"], "seconds": t["median_s"],
            "all_seconds": t["times_s"], "final_loss": float(run())}


def bench_tu(name, x, y, batch, steps, bf16, device, repeats):
    import lightning
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from torch_uncertainty import TUTrainer
    from torch_uncertainty.routines import ClassificationRoutine

    warm = 2
    times = []

    class Clock(lightning.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch_, batch_idx):
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    torch.manual_seed(0)
    model = torch_model(name)
    routine = ClassificationRoutine(
        model=model,
        num_classes=10,
        loss=torch.nn.CrossEntropyLoss(),
        optim_recipe=torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM),
    )
    steps = steps * repeats  # one fit; the median batch interval is robust to a busy machine
    n_needed = (warm + steps) * batch
    reps = -(-n_needed // len(x))
    ds = TensorDataset(x.cpu().repeat(reps, 1, 1, 1)[:n_needed], y.cpu().repeat(reps)[:n_needed])
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=0, drop_last=True)
    trainer = TUTrainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_steps=warm + steps,
        precision="bf16-mixed" if bf16 else "32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[Clock()],
    )
    trainer.fit(routine, train_dataloaders=loader)
    intervals = np.diff(times[warm - 1 :])
    dt = float(np.median(intervals))
    return {"images_per_s": batch / dt, "seconds_per_step_median": dt, "steps": len(intervals)}


def _markdown(meta, rows, sides):
    table = []
    for r in rows:
        row = {k: r[k] for k in ("model", "dtype", "batch", "steps")}
        row.update({s: r[s]["images_per_s"] for s in sides if s in r})
        if "jaxuq" in r and "torch" in r:
            row["ratio"] = r["jaxuq"]["images_per_s"] / r["torch"]["images_per_s"]
        table.append(row)
    cols = [(k, k, "{}") for k in ("model", "dtype", "batch", "steps")]
    cols += [(s, s, "{:,.0f}") for s in sides] + [("jaxuq / torch", "ratio", "{:.2f}")]
    return markdown_header("Training throughput (images/s)", meta) + markdown_table(table, cols)


def main(argv=None):
    p = bench_parser(__doc__)
    p.set_defaults(repeats=3)
    p.add_argument("--models", nargs="+", default=["lenet", "resnet18"], choices=["lenet", "resnet18"])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 512])
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per side (default: CPU 20 LeNet / 1 ResNet-18, GPU 50)")
    p.add_argument("--sides", nargs="+", default=["jaxuq", "torch", "tu"], choices=["jaxuq", "torch", "tu"])
    p.add_argument("--torch-compile", action="store_true", help="channels_last + torch.compile (GPU)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--images", type=int, default=10000, help="LeNet: first k MNIST training images")
    args = p.parse_args(argv)
    meta = start(args, torch=True)

    backend = jax.default_backend()
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_float32_matmul_precision("high")
    data = {}
    if "lenet" in args.models:
        x, y = load_mnist("train", args.data_dir)
        n = args.images
        data["lenet"] = (x[:n], y[:n], Preprocess(*MNIST_NORM, crop=28, padding=4), MNIST_NORM)
    if "resnet18" in args.models:
        x, y = load_npz("cifar10_heads/train_first1000x5.npz", data_dir=args.data_dir)
        data["resnet18"] = (x, y, Preprocess(*CIFAR10_NORM, crop=32, padding=4, flip=True), CIFAR10_NORM)
    sides = [s for s in ("jaxuq", "torch", "tu") if s in args.sides]
    meta["torch_compile"] = args.torch_compile

    rows = []
    for name in args.models:
        images, labels, pre, (mean, std) = data[name]
        steps = args.steps or ((20 if name == "lenet" else 1) if backend == "cpu" else 50)
        tx, ty = _torch_data(images, labels, mean, std, device)
        for dtype in args.dtypes:
            bf16 = dtype == "bfloat16"
            for batch in args.batch_sizes:
                row = {"model": name, "dtype": dtype, "batch": batch, "steps": steps}
                if "jaxuq" in sides:
                    row["jaxuq"] = bench_jaxuq(name, images, labels, pre, batch, steps, dtype, args.repeats)
                if "torch" in sides:
                    row["torch"] = bench_torch(
                        name, tx, ty, batch, steps, bf16, device, args.torch_compile, args.repeats
                    )
                if "tu" in sides:
                    row["tu"] = bench_tu(name, tx, ty, batch, steps, bf16, device, args.repeats)
                print(json.dumps({k: (v if not isinstance(v, dict) else round(v["images_per_s"], 1))
                                  for k, v in row.items()}), flush=True)
                rows.append(row)
                # partial results survive an interrupted run
                write_results("train", meta, {"rows": rows}, _markdown(meta, rows, sides), args.out_dir)
    print("\n".join(_markdown(meta, rows, sides)))


if __name__ == "__main__":
    main()
