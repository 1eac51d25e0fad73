"""2-D maps of the structures as one model sees them (PCovR or UMAP coordinates), optionally coloured by energy
error with out-of-distribution structures marked (seed 000 Fig. 2A, 2D; seed 003 PCovR maps).

matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxalign.plots import style

__all__ = ["map_grid", "structure_map"]

OOD_COLOR = "#e8000b"


def _coords(coords: Any, arg: str) -> np.ndarray:
    c = style.as_matrix(coords, arg, square=False)
    if c.shape[1] != 2:
        raise ValueError(f"`{arg}` must have shape (N, 2) (two map coordinates per structure), got {c.shape}.")
    if not np.isfinite(c).all():
        raise ValueError(f"`{arg}` contains NaN; every structure needs finite map coordinates.")
    return c


def _mask(mask: Any, n: int, arg: str) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.shape != (n,) or m.dtype.kind not in "bi":
        raise ValueError(f"`{arg}` must be a boolean array with one entry per structure ({n}), got shape {m.shape}.")
    return m.astype(bool)


def _norm(values: list[np.ndarray], *, vmin: float | None, vmax: float | None, cmap: Any, log_color: bool) -> tuple:
    """Shared colour map and norm over all coloured panels (log, diverging around 0, or linear)."""
    from matplotlib.colors import LogNorm, Normalize

    allv = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.array([])
    if log_color:
        pos = allv[allv > 0]
        if pos.size == 0:
            raise ValueError("`log_color=True` needs positive `color` values (e.g. absolute errors).")
        lo = vmin if vmin is not None else float(pos.min())
        hi = vmax if vmax is not None else float(pos.max())
        return cmap or style.MAP_CMAP, LogNorm(vmin=lo, vmax=max(hi, lo * 1.0001))
    cmap, lo, hi = style.color_scale(allv, vmin, vmax, cmap or (None if (allv < 0).any() else style.MAP_CMAP))
    return cmap, Normalize(vmin=lo, vmax=hi)


def _colorbar(
    fig: Any, mappable: Any, ax: Any, label: str | None, values: list[np.ndarray], *, log_color: bool, **kwargs: Any
) -> Any:
    """The maps' colour bar; a log scale of whole numbers (e.g. atoms per structure) is labelled 2, 5, 10, 20 …
    rather than 2×10⁰."""
    cbar = fig.colorbar(mappable, ax=ax, **kwargs)
    cbar.set_label(label or "value", fontsize=style.LABEL_SIZE)
    finite = [v[np.isfinite(v)] for v in values]
    if log_color and all(np.array_equal(v, np.round(v)) for v in finite):
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        cbar.ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        cbar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        cbar.ax.yaxis.set_minor_formatter(NullFormatter())
    cbar.ax.tick_params(labelsize=style.TICK_SIZE)
    cbar.outline.set_visible(False)
    return cbar


def _draw_map(
    ax: Any,
    xy: np.ndarray,
    color: np.ndarray | None,
    ood: np.ndarray | None,
    *,
    cmap: Any,
    norm: Any,
    size: float,
    point_colors: list[Any] | None = None,
) -> Any:
    """Scatter one map on ``ax``; high colour values are drawn last (on top); ``point_colors`` (one colour per
    point, e.g. by dataset) replaces the plain colour. Returns the colour-mapped artist."""
    from matplotlib.colors import LogNorm

    mappable = None
    if color is None:
        plain = point_colors or ("#4c72b0" if norm is None else "0.6")  # grey beside coloured panels
        ax.scatter(xy[:, 0], xy[:, 1], s=size, color=plain, alpha=0.7, linewidths=0, rasterized=len(xy) > 5000)
    else:
        bad = ~np.isfinite(color)
        if isinstance(norm, LogNorm):
            bad |= color <= 0
        if bad.any():
            ax.scatter(xy[bad, 0], xy[bad, 1], s=size, color=style.MISSING_COLOR, linewidths=0)
        good = np.flatnonzero(~bad)
        order = good[np.argsort(np.abs(color[good]), kind="stable")]
        mappable = ax.scatter(
            xy[order, 0],
            xy[order, 1],
            c=color[order],
            s=size,
            cmap=cmap,
            norm=norm,
            alpha=0.9,
            linewidths=0,
            rasterized=len(xy) > 5000,
        )
    if ood is not None and ood.any():
        ax.scatter(
            xy[ood, 0],
            xy[ood, 1],
            s=max(size * 3.5, 28),
            facecolors="none",
            edgecolors=OOD_COLOR,
            linewidths=1.1,
            zorder=4,
        )
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("0.75")
    return mappable


def _point_size(n: int) -> float:
    return float(np.clip(6000.0 / max(n, 1), 2.0, 28.0))


def _ood_legend(ax: Any, n_ood: int) -> None:
    from matplotlib.lines import Line2D

    handle = Line2D(
        [],
        [],
        ls="",
        marker="o",
        markersize=7,
        markerfacecolor="none",
        markeredgecolor=OOD_COLOR,
        markeredgewidth=1.1,
        label=f"out of distribution ({n_ood})",
    )
    ax.legend(handles=[handle], fontsize=style.LEGEND_SIZE, frameon=True, framealpha=0.85, edgecolor="none", loc="best")


def structure_map(
    coords2d: Any,
    *,
    color: Any = None,
    color_label: str | None = None,
    title: str | None = None,
    ood_mask: Any = None,
    cmap: Any = None,
    log_color: bool = False,
    vmin: float | None = None,
    vmax: float | None = None,
    xlabel: str = "component 1",
    ylabel: str = "component 2",
) -> Any:
    """A 2-D map of the structures (seed 000 Fig. 2A, 2D): one point per structure at its PCovR/UMAP coordinates.

    With ``color`` (e.g. each structure's absolute energy error for this model) points are coloured on a sequential
    scale (diverging around 0 if values are negative, e.g. signed errors), highest values drawn on top, and a colour
    bar labelled ``color_label``; NaN values are grey. ``ood_mask`` circles the out-of-distribution structures in red
    and counts them in the legend. Map axes carry no ticks: only relative positions are meaningful.

    Args:
      coords2d: (N, 2) coordinates.
      color: optional (N,) value per structure.
      color_label: colour-bar label with unit, e.g. ``"|energy error| (meV/atom)"``.
      title: axes title (e.g. the model name).
      ood_mask: optional (N,) boolean, True for out-of-distribution structures.
      cmap: colour map (default :data:`~jaxalign.plots.style.MAP_CMAP`).
      log_color: logarithmic colour scale (errors spanning decades); non-positive values are grey.
      vmin, vmax: colour limits.
      xlabel, ylabel: axis names, e.g. ``"PCov 1"``, ``"UMAP 1"``.

    Returns:
      The Figure (map axes, plus a colour-bar axes when ``color`` is given).
    """
    xy = _coords(coords2d, "coords2d")
    n = len(xy)
    c = style.as_vector(color, "color", n, against="coords2d") if color is not None else None
    ood = _mask(ood_mask, n, "ood_mask")
    fig = style.new_figure((5.6 if c is not None else 4.8, 4.6))
    ax = fig.add_subplot()
    cmap_, norm = _norm([c], vmin=vmin, vmax=vmax, cmap=cmap, log_color=log_color) if c is not None else (None, None)
    mappable = _draw_map(ax, xy, c, ood, cmap=cmap_, norm=norm, size=_point_size(n))
    if mappable is not None:
        _colorbar(fig, mappable, ax, color_label, [c], log_color=log_color, shrink=0.85, pad=0.02)
    if ood is not None and ood.any():
        _ood_legend(ax, int(ood.sum()))
    ax.set_xlabel(xlabel, fontsize=style.LABEL_SIZE)
    ax.set_ylabel(ylabel, fontsize=style.LABEL_SIZE)
    ax.set_title(title or f"structure map ({n} structures)", fontsize=style.TITLE_SIZE)
    return fig


def _per_model(value: Any, names: list[str], n_of: dict[str, int], arg: str, convert: Any) -> dict[str, Any]:
    """A per-model mapping from a mapping (validated keys) or one array shared by every model."""
    if value is None:
        return dict.fromkeys(names)
    if isinstance(value, Mapping):
        unknown = [k for k in value if str(k) not in n_of]
        if unknown:
            raise ValueError(f"`{arg}` has models {unknown} that are not in `coords`.")
        return {m: (convert(value[m], m) if m in value else None) for m in names}
    return {m: convert(value, m) for m in names}


def map_grid(
    coords: Mapping[str, Any],
    *,
    color: Any = None,
    color_label: str | None = None,
    ood_mask: Any = None,
    ncols: int | None = None,
    title: str | None = None,
    cmap: Any = None,
    log_color: bool = False,
    vmin: float | None = None,
    vmax: float | None = None,
    xlabel: str = "component 1",
    ylabel: str = "component 2",
    groups: Any = None,
    group_label: str = "group",
    background: Mapping[str, Any] | None = None,
    background_label: str = "background",
) -> Any:
    """Several models' structure maps in one figure (seed 000 Fig. 2A, C5, 2D), one panel per model.

    ``color`` and ``ood_mask`` are either one array shared by all panels (e.g. a property of the structures) or a
    mapping model → array (e.g. each model's own energy error; models missing from the mapping are uncoloured).
    All coloured panels share one colour scale and one colour bar, so colours compare across models. ``groups``
    instead colours the points by category (e.g. each structure's dataset in a joint map of several datasets), one
    colour per label with a legend titled ``group_label``.

    Args:
      coords: model name → (N_model, 2) coordinates, in panel order.
      color, color_label, ood_mask, cmap, log_color, vmin, vmax, xlabel, ylabel: as in :func:`structure_map`.
      groups: one label per structure (shared by every panel, so every panel has the same N); not with ``color``.
      group_label: the legend title for ``groups``.
      background: model name → (N_bg, 2) points drawn in light grey beneath that panel's points, e.g. the structures
        a projection was fitted on, with the mapped ones projected into it (seed 003 Fig. S8).
      background_label: the legend entry of the grey points.
      ncols: panels per row (default: up to 4, near-square grid).
      title: figure title.

    Returns:
      The Figure: one axes per model (unused grid cells are removed), plus the shared colour bar's axes.
    """
    if not isinstance(coords, Mapping) or not coords:
        raise ValueError("`coords` must be a non-empty mapping model name → (N, 2) coordinates.")
    names = [str(k) for k in coords]
    xys = {m: _coords(v, f"coords[{m!r}]") for m, v in zip(names, coords.values(), strict=True)}
    n_of = {m: len(xy) for m, xy in xys.items()}
    colors = _per_model(
        color, names, n_of, "color", lambda v, m: style.as_vector(v, f"color[{m!r}]", n_of[m], against=f"coords[{m!r}]")
    )
    masks = _per_model(ood_mask, names, n_of, "ood_mask", lambda v, m: _mask(v, n_of[m], f"ood_mask[{m!r}]"))
    point_colors, group_handles = _group_colors(groups, n_of, color)
    unknown = sorted(set(background or {}) - set(names))
    if unknown:
        raise ValueError(f"`background` names models that have no panel: {unknown}; use keys of `coords`.")
    behind = {m: _coords(v, f"background[{m!r}]") for m, v in (background or {}).items()}
    coloured = [c for c in colors.values() if c is not None]
    cmap_, norm = _norm(coloured, vmin=vmin, vmax=vmax, cmap=cmap, log_color=log_color) if coloured else (None, None)

    m = len(names)
    ncols = ncols or min(4, math.ceil(math.sqrt(m)))
    if ncols < 1:
        raise ValueError(f"`ncols` must be ≥ 1, got {ncols}.")
    nrows = math.ceil(m / ncols)
    fig = style.new_figure((3.0 * ncols + (1.0 if coloured else 0.2), 3.0 * nrows + 0.5))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    mappable = None
    counts = {name: int(mk.sum()) for name, mk in masks.items() if mk is not None}
    shared = len(counts) == m and len(set(counts.values())) == 1  # one count for every panel: said once, in the legend
    for ax, name in zip(axes.flat, names, strict=False):
        xy = xys[name]
        size = _point_size(len(xy)) * 0.7
        if name in behind:
            grey = behind[name]
            ax.scatter(grey[:, 0], grey[:, 1], s=_point_size(len(grey)) * 0.6, color="0.82", linewidths=0, zorder=0)
        artist = _draw_map(
            ax, xy, colors[name], masks[name], cmap=cmap_, norm=norm, size=size, point_colors=point_colors
        )
        mappable = mappable or artist
        label = style.shorten(name, 30)
        if name in counts and not shared:
            label = f"{label} ({counts[name]} OOD)"
        if colors[name] is None and coloured:
            label = f"{label} (no value)"
        ax.set_title(label, fontsize=style.LABEL_SIZE)
    for ax in axes.flat[m:]:
        ax.remove()
    used = list(axes.flat[:m])
    for col in range(min(ncols, m)):
        used[max(i for i in range(col, m, ncols))].set_xlabel(xlabel, fontsize=style.TICK_SIZE)
    for row in range(nrows):
        used[row * ncols].set_ylabel(ylabel, fontsize=style.TICK_SIZE)
    if mappable is not None:
        _colorbar(fig, mappable, used, color_label, coloured, log_color=log_color, shrink=0.8, fraction=0.04, pad=0.02)
    if any(mk is not None and mk.any() for mk in masks.values()):
        from matplotlib.lines import Line2D

        handle = Line2D(
            [],
            [],
            ls="",
            marker="o",
            markersize=7,
            markerfacecolor="none",
            markeredgecolor=OOD_COLOR,
            markeredgewidth=1.1,
            label=f"out of distribution ({next(iter(counts.values()))} in every panel)"
            if shared
            else "out of distribution",
        )
        fig.legend(handles=[handle], loc="outside lower center", fontsize=style.LEGEND_SIZE, frameon=False)
    if behind:
        from matplotlib.lines import Line2D

        grey_handle = Line2D([], [], ls="", marker="o", markersize=5, color="0.82", label=background_label)
        fig.legend(handles=[grey_handle], loc="outside lower center", fontsize=style.LEGEND_SIZE, frameon=False)
    if group_handles:
        fig.legend(
            handles=group_handles,
            title=group_label,
            loc="outside right center",
            fontsize=style.LEGEND_SIZE,
            title_fontsize=style.LEGEND_SIZE,
            frameon=False,
        )
    if title:
        fig.suptitle(title, fontsize=style.TITLE_SIZE)
    return fig


def _group_colors(groups: Any, n_of: Mapping[str, int], color: Any) -> tuple[list[Any] | None, list[Any]]:
    """One colour per point from its category label, and the legend handles (label and count per category)."""
    if groups is None:
        return None, []
    if color is not None:
        raise ValueError(
            "pass either `color` (a value per structure) or `groups` (a category per structure), not both."
        )
    labels = np.asarray(groups).astype(str)
    sizes = set(n_of.values())
    if labels.ndim != 1 or sizes != {labels.size}:
        raise ValueError(f"`groups` must hold one label per structure, the same N for every panel ({sorted(sizes)}), "
                         f"got shape {labels.shape}.")  # fmt: skip
    from matplotlib.lines import Line2D

    order = list(dict.fromkeys(labels.tolist()))
    palette = {g: f"C{i % 10}" for i, g in enumerate(order)}
    handles = [
        Line2D([], [], ls="", marker="o", markersize=6, color=palette[g], label=f"{g} ({int((labels == g).sum())})")
        for g in order
    ]
    return [palette[g] for g in labels], handles
