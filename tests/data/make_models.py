"""Make the small exported ONNX models the tests read (needs torch; the tests do not).

Two tiny networks with random weights (fixed seed), each exported with
PyTorch's legacy TorchScript exporter (``dynamo=False``) and its dynamo
exporter (``dynamo=True``):

- ``vgg_tiny``: conv-BN-ReLU blocks, max pooling, flatten, two linear layers;
- ``resnet_tiny``: a stem, a basic block with an identity shortcut, a basic
  block with a stride-2 1x1-conv + BN projection shortcut, global average
  pooling, a linear layer.

One model of each CNN family the conversion covers (BSNN_SPEC.md,
"Activations beyond ReLU"): ``mobilenetv2_block`` (ReLU6, a linear
bottleneck), ``preact_block`` (BN -> ReLU -> Conv, Add -> BN -> ReLU),
``dense_block`` (BN -> ReLU -> Conv, Concat), ``fire_inception`` (SqueezeNet
fire and an Inception block, MaxPool after Concat), ``shuffle_unit`` (channel
shuffle), ``leaky_net`` (LeakyReLU, PReLU).

Each ``NAME_{legacy,dynamo}.onnx`` gets a ``NAME.npz`` beside it with a sample
batch ``x`` and the torch output ``y`` (the same for both exports).

Run from the repository root: ``python tests/data/make_models.py``
(``--families-only``: only the family models).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "FAMILIES",
    "DenseBlock",
    "FireInception",
    "LeakyNet",
    "MobileNetV2Block",
    "PreActBlock",
    "ShuffleUnit",
    "TinyResNet",
    "TinyVGG",
    "main",
]

HERE = Path(__file__).resolve().parent


class TinyVGG(nn.Module):
    """1x12x12 -> conv-BN-ReLU x2 -> maxpool -> conv-BN-ReLU -> maxpool -> fc-ReLU -> fc (10)."""

    def __init__(self):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(*block(1, 4), *block(4, 4), nn.MaxPool2d(2), *block(4, 8), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 3 * 3, 16), nn.ReLU(), nn.Linear(16, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 conv + BN projection shortcut when the shape changes."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class TinyResNet(nn.Module):
    """1x12x12 -> stem -> identity block -> projection block (stride 2) -> GAP -> fc (10)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.layer1 = BasicBlock(4, 4, 1)
        self.layer2 = BasicBlock(4, 8, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(y), 1))


class MobileNetV2Block(nn.Module):
    """stem conv-BN-ReLU6 -> inverted residual (1x1 expand, 3x3 depthwise, ReLU6; linear 1x1 bottleneck + x) -> GAP -> fc."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.depthwise = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6()
        )
        self.project = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x)
        y = x + self.project(self.depthwise(self.expand(x)))  # linear bottleneck: no ReLU after the Add
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class PreActBlock(nn.Module):
    """stem conv-BN-ReLU -> pre-activation block (BN-ReLU-conv x2, + x) -> BN-ReLU -> GAP -> fc."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.bn1, self.conv1 = nn.BatchNorm2d(6), nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(6), nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.conv2(torch.relu(self.bn2(self.conv1(torch.relu(self.bn1(x))))))
        y = torch.relu(self.bn3(x + y))  # Add -> BN -> ReLU
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class DenseBlock(nn.Module):
    """stem conv-BN-ReLU-maxpool -> dense layers (BN-ReLU-conv, Concat) -> BN-ReLU -> GAP -> fc."""

    def __init__(self, layers: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
        self.layers = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(4 + 3 * i), nn.ReLU(), nn.Conv2d(4 + 3 * i, 3, 3, padding=1, bias=False))
            for i in range(layers)
        )
        self.norm = nn.Sequential(nn.BatchNorm2d(4 + 3 * layers), nn.ReLU())
        self.fc = nn.Linear(4 + 3 * layers, 10)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.norm(x), 1), 1))


class FireInception(nn.Module):
    """SqueezeNet fire (squeeze, two expands, Concat) -> MaxPool -> Inception block (1x1, 3x3, pool branches) -> MaxPool."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU())
        self.squeeze = nn.Sequential(nn.Conv2d(6, 3, 1), nn.ReLU())
        self.expand1 = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())
        self.expand3 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.branch1 = nn.Sequential(nn.Conv2d(8, 4, 1), nn.ReLU())
        self.branch3 = nn.Sequential(nn.Conv2d(8, 4, 3, padding=1), nn.ReLU())
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, 1, padding=1), nn.Conv2d(8, 4, 1), nn.ReLU())
        self.fc = nn.Linear(12 * 3 * 3, 10)

    def forward(self, x):
        s = self.squeeze(self.stem(x))
        x = nn.functional.max_pool2d(torch.cat([self.expand1(s), self.expand3(s)], 1), 2)
        x = torch.cat([self.branch1(x), self.branch3(x), self.branch_pool(x)], 1)
        return self.fc(torch.flatten(nn.functional.max_pool2d(x, 2), 1))


class ShuffleUnit(nn.Module):
    """grouped 1x1 conv-BN-ReLU -> channel shuffle (view-transpose-view) -> depthwise conv-BN -> grouped 1x1, + x, ReLU."""

    def __init__(self, channels: int = 8, groups: int = 2):
        super().__init__()
        self.groups = groups
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        self.gconv1 = nn.Sequential(
            nn.Conv2d(channels, channels, 1, groups=groups, bias=False), nn.BatchNorm2d(channels), nn.ReLU()
        )
        self.depthwise = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False), nn.BatchNorm2d(channels)
        )
        self.gconv2 = nn.Sequential(
            nn.Conv2d(channels, channels, 1, groups=groups, bias=False), nn.BatchNorm2d(channels)
        )
        self.fc = nn.Linear(channels, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.gconv1(x)
        n, c, h, w = y.shape
        y = y.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)
        y = torch.relu(x + self.gconv2(torch.relu(self.depthwise(y))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class LeakyNet(nn.Module):
    """conv-BN-LeakyReLU(0.1) -> conv-PReLU (per channel) -> maxpool after ReLU -> fc."""

    def __init__(self):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.LeakyReLU(0.1))
        self.block2 = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.PReLU(6))
        self.block3 = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(6 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.block3(self.block2(self.block1(x))), 1))


#: the CNN-family models (class, file name, seed)
FAMILIES = [
    (MobileNetV2Block, "mobilenetv2_block", 3),
    (PreActBlock, "preact_block", 4),
    (DenseBlock, "dense_block", 5),
    (FireInception, "fire_inception", 6),
    (ShuffleUnit, "shuffle_unit", 7),
    (LeakyNet, "leaky_net", 8),
]


def _randomise_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    # non-trivial running statistics, so BN is not the identity
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=generator) * 0.1)


def export(model: nn.Module, name: str, seed: int, dynamo: bool = True) -> None:
    """Export ``model`` with both exporters (only the legacy one if ``dynamo`` is False) and save a sample."""
    generator = torch.Generator().manual_seed(seed)
    _randomise_batchnorm(model, generator)
    model.eval()
    x = torch.randn(5, 1, 12, 12, generator=generator)
    with torch.no_grad():
        y = model(x)
    np.savez(HERE / f"{name}.npz", x=x.numpy(), y=y.numpy())
    # legacy: opset 11, BatchNormalization kept (PRESERVE leaves it unfused in eval mode)
    torch.onnx.export(
        model,
        (x,),
        str(HERE / f"{name}_legacy.onnx"),
        dynamo=False,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=11,
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=False,
    )
    if not dynamo:
        return
    program = torch.onnx.export(
        model,
        (x,),
        dynamo=True,
        input_names=["x"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
        external_data=False,
    )
    program.save(str(HERE / f"{name}_dynamo.onnx"), external_data=False)


def main(families_only: bool = False) -> None:
    """Write every model; ``families_only`` skips vgg_tiny and resnet_tiny. The dynamo exports need onnxscript."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency)

        dynamo = True
    except ImportError:
        dynamo = False
        print("onnxscript is not installed: writing the legacy (dynamo=False) exports only")
    if not families_only:
        torch.manual_seed(0)
        export(TinyVGG(), "vgg_tiny", seed=1, dynamo=dynamo)
        torch.manual_seed(0)
        export(TinyResNet(), "resnet_tiny", seed=2, dynamo=dynamo)
    for cls, name, seed in FAMILIES:
        torch.manual_seed(seed)
        model = cls()
        for m in model.modules():  # PReLU slopes per channel, not all 0.25
            if isinstance(m, nn.PReLU):
                m.weight.data.copy_(torch.linspace(-0.2, 0.4, m.num_parameters))
        export(model, name, seed=seed, dynamo=dynamo)


if __name__ == "__main__":
    import sys

    main(families_only="--families-only" in sys.argv[1:])
