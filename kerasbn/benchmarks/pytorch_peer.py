"""The study's `baseline` and `bn` networks and the field's IResNets and MobileFaceNet written
in PyTorch, timed on one cached batch as `bench --bench=train` times kerasbn's: the peer that
`bench --bench=peer` measures against.

    python -m kerasbn.benchmarks.pytorch_peer --model=bn --precision=bfloat16 --steps=30

prints one JSON line {"model", "precision", "images_per_second"}. The same layers as
kerasbn.nn.models (3x3 "same" convolutions, BN after the first convolution of each block
without a bias, 2x2 max pools rounding up, global average pool, dropout 0.4 on the
baseline; the field's networks as insightface's arcface_torch defines them, which
kerasbn.nn.iresnet and kerasbn.nn.mobilefacenet follow, softmax on the embedding),
Keras's BN momentum 0.99 and epsilon 1e-3 (PyTorch momentum 0.01), SGD with
momentum 0.9 and weight decay 5e-4 on the kernels only, as kerasbn trains. It runs on the
GPU where PyTorch sees one, else on the CPU. `float32` is PyTorch's default layout;
`bfloat16` is PyTorch's fastest CPU setting, bfloat16 autocast on channels-last tensors;
`float16` is automatic mixed precision on a GPU (float16 autocast, channels-last, dynamic
loss scaling with GradScaler). PyTorch is not a dependency of kerasbn: `pip install torch`.
"""

import json
import sys
import time

import torch
from absl import flags

from kerasbn.benchmarks import peer_comparison
from kerasbn.flags import cli
from kerasbn.nn import models
from kerasbn.nn.networks import iresnet, mobilefacenet, study

PRECISIONS = ("float32", "bfloat16", "float16")


def _bn(channels):
    return torch.nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class _IBasicBlock(torch.nn.Module):
    """insightface's improved residual block: BN, conv, BN, PReLU, conv (the stride), BN."""

    def __init__(self, inplanes, planes, stride):
        super().__init__()
        conv = lambda c_in, c_out, s: torch.nn.Conv2d(c_in, c_out, 3, s, 1, bias=False)
        self.body = torch.nn.Sequential(
            _bn(inplanes), conv(inplanes, planes, 1), _bn(planes), torch.nn.PReLU(planes),
            conv(planes, planes, stride), _bn(planes))
        self.shortcut = torch.nn.Sequential(
            torch.nn.Conv2d(inplanes, planes, 1, stride, bias=False), _bn(planes)) \
            if stride != 1 or inplanes != planes else torch.nn.Identity()

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


def _iresnet(name, embedding_dim, size):
    stem, *stages = iresnet.WIDTHS
    layers = [torch.nn.Conv2d(3, stem, 3, 1, 1, bias=False), _bn(stem), torch.nn.PReLU(stem)]
    inplanes = stem
    for blocks, planes in zip(iresnet.LAYERS[name], stages):
        for index in range(blocks):
            layers.append(_IBasicBlock(inplanes, planes, 2 if index == 0 else 1))
            inplanes = planes
    side = size // iresnet.STRIDE
    features = torch.nn.BatchNorm1d(embedding_dim, eps=1e-3, momentum=0.01)
    # insightface's backbones/iresnet.py fixes it, as kerasbn's iresnet does.
    features.weight.requires_grad = False
    return layers + [_bn(inplanes), torch.nn.Flatten(),
                     torch.nn.Linear(inplanes * side * side, embedding_dim), features]


def _conv_block(c_in, c_out, kernel, stride, groups, activation=True):
    layers = [torch.nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups,
                              bias=False), _bn(c_out)]
    return torch.nn.Sequential(*layers, *([torch.nn.PReLU(c_out)] if activation else []))


class _Bottleneck(torch.nn.Module):
    """MobileFaceNet's depthwise-separable bottleneck, residual where the shape stays."""

    def __init__(self, c_in, c_out, expansion, stride):
        super().__init__()
        self.residual = stride == 1 and c_in == c_out
        self.body = torch.nn.Sequential(
            _conv_block(c_in, expansion, 1, 1, 1), _conv_block(expansion, expansion, 3, stride,
                                                               expansion),
            _conv_block(expansion, c_out, 1, 1, 1, activation=False))

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def _mobilefacenet(embedding_dim, size):
    low, high, expand1, expand2, expand3, separable = mobilefacenet.WIDTHS
    layers = [_conv_block(3, low, 3, 2, 1), _conv_block(low, low, 3, 1, low // 2)]
    stages = [(low, low, expand1, 2, 1), (low, low, expand1, 1, mobilefacenet.BLOCKS[0]),
              (low, high, expand2, 2, 1), (high, high, expand2, 1, mobilefacenet.BLOCKS[1]),
              (high, high, expand3, 2, 1), (high, high, expand2, 1, mobilefacenet.BLOCKS[2])]
    for c_in, c_out, expansion, stride, count in stages:
        layers += [_Bottleneck(c_in, c_out, expansion, stride) for _ in range(count)]
    side = size // mobilefacenet.STRIDE
    return layers + [_conv_block(high, separable, 1, 1, 1),
                     torch.nn.Conv2d(separable, separable, side, groups=separable, bias=False),
                     _bn(separable), torch.nn.Flatten(),
                     torch.nn.Linear(separable, embedding_dim, bias=False),
                     torch.nn.BatchNorm1d(embedding_dim, eps=1e-3, momentum=0.01)]


def network(name, num_classes):
    """kerasbn.nn.models' `name` (peer_comparison.NETWORKS) as a torch.nn.Sequential, at the input and
    embedding it is made for (models.made_for); the field's networks with a softmax
    classifier on the embedding."""
    if name in models.FIELD_MODELS:
        shape = models.made_for(name)
        size, embedding_dim = shape["image_size"][0], shape["embedding_dim"]
        layers = _mobilefacenet(embedding_dim, size) if name == "mobilefacenet" else \
            _iresnet(name, embedding_dim, size)
        return torch.nn.Sequential(*layers, torch.nn.Linear(embedding_dim, num_classes))
    layers, channels = [], 1
    blocks = study.BLOCKS[name]
    for block, (widths, with_bn) in enumerate(blocks, start=1):
        for width, has_bn in zip(widths, with_bn):
            layers.append(torch.nn.Conv2d(channels, width, 3, padding=1, bias=not has_bn))
            if has_bn:
                layers.append(torch.nn.BatchNorm2d(width, eps=1e-3, momentum=0.01))
            layers.append(torch.nn.ReLU(inplace=True))
            channels = width
        if block < len(blocks):
            layers.append(torch.nn.MaxPool2d(2, ceil_mode=True))
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()]
    if models.default_dropout(name):
        layers.append(torch.nn.Dropout(models.default_dropout(name)))
    layers.append(torch.nn.Linear(channels, num_classes))
    return torch.nn.Sequential(*layers)


def images_per_second(name, num_classes, precision, batch_size, steps, warmup=5):
    """Training images/s of PyTorch's `name` at `precision` on one cached random batch."""
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = network(name, num_classes).to(device)
    shape = models.made_for(name)
    images = torch.randn(batch_size, shape["channels"], *shape["image_size"], device=device)
    labels = torch.arange(batch_size, device=device) % num_classes
    low = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(precision)
    if low is not None:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    kernels = [p for p in model.parameters() if p.dim() > 1]
    others = [p for p in model.parameters() if p.dim() <= 1]
    optimizer = torch.optim.SGD([{"params": kernels, "weight_decay": 5e-4},
                                 {"params": others, "weight_decay": 0.0}], lr=0.01,
                                momentum=0.9)
    scaler = torch.amp.GradScaler(device, enabled=precision == "float16")
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=low or torch.float32, enabled=low is not None):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def wait():
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    wait()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    wait()
    return steps * batch_size / (time.perf_counter() - start)


def main(argv):
    values, _ = cli.parse(argv, define_flags, __doc__)
    rate = images_per_second(values.model, values.num_classes, values.precision,
                             values.batch_size, values.steps)
    print(json.dumps({"model": values.model, "precision": values.precision,
                      "images_per_second": rate}), flush=True)


def define_flags(values):
    on = {"flag_values": values}
    flags.DEFINE_enum("model", "bn", peer_comparison.NETWORKS, "Network.", **on)
    flags.DEFINE_enum("precision", "float32", PRECISIONS, "float32, or bfloat16 / float16 "
                      "autocast with channels-last tensors (float16: on a GPU, loss scaled).",
                      **on)
    flags.DEFINE_integer("num_classes", 14700, "Classes.", lower_bound=2, **on)
    flags.DEFINE_integer("batch_size", 128, "Images per batch.", lower_bound=1, **on)
    flags.DEFINE_integer("steps", 30, "Training steps timed.", lower_bound=1, **on)


if __name__ == "__main__":
    main(sys.argv)
