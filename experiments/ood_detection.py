"""TU's OOD-detection tutorial flow in jaxuq: ResNet-18 (cifar style) on CIFAR-10, MSP / MaxLogit.

Tutorial recipe: ``resnet(arch=18, style="cifar")``, ``Adam(lr=1e-3)``, no scheduler, 1 epoch,
16-mixed (here: bf16 compute, fp32 state), batch 512, RandomCrop(32, 4) + flip + Normalize; OOD set
SVHN test (``test_32x32.mat`` under the data folder; a clear error if absent). Without SVHN,
``--ood shifts`` uses scio's synthetic shifts (vertical flip, darker x0.5, uniform noise) of the ID
test images instead. ``--dataset cifar10_heads`` trains on the 5000 real CIFAR-10 images of the
shared data folder and tests on its 1000 test images.

    python experiments/ood_detection.py --dataset cifar10 --ood svhn          # the tutorial
    python experiments/ood_detection.py --dataset cifar10_heads --ood shifts --train-subset 2000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from jaxuq.data import svhn_ood, synthetic_shifts  # noqa: E402
from jaxuq.data.registry import default_preprocess, load_dataset  # noqa: E402
from jaxuq.train import fit, predict, torch_adam  # noqa: E402


def resnet18():
    from jaxuq import models

    return models.get("resnet", arch=18, style="cifar", num_classes=10, in_channels=3)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar10_heads"])
    p.add_argument("--ood", default="svhn", choices=["svhn", "shifts"])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--fp32", action="store_true", help="fp32 compute instead of bf16")
    p.add_argument("--train-subset", type=int, default=0)
    p.add_argument("--test-subset", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the metric table here")
    args = p.parse_args(argv)

    x_te, y_te = load_dataset(args.dataset, "test", args.data_dir)
    if args.ood == "svhn":
        x_ood, _ = svhn_ood(args.data_dir)  # FileNotFoundError naming the paths when absent
    x_tr, y_tr = load_dataset(args.dataset, "train", args.data_dir)
    if args.train_subset:
        x_tr, y_tr = x_tr[: args.train_subset], y_tr[: args.train_subset]
    if args.test_subset:
        x_te, y_te = x_te[: args.test_subset], y_te[: args.test_subset]
    pre = default_preprocess(args.dataset)
    dtype = jnp.float32 if args.fp32 else jnp.bfloat16
    res = fit(
        resnet18(),
        (x_tr, y_tr),
        optimizer=torch_adam(1e-3),
        epochs=args.epochs,
        batch_size=min(args.batch_size, len(x_tr)),
        preprocess=pre,
        seed=args.seed,
        compute_dtype=dtype,
    )
    logits = predict(res.state, x_te, pre, 512, dtype)

    from jaxuq.evaluate import classification_table
    from jaxuq.ood.criteria import max_logit, msp
    from jaxuq.report import print_table

    if args.ood == "svhn":
        scenarios = {"SVHN": predict(res.state, x_ood, pre, 512, dtype)}
    else:
        shifted = synthetic_shifts(jax.random.key(args.seed), jnp.asarray(x_te, jnp.float32) / 255.0)
        scenarios = {
            k: predict(res.state, np.asarray(jnp.round(v * 255)).astype(np.uint8), pre, 512, dtype)
            for k, v in shifted.items()
        }
    out = {}
    for crit_name, crit in (("msp", msp), ("max_logit", max_logit)):
        for ood_name, ood_logits in scenarios.items():
            scores = jnp.concatenate([crit(jnp.asarray(logits)), crit(jnp.asarray(ood_logits))])
            table = classification_table(
                logits=logits,
                labels=y_te,
                ood_scores=scores,
                ood_probs=jax.nn.softmax(jnp.asarray(ood_logits), -1),
                smece=False,
            )
            print(f"\n== criterion {crit_name}, OOD set {ood_name} ==")
            print_table(table)
            out[f"{crit_name}/{ood_name}"] = {k: float(v) for k, v in table.items()}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
