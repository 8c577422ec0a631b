"""Memory proxy for the batched OOD detectors: peak host RSS vs number of calibration samples.

    python bench/ood.py [--sizes 1000 4000 16000] [--batch-size 256] [--allow-load]

Each size runs in a fresh subprocess: build N random CIFAR-shaped inputs, fit KNN (on the pooled
features) and Gram (on a 32x32x64 feature map, the pooled features and the logits) of a small CNN
over batches, score 1000 inputs, and report the peak RSS (``resource.getrusage``) and the timings.
The inputs themselves (N x 12 KB) are part of the footprint; the per-sample activations
(N x 256 KB for the 32x32x64 map, 4 GB at N = 16000) are never materialised at once, so the peak
grows with the inputs and the detectors' state (KNN keeps N x 64 features; Gram keeps per-sample
statistics for its quantiles), not with the activations. On an accelerator the same code keeps
one batch of activations on the device (``jax.devices()[0].memory_stats()`` is reported when
the backend provides it). Writes bench/results/ood_rss.{json,md} (bench/ood_memory.py accounts
the compiled per-batch programs for 50,000 samples). Harness: bench/_common.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._common import bench_parser, markdown_header, start, write_results  # noqa: E402

CHILD = r"""
import json, resource, sys, time
import flax.linen as nn, jax, numpy as np
from jaxuq.ood import KNN, Gram

class Pool(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x.mean((1, 2), keepdims=True)

class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(64, (3, 3), padding=((1, 1), (1, 1)), name="conv1")(x))
        x = Pool(name="avgpool")(x)
        return nn.Dense(10, name="fc")(x.reshape(x.shape[0], -1))

n, bs = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
x = rng.random((n, 32, 32, 3), dtype=np.float32)
m = Net(); v = m.init(jax.random.key(0), x[:1])
y = np.asarray(rng.integers(0, 10, n))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {"n": n, "batch_size": bs, "rss_after_data_mib": base / 1024}
for det in (KNN(["avgpool"], k=10, batch_size=bs), Gram(["conv1", "avgpool", "fc"], batch_size=bs)):
    t0 = time.perf_counter(); det.fit(m, v, x, y); t1 = time.perf_counter()
    det.confidence(x[:1000]); t2 = time.perf_counter()
    name = type(det).__name__
    out[name + "_fit_s"] = t1 - t0
    out[name + "_score_1000_s"] = t2 - t1
out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
stats = jax.devices()[0].memory_stats()
out["device_peak_bytes"] = stats.get("peak_bytes_in_use") if stats else None
out["backend"] = jax.default_backend()
print(json.dumps(out))
"""


def main(argv=None) -> int:
    ap = bench_parser(__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args(argv)
    meta = start(args)
    rows = []
    for n in args.sizes:
        r = subprocess.run([sys.executable, "-c", CHILD, str(n), str(args.batch_size)], cwd=REPO,
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        if r.returncode:
            print(r.stderr, file=sys.stderr)
            return 1
        row = json.loads(r.stdout.strip().splitlines()[-1])
        row["activations_if_unbatched_mib"] = n * 32 * 32 * 64 * 4 / 2**20
        rows.append(row)
        print(row)
    lines = markdown_header("OOD detectors: peak memory vs calibration size", meta) + [
        "| N calib | batch | RSS after data (MiB) | peak RSS (MiB) "
        "| 32x32x64 activations if unbatched (MiB) | KNN fit (s) | Gram fit (s) |",
        "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['batch_size']} | {r['rss_after_data_mib']:.0f} "
                     f"| {r['peak_rss_mib']:.0f} | {r['activations_if_unbatched_mib']:.0f} "
                     f"| {r['KNN_fit_s']:.1f} | {r['Gram_fit_s']:.1f} |")
    write_results("ood_rss", meta, {"rows": rows}, lines, args.out_dir)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
