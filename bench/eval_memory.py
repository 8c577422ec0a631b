"""Peak memory of the streaming ``jaxuq.evaluate`` against ``classification_table`` on whole arrays.

    python bench/eval_memory.py [--n 10000 100000 1000000] [--classes 10 1000] [--batch-size 4096]

For every N x C of the grid, ID logits ``[N, C]`` and ``N // 10`` OOD logits are synthetic, drawn
batch by batch from a seeded generator (``--batch-size`` rows at a time), so with ``evaluate``
the inputs never sit in memory whole: the "model" is the identity on the logits, the data an
iterable of ``(logits, labels)`` batches. ``classification_table`` needs every prediction at
once, so its rows concatenate the same batches first; it runs only where its estimated footprint
(``TABLE_COPIES`` float32 copies of ``[N, C]``) fits in half of the available RAM.

Each row runs in its own process and reports its peak host RSS (``ru_maxrss``; ``base_rss_mib``
is the RSS after the imports, before the data) and, on a GPU, the device's
``peak_bytes_in_use``. ``state_bytes`` is what ``evaluate`` keeps per sample for the rank metrics
(host float32: 12 bytes per ID sample, 4 per OOD sample; see ``jaxuq.evaluation``); the sum and
binned states are O(1). Writes bench/results/eval_memory.{json,md}. Memory does not depend on
the load, timings (``seconds``) do.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._common import bench_parser, markdown_header, markdown_table, start, write_results  # noqa: E402

MIB = 2**20
TABLE_COPIES = 4  # logits, probabilities, the sorted copies of the rank metrics (estimate)
OOD_FRACTION = 10


def batches(n: int, c: int, batch_size: int, seed: int, labels: bool = True):
    """Synthetic ``(logits [B, C], labels [B])`` (or ``logits`` alone) batches: N rows in all,
    about 80% of the argmaxes on the label."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        y = rng.integers(0, c, b)
        z = rng.normal(size=(b, c)).astype(np.float32)
        z[np.arange(b), y] += np.float32(3.0)
        yield (z, y) if labels else z


def child(method: str, n: int, c: int, batch_size: int) -> dict:
    """One row, in this process: run ``method`` and measure its peaks."""
    import flax.linen as nn
    import jax
    import numpy as np

    from jaxuq.evaluation import classification_table, evaluate
    from jaxuq.ood.criteria import msp

    class Logits(nn.Module):  # the identity "model": the inputs are the logits
        @nn.compact
        def __call__(self, x, train: bool = False):
            return x

    n_ood = max(2, n // OOD_FRACTION)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    if method == "evaluate":
        res = evaluate(Logits(), {}, batches(n, c, batch_size, 0),
                       ood_data=batches(n_ood, c, batch_size, 1, labels=False),
                       batch_size=batch_size, params=0, progress=False)
    else:
        z, y = (np.concatenate(a) for a in zip(*batches(n, c, batch_size, 0)))
        zo = np.concatenate(list(batches(n_ood, c, batch_size, 1, labels=False)))
        res = classification_table(logits=z, labels=y, ood_scores=np.concatenate([msp(z), msp(zo)]),
                                   ood_probs=jax.nn.softmax(zo, -1), params=0)
    seconds = time.perf_counter() - t0
    stats = jax.devices()[0].memory_stats() or {}
    return {"method": method, "n": n, "classes": c, "n_ood": n_ood, "batch_size": batch_size,
            "seconds": seconds, "base_rss_mib": base,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "device_peak_mib": stats["peak_bytes_in_use"] / MIB if "peak_bytes_in_use" in stats else None,
            "state_mib": (12 * n + 4 * n_ood) / MIB if method == "evaluate" else None,
            "acc": res["test/cls/Acc"], "auroc": res["ood/AUROC"]}


def _available_bytes() -> int:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def run_row(method: str, n: int, c: int, batch_size: int) -> dict:
    """Run one row in a fresh process (its own peak); a failure is recorded, not raised."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", method, str(n), str(c), str(batch_size)]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        return {"method": method, "n": n, "classes": c, "error": r.stderr.strip().splitlines()[-1:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        print(json.dumps(child(argv[1], *map(int, argv[2:5]))))
        return 0
    ap = bench_parser(__doc__)
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--classes", type=int, nargs="+", default=[10, 1000])
    ap.add_argument("--batch-size", type=int, default=4096)
    args = ap.parse_args(argv)
    meta = start(args)
    rows = []
    for c in args.classes:
        for n in args.n:
            rows.append(run_row("evaluate", n, c, args.batch_size))
            need = TABLE_COPIES * 4 * n * c * (1 + 1 / OOD_FRACTION)
            if need <= _available_bytes() / 2:
                rows.append(run_row("classification_table", n, c, args.batch_size))
            else:
                rows.append({"method": "classification_table", "n": n, "classes": c,
                             "skipped": f"needs ~{need / 2**30:.1f} GiB"})
            print(json.dumps(rows[-2:]), flush=True)
    cols = [("method", "method", "{}"), ("N", "n", "{:,}"), ("C", "classes", "{:,}"),
            ("peak RSS MiB", "peak_rss_mib", "{:,.0f}"), ("base RSS MiB", "base_rss_mib", "{:,.0f}"),
            ("device peak MiB", "device_peak_mib", "{:,.0f}"), ("kept state MiB", "state_mib", "{:,.1f}"),
            ("s", "seconds", "{:.1f}"), ("skipped / error", "skipped", "{}")]
    for r in rows:
        if "error" in r:
            r["skipped"] = f"error: {r['error']}"
    md = markdown_header("Peak memory: streaming evaluate vs classification_table", meta) + [
        f"ID logits N x C from batches of {args.batch_size} rows, N/{OOD_FRACTION} OOD samples; each row "
        "in its own process. `kept state`: the per-sample host arrays of the rank metrics "
        "(12 B per ID sample, 4 B per OOD sample).", ""] + markdown_table(rows, cols)
    write_results("eval_memory", meta, {"batch_size": args.batch_size, "rows": rows}, md, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
