"""Train the reference CNNs on Fashion-MNIST and export them to ONNX with both PyTorch exporters.

Needs the optional ``train`` extra (torch); the package and its tests never
import this script. Everything runs on the CPU with fixed seeds.

Models (inputs: N x 1 x 28 x 28 in [0, 1], no mean/std normalisation):

- ``vgg_avg``: [conv-BN-ReLU] x2, avgpool, [conv-BN-ReLU] x2, avgpool,
  conv-BN-ReLU, avgpool, flatten, linear-ReLU, linear(10): 6 ReLU populations.
- ``vgg_max``: the same with max pooling (conv-BN-ReLU-maxpool).
- ``resnet14`` / ``resnet32``: CIFAR-style ResNets (He et al. 2016, option B
  shortcuts): stem conv3x3-BN-ReLU, 3 stages of n = 2 / 5 basic blocks,
  identity shortcuts inside a stage, 1x1 conv + BN projections where the shape
  changes, global average pooling, linear(10). A block computes
  ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

Training: SGD (Nesterov momentum 0.9, weight decay 5e-4) with a one-cycle
learning-rate schedule, batch 128, light augmentation (random crop with
2-pixel zero padding, horizontal flip), on all 60,000 training images.

Each model is written as ``data/<name>.onnx`` (legacy TorchScript exporter,
``dynamo=False``, opset 13) and ``data/<name>.dynamo.onnx`` (``dynamo=True``):
input ``input`` (batch x 1 x 28 x 28, dynamic batch), output ``logits``.
Both files are checked with onnxruntime against torch on the full test set;
the results, timings and machine go to ``data/models.json`` (entries of
models not retrained are kept).

Usage::

    python data/train_reference.py --models vgg_max resnet14 [--epochs N]
    python data/train_reference.py --measure 6000     # time one epoch per model on a subset; writes nothing
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from bsnn_graph.data import read_idx
from bsnn_graph.fileutil import atomic_output

__all__ = ["MODELS", "VGG", "ResNet", "build_model", "export_onnx", "main", "train"]

DATA_DIR = Path(__file__).resolve().parent
SOURCE = Path("/usr/share/datasets/fashion-mnist")
SEED = 0
BATCH_SIZE = 128
EVAL_BATCH = 1000
LEGACY_OPSET = 13

# name -> constructor keyword arguments and training settings
MODELS: dict[str, dict] = {
    "vgg_avg": {"kind": "vgg", "pool": "avg", "widths": (32, 64, 128), "hidden": 128, "epochs": 5, "max_lr": 0.1},
    "vgg_max": {"kind": "vgg", "pool": "max", "widths": (32, 64, 128), "hidden": 128, "epochs": 5, "max_lr": 0.1},
    "resnet14": {"kind": "resnet", "blocks": 2, "widths": (16, 32, 64), "epochs": 5, "max_lr": 0.1},
    "resnet32": {"kind": "resnet", "blocks": 5, "widths": (8, 16, 32), "epochs": 5, "max_lr": 0.1},
}


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class VGG(nn.Module):
    """VGG-style net with 6 ReLU populations (5 convolutional, 1 fully connected).

    Parameters
    ----------
    pool : ``"avg"`` or ``"max"``: the 2x2, stride-2 pooling after each stage.
    widths : channels of the three stages (two convs, two convs, one conv).
    hidden : units of the hidden linear layer.
    """

    def __init__(self, pool: str, widths: tuple[int, int, int], hidden: int) -> None:
        super().__init__()
        pooling = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}[pool]
        w1, w2, w3 = widths
        self.features = nn.Sequential(
            *_conv_bn_relu(1, w1),
            *_conv_bn_relu(w1, w1),
            pooling(2),  # 28 -> 14
            *_conv_bn_relu(w1, w2),
            *_conv_bn_relu(w2, w2),
            pooling(2),  # 14 -> 7
            *_conv_bn_relu(w2, w3),
            pooling(2),  # 7 -> 3 (floor)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(w3 * 3 * 3, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:  # option B: projection where the shape changes
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet with ``6 * blocks + 2`` weighted layers (stem, 3 stages, linear).

    Parameters
    ----------
    blocks : basic blocks per stage (2 gives ResNet-14, 5 gives ResNet-32).
    widths : channels of the three stages; stages 2 and 3 halve the resolution.
    """

    def __init__(self, blocks: int, widths: tuple[int, int, int]) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(1, widths[0]))
        layers: list[nn.Module] = []
        in_channels = widths[0]
        for stage, width in enumerate(widths):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(in_channels, width, stride))
                in_channels = width
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stages(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


def build_model(name: str) -> nn.Module:
    """Build the (untrained) model ``name`` from :data:`MODELS`."""
    config = MODELS[name]
    if config["kind"] == "vgg":
        return VGG(config["pool"], config["widths"], config["hidden"])
    return ResNet(config["blocks"], config["widths"])


def load_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST ``train`` or ``t10k`` as float32 N x 1 x 28 x 28 in [0, 1] and int64 labels."""
    images = read_idx(SOURCE / f"{split}-images-idx3-ubyte.gz")
    labels = read_idx(SOURCE / f"{split}-labels-idx1-ubyte.gz")
    x = torch.from_numpy(images.astype(np.float32) / np.float32(255.0)).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop (2-pixel zero padding, per-sample offsets) and random horizontal flip."""
    n, _, height, width = x.shape
    padded = nn.functional.pad(x, (2, 2, 2, 2))
    dy = torch.randint(0, 5, (n,), generator=generator)
    dx = torch.randint(0, 5, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(height)[None, :])[:, :, None]
    cols = (dx[:, None] + torch.arange(width)[None, :])[:, None, :]
    cropped = padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, max_lr: float, seed: int = SEED) -> list:
    """Train in place; return per-epoch ``{"epoch", "loss", "train_accuracy", "seconds"}``."""
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = (len(x) + BATCH_SIZE - 1) // BATCH_SIZE
    optimiser = torch.optim.SGD(model.parameters(), lr=max_lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=max_lr, epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=0.25
    )
    loss_fn = nn.CrossEntropyLoss()
    history = []
    for epoch in range(epochs):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(len(x), generator=generator)
        total_loss, correct = 0.0, 0
        for step in range(steps_per_epoch):
            index = order[step * BATCH_SIZE : (step + 1) * BATCH_SIZE]
            inputs, targets = augment(x[index], generator), y[index]
            logits = model(inputs)
            loss = loss_fn(logits, targets)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total_loss += loss.item() * len(index)
            correct += int((logits.argmax(1) == targets).sum())
        seconds = time.perf_counter() - start
        history.append(
            {
                "epoch": epoch + 1,
                "loss": round(total_loss / len(x), 5),
                "train_accuracy": round(correct / len(x), 5),
                "seconds": round(seconds, 1),
            }
        )
        print(f"  epoch {epoch + 1}/{epochs}: {history[-1]}", flush=True)
    model.eval()
    return history


@torch.no_grad()
def torch_logits(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Logits of ``model`` (in eval mode) for all of ``x``, as float32 numpy."""
    model.eval()
    return torch.cat([model(x[s : s + EVAL_BATCH]) for s in range(0, len(x), EVAL_BATCH)]).numpy()


def onnxruntime_logits(path: Path, x: np.ndarray) -> np.ndarray:
    """Logits of the ONNX model at ``path`` for all of ``x`` (batched, to exercise the dynamic axis)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate(
        [session.run(["logits"], {"input": x[s : s + EVAL_BATCH]})[0] for s in range(0, len(x), EVAL_BATCH)]
    )


def export_onnx(model: nn.Module, path: Path, dynamo: bool) -> dict:
    """Export ``model`` to ``path`` with the legacy or the dynamo exporter; return facts about the file."""
    example = torch.zeros(2, 1, 28, 28)
    with atomic_output(path) as tmp:
        if dynamo:
            batch = torch.export.Dim("batch", min=1)
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
            )
            program.save(str(tmp))
        else:
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                dynamo=False,
                opset_version=LEGACY_OPSET,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                do_constant_folding=True,
            )
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto, full_check=True)
    exporter = "torch.onnx.export(dynamo=True)" if dynamo else f"torch.onnx.export(dynamo=False, opset {LEGACY_OPSET})"
    return {
        "file": path.name,
        "exporter": exporter,
        "opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        "bytes": path.stat().st_size,
        "ops": dict(sorted(collections.Counter(node.op_type for node in proto.graph.node).items())),
    }


def machine() -> dict:
    """Architecture, usable cores and CPU model of this machine."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "uname_m": platform.machine(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
    }


def run_model(name: str, epochs: int, train_set, test_set, command: str) -> dict:
    """Train, export and verify one model; return its ``models.json`` entry."""
    config = MODELS[name]
    torch.manual_seed(SEED)
    model = build_model(name)
    params = sum(p.numel() for p in model.parameters())
    print(f"{name}: {params} parameters, {epochs} epochs", flush=True)
    load_before = [round(load, 2) for load in os.getloadavg()]  # the machine is shared: explains slow epochs
    start = time.perf_counter()
    history = train(model, *train_set, epochs=epochs, max_lr=config["max_lr"])
    train_seconds = time.perf_counter() - start
    test_x, test_y = test_set
    labels = test_y.numpy()
    reference = torch_logits(model, test_x)
    entry = {
        "architecture": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items() if k != "epochs"},
        "params": params,
        "relu_populations": sum(isinstance(m, nn.ReLU) for m in model.modules())
        if config["kind"] == "vgg"
        else 1 + 2 * 3 * config["blocks"],
        "epochs": epochs,
        "seed": SEED,
        "batch_size": BATCH_SIZE,
        "optimiser": f"SGD nesterov momentum 0.9 wd 5e-4, OneCycleLR max_lr {config['max_lr']} pct_start 0.25",
        "augmentation": "random crop (pad 2) + horizontal flip",
        "input": "float32 N x 1 x 28 x 28, pixel / 255, no normalisation",
        "test_accuracy_torch": round(float((reference.argmax(1) == labels).mean()), 4),
        "test_images": len(labels),
        "training_seconds": round(train_seconds, 1),
        "load_average_1_5_15min_before_training": load_before,
        "load_average_1_5_15min_after_training": [round(load, 2) for load in os.getloadavg()],
        "history": history,
        "command": command,
        "machine": machine(),
        "trained": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "exports": {},
    }
    print(f"  torch test accuracy {entry['test_accuracy_torch']:.4f}, training {train_seconds:.0f} s", flush=True)
    sample = slice(0, 2000)  # the images of data/fmnist_test.npz
    for key, dynamo, suffix in (("legacy", False, ".onnx"), ("dynamo", True, ".dynamo.onnx")):
        path = DATA_DIR / f"{name}{suffix}"
        try:
            facts = export_onnx(model, path, dynamo)
            logits = onnxruntime_logits(path, test_x.numpy())
            facts["test_accuracy_onnxruntime"] = round(float((logits.argmax(1) == labels).mean()), 4)
            facts["max_abs_diff_vs_torch_fmnist_test"] = float(np.abs(logits[sample] - reference[sample]).max())
            facts["max_abs_diff_vs_torch_full_test"] = float(np.abs(logits - reference).max())
            facts["prediction_mismatches_vs_torch"] = int((logits.argmax(1) != reference.argmax(1)).sum())
        except Exception as exc:  # noqa: BLE001 -- an exporter failure is a result to record, not to hide
            facts = {"file": None, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:2000]}
            traceback.print_exc()
        entry["exports"][key] = facts
        print(f"  {key}: {facts}", flush=True)
    return entry


def measure(limit: int, names: list[str], train_set) -> None:
    """Time one epoch of each model on the first ``limit`` training images; print the full-epoch estimate."""
    x, y = train_set
    for name in names:
        torch.manual_seed(SEED)
        model = build_model(name)
        start = time.perf_counter()
        train(model, x[:limit], y[:limit], epochs=1, max_lr=MODELS[name]["max_lr"])
        seconds = time.perf_counter() - start
        print(f"{name}: {seconds:.1f} s for {limit} images -> about {seconds * len(x) / limit:.0f} s per full epoch")


def update_models_json(entries: dict) -> None:
    """Merge ``entries`` into ``data/models.json`` (keeping the other models' entries)."""
    path = DATA_DIR / "models.json"
    models = json.loads(path.read_text()) if path.exists() else {}
    models.update(entries)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(dict(sorted(models.items())), indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Parse the command line; train, export and record the chosen models one after another."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--epochs", type=int, default=None, help="override each model's default epoch count")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--measure", type=int, default=None, metavar="N", help="only time one epoch on N images")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_set = load_split("train")
    if args.measure is not None:
        measure(args.measure, args.models, train_set)
        return
    test_set = load_split("t10k")
    for name in args.models:
        epochs = args.epochs if args.epochs is not None else MODELS[name]["epochs"]
        command = f"python data/train_reference.py --models {name} --epochs {epochs} --threads {args.threads}"
        entry = run_model(name, epochs, train_set, test_set, command)
        update_models_json({name: entry})


if __name__ == "__main__":
    sys.exit(main())
