"""`make run`: a real TU-style evaluation table, computed by jaxuq.

Until the model zoo lands, the table comes from a real classifier on real data that ships with
scikit-learn: the 8x8 *digits* dataset. A multinomial logistic regression is trained on a seeded
50% split of the digits 0-4; its probabilities on the other half are the ID predictions and the
digits 5-9 are the OOD set, scored with the MSP criterion (score = -max p). jaxuq computes the
full table (classification, calibration, OOD, selective, complexity) and prints it like TU.

    python -m experiments.main            # writes runs/main/results.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/main/results.json"))
    args = parser.parse_args(argv)

    try:
        from sklearn.datasets import load_digits
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import train_test_split
    except ImportError:  # pragma: no cover
        print("experiments.main needs scikit-learn (pip install -e '.[examples]')", file=sys.stderr)
        return 2

    import jax
    import jax.numpy as jnp

    from jaxuq.evaluation import classification_table
    from jaxuq.metrics import ece
    from jaxuq.report import print_table, write_json

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    id_mask = y < 5
    x_id, y_id, x_ood = x[id_mask], y[id_mask], x[~id_mask]
    x_tr, x_te, y_tr, y_te = train_test_split(
        x_id, y_id, test_size=0.5, random_state=args.seed, stratify=y_id
    )
    clf = LogisticRegression(max_iter=2000, C=0.05).fit(x_tr, y_tr)

    def probs_of(a: np.ndarray) -> jax.Array:
        logits = jnp.asarray(a @ clf.coef_.T + clf.intercept_, jnp.float32)
        return jax.nn.softmax(logits, axis=-1)

    p_id, p_ood = probs_of(x_te), probs_of(x_ood)
    msp = lambda p: -jnp.max(p, axis=-1)  # MSP criterion: higher = more OOD
    scores = jnp.concatenate([msp(p_id), msp(p_ood)])
    params = int(clf.coef_.size + clf.intercept_.size)
    flops = 2 * x_te.shape[1] * clf.coef_.shape[0]  # one 64x5 matmul per image (2 * MAC)

    results = classification_table(
        p_id, y_te.astype(np.int32), ood_scores=scores, ood_probs=p_ood, flops=flops, params=params
    )
    print(
        f"digits 0-4 (ID, {len(y_te)} test / {len(y_tr)} train) vs digits 5-9 (OOD, {len(x_ood)}): "
        "logistic regression, MSP OOD score"
    )
    print_table(results)
    print(f"ECE (15 bins): {float(ece(p_id, y_te)):.4%}")
    write_json(results, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
