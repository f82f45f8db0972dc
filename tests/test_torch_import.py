"""arcface_torch's trained backbones come in: a state dict written by PyTorch, with
arcface_torch's key names, ports to a kerasbn export that gives the embeddings PyTorch's
model gives on the same faces, read without PyTorch; a malicious pickle is refused in one
line and runs nothing."""

import os
import pickle
import zipfile

import numpy as np
import pytest

from kerasbn import torch_import
from kerasbn.pytorch import state_dict

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


def _trained(layers, widths, side):
    """An IResNet with statistics and slopes away from their starts, as training leaves them."""
    torch.manual_seed(0)
    net = IResNet(layers, widths, 16, side)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
                if module is not net.features:
                    module.weight.uniform_(0.8, 1.2)
            if isinstance(module, nn.PReLU):
                module.weight.uniform_(0.1, 0.4)
    return net.eval()


@pytest.mark.slow
@pytest.mark.parametrize("name, layers", [("r18", (2, 2, 2, 2)), ("r34", (3, 4, 6, 3))])
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
    with torch.no_grad():
        theirs = net(torch.from_numpy((faces.transpose(0, 3, 1, 2) / 127.5 - 1).astype(
            np.float32))).numpy()
    theirs /= np.linalg.norm(theirs, axis=1, keepdims=True)
    ours = tf.saved_model.load(str(out)).signatures["embed"](
        images=tf.constant(faces))["embedding"].numpy()
    assert np.min(np.sum(ours * theirs, axis=1)) >= 0.9999


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
    with pytest.raises(SystemExit, match="no layer1.2.bn1.weight, which an arcface_torch r34 has"):
        torch_import.main(["torch_import", f"--pth={tmp_path / 'r.pt'}", "--network=r34",
                           f"--out={tmp_path / 'out'}"])


@pytest.mark.slow
def test_a_ported_backbone_keeps_training_under_a_margin_head(tmp_path, capsys):
    from conftest import run_train, train_args

    from data_tools import synth
    from kerasbn.runs.run_dir import RunDir
    pth = tmp_path / "model.pt"
    torch.save(_trained((2, 2, 2, 2), (8, 8, 16, 16, 16), 2).state_dict(), pth)
    export = tmp_path / "export"
    torch_import.main(["torch_import", f"--pth={pth}", "--network=r18", f"--out={export}"])
    synth.build(str(tmp_path / "data"), 5, 12, 0.25, 32, 0, "raw", 64, False, channels=3)
    run_dir = str(tmp_path / "run")
    run_train(train_args(str(tmp_path / "data"), run_dir, backbone=export, head="combined",
                         max_iter=4, test_interval=4, snapshot=4, batch_size=8))
    assert f"imported {export} + combined" in capsys.readouterr().out
    assert RunDir(run_dir).finished()
