"""The torch-LBFGS port is algorithmically exact: in float64, TU's scalers (torch LBFGS, no line
search) and ours agree to rounding level on real logits (TS: 1e-16; MS after 150 steps: 2.5e-9), so
the float32 differences seen in test_calibration.py are rounding amplified along the trajectory."""

import subprocess
import sys

import pytest

from tests.helpers import REPO, data_path, require

CHILD = r"""
import jax, logging, sys
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp, numpy as np, torch
from torch.utils.data import DataLoader, TensorDataset
from torch_uncertainty.post_processing import MatrixScaler, TemperatureScaler
from jaxuq.calibration.lbfgs import lbfgs_torch
logging.disable(logging.WARNING)
ref = np.load(sys.argv[1])
z, y = ref["resnet20"][:500].astype(np.float64), ref["labels"][:500]
c = 10
def ce(logits):
    lp = jax.nn.log_softmax(logits, -1)
    return -jnp.mean(jnp.take_along_axis(lp, jnp.asarray(y)[:, None], -1))
out = []
ms = lambda x: ce(jnp.asarray(z) @ x[: c * c].reshape(c, c).T + x[c * c:])
eye = jnp.concatenate([jnp.eye(c).ravel(), jnp.zeros(c)])
for cls, x0, f, n in [(TemperatureScaler, jnp.ones(1), lambda x: ce(jnp.asarray(z) * x[0]), 100),
                      (MatrixScaler, eye, ms, 150), (MatrixScaler, eye, ms, 200)]:
    s = cls(num_classes=c, max_iter=n) if cls is MatrixScaler else cls(max_iter=n)
    s = s.double()
    s.fit(DataLoader(TensorDataset(torch.tensor(z), torch.tensor(y)), batch_size=500), progress=False)
    theta = torch.cat([p.detach().flatten() for p in s.inv_temperature]).numpy()
    mine = np.asarray(lbfgs_torch(f, x0.astype(jnp.float64), lr=0.1, max_iter=n).x)
    out.append((float(np.abs(theta - mine).max()), abs(float(f(jnp.asarray(theta))) - float(f(mine)))))
print(out)
"""


@pytest.mark.parity
@pytest.mark.realdata
def test_lbfgs_port_is_exact_in_float64():
    require("torch")
    require("torch_uncertainty")
    path = data_path("checkpoints/reference_logits_first1000.npz")
    r = subprocess.run([sys.executable, "-c", CHILD, str(path)], cwd=REPO, capture_output=True, text=True,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0, r.stderr[-2000:]
    (d_ts, _), (d_ms, _), (_, dl_ms200) = eval(r.stdout.strip().splitlines()[-1])
    # measured: TS 5.6e-17; MS grows like rounding noise does along a chaotic trajectory, even in
    # float64: 1.9e-15 (20 steps), 4e-12 (100), 2.5e-9 (150), 2e-5 (200) -- no jump when the
    # 100-entry history starts to roll over, so the port has no algorithmic difference.
    assert d_ts < 1e-12 and d_ms < 1e-7, (d_ts, d_ms)
    # at TU's default 200 steps the float64 losses agree to 4e-9 (resnet20; the float32 gap is 5.7e-5)
    assert dl_ms200 < 1e-7, dl_ms200
