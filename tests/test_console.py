import os

from kerasbn.utils import console


def test_verbosity_is_read_in_every_absl_spelling():
    for argv in (["x", "-v", "1"], ["x", "-v=0"], ["x", "--verbosity=1"],
                 ["x", "--verbosity", "0"]):
        assert console.verbose_requested(argv)
    assert not console.verbose_requested(["x", "--data_dir=-v"])
    assert not console.verbose_requested(["-v"])


def test_silenced_stderr_drops_descriptor_level_writes_then_restores(capfd):
    with console.silenced_stderr():
        os.write(2, b"chatter from C++\n")
    os.write(2, b"kept\n")
    assert capfd.readouterr().err == "kept\n"
