"""Curves over training: a loss, an alignment or a reconstruction error against the epoch (issue 13's distillation
report; seed 003 Figs. 4–6 show such trajectories for fine-tuning).

matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxalign.plots import style

__all__ = ["training_curves"]


def training_curves(
    epochs: Sequence[float],
    series: Mapping[str, Any],
    *,
    xlabel: str = "epoch",
    ylabel: str = "value",
    title: str | None = None,
    logy: bool = False,
) -> Any:
    """One line per series against the epoch, with markers at each checkpoint.

    Args:
      epochs: (T,) the x values (epochs or steps).
      series: label → (T,) values in the order of ``epochs``; NaN values leave a gap.
      xlabel, ylabel: axis labels with units.
      title: axes title.
      logy: logarithmic y axis (losses spanning decades); non-positive values are not drawn.

    Returns:
      The Figure (one axes, one line per series, a legend when there are several).

    Raises:
      ValueError: empty ``series`` or a series whose length differs from ``epochs``.
    """
    x = style.as_vector(epochs, "epochs")
    if not isinstance(series, Mapping) or not series:
        raise ValueError("`series` must be a non-empty mapping label → values per epoch.")
    fig = style.new_figure((6.0, 4.0))
    ax = fig.add_subplot()
    for i, (label, values) in enumerate(series.items()):
        y = style.as_vector(values, f"series[{label!r}]", x.size, against="epochs")
        if logy:
            y = np.where(y > 0, y, np.nan)
        ax.plot(x, y, marker="o", markersize=3.5, lw=1.4, color=f"C{i % 10}", label=str(label))
    if logy:
        ax.set_yscale("log")
    if np.all(x == np.round(x)):  # epochs: whole-number ticks
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    style.style_axes(ax, xlabel, ylabel, title or ylabel)
    if len(series) > 1:
        ax.legend(fontsize=style.LEGEND_SIZE, frameon=False)
    return fig
