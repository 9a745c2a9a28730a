"""Make the small exported ONNX models the tests read (needs torch; the tests do not).

Two tiny networks with random weights (fixed seed), each exported with
PyTorch's legacy TorchScript exporter (``dynamo=False``) and its dynamo
exporter (``dynamo=True``):

- ``vgg_tiny``: conv-BN-ReLU blocks, max pooling, flatten, two linear layers;
- ``resnet_tiny``: a stem, a basic block with an identity shortcut, a basic
  block with a stride-2 1x1-conv + BN projection shortcut, global average
  pooling, a linear layer.

Each ``NAME_{legacy,dynamo}.onnx`` gets a ``NAME.npz`` beside it with a sample
batch ``x`` and the torch output ``y`` (the same for both exports).

Run from the repository root: ``python tests/data/make_models.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["TinyResNet", "TinyVGG", "main"]

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


def _randomise_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    # non-trivial running statistics, so BN is not the identity
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=generator) * 0.1)


def export(model: nn.Module, name: str, seed: int) -> None:
    """Export ``model`` with both exporters and save a sample input and output."""
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


def main() -> None:
    torch.manual_seed(0)
    export(TinyVGG(), "vgg_tiny", seed=1)
    torch.manual_seed(0)
    export(TinyResNet(), "resnet_tiny", seed=2)


if __name__ == "__main__":
    main()
