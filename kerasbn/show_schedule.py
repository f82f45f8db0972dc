"""Prints or draws a learning-rate schedule before a four-day run is started with it.

    python -m kerasbn.show_schedule --flagfile=launch/bn.flags --print_every=10000
    python -m kerasbn.show_schedule --plot=lr.png launch/baseline.flags launch/bn.flags

Takes the training flags (or flagfiles given as arguments, one curve each) and prints
`iteration lr` lines, or draws the curves on one log-scale chart.
"""

import sys

import numpy as np
from absl import flags

from kerasbn.analysis import charts
from kerasbn.flags import cli, train_flags
from kerasbn.optim import schedules
from kerasbn.utils import errors


def define_flags(values):
    train_flags.define(values)
    on = {"flag_values": values}
    flags.DEFINE_integer("print_every", 1000, "Print `iteration lr` every N iterations.",
                         lower_bound=1, **on)
    flags.DEFINE_string("plot", None, "Draw the policies of the flagfiles given as arguments "
                        "(or of the flags) into this PNG.", **on)


def curve(config):
    """(iterations, rates) of a ScheduleConfig at 2,000 points over its run."""
    iterations = np.unique(np.linspace(0, config.max_iter, 2000).astype(int))
    return iterations, schedules.rates(schedules.make_schedule(config), iterations)


def plot(values, paths):
    """Draws the policies of the flagfiles at `paths` (or of the flags, without any) into
    --plot."""
    curves = []
    for path in paths or [None]:
        config = (train_flags.schedule_config(train_flags.parse_flagfile(path)) if path
                  else train_flags.schedule_config(values))
        curves.append((path or config.lr_policy, *curve(config)))
    charts.save_lines(curves, values.plot, "iteration", "learning rate", yscale="log")


def main(argv):
    values, paths = cli.parse(argv, define_flags, __doc__)
    if values.plot:
        cli.check_writable(values.plot, "plot")
        cli.run(lambda: plot(values, paths), f"{values.plot} is written whole or not at all")
        print(f"wrote {values.plot}")
        return
    try:
        config = train_flags.schedule_config(values)
    except errors.UserError as e:
        sys.exit(f"error: {e}")
    iterations = list(range(0, config.max_iter + 1, max(1, values.print_every)))
    for iteration, lr in zip(iterations, schedules.rates(schedules.make_schedule(config),
                                                         iterations)):
        print(f"{iteration} {lr:.6g}")


if __name__ == "__main__":
    main(sys.argv)
