"""Bad ensemble checkpoints get a clear error naming the key and the shapes (``converters.convert``, the
CLI's library form): a BatchEnsemble checkpoint with another number of members than the model's, a
Masksembles mask of the wrong shape or with values other than 0/1, a MIMO checkpoint without M."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import require

pytestmark = pytest.mark.parity


@pytest.fixture(autouse=True)
def _seeded_tu_masks(monkeypatch):
    """TU draws Masksembles masks from OS entropy: seeded here so that every run sees the same models."""
    require("torch")
    from tests.torch_models import seed_tu_masks

    seed_tu_masks(monkeypatch)


def _saved(tmp_path, name, sd_edit=None, file="tu.pt", **kw):
    torch = require("torch")
    from torch_uncertainty.models import classification as tu

    torch.manual_seed(0)
    sd = getattr(tu, name)(**kw).state_dict()
    if sd_edit is not None:
        sd_edit(sd)
    path = tmp_path / file
    torch.save(sd, path)
    return path


def test_batch_ensemble_wrong_member_count(tmp_path):
    from converters import ConvertError, convert

    path = _saved(tmp_path, "batchensemble_lenet", in_channels=1, num_classes=10, num_estimators=2)
    with pytest.raises(ConvertError, match=r"num_estimators=4.*'core_model\.conv1\.r_group' \(2, 1\)"):
        convert([path], arch="batchensemble_lenet", kwargs={"num_estimators": 4})

    def mixed(sd):  # one layer with 3 members in a 2-member checkpoint
        sd["core_model.fc1.r_group"] = sd["core_model.fc1.r_group"][[0, 1, 1]]

    bad = _saved(tmp_path, "batchensemble_lenet", mixed, "mixed.pt", in_channels=1, num_classes=10,
                 num_estimators=2)
    with pytest.raises(ConvertError, match=r"'core_model\.fc1\.r_group' \(3, 256\)"):
        convert([bad])


def test_mask_of_the_wrong_shape_or_not_binary(tmp_path):
    torch = require("torch")
    from converters import ConvertError, convert

    kw = dict(in_channels=3, num_classes=10, arch=20, num_estimators=2, scale=2.0, style="cifar")

    def narrow(sd):
        sd["layer2.0.conv2.mask.masks"] = sd["layer2.0.conv2.mask.masks"][:, :30]

    path = _saved(tmp_path, "masked_resnet", narrow, **kw)
    with pytest.raises(ConvertError, match=r"'layer2\.0\.conv2\.mask\.masks'.*\(2, 30\).*\(2, 32\)"):
        convert([path], arch="masked_resnet", kwargs=kw)

    def soft(sd):
        sd["linear.mask.masks"] = sd["linear.mask.masks"] * torch.tensor(0.5, dtype=torch.float64)

    path = _saved(tmp_path, "masked_resnet", soft, "soft.pt", **kw)
    with pytest.raises(ConvertError, match=r"'linear\.mask\.masks' \(2, 64\): a Masksembles mask must hold only 0"):
        convert([path], arch="masked_resnet", kwargs=kw)


def test_mimo_needs_its_member_count(tmp_path):
    from converters import ConvertError, convert

    path = _saved(tmp_path, "mimo_resnet", in_channels=3, num_classes=10, arch=20, num_estimators=3, style="cifar")
    with pytest.raises(ConvertError, match="num_estimators=M"):
        convert([path], arch="mimo_resnet")
    with pytest.raises(ConvertError, match="not a multiple of num_estimators=4"):
        convert([path], arch="mimo_resnet", kwargs={"num_estimators": 4})
    res = convert([path], arch="mimo_resnet", kwargs={"num_estimators": 3})
    assert res["meta"]["kwargs"]["in_channels"] == 3 and res["meta"]["kwargs"]["num_classes"] == 10
    assert np.asarray(res["variables"]["params"]["conv1"]["kernel"]).shape == (3, 3, 9, 16)


def test_mimo_checkpoints_cannot_say_their_member_count():
    """Why MIMO keeps ``--arch mimo_resnet -k num_estimators=M``: TU's MIMO state dict is key for key and
    shape for shape a plain ``resnet`` with M·in channels and M·C classes, and a TU Lightning checkpoint of
    the training routine adds nothing (``MIMOBatchFormat`` holds no tensor; the routine saves no
    hyper-parameters). So M=3 on 3 channels / 10 classes reads exactly like M=1 on 9 / 30."""
    torch = require("torch")
    from torch_uncertainty.models import classification as tu
    from torch_uncertainty.routines import ClassificationRoutine
    from torch_uncertainty.transforms import MIMOBatchFormat

    mimo = tu.mimo_resnet(in_channels=3, num_classes=10, arch=20, num_estimators=3, style="cifar")
    plain = tu.resnet(in_channels=9, num_classes=30, arch=20, style="cifar", conv_bias=True)
    shapes = lambda sd: {k: tuple(v.shape) for k, v in sd.items()}  # noqa: E731
    assert shapes(mimo.state_dict()) == shapes(plain.state_dict())
    routine = ClassificationRoutine(model=mimo, num_classes=10, loss=torch.nn.CrossEntropyLoss(),
                                    is_ensemble=True, format_batch_fn=MIMOBatchFormat(3, rho=0.5))
    assert shapes(routine.state_dict()) == {f"model.{k}": v for k, v in shapes(plain.state_dict()).items()}


def test_configurations_that_fail_in_tu_are_refused():
    import jax
    import jax.numpy as jnp

    from jaxuq import models

    with pytest.raises(ValueError, match="3 input channels"):
        models.get("batched_resnet", in_channels=1, num_classes=10, arch=18, num_estimators=2)
    m = models.get("packed_vgg", in_channels=3, num_classes=10, arch=11, alpha=2, num_estimators=2, gamma=1,
                   norm="batchnorm", style="cifar")
    with pytest.raises(ValueError, match="BatchNorm2d"):
        jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    with pytest.raises(ValueError, match="norm='none'"):
        m = models.get("packed_lenet", in_channels=1, num_classes=10).clone(norm="batchnorm")
        jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1))))
    with pytest.raises(ValueError, match="repeat_strategy"):
        models.get("masked_resnet", in_channels=3, num_classes=10, arch=18, num_estimators=2, scale=2.0,
                   repeat_strategy="sometimes")


def test_factory_arguments_are_validated():
    from jaxuq import models

    base = dict(in_channels=3, num_classes=10, arch=18)
    with pytest.raises(TypeError, match="num_estimators"):
        models.get("mimo_resnet", **base, num_estimators=2.0)
    with pytest.raises(ValueError, match="`num_estimators` must be >= 1"):
        models.get("batched_wideresnet28x10", in_channels=3, num_classes=10, num_estimators=0)
    with pytest.raises(ValueError, match="alpha"):
        models.get("packed_resnet", **base, num_estimators=2, alpha=float("nan"), gamma=1)
    with pytest.raises(TypeError, match="gamma"):
        models.get("packed_vgg", in_channels=3, num_classes=10, arch=11, alpha=2, num_estimators=2, gamma=1.5)
    with pytest.raises(ValueError, match="specify the value of the arg. `scale`"):
        models.get("masked_resnet", **base, num_estimators=2, scale=None)
    with pytest.raises(ValueError, match="larger than 6"):
        models.get("masked_wideresnet28x10", in_channels=3, num_classes=10, num_estimators=2, scale=7.0)
