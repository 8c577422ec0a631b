"""Inference throughput (images/s): ``predict`` vs torch eval and ``evaluate`` vs TU's test loop, ResNet-20.

The published ``resnet20-12fca82f.th`` (data folder ``checkpoints/resnet_cifar``) is converted by the
converter for jaxuq and loaded into its torch twin (``converters.torch_refs``, what the experiments'
TU side runs); the 1000 real test images of ``cifar10_heads`` are tiled to ``--images``.

- jaxuq: the public call ``predict(model, variables, uint8 images, preprocess=..., batch_size=B)``:
  each batch goes host -> device as uint8, is normalised on device, runs the compiled eval forward,
  and the logits come back to host memory (the whole call is timed).
- torch: ``model.eval()`` under ``torch.inference_mode()`` over float NCHW batches normalised in
  advance (their conversion is not timed), logits concatenated.

- the whole test table, ID + OOD (the last row): ``evaluate(model, variables, (images, labels),
  ood_data=...)`` (uint8, normalised on device; every key of TU's table, SmECE included) against TU
  0.13.0's ``TUTrainer.test`` of ``ClassificationRoutine(model, eval_ood=True)`` on float tensors
  (``experiments._tu.tu_test``, batch ``--eval-batch-size``); the OOD set is scio's three synthetic
  shifts of the same 1000 images (``jaxuq.data.synthetic_shifts``, quantised to uint8 for both sides):
  4000 images per call. The row reports the largest difference of the two tables' ID keys, and a
  note the largest of their OOD keys.

Both sides: median of ``--repeats`` calls after a warm-up (``bench._common.timeit``); each predict row
also reports the max |logit difference| and the top-1 agreement between the sides. Runs unchanged on a GPU
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
    p.add_argument("--eval-batch-size", type=int, default=500, help="batch of the evaluate-vs-TU row")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    if args.images < 1 or args.eval_batch_size < 1 or any(b < 1 for b in args.batch_sizes):
        p.error("--images and --batch-sizes must be >= 1")
    meta = start(args, torch=True)

    import torch

    from experiments._inputs import RESNET20_CKPT, load_cifar_heads, load_model
    from experiments._tu import torch_model_of

    _, test = load_cifar_heads(args.data_dir)
    reps = -(-args.images // len(test["images"]))
    images = np.concatenate([test["images"]] * reps)[: args.images]
    model, variables = load_model("resnet20", RESNET20_CKPT, args.data_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tmodel = torch_model_of("resnet20", args.data_dir).to(device)

    rows = [_predict_row(args, batch, images, model, variables, tmodel) for batch in args.batch_sizes]
    rows.append(_evaluate_row(args, test, model, variables, tmodel))
    print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("jaxuq", "torch")}), flush=True)

    cols = [("model", "model", "{}"), ("batch", "batch", "{}"), ("images", "images", "{:,}"),
            ("jaxuq img/s", "jaxuq_img_s", "{:,.0f}"),
            ("torch eval / TU test img/s", "torch_img_s", "{:,.0f}"), ("jaxuq / torch", "ratio", "{:.2f}"),
            ("max abs logit (table) diff", "max_abs_logit_diff", "{:.1e}"),
            ("top-1 agreement", "top1_agreement", "{:.4f}")]
    md = markdown_header("Inference throughput: predict vs torch eval, evaluate vs TU (ResNet-20, CIFAR-10)",
                         meta)
    md += [f"Median of {args.repeats} calls after a warm-up; predict rows: the 1000 real test images tiled "
           f"to {len(images)}; the evaluate row: the whole table on the 1000 images + 3000 shifted OOD "
           "images (the logit column: the largest |difference| of the two tables' ID keys).", ""]
    ev = rows[-1]
    notes = ["", "evaluate row: the ID keys (`test/*`) of the two tables agree within "
             f"{ev['max_abs_logit_diff']:.1e}; the OOD keys within {ev['ood_max_diff']:.1e} "
             f"(worst `{ev['ood_worst_key']}`); NaN on one side only: {ev['nan_on_one_side'] or 'none'}.",
             "", _tu_ood_note(ev)]
    write_results("predict", meta, {"rows": rows}, md + markdown_table(rows, cols) + notes, args.out_dir)


def _tu_ood_note(ev) -> str:
    """The markdown note on why TU's OOD keys differ, from :func:`_tu_ood_check`'s numbers of this run."""
    c, tu = ev["tu_ood_explained"], ev["tu_ood"]
    lo, hi = c["scod_aurc_over_tie_orders"]
    where = "inside" if lo <= tu["ood/SCOD_AURC"] <= hi else "OUTSIDE"
    return (f"Why TU's OOD keys differ (from TU's own scores): {c['msp_exactly_1']} of {c['scores']} MSP "
            "scores are exactly 1.0, one tie group of ID and OOD samples, and TU's AURC family follows its "
            f"sort's tie order: its SCOD_AURC {tu['ood/SCOD_AURC']:.5f} is {where} the range of its formula "
            f"over 200 random tie orders, [{lo:.5f}, {hi:.5f}]; jaxuq's "
            f"{ev['ours_ood']['ood/SCOD_AURC']:.5f} is the tie-aware value (the expectation over tie orders; "
            "its SCOD_Cov_5Risk is NaN when the tied top group's risk is above 5 %). TU's AUROC / AUPR "
            f"{tu['ood/AUROC']:.6f} / {tu['ood/AUPR']:.6f} are those of the float32 sigmoid torchmetrics "
            f"applies to scores outside [0, 1]: {c['auroc_of_sigmoid']:.6f} / {c['aupr_of_sigmoid']:.6f} "
            "exactly from the squashed scores (the sigmoid merges MSP values near 1 into ties).")


def _predict_row(args, batch, images, model, variables, tmodel) -> dict:
    """``predict`` against torch eval at one batch size, on the same images."""
    import torch

    from experiments._inputs import RESNET_PREPROCESS, normalize
    from jaxuq.evaluation import predict

    device = next(tmodel.parameters()).device
    x_torch = torch.from_numpy(normalize(images / np.float32(255)).transpose(0, 3, 1, 2).copy()).to(device)

    def run_jaxuq():
        return predict(model, variables, images, preprocess=RESNET_PREPROCESS, batch_size=batch)

    def run_torch():
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
    return row


def _evaluate_row(args, test, model, variables, tmodel) -> dict:
    """``evaluate`` (ID + OOD, the whole table) against TU's ``TUTrainer.test``, on the same images."""
    import jax
    import jax.numpy as jnp
    import torch
    from torch_uncertainty.routines import ClassificationRoutine

    from experiments._inputs import RESNET_PREPROCESS, normalize
    from experiments._tu import tu_test
    from jaxuq.data import synthetic_shifts
    from jaxuq.evaluation import evaluate

    images, labels = test["images"], test["labels"]
    shifted = synthetic_shifts(jax.random.key(0), jnp.asarray(images, jnp.float32) / 255.0)
    ood = np.concatenate([np.asarray(v) for v in shifted.values()])
    ood = np.clip(np.round(ood * 255.0), 0, 255).astype(np.uint8)
    bs = args.eval_batch_size

    def nchw(u8):
        return torch.from_numpy(normalize(u8 / np.float32(255)).transpose(0, 3, 1, 2).copy())

    x_id, x_ood, y = nchw(images), nchw(ood), torch.as_tensor(labels, dtype=torch.long)
    routine = ClassificationRoutine(model=tmodel.cpu(), num_classes=10, loss=None, eval_ood=True)

    def run_jaxuq():
        return evaluate(model, variables, (images, labels), ood_data=ood, preprocess=RESNET_PREPROCESS,
                        batch_size=bs, progress=False)

    def run_tu():
        return tu_test(routine, (x_id, y), x_ood, batch_size=bs)

    tj, tt = timeit(run_jaxuq, repeats=args.repeats), timeit(run_tu, repeats=args.repeats)
    ours, theirs = run_jaxuq(), run_tu()
    shared = sorted(set(ours) & set(theirs))
    n = len(images) + len(ood)
    row = {"model": "resnet20 evaluate vs TU test (ID + OOD table)", "batch": bs, "images": n,
           "jaxuq_img_s": n / tj["median_s"], "torch_img_s": n / tt["median_s"], "jaxuq": tj, "torch": tt,
           "shared_keys": len(shared), "top1_agreement": float("nan"),
           "key_diffs": {k: abs(float(ours[k]) - float(theirs[k])) for k in shared}}
    row["ours_ood"] = {k: float(v) for k, v in ours.items() if k.startswith("ood/")}
    row["tu_ood"] = {k: float(v) for k, v in theirs.items() if k.startswith("ood/")}
    row["nan_on_one_side"] = sorted(k for k in shared
                                    if np.isnan(float(ours[k])) != np.isnan(float(theirs[k])))
    row["tu_ood_explained"] = _tu_ood_check(tmodel, x_id, x_ood, y, bs)
    finite = {k: v for k, v in row["key_diffs"].items() if np.isfinite(v)}
    row["max_abs_logit_diff"] = max(v for k, v in finite.items() if k.startswith("test/"))  # the ID table
    row["ood_worst_key"] = max((k for k in finite if k.startswith("ood/")), key=finite.get)
    row["ood_max_diff"] = finite[row["ood_worst_key"]]
    row["ratio"] = row["jaxuq_img_s"] / row["torch_img_s"]
    return row


def _tu_ood_check(tmodel, x_id, x_ood, y, bs, orders: int = 200) -> dict:
    """Where TU's OOD keys come from, recomputed from TU's own (torch) MSP scores: how many are exactly
    1.0 (one tie group), the range of TU's SCOD_AURC formula over ``orders`` random orders of the ties
    (TU's order is its unstable sort's; jaxuq's tie-aware value is their expectation), and jaxuq's
    exact AUROC/AUPR of the float32 sigmoid of the scores (torchmetrics squashes scores outside [0, 1],
    which merges MSP values near 1 into ties)."""
    import torch

    from jaxuq.metrics import aupr, auroc

    with torch.inference_mode():
        probs = torch.cat([torch.softmax(tmodel(x[i:i + bs]), -1) for x in (x_id, x_ood)
                           for i in range(0, len(x), bs)])
        msp = probs.amax(-1)
        squashed = torch.sigmoid(-msp).numpy()  # torchmetrics' squashing of the OOD score -MSP
    msp, n_id = msp.numpy(), len(x_id)
    is_ood = np.r_[np.zeros(n_id, np.int32), np.ones(len(msp) - n_id, np.int32)]
    errors = np.r_[probs[:n_id].argmax(-1).numpy() != y.numpy(), np.zeros(len(msp) - n_id, bool)]
    loss = np.where(is_ood == 1, 0.5, 0.5 * errors)  # SCOD loss, c = 0.5, ranked by MSP descending
    rng, k = np.random.default_rng(0), np.arange(1, len(msp) + 1)
    aurcs = []
    for _ in range(orders):
        perm = rng.permutation(len(msp))
        risk = np.cumsum(loss[perm[np.argsort(-msp[perm], kind="stable")]]) / k
        aurcs.append(np.trapezoid(risk, k / len(k)) / (1 - 1 / len(k)))
    return {"msp_exactly_1": int((msp == 1).sum()), "scores": len(msp),
            "scod_aurc_over_tie_orders": [float(min(aurcs)), float(max(aurcs))],
            "auroc_of_sigmoid": float(auroc(squashed, is_ood)),
            "aupr_of_sigmoid": float(aupr(squashed, is_ood))}


if __name__ == "__main__":
    main()
