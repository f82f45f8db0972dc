import io

from kerasbn.utils import progress


def test_format_seconds():
    assert progress.format_seconds(3725.9) == "1:02:05"
    assert progress.format_seconds(-3) == "0:00:00"


def test_progress_prints_count_rate_and_eta_and_always_the_last_line():
    stream = io.StringIO()
    bar = progress.Progress(100, "synth", every=3600, stream=stream)
    bar.start -= 10.0  # ten seconds ago
    bar.update(50)
    assert stream.getvalue() == ""  # within `every` seconds of the start
    bar.update(50)
    line = stream.getvalue().strip()
    assert line.startswith("synth: 100/100 (100%) ") and line.endswith("images/s ETA 0:00:00")
    rate = float(line.split()[3])
    assert 9 <= rate <= 10
    assert bar.line(bar.start + 4.0).startswith("synth: 100/100 (100%) 25 images/s")
