"""One error family: every mistake a user can make is a UserError, which each command reports
as one line; anything else is a bug and keeps its traceback."""

import pytest

from kerasbn import caffe_solver, config, export, predict
from kerasbn.analysis import comparison
from kerasbn.optim import schedules
from kerasbn.runs import run_dir
from kerasbn.serving import exporter, signatures
from kerasbn.utils import errors


@pytest.mark.parametrize("error", [
    errors.DataError, config.ConfigError, schedules.ScheduleError, run_dir.RunDirError,
    run_dir.RunDirBusy, comparison.ReportError, caffe_solver.SolverError])
def test_every_user_error_is_one_family(error):
    assert issubclass(error, errors.UserError)


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    def mistake(*args):
        raise errors.DataError("runs/x holds no checkpoint; train the run first")

    def bug(*args):
        raise ValueError("a bug, not the user's")

    monkeypatch.setattr(exporter, "export_run", mistake)
    with pytest.raises(SystemExit, match="^error: runs/x holds no checkpoint"):
        export.main(["export", f"--run_dir={tmp_path}"])
    monkeypatch.setattr(exporter, "export_run", bug)
    with pytest.raises(ValueError, match="a bug"):
        export.main(["export", f"--run_dir={tmp_path}"])
    monkeypatch.setattr(signatures, "load_saved_model", bug)
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match="a bug"):
        predict.main(["predict", f"--model={tmp_path}", str(tmp_path / "a.png")])
