"""Drawing of a model tree as a rectangular phylogram (matplotlib is imported only when a plot is made)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxalign.tree import Tree

__all__ = ["plot_tree"]


def _families(tree: Tree, families: Mapping[str, Any] | Sequence[Any] | None) -> list[Any] | None:
    """One family label per leaf (in ``tree.leaf_names`` order), from a name → family mapping or a sequence."""
    if families is None:
        return None
    names = tree.leaf_names
    if isinstance(families, Mapping):
        missing = [n for n in names if n not in families]
        if missing:
            raise ValueError(f"`families` has no entry for leaves {missing}; map every leaf name to a family.")
        return [families[n] for n in names]
    families = list(families)
    if len(families) != len(names):
        raise ValueError(
            f"`families` has {len(families)} entries but the tree has {len(names)} leaves; pass one per leaf "
            "(in `tree.leaf_names` order) or a mapping from leaf name to family."
        )
    return families


def _layout(tree: Tree, ladderize: bool) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[int, ...]]]:
    """x = distance from the root, y = leaf rank top to bottom (internal nodes centred on their children)."""
    size = np.ones(len(tree.names), dtype=int)
    for v in reversed(tree.preorder()):
        if tree.children[v]:
            size[v] = sum(size[c] for c in tree.children[v])
    order = {
        v: tuple(sorted(ch, key=lambda c: size[c])) if ladderize else ch for v, ch in enumerate(tree.children) if ch
    }
    x = np.zeros(len(tree.names))
    y = np.zeros(len(tree.names))
    stack, post, rank = [tree.root], [], 0
    while stack:
        v = stack.pop()
        post.append(v)
        for c in reversed(order.get(v, ())):
            x[c] = x[v] + max(float(tree.lengths[c]), 0.0)
            stack.append(c)
        if v not in order:
            y[v], rank = rank, rank + 1
    for v in reversed(post):
        if v in order:
            y[v] = (y[order[v][0]] + y[order[v][-1]]) / 2
    return x, y, order


def _nice_length(span: float) -> float:
    """A round scale-bar length near a fifth of ``span`` (1, 2 or 5 times a power of ten)."""
    target = span / 5 if span > 0 else 1.0
    power = 10.0 ** np.floor(np.log10(target))
    return float(max(m * power for m in (1, 2, 5) if m * power <= target))


def plot_tree(
    tree: Tree,
    ax: Any = None,
    *,
    families: Mapping[str, Any] | Sequence[Any] | None = None,
    ladderize: bool = True,
    colors: Mapping[Any, Any] | None = None,
    fontsize: float | None = None,
    linewidth: float = 1.4,
    scale_bar: bool = True,
    legend: bool = True,
    title: str | None = None,
) -> Any:
    """Draw ``tree`` as a phylogram: horizontal branches to scale, leaves labelled, optionally coloured by family.

    The root sits at the left; each node is placed at its distance from the root and leaves are stacked top to
    bottom (``ladderize`` puts smaller subtrees first). For the unrooted tree of :func:`~jaxalign.tree.
    neighbor_joining` the root is scikit-bio's trifurcation of the last three clusters; only the branch lengths
    carry meaning, not the side the root is on. A scale bar gives the distance unit.

    Args:
      tree: a :class:`~jaxalign.tree.Tree`.
      ax: matplotlib Axes to draw on (default: a new figure sized to the number of leaves).
      families: family of each leaf — a mapping leaf name → family or one entry per leaf in ``tree.leaf_names``
        order; leaves and labels are coloured per family and a legend is added.
      ladderize: order the children of every node by subtree size.
      colors: family → matplotlib colour (default: the ``tab10``/``tab20`` cycle in order of first appearance).
      fontsize: leaf-label size (default: shrinks from 10 with many leaves).
      linewidth: branch line width.
      scale_bar: draw a branch-length scale bar under the tree.
      legend: draw the family legend (when ``families`` is given).
      title: axes title.

    Returns:
      The matplotlib Axes; ``ax.texts`` holds exactly one label per leaf.
    """
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    if not isinstance(tree, Tree):
        raise ValueError(f"`tree` must be a jaxalign.tree.Tree (e.g. from neighbor_joining), got {type(tree)}.")
    fams = _families(tree, families)
    leaves, names = tree.leaves, tree.leaf_names
    n_leaves = len(leaves)
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, max(2.5, 0.3 * n_leaves + 1.0)), layout="constrained")
    fontsize = fontsize if fontsize is not None else float(np.clip(10 - (n_leaves - 20) / 10, 5, 10))

    x, y, order = _layout(tree, ladderize)
    segments = []
    for v, ch in order.items():
        segments.append([(x[v], y[ch[0]]), (x[v], y[ch[-1]])])  # vertical bar spanning the children
        segments.extend([(x[v], y[c]), (x[c], y[c])] for c in ch)  # horizontal branch to each child
    ax.add_collection(LineCollection(segments, colors="0.25", linewidths=linewidth, capstyle="round"))

    palette: dict[Any, Any] = {}
    if fams is not None:
        unique = list(dict.fromkeys(fams))
        cmap = plt.get_cmap("tab10" if len(unique) <= 10 else "tab20")
        palette = {f: (colors or {}).get(f, cmap(i % cmap.N)) for i, f in enumerate(unique)}
    leaf_colors = [palette[f] for f in fams] if fams is not None else ["0.1"] * n_leaves

    span = float(x[list(leaves)].max()) or 1.0
    pad = 0.015 * span
    ax.scatter(x[list(leaves)], y[list(leaves)], s=18, c=leaf_colors, zorder=3, linewidths=0)
    for v, name, color in zip(leaves, names, leaf_colors, strict=True):
        ax.text(x[v] + pad, y[v], name, va="center", ha="left", fontsize=fontsize, color=color, clip_on=False)

    # Leave room on the right for the longest label (estimated at 0.6 em per character).
    ax_width_pt = ax.get_position().width * ax.figure.get_figwidth() * 72
    label_frac = min(0.6, (0.6 * fontsize * max(len(n) for n in names) + 4) / ax_width_pt)
    left = -0.02 * span
    ax.set_xlim(left, left + (span + pad - left) / (1 - label_frac))
    ax.set_ylim(n_leaves - 0.5 + (1.2 if scale_bar else 0.0), -0.5)  # y grows downwards; room for the bar
    ax.set_axis_off()

    if scale_bar:
        length = _nice_length(span)
        bar = AnchoredSizeBar(
            ax.transData, length, f"{length:g}", loc="lower left", frameon=False, size_vertical=0, pad=0.1,
            sep=3, fontproperties={"size": fontsize},
        )  # fmt: skip
        ax.add_artist(bar)
    if fams is not None and legend:
        handles = [Line2D([], [], marker="o", ls="", color=c, label=str(f)) for f, c in palette.items()]
        ax.legend(
            handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=fontsize,
            title="family", title_fontsize=fontsize,
        )  # fmt: skip
    if title is not None:
        ax.set_title(title)
    return ax
