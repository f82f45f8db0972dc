"""A kerasbn field run is an arcface_torch run: two training steps of a narrow IResNet-18 from
the same weights and batch, with today's CombinedMarginLoss, PolynomialLRWarmup,
torch.optim.SGD, the backbone's gradients clipped and PyTorch's BatchNorm, give the
same losses, weights and BN statistics as PyTorch running a transcription of arcface_torch's
definitions (backbones/iresnet.py, losses.py, lr_scheduler.py, train_v2.py) on them."""

import numpy as np
import pytest

from kerasbn.config import RunConfig
from kerasbn.optim import schedules
from kerasbn.runs import network

torch = pytest.importorskip("torch", reason="PyTorch is the reference here: pip install -e "
                                            "'.[torch]'")
F = torch.nn.functional

WIDTHS, SIZE, EMBEDDING, CLASSES, BATCH = (4, 4, 8, 8, 8), 16, 8, 5, 6
LR, WARMUP, TOTAL, DECAY = 0.1, 2, 6, 5e-4
# train_v2.py clips at 5; this narrow network's gradients are smaller, so a lower bound
# puts the clip to work.
CLIP = 0.5


def _config():
    return RunConfig(
        data_dir="d", run_dir="r", num_classes=CLASSES, image_size=(SIZE, SIZE), channels=3,
        model="iresnet18", widths=WIDTHS, embedding_dim=EMBEDDING, dropout=0.0, norm="torch",
        head="combined", margins=(1.0, 0.5, 0.0), scale=64.0, sgd="torch", clip_grad_norm=CLIP,
        momentum=0.9, weight_decay=DECAY, bias_decay_mult=1.0, bn_decay_mult=1.0,
        prelu_decay_mult=1.0,
        batch_size=BATCH, test_interval=1,
        schedule=schedules.ScheduleConfig(base_lr=LR, lr_policy="poly_warmup",
                                          warmup_iter=WARMUP, max_iter=TOTAL, power=1.0))


def _blocks():
    """(kerasbn's block name, stride) of the IResNet-18's blocks, in order."""
    return [(f"stage{stage}_{index + 1}", 2 if index == 0 else 1)
            for stage in range(1, 5) for index in range(2)]


def _to_torch(model):
    """{kerasbn layer name: {parameter: tensor}} in PyTorch's layouts, from `model`."""
    params = {}
    for layer in model.layers:
        weights = {w.name: w.numpy() for w in layer.weights}
        if not weights:
            continue
        if "kernel" in weights and weights["kernel"].ndim == 4:
            weights["kernel"] = weights["kernel"].transpose(3, 2, 0, 1)
        elif layer.name == "embedding_fc":
            side = SIZE // 16
            weights["kernel"] = weights["kernel"].reshape(side, side, WIDTHS[-1], -1).transpose(
                2, 0, 1, 3).reshape(-1, EMBEDDING).T
        if "alpha" in weights:
            weights["alpha"] = weights["alpha"].reshape(-1)
        params[layer.name] = {k: torch.tensor(v, requires_grad=k in ("kernel", "bias", "beta",
                                                                     "alpha")
                                              or (k == "gamma" and layer.name != "embedding"))
                              for k, v in weights.items()}
    return params


def _forward(p, x):
    """insightface's IResNet forward on NCHW `x` with kerasbn's layer names."""
    def bn(x, name):
        q = p[name]
        return F.batch_norm(x, q["moving_mean"], q["moving_variance"], q["gamma"], q["beta"],
                            training=True, momentum=0.1, eps=1e-5)

    def conv(x, name, stride, pad):
        return F.conv2d(x, p[name]["kernel"], stride=stride, padding=pad)

    def prelu(x, name):
        return F.prelu(x, p[name]["alpha"])

    x = prelu(bn(conv(x, "stem", 1, 1), "stem_bn"), "stem_prelu")
    for name, stride in _blocks():
        out = bn(x, f"{name}_bn1")
        out = prelu(bn(conv(out, f"{name}_conv1", 1, 1), f"{name}_bn2"), f"{name}_prelu")
        out = bn(conv(out, f"{name}_conv2", stride, 1), f"{name}_bn3")
        shortcut = bn(conv(x, f"{name}_down", stride, 0), f"{name}_down_bn") \
            if f"{name}_down" in p else x
        x = out + shortcut
    x = bn(x, "neck_bn").flatten(1)
    x = F.linear(x, p["embedding_fc"]["kernel"], p["embedding_fc"]["bias"])
    return bn(x, "embedding")


def _lr(step):
    """PolynomialLRWarmup's rate of update `step` (test_schedules checks it against PyTorch)."""
    if step == 0:
        return LR
    if step <= WARMUP:
        return LR * step / WARMUP
    return LR * (1 - (min(step, TOTAL) - WARMUP) / (TOTAL - WARMUP))


def test_two_steps_equal_arcface_torchs():
    from test_heads import _combined_margin_loss

    import keras
    keras.utils.set_random_seed(3)
    model = network.build_and_compile(_config())
    params = _to_torch(model)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 4, 0])
    loss_fn = _combined_margin_loss(torch, 64.0, 1.0, 0.5, 0.0)
    backbone = [t for name, q in params.items() if name != "logits" for t in q.values()
                if t.requires_grad]
    # train_v2.py: SGD over the backbone and the classifier, weight decay on every parameter.
    decayed = backbone + [params["logits"]["kernel"]]
    optimizer = torch.optim.SGD(decayed, lr=LR, momentum=0.9, weight_decay=DECAY)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    for step in range(2):
        ours = float(model.train_on_batch(images, labels))
        for group in optimizer.param_groups:
            group["lr"] = _lr(step)
        optimizer.zero_grad()
        embedding = _forward(params, x)
        cosine = F.linear(F.normalize(embedding), F.normalize(params["logits"]["kernel"]))
        loss = F.cross_entropy(loss_fn(cosine.clamp(-1, 1), torch.from_numpy(labels)),
                               torch.from_numpy(labels))
        penalty = sum(0.5 * DECAY * (t ** 2).sum().item() for t in decayed)
        loss.backward()
        assert torch.nn.utils.clip_grad_norm_(backbone, CLIP) > CLIP
        optimizer.step()
        assert ours == pytest.approx(loss.item() + penalty, rel=1e-4)
    # Every parameter is decayed, as train_v2.py's SGD decays them: the L2 terms of the loss
    # are the PyTorch side's penalty, PReLU's slopes among them.
    assert all(layer.losses for layer in model.layers if layer.name.endswith("prelu"))
    theirs = _to_torch(model)
    for name, q in params.items():
        for key, value in q.items():
            # Float32 summation order differs between the two sides; the bound scales with
            # the tensor so that a large classifier's few rounding outliers stay inside it.
            expected = value.detach().numpy()
            np.testing.assert_allclose(theirs[name][key].detach().numpy(), expected,
                                       rtol=2e-4, atol=2e-5 + 1e-4 * np.abs(expected).max(),
                                       err_msg=f"{name}/{key}")
