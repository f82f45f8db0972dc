import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_the_gpu_check_runs_on_a_cpu_and_says_what_it_measured(small_data, tmp_path):
    env = {**os.environ, "PYTHON": sys.executable,
           "DATA": small_data, "RUN": str(tmp_path / "run"), "STEPS": "4", "BATCH": "8",
           "CLASSES": "6", "SHARD_CLASSES": "1000", "COMPILE": "plain",
           "PRECISION": "float32"}
    done = subprocess.run([os.path.join(ROOT, "launch", "gpu_check.sh")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("devices: ")
    assert "precision: float32" in lines
    step = next(line for line in lines if "one cached batch " in line and "images/s" in line)
    assert f"real pipeline of {small_data}" in step and "input-bound)" in step
    assert any(line.startswith("1,000 classes on 1 replica, sharded: ") and "x replicated" in line
               for line in lines)
    assert any(line.startswith("iter 4/4") and "images/s" in line for line in lines)
    assert done.stderr == ""
