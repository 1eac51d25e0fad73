"""Feature-reconstruction figures — seed 003 (Chorna, Tisi, Malosso, How, Ceriotti & Chong, "Comparing the latent
features of universal machine-learning interatomic potentials") Figs. 1–3, 5, 7 and 8, with the GFRE/LFRE measures
of Goscinski, Fraux, Imbalzano & Ceriotti (2021) — and the neighbourhood-size curve of CKNNA (seed 000 Fig. A1).

matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxalign.plots import style

__all__ = ["cknna_vs_k", "cumulant_order_heatmap", "reconstruction_heatmap"]


def reconstruction_heatmap(
    errors: Any,
    names: Sequence[str],
    *,
    title: str | None = None,
    cbar_label: str = "GFRE",
    vmin: float | None = 0.0,
    vmax: float | None = None,
    cmap: Any = None,
    annotate: bool | None = None,
    fmt: str = ".2f",
) -> Any:
    """Source → target reconstruction errors as an annotated heatmap (seed 003 Fig. 1–3).

    Cell (i, j) is the error of reconstructing target features ``names[j]`` from source features ``names[i]``
    (GFRE, GFRD or LFRE: 0 = perfect, ≈ 1 = nothing recovered for standardised targets). Reading a row gives what one
    feature space can reconstruct; comparing (i, j) with (j, i) shows which space holds more information. NaN cells
    (pairs not computed) are grey and hatched.

    Args:
      errors: (M, M) errors, rows = source, columns = target.
      names: M feature-space / model names.
      title: axes title.
      cbar_label: colour-bar label (the measure, e.g. ``"GFRE"``, ``"LFRE (k = 20)"``).
      vmin, vmax: colour limits (default 0 to the largest error).
      cmap: colour map (default :data:`~jaxalign.plots.style.ERROR_CMAP`: darker = worse).
      annotate: write each value in its cell (default: when M ≤ 20).
      fmt: number format of the annotations.

    Returns:
      The Figure (heatmap axes, colour-bar axes).
    """
    e = style.as_matrix(errors, "errors")
    names = style.check_names(names, e.shape[0], against="errors")
    labels = style.short_labels(names)
    n = len(names)
    cmap, vmin, vmax = style.color_scale(e, vmin, vmax, cmap or style.ERROR_CMAP)
    fig = style.new_figure(style.heatmap_figsize(n, n, label_chars=max(map(len, labels)) + 4))
    ax = fig.add_subplot()
    style.draw_heatmap(
        ax,
        e,
        labels,
        labels,
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        annotate=n <= 20 if annotate is None else annotate,
        fmt=fmt,
        cbar_label=f"{cbar_label}\n(lower = better reconstruction)",
        xlabel="target",
        ylabel="source (reconstructs from)",
    )
    ax.set_title(title or f"{cbar_label}: source → target", fontsize=style.TITLE_SIZE)
    return fig


def cumulant_order_heatmap(
    errors: Any,
    orders: Sequence[int],
    *,
    title: str | None = None,
    cbar_label: str = "GFRE",
    vmin: float | None = 0.0,
    vmax: float | None = None,
    cmap: Any = None,
    fmt: str = ".2f",
    single: bool = False,
) -> Any:
    """Reconstruction error between cumulant descriptors of different order, φ(i) → φ(j) (seed 003 Fig. 8).

    φ(M) concatenates the first M signed-root cumulants of a structure's atom features, so φ(i) ⊂ φ(j) for i < j:
    the lower-left triangle (higher order reconstructing lower) is near 0, and the upper-right triangle shows how
    much each added cumulant carries that lower orders do not. With ``single``, the rows and columns are single
    orders κ̃_i → κ̃_j, which are not nested: both triangles are measured.

    Args:
      errors: (len(orders), len(orders)) errors, rows = source order i, columns = target order j.
      orders: the cumulant orders, e.g. ``[1, 2, …, 8]``.
      title, cbar_label, vmin, vmax, cmap, fmt: as in :func:`reconstruction_heatmap`.
      single: label the orders κ̃_i (single cumulants) instead of φ(i) (cumulative descriptors).

    Returns:
      The Figure (heatmap axes, colour-bar axes).
    """
    e = style.as_matrix(errors, "errors")
    try:
        orders = [int(o) for o in orders]
    except (TypeError, ValueError):
        raise ValueError(f"`orders` must be a sequence of integers (cumulant orders), got {orders!r}.") from None
    if len(orders) != e.shape[0]:
        raise ValueError(f"`orders` has {len(orders)} entries but `errors` has {e.shape[0]} rows; pass one per row.")
    labels = [f"κ̃{o}" if single else f"φ({o})" for o in orders]
    cmap, vmin, vmax = style.color_scale(e, vmin, vmax, cmap or style.ERROR_CMAP)
    n = len(orders)
    fig = style.new_figure(style.heatmap_figsize(n, n, label_chars=6, cell=0.55 if n <= 12 else None))
    ax = fig.add_subplot()
    style.draw_heatmap(
        ax,
        e,
        labels,
        labels,
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        annotate=n <= 20,
        fmt=fmt,
        cbar_label=f"{cbar_label}\n(lower = better reconstruction)",
        xlabel="target κ̃j" if single else "target φ(j)",
        ylabel=f"source {'κ̃i' if single else 'φ(i)'} (reconstructs from)",
    )
    ax.set_xticks(ax.get_xticks(), labels=labels, rotation=0, ha="center")
    ax.set_title(title or f"{cbar_label} between cumulant orders φ(i) → φ(j)", fontsize=style.TITLE_SIZE)
    return fig


def _pair_label(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, tuple) and len(key) == 2:
        return f"{key[0]} – {key[1]}"
    raise ValueError(f"`values` keys must be model pairs (a, b) or strings, got {key!r}.")


def cknna_vs_k(
    ks: Any,
    values: Mapping[Any, Any],
    *,
    title: str | None = None,
    xlabel: str = "k (nearest neighbours)",
    ylabel: str = "CKNNA",
    asymptotes: Mapping[Any, float] | None = None,
    asymptote_label: str = "unbiased CKA (k = N − 1)",
    colors: Mapping[Any, Any] | None = None,
) -> Any:
    """CKNNA (or any alignment) as a function of the neighbourhood size k, one line per model pair (seed 000 Fig. A1).

    The x axis is logarithmic. Seed 000 reports that CKNNA rises with k; at k = N − 1 it equals unbiased CKA, which
    ``asymptotes`` can draw as a dashed line per pair in the same colour.

    Args:
      ks: increasing neighbourhood sizes (≥ 1).
      values: pair → alignment at each k (same length as ``ks``); a pair is an ``(a, b)`` tuple (labelled
        ``"a – b"``) or a string. NaN entries leave gaps.
      title: axes title.
      xlabel, ylabel: axis labels.
      asymptotes: pair → value at k = N − 1 (e.g. unbiased CKA), drawn dashed.
      asymptote_label: legend text for the dashed lines.
      colors: pair → colour overrides.

    Returns:
      The Figure (one axes); one solid line per pair in ``ax.lines`` (plus one dashed line per asymptote).
    """
    from matplotlib import colormaps
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    k = style.as_vector(ks, "ks")
    if k.size == 0 or not np.isfinite(k).all() or (k < 1).any():
        raise ValueError(f"`ks` must be finite neighbourhood sizes ≥ 1, got {k}.")
    if not isinstance(values, Mapping) or not values:
        raise ValueError("`values` must be a non-empty mapping pair → array of values (one per k).")
    curves = {key: style.as_vector(v, f"values[{key!r}]", k.size, against="ks") for key, v in values.items()}
    if asymptotes is not None:
        unknown = [p for p in asymptotes if p not in curves]
        if unknown:
            raise ValueError(f"`asymptotes` has pairs {unknown} that are not in `values`.")
    cmap = colormaps["tab10" if len(curves) <= 10 else "tab20"]
    fig = style.new_figure((6.8 if len(curves) > 6 else 6.0, 4.4))
    ax = fig.add_subplot()
    order = np.argsort(k, kind="stable")
    for i, (key, v) in enumerate(curves.items()):
        color = (colors or {}).get(key, cmap(i % cmap.N))
        ax.plot(
            k[order],
            v[order],
            marker="o",
            markersize=3.5,
            lw=1.6,
            color=color,
            label=style.shorten(_pair_label(key), 36),
        )
        if asymptotes is not None and key in asymptotes:  # a dashed stub ending at the last k (k = N − 1), not past it
            kmax = float(k.max())
            ax.hlines(float(asymptotes[key]), kmax / 3, kmax, color=color, ls="--", lw=1.2, alpha=0.9)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel(xlabel, fontsize=style.LABEL_SIZE)
    ax.set_ylabel(ylabel, fontsize=style.LABEL_SIZE)
    ax.tick_params(labelsize=style.TICK_SIZE)
    ax.grid(True, which="major", color="0.9", lw=0.8)
    ax.grid(True, which="minor", axis="x", color="0.96", lw=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title(title or f"{ylabel} vs neighbourhood size", fontsize=style.TITLE_SIZE)
    handles, _ = ax.get_legend_handles_labels()
    if asymptotes:
        handles.append(Line2D([], [], color="0.4", ls="--", lw=1.0, label=asymptote_label))
    outside = len(handles) > 6
    ax.legend(
        handles=handles,
        fontsize=style.LEGEND_SIZE,
        frameon=not outside,
        framealpha=0.9,
        edgecolor="none",
        loc="upper left" if outside else "best",
        bbox_to_anchor=(1.01, 1.0) if outside else None,
    )
    return fig
