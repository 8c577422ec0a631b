"""Generate tests/golden/models_*.npz from torch / TU 0.13.0 (run: python tests/gen_golden_models.py).

Each fixture holds a random-init torch model's state dict (``sd/<key>``, BN affine and running stats
randomised), an input batch ``x`` (NHWC), torch's eval logits ``logits_eval``, train-mode logits
``logits_train`` and the BN running statistics after that one train-mode forward (``sd_after/<key>``),
plus ``arch`` / ``kwargs`` (JSON). tests/test_models_golden.py checks the Flax models against them
without torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.torch_models import randomize_, state_dict_numpy, torch_model  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "golden"
CASES = {
    "models_lenet_bn": ("lenet", {"in_channels": 1, "num_classes": 10, "norm": "batchnorm"}, (4, 28, 28, 1)),
    "models_tu_resnet20_variant": ("resnet", {"in_channels": 3, "num_classes": 10, "arch": 20, "style": "cifar",
                                              "conv_bias": True, "width_multiplier": 0.5, "groups": 2},
                                   (3, 32, 32, 3)),
    "models_resnet8_he": ("resnet_cifar", {"depth": 8}, (3, 32, 32, 3)),  # option-A shortcut, small
}


def main():
    for name, (arch, kw, shape) in CASES.items():
        torch.manual_seed(0)
        tm = randomize_(torch_model(arch, **kw), seed=1)
        sd = state_dict_numpy(tm)
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        with torch.no_grad():
            tm.eval()
            le = tm(xt).numpy()
            tm.train()
            lt = tm(xt).numpy()
        after = state_dict_numpy(tm)
        arrays = {f"sd/{k}": v for k, v in sd.items()}
        arrays.update({f"sd_after/{k}": v for k, v in after.items() if "running_" in k})
        np.savez_compressed(GOLDEN / f"{name}.npz", x=x, logits_eval=le, logits_train=lt,
                            arch=np.array(arch), kwargs=np.array(json.dumps(kw)),
                            torch_version=np.array(torch.__version__), **arrays)
        print(name, (GOLDEN / f"{name}.npz").stat().st_size, "bytes")


if __name__ == "__main__":
    main()
