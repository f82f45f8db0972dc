import subprocess
import sys

import pytest


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "kerasbn.show_schedule", *args],
                          capture_output=True, text=True)


@pytest.mark.slow
def test_command_prints_and_plots(tmp_path):
    flagfile = tmp_path / "a.flags"
    flagfile.write_text("--lr_policy=multistep_no_dropout\n--base_lr=0.01\n--max_iter=4200\n")
    done = _cli(f"--flagfile={flagfile}", "--print_every=1500")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = [line.split() for line in done.stdout.splitlines()]
    assert [int(i) for i, _ in lines] == [0, 1500, 3000]
    assert float(lines[1][1]) == pytest.approx(0.01 * 0.9 ** 15, rel=1e-4)
    other = tmp_path / "b.flags"
    other.write_text("--lr_policy=long_step\n--max_iter=4200\n")
    plotted = _cli(f"--plot={tmp_path / 'lr.png'}", str(flagfile), str(other))
    assert plotted.returncode == 0, plotted.stderr
    assert (tmp_path / "lr.png").stat().st_size > 10_000
    bad = _cli("--stepvalue=5", "--stepvalue=3")
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "error: --stepvalue must be positive and strictly increasing, got [5, 3]"]
    missing = _cli(f"--plot={tmp_path / 'x.png'}", str(tmp_path / "missing.flags"))
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
    assert "missing.flags not found" in missing.stderr
