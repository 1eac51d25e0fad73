"""How the energy-regression error is built (seed 000 App. B, eqs. 1–4): each model's energies against their linear
compositional fit (Fig. B2), the deviations from that fit against the reference's (Fig. B3), and the resulting errors
by level of theory (Fig. B4).

matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxalign.plots import style

__all__ = ["energy_error_bars", "parity_grid"]


def parity_grid(
    panels: Mapping[str, tuple[Any, Any]],
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    ncols: int | None = None,
    unit: str = "eV",
) -> Any:
    """One parity panel per model: y against x with the line y = x and the mean absolute difference in the panel
    title (seed 000 Fig. B2: a model's energies vs their linear compositional fit; Fig. B3: the reference's deviations
    from its fit vs the model's).

    Args:
      panels: model name → (x, y), two 1-D arrays of the same length (the same structures), in panel order.
      xlabel, ylabel: axis names with units, e.g. ``"model energy (eV)"``.
      title: figure title.
      ncols: panels per row (default: up to 4, near-square grid).
      unit: the unit of x and y, for the panel titles' mean absolute difference.

    Returns:
      The Figure: one axes per model (unused grid cells removed).

    Raises:
      ValueError: empty ``panels``, x and y of different lengths, or a panel without a finite pair.
    """
    if not isinstance(panels, Mapping) or not panels:
        raise ValueError("`panels` must be a non-empty mapping model name → (x, y).")
    data = {}
    for name, pair in panels.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"`panels[{name!r}]` must be a pair (x, y) of 1-D arrays.")
        x = style.as_vector(pair[0], f"panels[{name!r}][0]")
        y = style.as_vector(pair[1], f"panels[{name!r}][1]", x.size, against=f"panels[{name!r}][0]")
        ok = np.isfinite(x) & np.isfinite(y)
        if not ok.any():
            raise ValueError(f"`panels[{name!r}]` has no structure with finite x and y.")
        data[str(name)] = (x[ok], y[ok])
    m = len(data)
    ncols = ncols or min(4, math.ceil(math.sqrt(m)))
    nrows = math.ceil(m / ncols)
    fig = style.new_figure((2.9 * ncols + 0.3, 2.8 * nrows + 0.6))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, (name, (x, y)) in zip(axes.flat, data.items(), strict=False):
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.55", lw=0.9, ls="--", zorder=1)
        ax.scatter(x, y, s=10, color="C0", alpha=0.7, linewidths=0, rasterized=x.size > 5000, zorder=2)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(
            f"{style.shorten(name, 26)}\nmean |y − x| = {np.mean(np.abs(y - x)):.3g} {unit}", fontsize=style.TICK_SIZE
        )
        ax.tick_params(labelsize=style.TICK_SIZE - 1)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    for ax in axes.flat[m:]:
        ax.remove()
    fig.supxlabel(xlabel, fontsize=style.LABEL_SIZE)
    fig.supylabel(ylabel, fontsize=style.LABEL_SIZE)
    if title:
        fig.suptitle(title, fontsize=style.TITLE_SIZE)
    return fig


def energy_error_bars(
    errors: Mapping[str, float],
    *,
    groups: Mapping[str, Any] | None = None,
    group_label: str = "level of theory",
    xlabel: str = "energy-regression MAE",
    title: str | None = None,
) -> Any:
    """Each model's energy-regression error as a horizontal bar, smallest on top, coloured by ``groups`` (seed 000
    Fig. B4: by the DFT level of theory the model was trained on).

    Args:
      errors: model name → error (e.g. meV/atom); NaN errors are listed as "no value".
      groups: model name → group label (e.g. ``"PBE/PBE+U"``, ``"r2SCAN"``); a legend names each group.
      group_label: the legend's title.
      xlabel: the x-axis label with unit.
      title: axes title.

    Returns:
      The Figure (one axes; one bar per model with a finite error).

    Raises:
      ValueError: empty ``errors`` or no finite error.
    """
    if not isinstance(errors, Mapping) or not errors:
        raise ValueError("`errors` must be a non-empty mapping model name → error.")
    vals = {str(k): float(v) for k, v in errors.items()}
    finite = {k: v for k, v in vals.items() if np.isfinite(v)}
    if not finite:
        raise ValueError("`errors` holds no finite value.")
    names = sorted(finite, key=finite.get)
    labels = [str((groups or {}).get(n, "—")) for n in names]
    order = list(dict.fromkeys(labels))
    palette = {g: f"C{i % 10}" for i, g in enumerate(order)}
    fig = style.new_figure((6.2, 0.32 * len(names) + 1.4))
    ax = fig.add_subplot()
    ypos = np.arange(len(names))[::-1]
    ax.barh(ypos, [finite[n] for n in names], color=[palette[g] for g in labels], height=0.7)
    ax.set_yticks(ypos, labels=style.short_labels(names, 28), fontsize=style.tick_fontsize(len(names)))
    ax.set_xlabel(xlabel, fontsize=style.LABEL_SIZE)
    ax.tick_params(axis="x", labelsize=style.TICK_SIZE)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if groups:
        from matplotlib.patches import Patch

        ax.legend(
            handles=[Patch(color=palette[g], label=g) for g in order],
            title=group_label,
            fontsize=style.LEGEND_SIZE,
            title_fontsize=style.LEGEND_SIZE,
            frameon=False,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
        )
    missing = [n for n in vals if n not in finite]
    if missing:
        fig.supxlabel(f"no value: {', '.join(missing)}", fontsize=style.ANNOTATION_SIZE, color="0.4")
    ax.set_title(title or "energy-regression error per model", fontsize=style.TITLE_SIZE)
    return fig
