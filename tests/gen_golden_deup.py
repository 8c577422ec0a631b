"""Generate tests/golden/deup_tutorial_synthetic.npz from TU 0.13.0 (run: python tests/gen_golden_deup.py).

TU's ``DEUP`` fitted on experiments/deup.py's synthetic walkthrough (seed 0: our ``jax.random``
tensors, our base-model weights copied into torch). The fixture holds TU's initial weights of its
6 error predictors (``init{i}/{w1,b1,w2,b2}``), TU's epistemic scores ``scores`` [10] and
likelihoods ``probs`` [10, 5] on the test samples, and ``x_test`` (to detect a change of the
``jax.random`` stream). tests/test_experiments.py checks jaxuq against it
without torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.deup import synthetic  # noqa: E402
from tests.test_experiments import tu_deup_on  # noqa: E402

OUT = Path(__file__).resolve().parent / "golden" / "deup_tutorial_synthetic.npz"


def main() -> None:
    r = synthetic(seed=0)
    scores, probs, inits = tu_deup_on(torch, r)
    arrays = {"scores": scores, "probs": probs, "x_test": r["x_test"]}
    for i, p in enumerate(inits):
        arrays.update({f"init{i}/{k}": v for k, v in p.items()})
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes); TU scores {np.round(scores, 4)}")


if __name__ == "__main__":
    main()
