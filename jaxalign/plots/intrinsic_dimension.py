"""Violins of per-point intrinsic-dimension estimates, one per model (seed 000 Fig. 1E, C7).

matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxalign.plots import style

__all__ = ["intrinsic_dimension_violins"]


def intrinsic_dimension_violins(
    per_model_values: Mapping[str, Any],
    *,
    families: Mapping[str, Any] | Sequence[Any] | None = None,
    global_values: Mapping[str, float] | None = None,
    global_label: str = "global estimate",
    title: str | None = None,
    ylabel: str = "intrinsic dimension (per-point estimate)",
    logy: bool = False,
    colors: Mapping[str, Any] | None = None,
) -> Any:
    """One violin per model of its per-point intrinsic-dimension estimates (seed 000 Fig. 1E, C7).

    The caller passes the per-point values (e.g. local TwoNN or MLE estimates, one per structure); each violin shows
    their density, with the interquartile range as a thick bar and the median as a white dot. The seed's finding is
    that a random baseline sits far above the trained models. Non-finite values (duplicates, degenerate
    neighbourhoods) are dropped and counted in the tick label; a model with fewer than two finite values, or all
    equal, is drawn as a single marker.

    Args:
      per_model_values: model name → 1-D array of per-point estimates, in plotting order.
      families: colours violins by family (mapping name → family, or a sequence in the mapping's order).
      global_values: model name → a global estimate (e.g. TwoNN on the whole set), drawn as a black diamond.
      global_label: the diamonds' legend entry, naming the estimator (e.g. ``"TwoNN (all structures)"``).
      title: axes title.
      ylabel: y-axis label.
      logy: log-scale y (useful when a baseline is orders of magnitude above the models).
      colors: family → colour overrides.

    Returns:
      The Figure (one axes); ``ax.collections`` holds one violin body per model with ≥ 2 distinct finite values.
    """
    from matplotlib.lines import Line2D

    if not isinstance(per_model_values, Mapping) or not per_model_values:
        raise ValueError("`per_model_values` must be a non-empty mapping model name → 1-D array of estimates.")
    names = [str(k) for k in per_model_values]
    values = [style.as_vector(v, f"per_model_values[{k!r}]") for k, v in per_model_values.items()]
    fams = style.resolve_families(names, families)
    palette = style.family_colors(fams, colors) if fams is not None else {}
    body_colors = [palette[f] for f in fams] if fams is not None else ["C0"] * len(names)
    if global_values is not None:
        unknown = [k for k in global_values if str(k) not in names]
        if unknown:
            raise ValueError(f"`global_values` has models {unknown} that are not in `per_model_values`.")

    n = len(names)
    labels = style.short_labels(names, 24)
    width = float(np.clip(0.55 * n + 1.8, 4.5, 16.0))
    fig = style.new_figure((width, 4.6))
    ax = fig.add_subplot()
    tick_labels = []
    for pos, (vals, color, label) in enumerate(zip(values, body_colors, labels, strict=True)):
        finite = vals[np.isfinite(vals)]
        if logy:
            finite = finite[finite > 0]
        dropped = vals.size - finite.size
        tick_labels.append(f"{label} ({dropped} n/a)" if dropped else label)
        if finite.size >= 2 and np.ptp(finite) > 0:
            data = np.log10(finite) if logy else finite
            parts = ax.violinplot([data], positions=[pos], widths=0.8, showextrema=False)
            for body in parts["bodies"]:
                body.set_facecolor(color)
                body.set_edgecolor(style.darker(color))
                body.set_alpha(0.75)
            q1, med, q3 = np.percentile(data, [25, 50, 75])
            ax.vlines(pos, q1, q3, color="0.15", lw=4, zorder=3)
            ax.scatter([pos], [med], s=18, color="white", edgecolor="0.15", lw=0.6, zorder=4)
        elif finite.size:
            ax.scatter([pos], [np.log10(finite[0]) if logy else finite[0]], s=30, color=color, zorder=3)
        else:
            ax.text(
                pos,
                0.5,
                "no finite\nvalue",
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="center",
                fontsize=style.ANNOTATION_SIZE,
                color="0.4",
            )
        if global_values is not None and names[pos] in global_values:
            g = float(global_values[names[pos]])
            if np.isfinite(g) and (g > 0 or not logy):
                ax.scatter(
                    [pos],
                    [np.log10(g) if logy else g],
                    marker="D",
                    s=34,
                    facecolors="none",
                    edgecolors="black",
                    linewidths=1.2,
                    zorder=5,
                )

    ax.set_xticks(
        np.arange(n),
        labels=tick_labels,
        rotation=40,
        ha="right",
        rotation_mode="anchor",
        fontsize=style.tick_fontsize(n),
    )
    ax.set_xlim(-0.6, n - 0.4)
    if logy:  # violins are drawn in log10 space (a KDE of the logs); label ticks with the values at 1, 2, 5 × 10^d
        lo, hi = ax.get_ylim()
        ticks = [
            t
            for d in range(int(np.floor(lo)) - 1, int(np.ceil(hi)) + 1)
            for t in (d, d + np.log10(2), d + np.log10(5))
            if lo <= t <= hi
        ]
        ax.set_yticks(ticks, labels=[f"{10**t:.3g}" for t in ticks])
        ax.set_ylim(lo, hi)
        ylabel = f"{ylabel} (log scale)"
    ax.set_ylabel(ylabel, fontsize=style.LABEL_SIZE)
    ax.tick_params(axis="y", labelsize=style.TICK_SIZE)
    ax.tick_params(axis="x", length=0)
    ax.grid(True, axis="y", color="0.92", lw=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title(title or "intrinsic dimension per model", fontsize=style.TITLE_SIZE)
    handles = [Line2D([], [], ls="", marker="s", markersize=9, color=c, label=f) for f, c in palette.items()]
    handles.append(
        Line2D(
            [], [], ls="", marker="o", markersize=5, color="white", markeredgecolor="0.15", label="median (bar: IQR)"
        )
    )
    if global_values is not None:
        handles.append(
            Line2D(
                [],
                [],
                ls="",
                marker="D",
                markersize=5,
                markerfacecolor="none",
                markeredgecolor="black",
                markeredgewidth=1.2,
                label=global_label,
            )
        )
    ax.legend(handles=handles, fontsize=style.LEGEND_SIZE, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig
