"""Benchmark: one MNIST training epoch of 1 and 8 LeNet members.

Compares, in the same run and on the same real MNIST images (``JAXUQ_DATA_DIR``):
- jaxuq: one jitted step for all members (``members="vmap"`` and ``members="map"``), SGD lr 0.05;
- torch: a plain Python loop over members (each with its own SGD), one step per member per batch;
- TU: ``torch_uncertainty.methods.deep_ensembles`` of TU ``lenet``s, CE over its ``(M*B, C)`` logits
  against ``RepeatTarget(M)`` targets, one SGD over all parameters (M >= 2 only).

Usage: ``python bench/ensembles.py [--images 60000] [--batch-size 128] [--members 1 8]``.
On CPU use ``--images`` to subsample; per-epoch times are then extrapolated to 60,000 images
(``epoch_s_60k``) from the measured images/s. Writes bench/results/ensembles.json and .md.
Runs unchanged on GPU (JAX picks its default backend; torch uses CUDA when available).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _versions():
    import flax
    import jax

    out = {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__}
    try:
        from importlib.metadata import version

        import torch
        import torch_uncertainty  # noqa: F401

        out["torch"] = torch.__version__
        out["torch_uncertainty"] = version("torch-uncertainty")
    except ImportError:
        pass
    return out


def bench_jaxuq(x, y, m, bs, members, repeats=1):
    import jax
    import jax.numpy as jnp
    import optax

    from jaxuq import ensembles as E
    from jaxuq.models.packed_lenet import packed_lenet

    model = packed_lenet(1, 10, num_estimators=1, alpha=1)  # == TU lenet (all layers dense)
    tx = optax.sgd(0.05)
    xd, yd = jax.device_put(jnp.asarray(x)), jax.device_put(jnp.asarray(y))
    n = (x.shape[0] // bs) * bs
    state = E.init_train_state(model, tx, jax.random.key(0), m, jnp.zeros((1, 28, 28, 1)))
    step = E.make_train_step(model, tx, members=members)
    order = jax.random.permutation(jax.random.key(1), x.shape[0])[:n].reshape(-1, bs)
    t0 = time.perf_counter()
    state, loss = step(state, xd[order[0]], yd[order[0]])
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in range(order.shape[0]):
            idx = order[b]
            state, loss = step(state, xd[idx], yd[idx])
        jax.block_until_ready(state.params)
        best = min(best, time.perf_counter() - t0)
    return {"seconds": best, "images": n, "compile_s": compile_s, "final_loss": float(loss.mean())}


def _torch_lenets(m, device):
    import torch
    from torch_uncertainty.models.classification.lenet import lenet

    torch.manual_seed(0)
    return [lenet(1, 10).to(device) for _ in range(m)]


def bench_torch_loop(x, y, m, bs, device):
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

    return _time_batches(batch, order, device, n)


def bench_tu(x, y, m, bs, device):
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

    return _time_batches(batch, order, device, n)


def _time_batches(batch, order, device, n):
    """One warm-up batch, then every batch of ``order`` timed, synchronised on ``device``."""
    batch(order[0])
    _sync(device)
    t0 = time.perf_counter()
    for b in range(order.shape[0]):
        batch(order[b])
    _sync(device)
    return {"seconds": time.perf_counter() - t0, "images": n}


def _sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=60_000, help="training images per epoch (<= 60000)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--members", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "ensembles"))
    args = ap.parse_args(argv)

    import jax

    from jaxuq.data.readers import load_mnist

    images, labels = load_mnist("train", data_dir=args.data_dir)
    if not 0 < args.images <= images.shape[0]:
        raise SystemExit(f"--images must be in 1..{images.shape[0]}, got {args.images}")
    x = ((images[: args.images].astype(np.float32) / 255.0 - 0.1307) / 0.3081).astype(np.float32)
    y = labels[: args.images].astype(np.int32)
    backend = jax.default_backend()
    tdev = "cpu"
    if not args.no_torch:
        import torch

        tdev = "cuda" if torch.cuda.is_available() else "cpu"
        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)

    rows = []
    for m in args.members:
        for members in ("vmap", "map", "unroll"):
            if m == 1 and members != "vmap":
                continue
            r = bench_jaxuq(x, y, m, args.batch_size, members)
            rows.append({"impl": f"jaxuq {members}", "members": m, "device": backend, **r})
            print(rows[-1], flush=True)
        if not args.no_torch:
            r = bench_torch_loop(x, y, m, args.batch_size, tdev)
            rows.append({"impl": "torch loop", "members": m, "device": tdev, **r})
            print(rows[-1], flush=True)
            if m >= 2:
                r = bench_tu(x, y, m, args.batch_size, tdev)
                rows.append({"impl": "TU deep_ensembles", "members": m, "device": tdev, **r})
                print(rows[-1], flush=True)
    for r in rows:
        r["img_per_s"] = r["images"] / r["seconds"]
        r["epoch_s_60k"] = 60_000 / r["img_per_s"]

    def t(impl, m):
        return next((r["epoch_s_60k"] for r in rows if r["impl"] == impl and r["members"] == m), None)

    ratios = {}
    mmax = max(args.members)
    if 1 in args.members and mmax > 1:
        for impl in ("jaxuq vmap", "jaxuq map", "jaxuq unroll", "torch loop"):
            one = t(impl if not impl.startswith("jaxuq") else "jaxuq vmap", 1)
            many = t(impl, mmax)
            if one and many:
                ratios[f"{impl}: {mmax} members / 1 member"] = many / one
    tu = t("TU deep_ensembles", mmax)
    for impl in ("jaxuq vmap", "jaxuq map", "jaxuq unroll"):
        if tu and t(impl, mmax):
            ratios[f"TU deep_ensembles / {impl} ({mmax} members)"] = tu / t(impl, mmax)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "jax_backend": backend,
                    "jax_devices": [str(d) for d in jax.devices()],
                    "torch_device": tdev, "load_avg_1min": os.getloadavg()[0],
                    "torch_threads": None if args.no_torch else __import__("torch").get_num_threads()},
        "versions": _versions(),
        "config": {"images": args.images, "batch_size": args.batch_size, "members": args.members,
                   "model": "TU lenet (44,426 params)", "optimizer": "SGD lr 0.05 (TU: 0.05*M)",
                   "note": "epoch_s_60k extrapolates the measured img/s to 60,000 images; compile excluded"},
        "rows": rows,
        "ratios": ratios,
    }
    from jaxuq._io import write_text_atomic

    out = Path(args.out)
    write_text_atomic(out.with_suffix(".json"), json.dumps(result, indent=2))
    md = [f"# Ensemble training epoch: LeNet/MNIST ({result['date']})", "",
          f"Machine: {result['machine']['platform']}, {os.cpu_count()} CPUs, JAX backend `{backend}`, "
          f"torch device `{tdev}` ({result['machine']['torch_threads']} threads), "
          f"1-min load avg at the end {result['machine']['load_avg_1min']:.1f} (shared machine). "
          f"Versions: {', '.join(f'{k} {v}' for k, v in result['versions'].items())}.", "",
          f"Measured on {args.images} real MNIST training images, batch {args.batch_size} (last partial "
          "batch dropped), one warm-up step (compile) excluded; `epoch (60k)` extrapolates img/s to "
          "60,000 images.", "",
          "| impl | members | device | img/s | epoch (60k) s | compile s |", "|---|---:|---|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['impl']} | {r['members']} | {r['device']} | {r['img_per_s']:.0f} | "
                  f"{r['epoch_s_60k']:.1f} | {r.get('compile_s', float('nan')):.1f} |")
    md += ["", "| ratio | value |", "|---|---:|"] + [f"| {k} | {v:.2f} |" for k, v in ratios.items()]
    write_text_atomic(out.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
