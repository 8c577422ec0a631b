"""Generator (not a test) for tests/golden/ood_scio_*.npz: scio 1.1.0's scores on Tiniest.

scio-pypi requires Python >= 3.12, so it runs in its own venv, not the project's (3.11):

    /root/.pyenv/versions/3.12.1/bin/python -m venv /tmp/scio312
    /tmp/scio312/bin/pip install torch==2.14.1 scio-pypi==1.1.0
    JAXUQ_DATA_DIR=/work/shared/data /tmp/scio312/bin/python tests/gen_golden_scio.py

It rebuilds the torch Tiniest from checkpoints/scio_tiniest (checked against the reference
logits), then runs scio's tutorial flow (fit_scores / compute_confidence / compute_metrics):
calibration = real CIFAR-10 train images, InD = test images, OOD = vertical flip, x0.5, uniform
random (numpy default_rng(0), float32, so both sides see the same images).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "golden"
OODS_TITLE = ("Vertical flip", "Darker", "Uniformly random")


def ood_sets(ind_nhwc: np.ndarray) -> tuple[np.ndarray, ...]:
    """The tutorial's three synthetic OOD sets, NHWC float32 in [0, 1]."""
    rand = np.random.default_rng(0).random(ind_nhwc.shape, dtype=np.float32)
    return (ind_nhwc[:, ::-1].copy(), ind_nhwc * np.float32(0.5), rand)


def load_split(data_dir: Path, n_calib: int, n_ind: int):
    tr = np.load(data_dir / "cifar10_heads/train_first1000x5.npz")
    te = np.load(data_dir / "cifar10_heads/test_first1000.npz")
    xc = tr["images"][:n_calib].astype(np.float32) / 255
    yc = tr["labels"][:n_calib].astype(np.int64)
    xi = te["images"][:n_ind].astype(np.float32) / 255
    return xc, yc, xi


def torch_tiniest():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class LayerNorm2d(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.ln = nn.LayerNorm(d)

        def forward(self, x):
            return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    class Block(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.rs = nn.Parameter(torch.ones(1, d, 1, 1))
            q = d // 4
            self.dwconv1 = nn.Conv2d(q, q, 3, padding=1, groups=q)
            self.dwconv2 = nn.Conv2d(q, q, 7, padding=3, groups=q)
            self.dwconv3 = nn.Conv2d(q, q, 7, padding=9, dilation=3, groups=q)
            self.ln = LayerNorm2d(d)
            self.fc1 = nn.Conv2d(d, 2 * d, 1)
            self.fc2 = nn.Conv2d(d, d, 1)

        def forward(self, x):
            c0, c1, c2, c3 = x.chunk(4, 1)
            c3 = F.avg_pool2d(c3, 3, 1, 1, count_include_pad=True)
            h = torch.cat([c0, self.dwconv1(c1), self.dwconv2(c2), self.dwconv3(c3)], 1)
            a, b = self.fc1(self.ln(h)).chunk(2, 1)
            return self.fc2(torch.tanh(torch.exp(a)) * a * b) + x * self.rs

    class Tiniest(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 48, 3, padding=1)
            self.ln1 = LayerNorm2d(48)
            self.l1, self.l2, self.l3 = Block(48), Block(48), Block(48)
            self.dsconv = nn.Conv2d(48, 80, 4, stride=2, padding=1, groups=16)
            self.ln2 = LayerNorm2d(80)
            self.l4, self.l5, self.l6 = Block(80), Block(80), Block(80)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(80, 10)

        def forward(self, x):
            x = self.l3(self.l2(self.l1(self.ln1(self.conv1(x)))))
            x = self.l6(self.l5(self.l4(self.ln2(self.dsconv(x)))))
            return self.fc(self.avgpool(x).flatten(1))

    return Tiniest()


def main() -> None:
    import torch
    from scio.eval import AUC, TPR, compute_confidence, compute_metrics, fit_scores
    from scio.recorder import Recorder
    from scio.scores import KNN, ODIN, DeepMahalanobis, GradNorm, Gram, Softmax

    torch.set_num_threads(2)
    data = Path(os.environ["JAXUQ_DATA_DIR"])
    net = torch_tiniest()
    net.load_state_dict(torch.load(data / "checkpoints/scio_tiniest/tiniest.pt", weights_only=True))
    net.eval()
    ref = np.load(data / "checkpoints/reference_logits_first1000.npz")["tiniest"]
    te = np.load(data / "cifar10_heads/test_first1000.npz")["images"][:100].astype(np.float32) / 255
    with torch.no_grad():
        lg = net(torch.tensor(te).permute(0, 3, 1, 2)).numpy()
    assert np.abs(lg - ref[:100]).max() < 2e-4, np.abs(lg - ref[:100]).max()
    to_t = lambda a: torch.tensor(np.ascontiguousarray(a)).permute(0, 3, 1, 2).contiguous()
    print(Recorder(net, input_data=to_t(te[:1])))
    block3, feature_maps, logits = (1, 5), (1, 11), (1, 12)
    metrics = (AUC(max_fpr=0.2), TPR(max_fpr=0.05))

    for tag, n_calib, n_ind, extra in (("small", 128, 32, True), ("full", 1000, 1000, False)):
        xc, yc, xi = load_split(data, n_calib, n_ind)
        oods = ood_sets(xi)
        sal = [
            (Softmax(), []),
            (GradNorm(), [logits]),
            (Gram(), [block3, feature_maps, logits]),
            (KNN(k=int(n_calib**0.4)), [feature_maps]),
        ]
        if extra:
            sal += [(DeepMahalanobis(), [feature_maps]), (ODIN(temperature=1000.0, epsilon=0.0014), [])]
        fit = fit_scores(sal, net, to_t(xc), torch.tensor(yc), show_progress=False)
        ci, co = compute_confidence(fit, ind=to_t(xi), oods=tuple(map(to_t, oods)), show_progress=False)
        evals = compute_metrics(ci, co, metrics)
        np.savez_compressed(
            OUT / f"ood_scio_tiniest_{tag}.npz",
            confs=np.stack([ci, *co], 1).astype(np.float32),  # [score, set (InD + 3 OOD), sample]
            evals=evals,  # [score, ood set, metric (AUC(max_fpr=0.2), TPR(max_fpr=0.05))]
            names=np.array([type(s).__name__ for s, _ in sal]),
            n_calib=n_calib,
            n_ind=n_ind,
            scio_version="1.1.0",
            torch_version=torch.__version__,
        )
        print(tag, "\n", np.round(evals, 3))


if __name__ == "__main__":
    sys.exit(main())
