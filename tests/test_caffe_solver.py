import pytest

from kerasbn import caffe_solver
from kerasbn.flags import train_flags

# Caffe's examples/cifar10/cifar10_quick_solver.prototxt, as published.
CIFAR10_QUICK = """# reduce the learning rate after 8 epochs (4000 iters) by a factor of 10

# The train/test net protocol buffer definition
net: "examples/cifar10/cifar10_quick_train_test.prototxt"
# test_iter specifies how many forward passes the test should carry out.
# In the case of MNIST, we have test batch size 100 and 100 test iterations,
# covering the full 10,000 testing images.
test_iter: 100
# Carry out testing every 500 training iterations.
test_interval: 500
# The base learning rate, momentum and the weight decay of the network.
base_lr: 0.001
momentum: 0.9
weight_decay: 0.004
# The learning rate policy
lr_policy: "fixed"
# Display every 100 iterations
display: 100
# The maximum number of iterations
max_iter: 4000
# snapshot intermediate results
snapshot: 4000
snapshot_format: HDF5
snapshot_prefix: "examples/cifar10/cifar10_quick"
# solver mode: CPU or GPU
solver_mode: GPU
"""

# Caffe's models/bvlc_reference_caffenet/solver.prototxt (ImageNet).
IMAGENET = """net: "models/bvlc_reference_caffenet/train_val.prototxt"
test_iter: 1000
test_interval: 1000
base_lr: 0.01
lr_policy: "step"
gamma: 0.1
stepsize: 100000
display: 20
max_iter: 450000
momentum: 0.9
weight_decay: 0.0005
snapshot: 10000
snapshot_prefix: "models/bvlc_reference_caffenet/caffenet_train"
solver_mode: GPU
"""

# Caffe's examples/cifar10/cifar10_full_sigmoid_solver_bn.prototxt (weight_decay commented out).
CIFAR10_SIGMOID_BN = """net: "examples/cifar10/cifar10_full_sigmoid_train_test_bn.prototxt"
test_iter: 10
test_interval: 1000
base_lr: 0.001
momentum: 0.9
#weight_decay: 0.004
lr_policy: "step"
gamma: 1
stepsize: 5000
display: 100
max_iter: 60000
snapshot: 10000
snapshot_prefix: "examples/cifar10_full_sigmoid_bn"
solver_mode: GPU
"""

# The same solver switched to Adam.
CIFAR10_BN = CIFAR10_SIGMOID_BN + 'type: "Adam"\nmomentum2: 0.999\ndelta: 1e-8\n'


def _flags_of(lines):
    return dict(line[2:].split("=", 1) for line in lines if not line.startswith("#"))


def test_cifar10_quick_solver():
    lines, unmapped, _ = caffe_solver.convert(CIFAR10_QUICK)
    assert _flags_of(lines) == {
        "test_iter": "100", "test_interval": "500", "base_lr": "0.001", "momentum": "0.9",
        "weight_decay": "0.004", "lr_policy": "fixed", "display": "100", "max_iter": "4000",
        "snapshot": "4000", "run_dir": "examples/cifar10/cifar10_quick"}
    assert [(f, n) for f, _, n, _ in unmapped] == [("net", 4), ("snapshot_format", 23),
                                                   ("solver_mode", 26)]


def test_imagenet_solver_becomes_a_usable_flagfile(tmp_path):
    lines, unmapped, _ = caffe_solver.convert(IMAGENET)
    flags = _flags_of(lines)
    assert flags["lr_policy"] == "step" and flags["stepsize"] == "100000"
    assert flags["gamma"] == "0.1" and flags["max_iter"] == "450000"
    assert {f for f, *_ in unmapped} == {"net", "solver_mode"}
    path = tmp_path / "solver.flags"
    path.write_text("\n".join(lines) + "\n")
    config = train_flags.schedule_config(train_flags.parse_flagfile(str(path)))
    assert (config.lr_policy, config.stepsize, config.base_lr) == ("step", 100000, 0.01)


def test_solver_type_and_adam_fields():
    flags = _flags_of(caffe_solver.convert(CIFAR10_BN)[0])
    assert (flags["solver_type"], flags["momentum2"], flags["delta"]) == ("Adam", "0.999", "1e-8")
    _, unmapped, _ = caffe_solver.convert('type: "AdaGrad"\n')
    assert "not supported" in unmapped[0][3]


def test_repeated_stepvalues_and_nested_blocks():
    text = ('lr_policy: "multistep"\nstepvalue: 100\nstepvalue: 200\n'
            'train_state {\n  level: 1\n}\niter_size: 2\n')
    lines, unmapped, _ = caffe_solver.convert(text)
    assert lines == ["--lr_policy=multistep", "--stepvalue=100", "--stepvalue=200",
                     "--iter_size=2", "# Caffe's defaults for fields the solver leaves out:",
                     "--weight_decay=0", "--momentum=0", "--gamma=0"]
    assert unmapped[0][:3] == ("train_state", "{...}", 4)


def test_malformed_line_names_its_number():
    with pytest.raises(caffe_solver.SolverError, match="s.prototxt:3"):
        caffe_solver.convert("base_lr: 0.1\nmomentum: 0.9\nthis is not a field\n",
                             "s.prototxt")


def test_a_binary_file_and_a_non_numeric_field_are_one_line(tmp_path, capsys):
    with pytest.raises(caffe_solver.SolverError, match="s.prototxt:2: base_lr must be a number"):
        caffe_solver.convert('lr_policy: "fixed"\nbase_lr: abc\n', "s.prototxt")
    with pytest.raises(caffe_solver.SolverError, match="max_iter must be an integer"):
        caffe_solver.convert("max_iter: 1.5\n")
    binary = tmp_path / "solver.bin"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(SystemExit, match="is not a text file"):
        caffe_solver.main(["caffe_solver", str(binary)])




def test_fields_left_out_take_caffes_defaults_not_kerasbns(tmp_path, capsys):
    lines, _, notes = caffe_solver.convert(CIFAR10_SIGMOID_BN)
    flags = _flags_of(lines)
    assert flags["weight_decay"] == "0" and flags["momentum"] == "0.9"
    assert "power" not in flags  # step reads no power
    path = tmp_path / "solver.prototxt"
    path.write_text(CIFAR10_SIGMOID_BN)
    caffe_solver.main(["caffe_solver", str(path)])
    err = capsys.readouterr().err
    assert f"{path}:2: warning: test_iter: 10: Caffe's test_iter counts batches of the test " \
           "net's batch_size" in err
    assert [n[:3] for n in notes] == [("test_iter", "10", 2)]
    values = train_flags.parse_flagfile(str(_write(tmp_path, lines)))
    assert values.weight_decay == 0.0 and values.momentum == 0.9


def _write(tmp_path, lines):
    path = tmp_path / "solver.flags"
    path.write_text("\n".join(lines) + "\n")
    return path
