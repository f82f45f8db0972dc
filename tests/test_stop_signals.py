import os
import signal

import pytest

from kerasbn.utils import stop_signals


def test_the_first_signal_is_recorded_and_a_second_ctrl_c_stops_at_once(capsys):
    before = signal.getsignal(signal.SIGTERM)
    with stop_signals.StopRequests() as requests:
        os.kill(os.getpid(), signal.SIGTERM)
        assert requests.signal == signal.SIGTERM
        assert "SIGTERM received: checkpointing" in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_interrupts_a_converter_as_ctrl_c_does():
    with pytest.raises(KeyboardInterrupt):
        with stop_signals.as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)


def _handlers():
    return signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)


def test_pool_workers_forked_under_as_interrupt_die_on_sigterm():
    # A worker that kept as_interrupt's handler could hang Pool.terminate's join forever.
    import multiprocessing
    with stop_signals.as_interrupt():
        with stop_signals.for_workers():
            pool = multiprocessing.get_context("fork").Pool(1)
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
    try:
        assert pool.apply(_handlers) == (signal.SIG_DFL, signal.SIG_IGN)
    finally:
        pool.terminate()
        pool.join()
