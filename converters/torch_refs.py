"""Plain PyTorch reference definitions (for ``--verify`` and the parity tests).

- :class:`ResNetCifar` — He et al. CIFAR ResNet (akamaster/pytorch_resnet_cifar10 layout: option-A
  shortcut ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))``); its state-dict keys
  are those of ``resnet20-12fca82f.th`` without ``module.``.
- :class:`ChenyaofoResNet` — chenyaofo/pytorch-cifar-models' CIFAR ResNet (option-B ``downsample``
  shortcut, ``fc`` head), the temperature-scaling tutorial's ``cifar100_resnet20``.
- :class:`Tiniest` — scio's Tiniest (keys of ``tiniest.pt``), written from its ARCHITECTURE.md.
- :func:`torch_model` — a torch module for any converter architecture name: TU 0.13.0's factory of that
  name (``lenet``, ``resnet``, ``batched_resnet``, ``wideresnet28x10``, ``packed_vgg``, ...), or the classes
  here.

Imports torch lazily (module import is torch-free only for the names; the classes need torch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ChenyaofoResNet", "ResNetCifar", "Tiniest", "torch_model"]


class _CifarBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or in_planes != planes) else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + sc)


class ResNetCifar(nn.Module):
    block = _CifarBlock  # the residual block class
    head = "linear"  # the name of the final Linear

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for li, planes in enumerate((16, 32, 64)):
            blocks = []
            for bi in range(n):
                blocks.append(self.block(in_planes, planes, 2 if (li > 0 and bi == 0) else 1))
                in_planes = planes
            setattr(self, f"layer{li + 1}", nn.Sequential(*blocks))
        setattr(self, self.head, nn.Linear(64, num_classes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return getattr(self, self.head)(out.view(out.size(0), -1))


class _OptionBBlock(nn.Module):
    """chenyaofo's BasicBlock: conv3x3(s)-bn-relu-conv3x3-bn, + ``downsample`` (1x1 conv(s) + BN)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ChenyaofoResNet(ResNetCifar):
    """chenyaofo/pytorch-cifar-models ``CifarResNet`` with BasicBlocks (``cifar{10,100}_resnet{20..56}``):
    conv1 3x3 16, bn1, relu, layer1..3 (16/32/64, stride 1/2/2), global average pool, ``fc``; the
    option-B ``downsample`` shortcut. Same state-dict keys as chenyaofo's module (the pooling and ReLU
    modules it holds have no state)."""

    block = _OptionBBlock
    head = "fc"

    def __init__(self, depth: int = 20, num_classes: int = 10):
        super().__init__(depth, num_classes, 3)


class LayerNorm2d(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.ln = nn.LayerNorm(dim)

    def forward(self, x):
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        d4 = dim // 4
        self.rs = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.dwconv1 = nn.Conv2d(d4, d4, 3, padding=1, groups=d4)
        self.dwconv2 = nn.Conv2d(d4, d4, 7, padding=3, groups=d4)
        self.dwconv3 = nn.Conv2d(d4, d4, 7, padding=9, dilation=3, groups=d4)
        self.pool = nn.AvgPool2d(3, 1, 1)
        self.ln = LayerNorm2d(dim)
        self.fc1 = nn.Conv2d(dim, 2 * dim, 1)
        self.fc2 = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        c0, c1, c2, c3 = torch.chunk(x, 4, dim=1)
        h = torch.cat([c0, self.dwconv1(c1), self.dwconv2(c2), self.dwconv3(self.pool(c3))], dim=1)
        a, b = torch.chunk(self.fc1(self.ln(h)), 2, dim=1)
        return self.fc2(torch.tanh(torch.exp(a)) * a * b) + x * self.rs


class Tiniest(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 48, 3, padding=1)
        self.ln1 = LayerNorm2d(48)
        self.l1, self.l2, self.l3 = Block(48), Block(48), Block(48)
        self.dsconv = nn.Conv2d(48, 80, 4, stride=2, padding=1, groups=16)
        self.ln2 = LayerNorm2d(80)
        self.l4, self.l5, self.l6 = Block(80), Block(80), Block(80)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(80, num_classes)

    def forward(self, x):
        x = self.l3(self.l2(self.l1(self.ln1(self.conv1(x)))))
        x = self.l6(self.l5(self.l4(self.ln2(self.dsconv(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


_ACT = {"relu": F.relu, "leaky_relu": F.leaky_relu, "gelu": F.gelu, "silu": F.silu, "elu": F.elu,
        "tanh": torch.tanh, "sigmoid": torch.sigmoid}


def torch_model(model_name: str, **kwargs) -> nn.Module:
    """The torch counterpart of the converter architecture ``model_name`` built with the same ``kwargs``:
    the classes here, or TU 0.13.0's factory of that name (``torch_uncertainty.models.classification``)
    with jaxuq's by-name kwargs translated (``activation`` -> function, ``norm`` -> ``nn.BatchNorm2d`` /
    ``nn.Identity``; jaxuq's own ``seed`` of the masked models is dropped: the masks come from the state
    dict)."""
    arch = model_name
    kw = dict(kwargs)
    if arch == "resnet_cifar":
        return ResNetCifar(**kw)
    if arch.startswith("resnet") and arch[6:].isdigit():
        return ResNetCifar(int(arch[6:]), **kw)
    if arch == "tiniest":
        return Tiniest(**kw)
    from torch_uncertainty.models import classification as tu  # noqa: PLC0415

    factory = getattr(tu, arch, None)
    if factory is None:
        raise ValueError(f"no torch reference for architecture {arch!r}")
    if "activation" in kw:
        kw["activation" if "lenet" in arch else "activation_fn"] = _ACT[kw.pop("activation")]
    if "norm" in kw or arch in ("lenet", "packed_lenet"):
        kw["norm"] = nn.BatchNorm2d if kw.pop("norm", "none") == "batchnorm" else nn.Identity
    kw.pop("seed", None)
    return factory(**kw)
