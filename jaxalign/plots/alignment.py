"""Figures of model × model alignment: heatmaps (full and family-condensed), alignment vs energy error, one metric
against another, and the information-imbalance plane.

Figure numbers refer to the seed papers: seed 000 (Edamadaka et al., "Universally converging representations of
matter across scientific foundation models", 2025) Fig. 1A–D, 2B, 3, C6, C9. Every function takes numpy-like
arrays and labels and returns a :class:`matplotlib.figure.Figure`; matplotlib is imported only when one is drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxalign.plots import style

__all__ = [
    "alignment_heatmap",
    "alignment_vs_energy_error",
    "family_condensed",
    "family_heatmap",
    "information_imbalance_plane",
    "metric_scatter",
]

Families = Mapping[str, Any] | Sequence[Any] | None


def _family_order(fams: list[str]) -> np.ndarray:
    """Permutation grouping equal families together, families in order of first appearance (stable within)."""
    rank = {f: r for r, f in enumerate(dict.fromkeys(fams))}
    return np.argsort([rank[f] for f in fams], kind="stable")


def _family_legend(fig: Any, palette: Mapping[str, Any], *, title: str = "family") -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=c, edgecolor="none", label=f) for f, c in palette.items()]
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=min(len(handles), 8),
        frameon=False,
        fontsize=style.LEGEND_SIZE,
        title=title,
        title_fontsize=style.LEGEND_SIZE,
        handlelength=1.2,
        columnspacing=1.2,
    )


def alignment_heatmap(
    matrix: Any,
    names: Sequence[str],
    *,
    families: Families = None,
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: Any = None,
    cbar_label: str | None = None,
    annotate: bool | None = None,
    fmt: str = ".2f",
    group_by_family: bool = True,
    colors: Mapping[str, Any] | None = None,
) -> Any:
    """Model × model alignment heatmap (seed 000 Fig. 1A).

    Rows and columns are the models in ``names``; cell (i, j) is ``matrix[i, j]`` (asymmetric matrices such as
    information imbalance read row → column). With ``families`` the models are grouped by family (families in
    order of first appearance, unless ``group_by_family=False``), white lines separate the family blocks, colour
    strips beside the row and column labels mark the family, and a legend names the colours. NaN cells (pairs
    not computed) are grey and hatched; ±inf is rejected.

    Args:
      matrix: (M, M) values.
      names: M model names (long names are shortened in the middle, e.g. ``sentence-tran…MiniLM-L6-v2``).
      families: family of each model: a mapping name → family or a sequence aligned with ``names``.
      title: axes title.
      vmin, vmax: colour limits (default: the data range; symmetric around 0 if any value is negative).
      cmap: colour map (default: sequential :data:`~jaxalign.plots.style.SEQUENTIAL_CMAP`, diverging
        :data:`~jaxalign.plots.style.DIVERGING_CMAP` when values are negative).
      cbar_label: colour-bar label, e.g. ``"CKNNA (k = 25)"`` (default: ``title`` or ``"alignment"``).
      annotate: write each value in its cell (default: when M ≤ 16).
      fmt: number format of the annotations.
      group_by_family: reorder models by family when ``families`` is given.
      colors: family → colour overrides.

    Returns:
      The Figure: its first axes holds the heatmap, the second the colour bar.
    """
    from matplotlib.patches import Rectangle

    m = style.as_matrix(matrix)
    names = style.check_names(names, m.shape[0])
    fams = style.resolve_families(names, families)
    order = _family_order(fams) if fams is not None and group_by_family else np.arange(len(names))
    m = m[np.ix_(order, order)]
    names = [names[i] for i in order]
    labels = style.short_labels(names)
    n = len(names)
    cmap, vmin, vmax = style.color_scale(m, vmin, vmax, cmap)
    annotate = n <= 16 if annotate is None else annotate

    fig = style.new_figure(style.heatmap_figsize(n, n, label_chars=max(map(len, labels)) + 2))
    ax = fig.add_subplot()
    style.draw_heatmap(
        ax,
        m,
        labels,
        labels,
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        annotate=annotate,
        fmt=fmt,
        cbar_label=cbar_label or title or "alignment",
    )
    if fams is not None:
        fams = [fams[i] for i in order]
        palette = style.family_colors(fams, colors)
        width, gap = 0.45, 0.12
        # Block boundaries (only meaningful when grouped; otherwise every family change draws its own strip piece).
        starts = [0] + [i for i in range(1, n) if fams[i] != fams[i - 1]]
        ends = [*starts[1:], n]
        for s, e in zip(starts, ends, strict=True):
            color = palette[fams[s]]
            ax.add_patch(
                Rectangle(
                    (-0.5 - gap - width, s - 0.5 + 0.04), width, e - s - 0.08, color=color, clip_on=False, zorder=3
                )
            )
            ax.add_patch(
                Rectangle((s - 0.5 + 0.04, n - 0.5 + gap), e - s - 0.08, width, color=color, clip_on=False, zorder=3)
            )
            if s > 0:
                ax.plot([-0.5, n - 0.5], [s - 0.5, s - 0.5], color="white", lw=2.2, solid_capstyle="butt")
                ax.plot([s - 0.5, s - 0.5], [-0.5, n - 0.5], color="white", lw=2.2, solid_capstyle="butt")
        ax.set_xlim(-0.5 - gap - width, n - 0.5)
        ax.set_ylim(n - 0.5 + gap + width, -0.5)
        _family_legend(fig, palette)
    if title:
        ax.set_title(title, fontsize=style.TITLE_SIZE)
    return fig


def family_condensed(
    matrix: Any, names: Sequence[str], families: Families, *, include_self: bool = False
) -> tuple[np.ndarray, list[str]]:
    """Family × family condensation of a model × model matrix (seed 000 Fig. 1C, C6).

    ``C[a, b] = mean{ M[i, j] : family(i) = a, family(j) = b, i ≠ j }`` over the finite entries: the diagonal of
    ``M`` (a model with itself) never enters, so ``C[a, a]`` is the mean within-family alignment between *distinct*
    members. A family with a single model has no such pair and gets NaN on the diagonal; a block with no finite
    entry is NaN too. Families are in order of first appearance. ``include_self=True`` averages the whole block,
    diagonal included, as seed 000 does (its Methods: "averaging several rows and columns"), so a single-model family
    shows its self-alignment.

    Returns:
      ``(C, family_names)`` with ``C`` of shape (F, F).
    """
    m = style.as_matrix(matrix)
    names = style.check_names(names, m.shape[0])
    if families is None:
        raise ValueError("`families` is required: pass a mapping name → family or one family per name.")
    fams = style.resolve_families(names, families)
    unique = list(dict.fromkeys(fams))
    member = np.array([[f == u for f in fams] for u in unique])  # (F, M)
    off_diag = np.ones((len(names),) * 2, bool) if include_self else ~np.eye(len(names), dtype=bool)
    out = np.full((len(unique), len(unique)), np.nan)
    for a in range(len(unique)):
        for b in range(len(unique)):
            block = m[np.ix_(member[a], member[b])][off_diag[np.ix_(member[a], member[b])]]
            block = block[np.isfinite(block)]
            if block.size:
                out[a, b] = block.mean()
    return out, unique


def family_heatmap(
    matrix: Any,
    names: Sequence[str],
    families: Families,
    *,
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: Any = None,
    cbar_label: str | None = None,
    fmt: str = ".2f",
    include_self: bool = False,
) -> Any:
    """Family-condensed alignment heatmap (seed 000 Fig. 1C, C6): :func:`family_condensed` drawn with its values
    (``include_self`` as there).

    Diagonal cells (mean alignment between distinct members of one family) are outlined; single-member families
    have no within-family pair and show a hatched "n/a" cell. Tick labels carry the number of models per family.

    Returns:
      The Figure (heatmap axes, colour-bar axes).
    """
    from matplotlib.patches import Rectangle

    cond, unique = family_condensed(matrix, names, families, include_self=include_self)
    fams = style.resolve_families(style.check_names(names, np.shape(matrix)[0]), families)
    counts = {f: fams.count(f) for f in unique}
    labels = [f"{f} ({counts[f]})" for f in unique]
    cmap, vmin, vmax = style.color_scale(cond, vmin, vmax, cmap)
    f = len(unique)
    fig = style.new_figure(
        style.heatmap_figsize(f, f, label_chars=max(map(len, labels)), cell=0.6 if f <= 10 else None)
    )
    ax = fig.add_subplot()
    label = cbar_label if cbar_label is not None else f"mean {title or 'alignment'}"
    style.draw_heatmap(
        ax,
        cond,
        labels,
        labels,
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        annotate=True,
        fmt=fmt,
        cbar_label=label,
        xlabel="family (models)",
        ylabel="family (models)",
    )
    for i in range(f):
        ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="0.15", lw=1.2))
    ax.set_title(title or "family-condensed alignment", fontsize=style.TITLE_SIZE)
    return fig


def _scatter_by_family(ax: Any, x: np.ndarray, y: np.ndarray, fams: list[str] | None, palette: dict, **kw: Any) -> None:
    """Scatter coloured by family; a per-point array ``s`` (marker areas) is split with the points."""
    sizes = kw.pop("s", None)
    if fams is None:
        ax.scatter(x, y, color="C0", s=sizes, **kw)
        return
    for fam, color in palette.items():
        sel = np.array([f == fam for f in fams], dtype=bool)
        if sel.any():
            area = sizes[sel] if isinstance(sizes, np.ndarray) else sizes
            ax.scatter(x[sel], y[sel], color=color, label=fam, s=area, **kw)


def _areas(n_params: np.ndarray, *, low: float = 25.0, high: float = 260.0, missing: float = 46.0) -> np.ndarray:
    """Marker areas growing with log10 of the parameter count (seed 000 Fig. 1B, 3: point size by model size)."""
    logs = np.log10(np.where(n_params > 0, n_params, np.nan))
    finite = logs[np.isfinite(logs)]
    if finite.size == 0:
        return np.full(n_params.shape, missing)
    span = max(float(finite.max() - finite.min()), 1e-9)
    return np.where(np.isfinite(logs), low + (high - low) * (logs - finite.min()) / span, missing)


def _rho_text(a: np.ndarray, b: np.ndarray) -> str:
    rho = style.spearman(a, b)
    n = int((np.isfinite(a) & np.isfinite(b)).sum())
    return f"Spearman ρ = {rho:.2f} (n = {n})" if np.isfinite(rho) else f"Spearman ρ undefined (n = {n})"


def alignment_vs_energy_error(
    alignment: Any,
    mae: Any,
    names: Sequence[str],
    *,
    families: Families = None,
    reference_name: str | None = None,
    xlabel: str | None = None,
    ylabel: str = "energy MAE (meV/atom)",
    title: str | None = None,
    logy: bool | None = None,
    labels: bool = True,
    colors: Mapping[str, Any] | None = None,
    n_params: Any = None,
) -> Any:
    """Alignment with a reference model against each model's energy error (seed 000 Fig. 1B, 3).

    One point per model: x = its alignment with ``reference_name`` (e.g. CKNNA with the most accurate model),
    y = its energy mean absolute error. The paper's finding is that better models sit closer to the reference
    (points fall from left to right). The reference itself, when in ``names``, is a star and does not enter the
    Spearman ρ printed in the title. Models whose alignment or error is NaN (no energy head) are left out and listed
    under the plot.

    Args:
      alignment, mae: one value per model.
      names: model names (point labels).
      families: colours points by family (mapping or sequence aligned with ``names``).
      reference_name: the model alignment is measured against.
      xlabel: default ``"alignment with <reference_name>"``.
      ylabel: axis label with unit.
      logy: log-scale errors (default: when the positive errors span more than a factor of 30).
      labels: label each point with its (shortened) name, placed so labels do not overlap.
      colors: family → colour overrides.
      n_params: optional parameter count per model: marker area grows with its logarithm, as in seed 000 (NaN or
        0: the default size).

    Returns:
      The Figure (one axes).
    """
    from matplotlib.lines import Line2D

    x = style.as_vector(alignment, "alignment")
    areas = None if n_params is None else _areas(style.as_vector(n_params, "n_params", len(x), against="alignment"))
    names = style.check_names(names, len(x), against="alignment")
    y = style.as_vector(mae, "mae", len(x), against="alignment")
    if np.any(y[np.isfinite(y)] < 0):
        raise ValueError("`mae` has negative entries; pass mean absolute errors (≥ 0), NaN for models without one.")
    fams = style.resolve_families(names, families)
    palette = style.family_colors(fams, colors) if fams is not None else {}
    shown = np.isfinite(x) & np.isfinite(y)
    is_ref = np.array([n == reference_name for n in names], dtype=bool)
    if not shown.any():
        raise ValueError("no model has both a finite `alignment` and a finite `mae`; nothing to plot.")
    pos = y[shown & (y > 0)]
    if logy is None:
        logy = pos.size >= 2 and pos.max() / pos.min() > 30
    fig = style.new_figure((6.4, 4.8))
    ax = fig.add_subplot()
    pts = shown & ~is_ref
    point_colors = [palette[f] for f in fams] if fams is not None else ["C0"] * len(names)
    shown_fams = [fams[i] for i in np.flatnonzero(pts)] if fams is not None else None
    point_areas = 46 if areas is None else areas[pts]
    _scatter_by_family(ax, x[pts], y[pts], shown_fams, palette, s=point_areas, edgecolor="white", linewidth=0.6,
                       zorder=3)  # fmt: skip
    handles = _family_handles(palette, [fams[i] for i in np.flatnonzero(shown)] if fams is not None else [])
    if areas is not None:
        handles.append(Line2D([], [], ls="", marker="o", color="0.7", markersize=9, label="area ∝ log(parameters)"))
    if (shown & is_ref).any():
        i = int(np.flatnonzero(shown & is_ref)[0])
        ax.scatter([x[i]], [y[i]], marker="*", s=200, color=point_colors[i], edgecolor="black", linewidth=0.6, zorder=4)
        handles.append(
            Line2D(
                [],
                [],
                ls="",
                marker="*",
                markersize=11,
                color="0.6",
                markeredgecolor="black",
                label=f"reference ({style.shorten(str(reference_name), 22)})",
            )
        )
    if logy:
        ax.set_yscale("log")
    ax.margins(0.08)
    xlabel = xlabel or (f"alignment with {reference_name}" if reference_name else "alignment")
    rho = _rho_text(x[pts], y[pts])
    style.style_axes(ax, xlabel, ylabel, f"{title or 'alignment vs energy error'}\n{rho}")
    if handles:
        ax.legend(handles=handles, fontsize=style.LEGEND_SIZE, frameon=True, framealpha=0.9, edgecolor="none")
    _missing_note(fig, names, shown, "no energy error")
    if labels:
        idx = np.flatnonzero(shown)
        style.place_labels(
            ax,
            x[idx],
            y[idx],
            [style.shorten(names[i], 22) for i in idx],
            colors=[style.darker(point_colors[i]) for i in idx],
        )
    return fig


def _family_handles(palette: Mapping[str, Any], present: Sequence[str]) -> list[Any]:
    """Legend markers for the families that have at least one point on the plot."""
    from matplotlib.lines import Line2D

    present = set(present)
    return [Line2D([], [], ls="", marker="o", color=c, label=f) for f, c in palette.items() if f in present]


def _missing_note(fig: Any, names: Sequence[str], shown: np.ndarray, why: str) -> None:
    """List the entries left out of a scatter under the figure (laid out by the layout engine, never clipped)."""
    missing = [n for n, ok in zip(names, shown, strict=True) if not ok]
    if missing:
        text = ", ".join(style.shorten(m, 22) for m in missing)
        fig.supxlabel(f"not shown ({why}): {text}", fontsize=style.ANNOTATION_SIZE, color="0.4", wrap=True)


def _pairs_from_matrices(a: np.ndarray, b: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray, list]:
    """Off-diagonal entries of two matrices as pairs: the upper triangle if both are symmetric, else all i ≠ j."""
    symmetric = all(np.allclose(m, m.T, equal_nan=True) for m in (a, b))
    i, j = np.triu_indices(len(names), 1) if symmetric else np.nonzero(~np.eye(len(names), dtype=bool))
    sep = " – " if symmetric else " → "
    return a[i, j], b[i, j], [(names[p], names[q], f"{names[p]}{sep}{names[q]}") for p, q in zip(i, j, strict=True)]


def metric_scatter(
    a: Any,
    b: Any,
    names: Sequence[str],
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    families: Families = None,
    labels: bool | None = None,
    colors: Mapping[str, Any] | None = None,
    diagonal: bool = False,
) -> Any:
    """One metric against another with the Spearman rank correlation in the title (seed 000 Fig. 1D: CKNNA vs dCor;
    Fig. 2C: one metric in vs out of distribution, with ``diagonal``).

    ``a`` and ``b`` are either one value per model (1-D, labelled by ``names``) or two (M, M) model × model
    matrices, in which case each point is a model pair: the upper triangle when both matrices are symmetric, every
    ordered pair i ≠ j otherwise. With ``families``, points are coloured by family (1-D) or as within-family vs
    cross-family pairs (matrices).

    Args:
      a, b: x and y values, same shape.
      names: M labels (models).
      xlabel, ylabel: axis labels (metric names, e.g. ``"CKNNA (k = 25)"``, ``"dCor"``).
      labels: write the name beside each point (default: when there are at most 20 points).
      colors: family → colour overrides (1-D case).
      diagonal: draw the line y = x over a square range (the same quantity on both axes: points above it are larger
        on the y axis).

    Returns:
      The Figure (one axes).
    """
    av, bv = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if av.shape != bv.shape:
        raise ValueError(f"`a` and `b` must have the same shape, got {av.shape} and {bv.shape}.")
    fig = style.new_figure((5.6, 4.6))
    ax = fig.add_subplot()
    handles = None
    if av.ndim == 2:
        am, bm = style.as_matrix(av, "a"), style.as_matrix(bv, "b")
        names = style.check_names(names, am.shape[0], against="a")
        x, y, pairs = _pairs_from_matrices(am, bm, names)
        point_labels = [p[2] for p in pairs]
        fams = style.resolve_families(names, families)
        if fams is not None:
            fam_of = dict(zip(names, fams, strict=True))
            same = np.array([fam_of[p] == fam_of[q] for p, q, _ in pairs], dtype=bool)
            ax.scatter(
                x[~same], y[~same], s=26, color="0.6", alpha=0.8, edgecolor="white", lw=0.4, label="cross-family"
            )
            ax.scatter(x[same], y[same], s=30, color="C3", alpha=0.9, edgecolor="white", lw=0.4, label="within family")
            handles = True
        else:
            ax.scatter(x, y, s=26, color="C0", alpha=0.85, edgecolor="white", lw=0.4)
        point_colors = ["0.2"] * len(x)
    else:
        names = style.check_names(names, av.shape[0] if av.ndim else 0, against="a")
        x, y = style.as_vector(av, "a", len(names)), style.as_vector(bv, "b", len(names))
        point_labels = names
        fams = style.resolve_families(names, families)
        palette = style.family_colors(fams, colors) if fams is not None else {}
        _scatter_by_family(ax, x, y, fams, palette, s=40, edgecolor="white", linewidth=0.5, zorder=3)
        point_colors = [style.darker(palette[f]) for f in fams] if fams is not None else ["0.2"] * len(x)
        if fams is not None:
            finite = np.isfinite(x) & np.isfinite(y)
            handles = _family_handles(palette, [f for f, ok in zip(fams, finite, strict=True) if ok])
    ax.margins(0.08)
    if diagonal:
        finite = np.concatenate([x[np.isfinite(x)], y[np.isfinite(y)]])
        if finite.size:
            lo, hi = float(finite.min()), float(finite.max())
            pad = 0.06 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.5", lw=0.9, ls="--", zorder=1, label="y = x")
            ax.set_xlim(lo - pad, hi + pad)
            ax.set_ylim(lo - pad, hi + pad)
            ax.set_aspect("equal", adjustable="box")
    rho = _rho_text(x, y)
    style.style_axes(ax, xlabel, ylabel, f"{title}\n{rho}" if title else f"{ylabel} vs {xlabel}\n{rho}")
    if handles is True:
        ax.legend(fontsize=style.LEGEND_SIZE, frameon=True, framealpha=0.9, edgecolor="none")
    elif handles:
        ax.legend(handles=handles, fontsize=style.LEGEND_SIZE, frameon=True, framealpha=0.9, edgecolor="none")
    ok = np.isfinite(x) & np.isfinite(y)
    if av.ndim == 2 and not ok.all():
        fig.supxlabel(
            f"{int((~ok).sum())} pairs without a value not shown", fontsize=style.ANNOTATION_SIZE, color="0.4"
        )
    elif av.ndim == 1:
        _missing_note(fig, names, ok, "no value")
    if labels is None:
        labels = ok.sum() <= 20
    if labels:
        idx = np.flatnonzero(ok)
        style.place_labels(
            ax, x[idx], y[idx], [style.shorten(point_labels[i], 30) for i in idx], colors=[point_colors[i] for i in idx]
        )
    return fig


def information_imbalance_plane(
    delta_ab: Any,
    delta_ba: Any,
    names_pairs: Sequence[Any],
    *,
    same_family: Any,
    title: str | None = None,
    group_labels: tuple[str, str] = ("same family", "different family"),
    labels: bool | None = None,
    color: Any = None,
    color_label: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Any:
    """The information-imbalance plane (seed 000 Fig. 2B, C9; Glielmo et al., PNAS Nexus 2022, Fig. 1).

    Each point is a model pair (A, B) at x = Δ(A→B), y = Δ(B→A). Δ(A→B) is small when the nearest neighbours in
    A are also close in B, i.e. A predicts B. Regions: near (0, 0) the two are equivalent; near (1, 1) they are
    independent; above the diagonal (Δ(A→B) < Δ(B→A)) A is more informative than B; below it B is more
    informative. Points are coloured by ``same_family`` (or any other two groups, named by ``group_labels``, e.g.
    same / different training dataset) — or, with ``color``, by a value per pair on a colour bar (seed 000 Fig. 2B
    colours by CKNNA, dCor and I_d Cor), the two groups then told apart by marker (circle: first group, triangle:
    second).

    Args:
      delta_ab, delta_ba: Δ(A→B) and Δ(B→A), one value per pair.
      names_pairs: one entry per pair: ``(A, B)`` tuples (labelled ``"A → B"``, A is the x-axis model) or strings.
      same_family: boolean per pair.
      title: axes title.
      group_labels: legend names of the True and False groups.
      labels: write each pair's name beside its point (default: when there are at most 15 pairs).
      color: optional value per pair (e.g. CKNNA of the pair); NaN points are grey.
      color_label: the colour bar's label, e.g. ``"CKNNA (k = 25)"``.
      vmin, vmax: colour limits (default: the finite values' range).

    Returns:
      The Figure (one axes, plus a colour-bar axes with ``color``).
    """
    x = style.as_vector(delta_ab, "delta_ab")
    c = None if color is None else style.as_vector(color, "color", len(x), against="delta_ab")
    y = style.as_vector(delta_ba, "delta_ba", len(x), against="delta_ab")
    if isinstance(names_pairs, str) or len(names_pairs) != len(x):
        raise ValueError(
            f"`names_pairs` must have one entry per pair ({len(x)}), got "
            f"{len(names_pairs) if not isinstance(names_pairs, str) else 'a string'}."
        )
    pair_labels = [p if isinstance(p, str) else f"{p[0]} → {p[1]}" for p in names_pairs]
    same = np.asarray(same_family)
    if same.shape != x.shape or same.dtype.kind not in "bi":
        raise ValueError(f"`same_family` must be a boolean array with one entry per pair ({len(x)}), got {same.shape}.")
    same = same.astype(bool)
    fig = style.new_figure((5.4, 5.2))
    ax = fig.add_subplot()
    finite = np.concatenate([x[np.isfinite(x)], y[np.isfinite(y)]])
    hi = max(1.1, float(finite.max()) + 0.08) if finite.size else 1.1
    ax.plot([0, hi], [0, hi], ls="--", color="0.55", lw=1, zorder=1)
    ax.fill_between([0, hi], [0, hi], [hi, hi], color="#4c72b0", alpha=0.05, lw=0, zorder=0)
    ax.fill_between([0, hi], [0, 0], [0, hi], color="#dd8452", alpha=0.05, lw=0, zorder=0)
    region = {
        "fontsize": style.ANNOTATION_SIZE + 0.5,
        "color": "0.4",
        "style": "italic",
        "zorder": 2,
        "bbox": {"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none", "alpha": 0.6},
    }
    ax.text(0.02 * hi, 0.98 * hi, "A more informative\n(A predicts B)", ha="left", va="top", **region)
    ax.text(0.98 * hi, 0.02 * hi, "B more informative\n(B predicts A)", ha="right", va="bottom", **region)
    ax.text(0.02 * hi, 0.02 * hi, "equivalent", ha="left", va="bottom", **region)
    ax.text(0.98 * hi, 0.98 * hi, "independent", ha="right", va="top", **region)
    if c is None:
        ax.scatter(x[~same], y[~same], s=34, color="0.55", edgecolor="white", lw=0.5, label=group_labels[1], zorder=3)
        ax.scatter(x[same], y[same], s=38, color="C3", edgecolor="white", lw=0.5, label=group_labels[0], zorder=3)
    else:
        from matplotlib.colors import Normalize

        cmap, lo, hi_c = style.color_scale(c, vmin, vmax, None)
        norm = Normalize(vmin=lo, vmax=hi_c)
        mappable = None
        for group, marker, label in ((same, "o", group_labels[0]), (~same, "^", group_labels[1])):
            known = group & np.isfinite(c)
            ax.scatter(x[group & ~known], y[group & ~known], s=34, marker=marker, color=style.MISSING_COLOR, zorder=3)
            mappable = ax.scatter(x[known], y[known], s=38, marker=marker, c=c[known], cmap=cmap, norm=norm,
                                  edgecolor="0.3", lw=0.4, label=label, zorder=3)  # fmt: skip
        cbar = fig.colorbar(mappable, ax=ax, shrink=0.8, pad=0.02)
        cbar.set_label(color_label or "value", fontsize=style.LABEL_SIZE)
        cbar.ax.tick_params(labelsize=style.TICK_SIZE)
        cbar.outline.set_visible(False)
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_aspect("equal")
    style.style_axes(
        ax, "Δ(A → B)   (low: A predicts B)", "Δ(B → A)   (low: B predicts A)", title or "information imbalance"
    )
    handles = None
    if c is not None:  # marker shapes only: the colour is the colour bar's
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], ls="", marker=mk, color="0.45", label=lab)
                   for mk, lab in zip(("o", "^"), group_labels, strict=True)]  # fmt: skip
    ax.legend(handles=handles, fontsize=style.LEGEND_SIZE, frameon=False, loc="upper center",
              bbox_to_anchor=(0.5, -0.12), ncols=2)  # fmt: skip
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.all():
        fig.supxlabel(
            f"{int((~ok).sum())} pairs without a value not shown", fontsize=style.ANNOTATION_SIZE, color="0.4"
        )
    if labels is None:
        labels = ok.sum() <= 15
    if labels:
        idx = np.flatnonzero(ok)
        style.place_labels(ax, x[idx], y[idx], [style.shorten(pair_labels[i], 34) for i in idx])
    return fig
