"""arcface_torch's trained backbones come in and go back: a state dict written by PyTorch,
with arcface_torch's key names, ports to a kerasbn export that gives the embeddings PyTorch's
model gives on the same faces, read without PyTorch, and `export --format=pth` writes it (or
a kerasbn run's backbone) back as a state dict PyTorch loads strictly with the same
embeddings; a malicious pickle is refused in one line and runs nothing. The PyTorch networks
here are transcriptions of arcface_torch's backbones/iresnet.py, mobilefacenet.py and
vit.py."""

import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from kerasbn import export, torch_import
from kerasbn.pytorch import backbone_state, importer, state_dict

torch = pytest.importorskip("torch", reason="PyTorch writes the reference state dicts: pip "
                                            "install -e '.[torch]'")
nn = torch.nn


class IBasicBlock(nn.Module):
    """insightface's recognition/arcface_torch/backbones/iresnet.py IBasicBlock, transcribed."""

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (self.downsample(x) if self.downsample is not None else x)


class IResNet(nn.Module):
    """insightface's IResNet (fc_scale 7x7 at 112; `side` the last map's side here)."""

    def __init__(self, layers, widths=(64, 64, 128, 256, 512), num_features=512, side=7):
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, self.inplanes, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes, eps=1e-05)
        self.prelu = nn.PReLU(self.inplanes)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            self._make_layer(planes, blocks) for planes, blocks in zip(widths[1:], layers))
        self.bn2 = nn.BatchNorm2d(widths[-1], eps=1e-05)
        self.dropout = nn.Dropout(p=0.0, inplace=True)
        self.fc = nn.Linear(widths[-1] * side * side, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)

    def _make_layer(self, planes, blocks):
        downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, 2, bias=False),
                                   nn.BatchNorm2d(planes, eps=1e-05))
        layers = [IBasicBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def _block(in_c, out_c, kernel=1, stride=1, padding=0, groups=1, prelu=True):
    """arcface_torch's ConvBlock (prelu) or LinearBlock: .layers = Conv2d, BN[, PReLU]."""
    block = nn.Module()
    parts = [nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False),
             nn.BatchNorm2d(out_c)] + ([nn.PReLU(out_c)] if prelu else [])
    block.layers = nn.Sequential(*parts)
    block.forward = block.layers.forward
    return block


class DepthWise(nn.Module):
    def __init__(self, in_c, out_c, residual, stride, groups):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(_block(in_c, groups), _block(groups, groups, 3, stride, 1,
                                                                  groups),
                                    _block(groups, out_c, prelu=False))

    def forward(self, x):
        return x + self.layers(x) if self.residual else self.layers(x)


def _residual(c, blocks, groups):
    module = nn.Module()
    module.layers = nn.Sequential(*(DepthWise(c, c, True, 1, groups) for _ in range(blocks)))
    module.forward = module.layers.forward
    return module


class MobileFaceNet(nn.Module):
    """arcface_torch's get_mbf(fp16=False, num_features, blocks=(1, 4, 6, 2), scale=2)."""

    def __init__(self, num_features=512):
        super().__init__()
        self.layers = nn.ModuleList([
            _block(3, 128, 3, 2, 1), _block(128, 128, 3, 1, 1, groups=64),
            DepthWise(128, 128, False, 2, 128), _residual(128, 4, 128),
            DepthWise(128, 256, False, 2, 256), _residual(256, 6, 256),
            DepthWise(256, 256, False, 2, 512), _residual(256, 2, 256)])
        self.conv_sep = _block(256, 512)
        self.features = nn.Module()
        self.features.layers = nn.Sequential(_block(512, 512, 7, groups=512, prelu=False),
                                             nn.Flatten(), nn.Linear(512, num_features,
                                                                     bias=False),
                                             nn.BatchNorm1d(num_features))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.features.layers(self.conv_sep(x))


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (qkv[0] @ qkv[1].transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(-1)
        return self.proj((attn @ qkv[2]).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp.fc2(nn.functional.relu6(self.mlp.fc1(self.norm2(x))))


class VisionTransformer(nn.Module):
    """arcface_torch's VisionTransformer(img_size=112, patch_size=9, norm_layer="ln") in
    eval (no masking, no drop path)."""

    def __init__(self, dim, depth, num_features=512, heads=8):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, 9, 9)
        self.pos_embed = nn.Parameter(torch.randn(1, 144, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.feature = nn.Sequential(nn.Linear(dim * 144, dim, bias=False),
                                     nn.BatchNorm1d(dim, eps=2e-5),
                                     nn.Linear(dim, num_features, bias=False),
                                     nn.BatchNorm1d(num_features, eps=2e-5))
        self.mask_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.feature(self.norm(x).reshape(x.shape[0], -1))


def _trained(layers=None, widths=None, side=None, net=None):
    """A network (an IResNet of `layers` by default) with statistics, affine parameters and
    slopes away from their starts, as training leaves them."""
    torch.manual_seed(0)
    net = net or IResNet(layers, widths, 16, side)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d, nn.LayerNorm)):
                module.bias.uniform_(-0.1, 0.1)
                if module is not getattr(net, "features", None):
                    module.weight.uniform_(0.8, 1.2)
            if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
            if isinstance(module, nn.PReLU):
                module.weight.uniform_(0.1, 0.4)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.uniform_(-0.1, 0.1)
    return net.eval()


def _embed_torch(net, faces):
    with torch.no_grad():
        return net(torch.from_numpy((faces.transpose(0, 3, 1, 2) / 127.5 - 1).astype(
            np.float32))).numpy()


def _cosines(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    return np.sum(a * b / np.linalg.norm(b, axis=1, keepdims=True), axis=1)


@pytest.mark.slow
# r34 differs from r18 only in its block counts, which the state dict check names below.
@pytest.mark.parametrize("name, layers", [("r18", (2, 2, 2, 2))])
def test_an_arcface_torch_iresnet_ports_with_its_embeddings(name, layers, tmp_path, capsys):
    import tensorflow as tf

    net = _trained(layers, (8, 8, 16, 16, 16), 2)
    pth = tmp_path / "model.pt"
    torch.save(net.state_dict(), pth)
    out = tmp_path / "export"
    torch_import.main(["torch_import", f"--pth={pth}", f"--network={name}", f"--out={out}",
                       "--threshold=0.3"])
    assert f"arcface_torch {name}" in capsys.readouterr().out
    faces = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    ours = tf.saved_model.load(str(out)).signatures["embed"](
        images=tf.constant(faces))["embedding"].numpy()
    assert np.min(_cosines(ours, _embed_torch(net, faces))) >= 0.9999
    # And back: the export's state dict loads strictly into PyTorch's model, with its values.
    export.main(["export", f"--model={out}", "--format=pth"])
    said = capsys.readouterr().out
    back = torch.load(f"{out}.pth", weights_only=True)
    assert f"arcface_torch {name} state dict: {out}.pth ({len(back)} keys" in said
    returned = IResNet(layers, (8, 8, 16, 16, 16), 16, 2)
    returned.load_state_dict(back, strict=True)
    for key, value in net.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_allclose(back[key].numpy(), value.numpy(), rtol=1e-6, atol=1e-7,
                                       err_msg=key)
    assert json.loads(open(f"{out}.pth.json").read())["load_with"] == (
        f"get_model('{name}', num_features=16).load_state_dict(torch.load(PATH))")


@pytest.mark.slow
def test_an_arcface_torch_mobilefacenet_ports_and_goes_back(tmp_path, capsys):
    net = _trained(net=MobileFaceNet(128))
    pth = tmp_path / "mbf.pt"
    torch.save(net.state_dict(), pth)
    out = tmp_path / "mbf"
    torch_import.main(["torch_import", f"--pth={pth}", "--network=mbf", f"--out={out}"])
    assert "arcface_torch mbf" in capsys.readouterr().out
    import tensorflow as tf
    faces = np.random.default_rng(2).integers(0, 256, (3, 112, 112, 3)).astype(np.uint8)
    ours = tf.saved_model.load(str(out)).signatures["embed"](
        images=tf.constant(faces))["embedding"].numpy()
    assert np.min(_cosines(ours, _embed_torch(net, faces))) >= 0.9999
    export.main(["export", f"--model={out}", "--format=pth", f"--out={tmp_path / 'back.pth'}"])
    returned = MobileFaceNet(128)
    returned.load_state_dict(torch.load(tmp_path / "back.pth", weights_only=True), strict=True)
    np.testing.assert_allclose(_embed_torch(returned.eval(), faces), _embed_torch(net, faces),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, depth", [("vit_t", 12), ("vit_b", 24)])
def test_an_arcface_torch_vit_ports_and_goes_back(name, depth):
    # Narrow (width 16), at the network's own depth: the port reads the width from the
    # weights and the depth from --network.
    net = _trained(net=VisionTransformer(16, depth, num_features=8))
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    model, _ = importer.build(state, name)
    faces = np.random.default_rng(3).integers(0, 256, (2, 112, 112, 3)).astype(np.float32)
    ours = model(faces, training=False).numpy()
    np.testing.assert_allclose(ours, _embed_torch(net, faces), rtol=1e-4, atol=1e-4)
    back = backbone_state.state_of(model, name)
    returned = VisionTransformer(16, depth, num_features=8)
    returned.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in back.items()},
                             strict=True)
    for key, value in net.state_dict().items():
        np.testing.assert_allclose(back[key], value.numpy(), rtol=1e-6, atol=1e-7, err_msg=key)


def test_the_reader_gives_pytorchs_tensors_without_pytorch(tmp_path):
    tensors = {"a.weight": torch.arange(24, dtype=torch.float32).reshape(2, 3, 4),
               "b.running_var": torch.rand(5), "c.num_batches_tracked": torch.tensor(7),
               "d.weight": torch.rand(4, 6).t()}  # a non-contiguous view
    path = tmp_path / "s.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tensors.items()}}, path)
    read = state_dict.read(str(path))
    assert list(read) == list(tensors)
    for key, value in tensors.items():
        np.testing.assert_array_equal(read[key], value.numpy())


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_malicious_pickle_or_a_wrong_file_is_one_line_and_runs_nothing(tmp_path,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"x": _Boom()}))
    for path, said in ((evil, "it names posix.system"), (tmp_path / "missing.pt", "not found")):
        with pytest.raises(SystemExit) as info:
            torch_import.main(["torch_import", f"--pth={path}", "--network=r18",
                               f"--out={tmp_path / 'out'}"])
        assert said in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(state_dict.StateDictError, match="not in PyTorch's zip format"):
        state_dict.read(str(plain))
    torch.save(_trained((2, 2, 2, 2), (8, 8, 16, 16, 16), 2).state_dict(), tmp_path / "r.pt")
    with pytest.raises(SystemExit, match="no layers.0.layers.0.weight: is it an arcface_torch "
                                         "mbf backbone"):
        torch_import.main(["torch_import", f"--pth={tmp_path / 'r.pt'}", "--network=mbf",
                           f"--out={tmp_path / 'out'}"])
    with pytest.raises(SystemExit, match="no layer1.2.bn1.weight, which an arcface_torch r34 has"):
        torch_import.main(["torch_import", f"--pth={tmp_path / 'r.pt'}", "--network=r34",
                           f"--out={tmp_path / 'out'}"])


@pytest.mark.slow
def test_a_ported_backbone_keeps_training_and_goes_back_out(tmp_path, capsys, finished_run):
    from conftest import run_train, train_args

    from data_tools import synth
    from kerasbn.runs.run_dir import RunDir
    pth = tmp_path / "model.pt"
    torch.save(_trained((2, 2, 2, 2), (8, 8, 16, 16, 16), 2).state_dict(), pth)
    imported = tmp_path / "imported"
    torch_import.main(["torch_import", f"--pth={pth}", "--network=r18", f"--out={imported}"])
    synth.build(str(tmp_path / "data"), 5, 12, 0.25, 32, 0, "raw", 64, False, channels=3)
    run_dir = str(tmp_path / "run")
    run_train(train_args(str(tmp_path / "data"), run_dir, backbone=imported, head="combined",
                         max_iter=4, test_interval=4, snapshot=4, batch_size=8))
    assert f"imported {imported} + combined" in capsys.readouterr().out
    assert RunDir(run_dir).finished()
    # Its backbone goes back out of the run, and PyTorch embeds as the run's network does.
    import keras

    from kerasbn.serving import signatures
    export.main(["export", f"--run_dir={run_dir}", "--format=pth"])
    assert "arcface_torch r18 state dict" in capsys.readouterr().out
    net = IResNet((2, 2, 2, 2), (8, 8, 16, 16, 16), 16, 2)
    net.load_state_dict(torch.load(os.path.join(run_dir, "export.pth"), weights_only=True),
                        strict=True)
    backbone = signatures.restore_run(run_dir)[2].get_layer("backbone")
    faces = np.random.default_rng(4).integers(0, 256, (3, 32, 32, 3)).astype(np.float32)
    ours = keras.Model(backbone.input, backbone.get_layer("embedding").output)(faces).numpy()
    np.testing.assert_allclose(ours, _embed_torch(net.eval(), faces), rtol=1e-4, atol=1e-4)
    sidecar = json.loads(open(os.path.join(run_dir, "export.pth.json")).read())
    assert sidecar["load_with"] == ("get_model('r18', num_features=16).load_state_dict("
                                    "torch.load(PATH))")
    # A network arcface_torch does not define is refused in one line, and nothing is written.
    with pytest.raises(SystemExit, match="trains --model=bn, which arcface_torch does not "
                                         "define") as info:
        export.main(["export", f"--run_dir={finished_run}", "--format=pth"])
    assert "\n" not in str(info.value)
    assert not os.path.exists(os.path.join(finished_run, "export.pth"))



def test_a_kerasbn_network_under_keras_bn_goes_out_and_pytorch_embeds_alike():
    import keras

    from kerasbn.nn import models
    # Keras's BN (eps 1e-3) goes out as PyTorch's (eps 1e-5): the running variance carries it.
    keras.utils.set_random_seed(5)
    model = models.build("iresnet18", 5, image_size=(32, 32), channels=3,
                         widths=(8, 8, 16, 16, 16), embedding_dim=16, norm="keras")
    rng = np.random.default_rng(5)
    for layer in model.layers:
        if hasattr(layer, "moving_mean"):
            layer.moving_mean.assign(rng.uniform(-0.2, 0.2, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(1e-3, 1.5, layer.moving_variance.shape))
            layer.beta.assign(rng.uniform(-0.1, 0.1, layer.beta.shape))
    net = IResNet((2, 2, 2, 2), (8, 8, 16, 16, 16), 16, 2)
    state = backbone_state.state_of(model, "r18")
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()},
                        strict=True)
    embed = keras.Model(model.input, model.get_layer("embedding").output)
    images = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        theirs = net.eval()(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    # The untrained network's embeddings run to 1e5: float32 rounding is bounded by that scale.
    np.testing.assert_allclose(embed(images).numpy(), theirs, rtol=1e-4,
                               atol=1e-5 * np.abs(theirs).max())
    caffe = models.build("iresnet18", 5, image_size=(32, 32), channels=3,
                         widths=(8, 8, 16, 16, 16), embedding_dim=16, norm="bvlc")
    with pytest.raises(state_dict.StateDictError, match="stem_bn is a BVLCBatchNorm, whose "
                                                        "statistics PyTorch's BatchNorm has no"):
        backbone_state.state_of(caffe, "r18")
