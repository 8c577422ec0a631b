"""Benchmark: seconds to convert TU ResNet-18 / ResNet-50 torch checkpoints to jaxuq checkpoints.

For each model a random-init TU ``resnet`` (CIFAR style for 18, ImageNet style with 1000 classes for
50) is ``torch.save``'d to a temporary folder; then, in the same process (imports excluded):
- jaxuq: ``converters.convert([file], arch="resnet", kwargs, output=dir)`` = read (torch.load
  weights_only) + strict table conversion + atomic orbax/JSON write; also the stages separately;
- torch anchor: ``torch.load`` + ``load_state_dict`` into TU's model (what loading costs in torch);
- ``jaxuq.models.load`` of the written checkpoint.
Each is repeated (``--repeats``) and the median and minimum are reported. Writes bench/results/convert.json
and .md. CPU-only work (the converter never touches an accelerator); the JAX backend is reported.

Usage: ``python bench/convert.py [--repeats 5] [--allow-load]`` (harness: bench/_common.py).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import bench_parser, markdown_header, start, timeit, write_results  # noqa: E402

MODELS = {
    "resnet18_cifar_c10": {"in_channels": 3, "num_classes": 10, "arch": 18, "style": "cifar"},
    "resnet50_imagenet_c1000": {"in_channels": 3, "num_classes": 1000, "arch": 50, "style": "imagenet"},
}


def _times(fn, repeats):
    t = timeit(fn, repeats=repeats, warmup=0)  # the first call is measured separately
    return {"median_s": t["median_s"], "min_s": t["min_s"], "all_s": [round(x, 4) for x in t["times_s"]]}


def _imports():
    """Everything the timed code imports, imported before timing."""
    import torch  # noqa: F401
    from torch_uncertainty.models.classification import resnet  # noqa: F401

    import converters.core  # noqa: F401
    import jaxuq.models.io  # noqa: F401
    import jaxuq.models.resnet  # noqa: F401


def _bench_one(name: str, kw: dict, tmp: Path, repeats: int) -> dict:
    import torch
    from torch_uncertainty.models.classification import resnet as tu_resnet

    from converters import convert, mappings
    from converters.io import read_state_dict
    from jaxuq import models
    from jaxuq.models.io import save

    torch.manual_seed(0)
    tm = tu_resnet(**kw)
    src = tmp / f"{name}.pt"
    torch.save(tm.state_dict(), src)
    n_params = sum(p.numel() for p in tm.parameters())
    out = tmp / f"{name}_out"
    # the first call (tracing caches, orbax thread pools) is reported separately
    t0 = time.perf_counter()
    convert([src], arch="resnet", kwargs=kw, output=out, force=True)
    first = time.perf_counter() - t0
    full = _times(lambda: convert([src], arch="resnet", kwargs=kw, output=out, force=True), repeats)
    # --verify as the CLI runs it: the torch model built and loaded, both forwards on one batch (JAX's
    # compile of the Flax forward included: each CLI call is a fresh process)
    verified = _times(lambda: convert([src], arch="resnet", kwargs=kw, output=out, force=True, verify=True),
                      repeats)
    read = _times(lambda: read_state_dict(src), repeats)
    sd = read_state_dict(src)[0]
    table = _times(lambda: mappings.convert_state_dict("resnet", sd, str(src), **kw), repeats)
    variables = mappings.convert_state_dict("resnet", sd, str(src), **kw)[1]
    meta = {"arch": "resnet", "kwargs": kw, "num_members": None}
    write = _times(lambda: save(tmp / f"{name}_w", variables, meta, force=True), repeats)
    load = _times(lambda: models.load(out), repeats)

    def torch_load():
        m = tu_resnet(**kw)
        m.load_state_dict(torch.load(src, map_location="cpu", weights_only=True))

    anchor = _times(torch_load, repeats)
    print(f"{name}: {n_params:,} params; convert median {full['median_s']:.2f} s "
          f"(first call {first:.2f} s, with --verify {verified['median_s']:.2f} s; "
          f"read {read['median_s']:.2f}, table {table['median_s']:.2f}, write {write['median_s']:.2f}); "
          f"jaxuq.models.load {load['median_s']:.2f} s; "
          f"torch load+load_state_dict {anchor['median_s']:.2f} s")
    return {"model": name, "kwargs": kw, "params": n_params, "file_bytes": src.stat().st_size,
            "convert_first_call_s": first, "convert": full, "convert_verify": verified, "read": read,
            "table": table, "write": write, "jaxuq_load": load, "torch_anchor_load": anchor}


def main(argv=None):
    ap = bench_parser(__doc__)
    a = ap.parse_args(argv)
    meta = start(a, torch=True)

    _imports()
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="jaxuq-bench-convert-"))
    try:
        for name, kw in MODELS.items():
            rows.append(_bench_one(name, kw, tmp, a.repeats))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    lines = markdown_header("jaxuq-convert timings (CPU, imports excluded)", meta) + [
        f"Median of {a.repeats} runs (min in brackets), seconds. `convert` = read + strict conversion + "
        "atomic orbax/JSON write; `--verify` = the same plus the torch model loaded and both forwards on "
        "one batch of 4 (the Flax forward's compile included, as in every CLI call); torch anchor = "
        "`torch.load` + `load_state_dict` into TU's model.",
        "",
        "| model | params | file MB | convert | convert --verify | first call | read | table | write |"
        " jaxuq.models.load | torch anchor |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        def f(d):
            return f"{d['median_s']:.2f} ({d['min_s']:.2f})"

        lines.append(f"| {r['model']} | {r['params']:,} | {r['file_bytes'] / 1e6:.1f} | {f(r['convert'])} | "
                     f"{f(r['convert_verify'])} | "
                     f"{r['convert_first_call_s']:.2f} | {f(r['read'])} | {f(r['table'])} | "
                     f"{f(r['write'])} | {f(r['jaxuq_load'])} | {f(r['torch_anchor_load'])} |")
    write_results("convert", meta, {"repeats": a.repeats, "rows": rows}, lines, a.out_dir)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
