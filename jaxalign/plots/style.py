"""The shared look of every jaxalign figure: font sizes, colour maps, family colours, input checks, label helpers
and :func:`save_figure`.

matplotlib is imported inside the functions only, so ``import jaxalign.plots.style`` (and the jaxalign core) works
without it. Figures are built with :class:`matplotlib.figure.Figure` and an Agg canvas rather than ``pyplot``, so no
global figure registry fills up when a pipeline draws hundreds of them; they still display in notebooks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ANNOTATION_SIZE",
    "DIVERGING_CMAP",
    "ERROR_CMAP",
    "LABEL_SIZE",
    "LEGEND_SIZE",
    "MAP_CMAP",
    "MISSING_COLOR",
    "SEQUENTIAL_CMAP",
    "TICK_SIZE",
    "TITLE_SIZE",
    "family_colors",
    "save_figure",
    "shorten",
]

TITLE_SIZE = 11.0
LABEL_SIZE = 10.0
TICK_SIZE = 8.5
LEGEND_SIZE = 8.5
ANNOTATION_SIZE = 7.5

#: Similarity / alignment (higher = more alike): perceptually uniform, colour-blind safe.
SEQUENTIAL_CMAP = "viridis"
#: Values that can be negative (unbiased CKA, signed errors): centred on 0 with symmetric limits.
DIVERGING_CMAP = "RdBu_r"
#: Reconstruction errors (lower = better): light for small errors, dark red for large ones.
ERROR_CMAP = "YlOrRd"
#: Per-structure colouring of 2-D maps (no near-white end, so every point stays visible on white).
MAP_CMAP = "viridis"
#: Cells or points without a value (NaN): light grey (heatmap cells are also hatched).
MISSING_COLOR = "0.88"

_SVG_SALT = "jaxalign"  # fixed id salt: the same figure gives byte-identical SVG files on every run


# --------------------------------------------------------------------------------------------- figures and saving
def new_figure(figsize: tuple[float, float], *, layout: str | None = "constrained") -> Any:
    """A :class:`~matplotlib.figure.Figure` with an Agg canvas (no pyplot state) and constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_figure(
    fig: Any, path_stem: str | Path, *, dpi: int = 150, formats: Sequence[str] = ("png", "svg")
) -> list[Path]:
    """Write ``fig`` as ``<path_stem>.png`` (``dpi`` dots per inch) and ``<path_stem>.svg``; return the paths.

    Parent folders are created. A trailing ``.png``/``.svg``/``.pdf`` on ``path_stem`` is dropped (so
    ``"out/fig1a.png"`` and ``"out/fig1a"`` are the same stem), any other dot is kept (``"fig.k25"``). SVG output
    is deterministic (fixed id salt, no date), so a rerun that draws the same figure writes the same bytes.
    """
    import matplotlib

    if not hasattr(fig, "savefig"):
        raise ValueError(
            f"`fig` must be a matplotlib Figure (as returned by the jaxalign.plots functions), got {type(fig)}."
        )
    stem = Path(path_stem)
    if stem.suffix.lower() in {".png", ".svg", ".pdf"}:
        stem = stem.with_suffix("")
    if not stem.name:
        raise ValueError(f"`path_stem` {str(path_stem)!r} has no file name; pass e.g. 'results/fig1a'.")
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    fig.draw_without_rendering()  # settle the layout engine first, so the first save equals every later one
    with matplotlib.rc_context({"svg.hashsalt": _SVG_SALT}):
        for fmt in formats:
            path = Path(f"{stem}.{fmt}")
            metadata = {"Date": None} if fmt == "svg" else None
            fig.savefig(path, format=fmt, dpi=dpi, bbox_inches="tight", pad_inches=0.08, metadata=metadata)
            paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------- input checks
def as_matrix(matrix: Any, arg: str = "matrix", *, square: bool = True) -> np.ndarray:
    """``matrix`` as a 2-D float numpy array (NaN allowed: drawn as missing), square unless ``square=False``."""
    try:
        m = np.asarray(matrix, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"`{arg}` could not be converted to a float array ({err}); pass a 2-D numeric array."
        ) from None
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"`{arg}` must be a non-empty 2-D array, got shape {m.shape}.")
    if square and m.shape[0] != m.shape[1]:
        raise ValueError(f"`{arg}` must be square (model × model), got shape {m.shape}.")
    if np.isinf(m).any():
        raise ValueError(f"`{arg}` contains ±inf; replace undefined entries by NaN (drawn as missing cells).")
    return m


def as_vector(values: Any, arg: str, n: int | None = None, *, against: str = "names") -> np.ndarray:
    """``values`` as a 1-D float numpy array (NaN allowed), of length ``n`` when given."""
    try:
        v = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"`{arg}` could not be converted to a float array ({err}); pass a 1-D numeric array."
        ) from None
    if v.ndim != 1:
        raise ValueError(f"`{arg}` must be 1-D, got shape {v.shape}.")
    if n is not None and v.shape[0] != n:
        raise ValueError(f"`{arg}` has {v.shape[0]} entries but `{against}` has {n}; pass one value per entry.")
    return v


def check_names(names: Any, n: int, *, arg: str = "names", against: str = "matrix") -> list[str]:
    """``names`` as a list of ``n`` strings; a clear ValueError naming ``arg`` when the count is wrong."""
    if names is None or isinstance(names, str):
        raise ValueError(f"`{arg}` must be a sequence of {n} labels, got {names!r}.")
    names = [str(x) for x in names]
    if len(names) != n:
        raise ValueError(f"`{arg}` has {len(names)} labels but `{against}` has {n} rows; pass one label per row.")
    return names


def resolve_families(
    names: Sequence[str], families: Mapping[str, Any] | Sequence[Any] | None, arg: str = "families"
) -> list[str] | None:
    """One family label per name, from a mapping name → family or a sequence aligned with ``names``."""
    if families is None:
        return None
    if isinstance(families, Mapping):
        missing = [x for x in names if x not in families]
        if missing:
            raise ValueError(f"`{arg}` has no entry for {missing}; map every name to a family.")
        return [str(families[x]) for x in names]
    if isinstance(families, str):
        raise ValueError(f"`{arg}` must be a sequence or mapping of family labels, got the string {families!r}.")
    fams = [str(f) for f in families]
    if len(fams) != len(names):
        raise ValueError(
            f"`{arg}` has {len(fams)} entries but there are {len(names)} names; pass one family per name "
            "or a mapping name → family."
        )
    return fams


# ------------------------------------------------------------------------------------------------------- colours
def family_colors(families: Sequence[Any], colors: Mapping[Any, Any] | None = None) -> dict[str, Any]:
    """Family → RGBA colour: ``tab10`` (``tab20`` beyond 10 families) in order of first appearance.

    This is the same rule as :func:`jaxalign.plots.tree.plot_tree`'s default, so a family has one colour across the
    tree, the heatmap strips, the scatters and the violins when they are given the families in the same order.
    ``colors`` overrides individual families.
    """
    from matplotlib import colormaps
    from matplotlib.colors import to_rgba

    unique = list(dict.fromkeys(str(f) for f in families))
    cmap = colormaps["tab10" if len(unique) <= 10 else "tab20"]
    overrides = {str(k): v for k, v in (colors or {}).items()}
    return {f: to_rgba(overrides.get(f, cmap(i % cmap.N))) for i, f in enumerate(unique)}


def color_scale(values: np.ndarray, vmin: float | None, vmax: float | None, cmap: Any) -> tuple[Any, float, float]:
    """Colour map and limits: sequential over [min, max], or diverging with symmetric limits when values < 0.

    Explicit ``vmin``/``vmax``/``cmap`` always win; a diverging map is chosen only when the (finite) values or
    ``vmin`` are negative and no ``cmap`` was given.
    """
    finite = values[np.isfinite(values)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    negative = (vmin if vmin is not None else lo) < 0
    if negative and cmap is None:
        bound = max(abs(vmin if vmin is not None else lo), abs(vmax if vmax is not None else hi))
        return DIVERGING_CMAP, -bound if vmin is None else vmin, bound if vmax is None else vmax
    vmin = lo if vmin is None else vmin
    vmax = hi if vmax is None else vmax
    if vmax <= vmin:  # constant matrix: widen so the colour bar stays readable
        vmin, vmax = vmin - 0.5, vmax + 0.5
    return cmap or SEQUENTIAL_CMAP, vmin, vmax


def darker(color: Any, factor: float = 0.7) -> tuple[float, float, float]:
    """A darker shade of ``color`` (e.g. label text in a family colour that stays readable on white)."""
    from matplotlib.colors import to_rgb

    return tuple(c * factor for c in to_rgb(color))


def text_color_on(rgba: Any) -> str:
    """Black or white, whichever reads better on the background colour ``rgba`` (relative luminance)."""
    r, g, b = (c if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3])
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.36 else "white"


# -------------------------------------------------------------------------------------------------------- labels
def format_value(value: float, fmt: str = ".2f") -> str:
    """``format(value, fmt)`` without a minus sign on values that round to zero (``-0.00`` → ``0.00``)."""
    text = format(value, fmt)
    if text.startswith("-") and float(text) == 0:
        text = text[1:]
    return text


def shorten(name: str, max_chars: int = 28) -> str:
    """``name`` cut in the middle with an ellipsis when longer than ``max_chars`` (start and end stay readable)."""
    if len(name) <= max_chars:
        return name
    head = (max_chars - 1) // 2
    tail = max_chars - 1 - head
    return f"{name[:head]}…{name[-tail:]}"


def short_labels(names: Sequence[str], max_chars: int = 28) -> list[str]:
    """:func:`shorten` every name, keeping the full names if shortening would make two labels equal."""
    short = [shorten(x, max_chars) for x in names]
    return short if len(set(short)) == len(set(names)) else list(names)


def tick_fontsize(n_labels: int) -> float:
    """Tick-label size that shrinks from :data:`TICK_SIZE` for many labels (never below 5 pt)."""
    return float(np.clip(TICK_SIZE - max(n_labels - 20, 0) / 8, 5.0, TICK_SIZE))


def place_labels(
    ax: Any,
    x: np.ndarray,
    y: np.ndarray,
    labels: Sequence[str],
    *,
    colors: Sequence[Any] | None = None,
    fontsize: float = ANNOTATION_SIZE,
) -> list[Any]:
    """Label scatter points without overlaps: a greedy search over offsets around each point.

    For each point (densest first) the label tries eight positions next to the marker, then the same directions at
    2.5× and 4.5× the distance with a thin leader line, and keeps the first one that covers no placed label or
    existing text (legend, region names), no other labelled marker and stays inside the axes (else the least bad).
    The axes limits are frozen first; call this after everything else is drawn. Returns the annotation artists (one
    per label, in input order).
    """
    fig = ax.figure
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())
    fig.draw_without_rendering()  # runs the layout engine so display coordinates are final
    renderer = fig.canvas.get_renderer()
    pts = ax.transData.transform(np.column_stack([x, y]))
    box = ax.get_window_extent(renderer)
    radius = 4.0 * fig.dpi / 72.0
    near = [
        (5, 3, "left", "bottom"),
        (5, -3, "left", "top"),
        (-5, 3, "right", "bottom"),
        (-5, -3, "right", "top"),
        (0, 6, "center", "bottom"),
        (0, -6, "center", "top"),
        (7, 0, "left", "center"),
        (-7, 0, "right", "center"),
    ]
    # (offset, alignment, distance penalty): next to the marker first, then further away with a leader line.
    candidates = [
        (dx * f, dy * f, ha, va, penalty)
        for f, penalty in ((1, 0.0), (2.5, 5.0), (4.5, 10.0))
        for dx, dy, ha, va in near
    ]
    colors = list(colors) if colors is not None else ["0.15"] * len(labels)

    # Densest points first: they have the fewest free spots.
    dist = np.linalg.norm(pts[:, None, :] - pts[None, :, :], axis=-1)
    crowd = (dist < 30 * fig.dpi / 72).sum(axis=1)
    # Texts already on the axes (region names, notes) and the legend are obstacles too.
    placed: list[Any] = [t.get_window_extent(renderer) for t in ax.texts if t.get_visible() and t.get_text()]
    if ax.get_legend() is not None:
        placed.append(ax.get_legend().get_window_extent(renderer))
    artists: list[Any] = [None] * len(labels)
    leader = {"arrowstyle": "-", "lw": 0.5, "color": "0.55", "shrinkA": 0, "shrinkB": 3}
    for i in np.argsort(-crowd, kind="stable"):
        best, best_cost = None, math.inf
        for dx, dy, ha, va, penalty in candidates:
            text = ax.annotate(
                labels[i],
                (x[i], y[i]),
                xytext=(dx, dy),
                textcoords="offset points",
                ha=ha,
                va=va,
                fontsize=fontsize,
                color=colors[i],
                arrowprops=leader if penalty else None,
            )
            bb = text.get_window_extent(renderer).expanded(1.04, 1.08)
            area = max(bb.width * bb.height, 1.0)
            cost = 300.0 * sum(_overlap(bb, other) for other in placed) / area  # 300 per fully covered label
            inside = (pts[:, 0] > bb.x0 - radius) & (pts[:, 0] < bb.x1 + radius)
            inside &= (pts[:, 1] > bb.y0 - radius) & (pts[:, 1] < bb.y1 + radius)
            inside[i] = False
            cost += 300.0 * inside.sum()  # 300 per covered marker
            outside = max(box.x0 - bb.x0, 0) + max(bb.x1 - box.x1, 0) + max(box.y0 - bb.y0, 0) + max(bb.y1 - box.y1, 0)
            cost += 1000.0 * outside + penalty
            if cost < best_cost:
                if best is not None:
                    best[0].remove()
                best, best_cost = (text, bb), cost
            else:
                text.remove()
            if cost == penalty:  # a free spot: nothing closer was free
                break
        artists[i] = best[0]
        placed.append(best[1])
    return artists


def _overlap(a: Any, b: Any) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0.0) * max(h, 0.0)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation over the finite pairs (NaN with fewer than 3 pairs or a constant input)."""
    from scipy.stats import spearmanr

    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)


# ------------------------------------------------------------------------------------------------------ heatmaps
def draw_heatmap(
    ax: Any,
    matrix: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    cmap: Any,
    vmin: float,
    vmax: float,
    annotate: bool,
    fmt: str = ".2f",
    cbar_label: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
) -> Any:
    """Draw ``matrix`` as a cell heatmap on ``ax``: NaN cells grey and hatched, optional value annotations in a
    contrasting colour, thin white cell borders, rotated column labels and a labelled colour bar.

    Returns the AxesImage.
    """
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    n_rows, n_cols = matrix.shape
    cm = (colormaps[cmap] if isinstance(cmap, str) else cmap).with_extremes(bad=MISSING_COLOR)
    norm = Normalize(vmin=vmin, vmax=vmax)
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cm, norm=norm, interpolation="nearest", aspect="equal")
    missing = np.argwhere(~np.isfinite(matrix))
    for i, j in missing:
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="////", edgecolor="0.65", lw=0))
    n_max = max(n_rows, n_cols)
    if annotate:
        size = float(np.clip(ANNOTATION_SIZE + 1.5 - max(n_max - 8, 0) * 0.2, 5.0, ANNOTATION_SIZE + 1.5))
        for i in range(n_rows):
            for j in range(n_cols):
                v = matrix[i, j]
                if np.isfinite(v):
                    ax.text(
                        j,
                        i,
                        format_value(v, fmt),
                        ha="center",
                        va="center",
                        fontsize=size,
                        color=text_color_on(cm(norm(v))),
                    )
                else:
                    ax.text(j, i, "n/a", ha="center", va="center", fontsize=size * 0.9, color="0.35")
    if n_max <= 40:  # white borders between cells
        ax.set_xticks(np.arange(n_cols + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(n_rows + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="white", linewidth=0.8)
        ax.tick_params(which="minor", length=0)
    fs = tick_fontsize(n_max)
    ax.set_xticks(
        np.arange(n_cols), labels=list(col_labels), fontsize=fs, rotation=45, ha="right", rotation_mode="anchor"
    )
    ax.set_yticks(np.arange(n_rows), labels=list(row_labels), fontsize=fs)
    ax.tick_params(which="major", length=0, pad=3)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=LABEL_SIZE)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=LABEL_SIZE)
    label = cbar_label or ""
    if len(missing):
        label = f"{label}\n(grey hatched: no value)" if label else "grey hatched: no value"
    cbar = ax.figure.colorbar(image, ax=ax, shrink=0.8, fraction=0.05, pad=0.03)
    cbar.set_label(label, fontsize=LABEL_SIZE)
    cbar.ax.tick_params(labelsize=TICK_SIZE)
    cbar.outline.set_visible(False)
    return image


def style_axes(ax: Any, xlabel: str, ylabel: str, title: str | None) -> None:
    """The line and scatter plots' axes: labelled axes, a light grid behind the data, no top/right spines."""
    ax.set_xlabel(xlabel, fontsize=LABEL_SIZE)
    ax.set_ylabel(ylabel, fontsize=LABEL_SIZE)
    ax.tick_params(labelsize=TICK_SIZE)
    ax.grid(True, color="0.92", lw=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title, fontsize=TITLE_SIZE)


def heatmap_figsize(n_rows: int, n_cols: int, *, label_chars: int, cell: float | None = None) -> tuple[float, float]:
    """Figure size for an ``n_rows × n_cols`` heatmap whose labels have up to ``label_chars`` characters."""
    n_max = max(n_rows, n_cols)
    cell = cell if cell is not None else float(np.clip(6.0 / max(n_max, 1), 0.18, 0.55))
    label_in = 0.065 * min(label_chars, 40) * tick_fontsize(n_max) / TICK_SIZE
    width = n_cols * cell + label_in + 1.6  # labels on the left + colour bar
    height = n_rows * cell + 0.75 * label_in + 0.9  # rotated labels below + title
    return float(np.clip(width, 4.0, 18.0)), float(np.clip(height, 3.0, 18.0))
