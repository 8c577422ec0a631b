"""Benchmark: one MNIST training epoch of 1 and 8 LeNet members.

Compares, in the same run and on the same real MNIST images (``JAXUQ_DATA_DIR``):
- jaxuq: ``jaxuq.train.fit`` of the stacked ensemble (member lowerings ``"vmap"``, ``"gemm"``, ``"map"``,
  ``"unroll"``), SGD lr 0.05, one jitted scan over the epoch, TU's recipe: one data order for every
  member (``EnsembleConfig(shared_order=True)``), as the torch loop and TU below;
- torch: a plain Python loop over members (each with its own SGD), one step per member per batch;
- TU: ``torch_uncertainty.methods.deep_ensembles`` of TU ``lenet``s, CE over its ``(M*B, C)`` logits
  against ``RepeatTarget(M)`` targets, one SGD over all parameters (M >= 2 only).

Usage: ``python bench/ensembles.py [--images 60000] [--batch-size 128] [--members 1 8]``.
On CPU use ``--images`` to subsample; per-epoch times are then extrapolated to 60,000 images
(``epoch_s_60k``) from the measured images/s. Writes bench/results/ensembles.json and .md through
``bench._common.write_results`` (``--out-dir``; ``--allow-load`` on a busy machine).
Runs unchanged on GPU (JAX picks its default backend; torch uses CUDA when available).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import bench_parser, markdown_header, markdown_table, start, timeit, write_results  # noqa: E402

MEMBER_LOWERINGS = ("vmap", "gemm", "map", "unroll")
JAXUQ_IMPLS = tuple(f"jaxuq {low}" for low in MEMBER_LOWERINGS)


def bench_jaxuq(images, labels, m, bs, members, repeats):
    """One epoch of ``jaxuq.train.fit`` (one jitted scan over the epoch, data on device, normalisation
    on device, last partial batch dropped), timed as a whole ``fit`` call from a fresh copy of the
    initial state; the warm-up call compiles (``train_chunk`` is cached across calls)."""
    import jax
    import jax.numpy as jnp
    import optax

    from jaxuq.data import MNIST_NORM, Preprocess
    from jaxuq.models.lenet import packed_lenet
    from jaxuq.train import EnsembleConfig, TrainConfig, create_train_state, fit

    model = packed_lenet(1, 10, num_estimators=1, alpha=1)  # == TU lenet (all layers dense)
    tx = optax.sgd(0.05)
    n = (images.shape[0] // bs) * bs
    ens = None if m == 1 else EnsembleConfig(m, lowering=members, shared_order=True)
    cfg = TrainConfig(optimizer=tx, epochs=1, batch_size=bs, preprocess=Preprocess(*MNIST_NORM),
                      drop_last=True, ensemble=ens,
                      steps_per_call=n // bs, quiet=True)
    s0 = create_train_state(model, tx, jax.random.key(0), jnp.zeros((1, 28, 28, 1)), cfg.num_members)
    out = {}

    def run():
        out["r"] = fit(model, (images, labels), cfg, init_state=jax.tree.map(jnp.copy, s0))
        return out["r"].state.params

    t = timeit(run, repeats=repeats)
    return {"seconds": t["median_s"], "images": n, "compile_s": t["first_s"] - t["median_s"],
            "final_loss": out["r"].history[-1]["train_loss"]}


def _torch_lenets(m, device):
    import torch
    from torch_uncertainty.models.classification.lenet import lenet

    torch.manual_seed(0)
    return [lenet(1, 10).to(device) for _ in range(m)]


def bench_torch_loop(x, y, m, bs, device, repeats):
    import torch

    models = _torch_lenets(m, device)
    opts = [torch.optim.SGD(mdl.parameters(), lr=0.05) for mdl in models]
    xt = torch.as_tensor(x.transpose(0, 3, 1, 2).copy(), device=device)
    yt = torch.as_tensor(y, device=device, dtype=torch.long)
    n = (x.shape[0] // bs) * bs
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1))[:n].view(-1, bs).to(device)

    def batch(idx):
        xb, yb = xt[idx], yt[idx]
        for mdl, opt in zip(models, opts):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(mdl(xb), yb).backward()
            opt.step()

    return _time_batches(batch, order, device, n, repeats)


def bench_tu(x, y, m, bs, device, repeats):
    import torch
    from torch_uncertainty.methods import deep_ensembles
    from torch_uncertainty.transforms import RepeatTarget

    de = deep_ensembles(_torch_lenets(m, "cpu"), num_estimators=None).to(device)
    opt = torch.optim.SGD(de.parameters(), lr=0.05 * m)  # the tutorials' LR x M
    rep = RepeatTarget(m)
    xt = torch.as_tensor(x.transpose(0, 3, 1, 2).copy(), device=device)
    yt = torch.as_tensor(y, device=device, dtype=torch.long)
    n = (x.shape[0] // bs) * bs
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1))[:n].view(-1, bs).to(device)

    def batch(idx):
        xb, yb = rep((xt[idx], yt[idx]))
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(de(xb), yb).backward()
        opt.step()

    return _time_batches(batch, order, device, n, repeats)


def _time_batches(batch, order, device, n, repeats=1):
    """One warm-up batch, then every batch of ``order`` (an epoch), median of ``repeats`` epochs."""
    batch(order[0])
    _sync(device)

    def epoch():
        for b in range(order.shape[0]):
            batch(order[b])
        _sync(device)

    return {"seconds": timeit(epoch, repeats=repeats, warmup=0)["median_s"], "images": n}


def _sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _ratios(rows, members):
    def t(impl, m):
        return next((r["epoch_s_60k"] for r in rows if r["impl"] == impl and r["members"] == m), None)

    ratios, mmax = {}, max(members)
    if 1 in members and mmax > 1:
        for impl in (*JAXUQ_IMPLS, "torch loop"):
            one, many = t(impl if not impl.startswith("jaxuq") else "jaxuq vmap", 1), t(impl, mmax)
            if one and many:
                ratios[f"{impl}: {mmax} members / 1 member"] = many / one
    tu = t("TU deep_ensembles", mmax)
    for impl in JAXUQ_IMPLS:
        if tu and t(impl, mmax):
            ratios[f"TU deep_ensembles / {impl} ({mmax} members)"] = tu / t(impl, mmax)
    return ratios


def _measure(args, images, y, x, backend: str, tdev: str) -> list[dict]:
    """One row per (members, implementation): each jaxuq member lowering, the torch loop and TU."""
    rows = []
    for m in args.members:
        for members in MEMBER_LOWERINGS:
            if m == 1 and members != "vmap":
                continue
            r = bench_jaxuq(images, y, m, args.batch_size, members, args.repeats)
            rows.append({"impl": f"jaxuq {members}", "members": m, "device": backend, **r})
            print(rows[-1], flush=True)
        if not args.no_torch:
            r = bench_torch_loop(x, y, m, args.batch_size, tdev, args.repeats)
            rows.append({"impl": "torch loop", "members": m, "device": tdev, **r})
            print(rows[-1], flush=True)
            if m >= 2:
                r = bench_tu(x, y, m, args.batch_size, tdev, args.repeats)
                rows.append({"impl": "TU deep_ensembles", "members": m, "device": tdev, **r})
                print(rows[-1], flush=True)
    return rows


def main(argv=None):
    ap = bench_parser(__doc__)
    ap.set_defaults(repeats=1)
    ap.add_argument("--images", type=int, default=60_000, help="training images per epoch (<= 60000)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--members", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads")
    args = ap.parse_args(argv)
    if not args.no_torch and args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    meta = start(args, torch=not args.no_torch)

    import jax

    from jaxuq.data.readers import load_mnist

    images, labels = load_mnist("train", data_dir=args.data_dir)
    if not 0 < args.images <= images.shape[0]:
        raise SystemExit(f"--images must be in 1..{images.shape[0]}, got {args.images}")
    images, y = images[: args.images], labels[: args.images].astype(np.int32)
    x = ((images.astype(np.float32) / 255.0 - 0.1307) / 0.3081).astype(np.float32)  # torch sides
    backend = jax.default_backend()
    tdev = meta["threads"].get("torch_device", "cpu")

    rows = _measure(args, images, y, x, backend, tdev)
    for r in rows:
        r["img_per_s"] = r["images"] / r["seconds"]
        r["epoch_s_60k"] = 60_000 / r["img_per_s"]
    ratios = _ratios(rows, args.members)
    config = {"images": args.images, "batch_size": args.batch_size, "members": args.members,
              "model": "TU lenet (44,426 params)", "optimizer": "SGD lr 0.05 (TU: 0.05*M)",
              "note": "epoch_s_60k extrapolates the measured img/s to 60,000 images; compile excluded"}
    md = markdown_header("Ensemble training epoch: LeNet/MNIST", meta) + [
        f"Measured on {args.images} real MNIST training images, batch {args.batch_size} (last partial "
        "batch dropped), every member on the same batches (TU's recipe); jaxuq: a whole `fit` call of "
        "one epoch (median of --repeats after a compiling warm-up); torch/TU: one warm-up batch, then "
        "the epoch; `epoch (60k)` extrapolates img/s to 60,000 images.", ""]
    cols = [(k, k, "{}") for k in ("impl", "members", "device")]
    cols += [("img/s", "img_per_s", "{:.0f}"), ("epoch (60k) s", "epoch_s_60k", "{:.1f}"),
             ("compile s", "compile_s", "{:.1f}")]
    md += markdown_table(rows, cols)
    md += ["", "| ratio | value |", "|---|---:|"] + [f"| {k} | {v:.2f} |" for k, v in ratios.items()]
    write_results("ensembles", meta, {"config": config, "rows": rows, "ratios": ratios}, md, args.out_dir)
    print("\n".join(md))


if __name__ == "__main__":
    main()
