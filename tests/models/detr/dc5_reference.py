"""An independent torch reference of DETR-DC5's backbone: torchvision's ResNet, dilated.

Written for these tests from the definitions of torchvision's ``models/resnet.py`` and the
official DETR's ``models/backbone.py`` (neither is installed here: torchvision is not in the
environment), in float32, sharing no code with kzoo:

- ``Bottleneck``: 1x1 conv, 3x3 conv (stride, ``padding = dilation``, ``dilation``), 1x1 conv
  to 4x the width, each followed by a frozen batch norm; ReLU after the first two and after the
  residual sum; the shortcut is a strided 1x1 conv + norm in a stage's first block.
- ``ResNet._make_layer(dilate=True)`` (``replace_stride_with_dilation=[False, False, True]``, what
  DETR's ``--dilation`` passes): the stage's stride 2 becomes dilation 2; its *first* block keeps
  the previous dilation (1) and stride 1, as does its shortcut; the later blocks use dilation 2.
- ``FrozenBatchNorm2d``: ``x * w * rsqrt(rv + 1e-5) + (b - rm * w * rsqrt(rv + 1e-5))``.

The module names are torchvision's (``conv1``, ``bn1``, ``layer{1..4}.{b}.conv{1,2,3}``,
``bn{1,2,3}``, ``downsample.{0,1}``), so its state dict is the checkpoint's backbone as DETR
(``backbone.0.body.``) and transformers' timm backbone (``model.backbone[.conv_encoder].model.``)
name it. ``forward`` returns ``[layer4 features]``, the shape transformers' ``DetrConvEncoder``
expects of its backbone, so the transformer, heads, position encoding and mask handling of a
DETR around it are transformers' own (``make_dc5_detr``).
"""

import torch
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    def __init__(self, channels):
        super().__init__()
        for name, value in (
            ("weight", torch.ones(channels)),
            ("bias", torch.zeros(channels)),
            ("running_mean", torch.zeros(channels)),
            ("running_var", torch.ones(channels)),
        ):
            self.register_buffer(name, value)

    def forward(self, x):
        scale = self.weight * (self.running_var + 1e-5).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


class Bottleneck(nn.Module):
    def __init__(self, in_channels, planes, stride, dilation, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = FrozenBatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = FrozenBatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(y + shortcut)


class DilatedResNet(nn.Module):
    """ResNet-50/101 (``blocks`` per stage) with the last stage dilated when ``dilation``."""

    def __init__(self, blocks=(3, 4, 6, 3), width=64, dilation=True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels, current = width, 1
        for s, count in enumerate(blocks):
            planes = width * 2**s
            stride = 1 if s == 0 else 2
            previous = current
            if dilation and s == 3:
                current *= stride
                stride = 1
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, planes * 4, 1, stride=stride, bias=False),
                FrozenBatchNorm2d(planes * 4),
            )
            layers = [Bottleneck(in_channels, planes, stride, previous, downsample)]
            in_channels = planes * 4
            layers += [Bottleneck(in_channels, planes, 1, current, None) for _ in range(1, count)]
            setattr(self, f"layer{s + 1}", nn.Sequential(*layers))
        self.channels = in_channels

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for s in range(1, 5):
            x = getattr(self, f"layer{s}")(x)
        return [x]


def randomize(module, generator):
    """Draw every tensor so that a swapped or mis-dilated one changes the output (see
    ``detr_checkpoints.make_hf_model``): weights ~ N(0, 1/fan_in), norm scales ~ N(1, 0.1),
    offsets and means ~ N(0, 0.1), variances ~ U(0.5, 1.5)."""
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif tensor.ndim >= 2:
                tensor.copy_(
                    torch.randn(tensor.shape, generator=generator) * tensor[0].numel() ** -0.5
                )
            elif name.endswith("weight"):
                tensor.copy_(1 + 0.1 * torch.randn(tensor.shape, generator=generator))
            else:
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))


def make_dc5_detr(blocks, head_config, seed):
    """A transformers ``DetrForObjectDetection`` whose backbone is :class:`DilatedResNet`.

    ``head_config``: a ``DetrConfig`` (its own backbone is replaced; its last stage must have
    the reference's 2048 channels so that the input projection fits).
    """
    from detr_checkpoints import make_hf_model

    model = make_hf_model(head_config, seed=seed)
    backbone = DilatedResNet(blocks=blocks, dilation=True)
    generator = torch.Generator().manual_seed(seed + 100)
    randomize(backbone, generator)
    model.model.backbone.model = backbone.eval()
    return model.eval()
