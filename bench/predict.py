"""Inference throughput (images/s): ``jaxuq.evaluation.predict`` vs torch eval, ResNet-20 on CIFAR-10.

The published ``resnet20-12fca82f.th`` (data folder ``checkpoints/resnet_cifar``) is converted by the
converter for jaxuq and loaded into its torch twin (``converters.torch_refs``, what the experiments'
TU side runs); the 1000 real test images of ``cifar10_heads`` are tiled to ``--images``.

- jaxuq: the public call ``predict(model, variables, uint8 images, preprocess=..., batch_size=B)``:
  each batch goes host -> device as uint8, is normalised on device, runs the compiled eval forward,
  and the logits come back to host memory (the whole call is timed).
- torch: ``model.eval()`` under ``torch.inference_mode()`` over float NCHW batches normalised in
  advance (their conversion is not timed), logits concatenated.

Both sides: median of ``--repeats`` calls after a warm-up (``bench._common.timeit``); each row also
reports the max |logit difference| and the top-1 agreement between the sides. Runs unchanged on a GPU
(torch on CUDA when available). Writes bench/results/predict.{json,md}.

    python bench/predict.py                       # batch 128 and 500, 5000 images
    python bench/predict.py --batch-sizes 1000 --images 10000
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import bench_parser, markdown_header, markdown_table, start, timeit, write_results  # noqa: E402


def main(argv=None):
    p = bench_parser(__doc__)
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 500])
    p.add_argument("--images", type=int, default=5000, help="the 1000 test images tiled to this many")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    if args.images < 1 or any(b < 1 for b in args.batch_sizes):
        p.error("--images and --batch-sizes must be >= 1")
    meta = start(args, torch=True)

    import torch

    from experiments._inputs import RESNET20_CKPT, RESNET_PREPROCESS, load_cifar_heads, load_model, normalize
    from experiments._tu import torch_model_of
    from jaxuq.evaluation import predict

    _, test = load_cifar_heads(args.data_dir)
    reps = -(-args.images // len(test["images"]))
    images = np.concatenate([test["images"]] * reps)[: args.images]
    model, variables = load_model("resnet20", RESNET20_CKPT, args.data_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tmodel = torch_model_of("resnet20", args.data_dir).to(device)
    x_torch = torch.from_numpy(normalize(images / np.float32(255)).transpose(0, 3, 1, 2).copy()).to(device)

    rows = []
    for batch in args.batch_sizes:
        def run_jaxuq(batch=batch):
            return predict(model, variables, images, preprocess=RESNET_PREPROCESS, batch_size=batch)

        def run_torch(batch=batch):
            with torch.inference_mode():
                return torch.cat([tmodel(x_torch[i:i + batch]) for i in range(0, len(x_torch), batch)])

        tj, tt = timeit(run_jaxuq, repeats=args.repeats), timeit(run_torch, repeats=args.repeats)
        ours, theirs = run_jaxuq(), run_torch().cpu().numpy()
        row = {"model": "resnet20", "batch": batch, "images": len(images),
               "jaxuq_img_s": len(images) / tj["median_s"], "torch_img_s": len(images) / tt["median_s"],
               "jaxuq": tj, "torch": tt, "max_abs_logit_diff": float(np.abs(ours - theirs).max()),
               "top1_agreement": float((ours.argmax(1) == theirs.argmax(1)).mean())}
        row["ratio"] = row["jaxuq_img_s"] / row["torch_img_s"]
        print(json.dumps({k: v for k, v in row.items() if k not in ("jaxuq", "torch")}), flush=True)
        rows.append(row)

    cols = [("model", "model", "{}"), ("batch", "batch", "{}"), ("images", "images", "{:,}"),
            ("jaxuq predict img/s", "jaxuq_img_s", "{:,.0f}"), ("torch eval img/s", "torch_img_s", "{:,.0f}"),
            ("jaxuq / torch", "ratio", "{:.2f}"), ("max abs logit diff", "max_abs_logit_diff", "{:.1e}"),
            ("top-1 agreement", "top1_agreement", "{:.4f}")]
    md = markdown_header("Inference throughput: predict vs torch eval (ResNet-20, CIFAR-10)", meta)
    md += [f"Median of {args.repeats} calls after a warm-up; the 1000 real test images tiled to "
           f"{len(images)}.", ""]
    write_results("predict", meta, {"rows": rows}, md + markdown_table(rows, cols), args.out_dir)


if __name__ == "__main__":
    main()
