"""Charts as PNG files, drawn off-screen (Agg) and written whole, for the commands that plot."""

from kerasbn.utils import atomic


def pyplot():
    """matplotlib's pyplot on the off-screen Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, out):
    """Writes matplotlib figure `fig` to PNG `out` whole (atomic), then closes it."""
    atomic.write_with(out, lambda f: fig.savefig(f, format="png", dpi=100))
    pyplot().close(fig)


def save_lines(curves, out, xlabel, ylabel, xscale="linear", yscale="linear", marker=None,
               ylim=None):
    """Draws (label, xs, ys) curves on one chart with a legend into PNG `out`. A fourth
    item, a dict of matplotlib line properties (colour, alpha, marker), styles that curve
    (several runs of one group in one colour, labelled once: label None for the others);
    its `band` (low, high) shades the area between them in the curve's colour."""
    fig, ax = pyplot().subplots(figsize=(8, 4.5))
    for label, xs, ys, *style in curves:
        style = dict(style[0]) if style else {}
        band = style.pop("band", None)
        style.setdefault("marker", marker)
        line, = ax.plot(xs, ys, label=label, **style)
        if band is not None:
            ax.fill_between(xs, *band, color=line.get_color(), alpha=0.2)
    ax.set_xscale(xscale)
    ax.set_yscale(yscale)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)
