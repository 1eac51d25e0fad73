"""Evolutionary tree of models: a Jensen–Shannon distance between similarity profiles, then neighbour joining.

Seed 000 (App. A.1.3) turns an (M, M) model-similarity matrix C (e.g. CKNNA) into distances and builds a tree:

* :func:`jsd_distance` — each model i gets an outgoing profile R_i(j) = (C_ij + ε) / (Σ_j' C_ij' + Mε) and an
  incoming profile K_i(j) = (C_ji + ε) / (Σ_j' C_j'i + Mε); then
  D_ij = α·sqrt(JSD(R_i, R_j)) + (1 − α)·sqrt(JSD(K_i, K_j)), D_ii = 0, with the Jensen–Shannon divergence in bits.
* :func:`neighbor_joining` — Saitou & Nei (1987) neighbour joining, step for step as scikit-bio 0.7.0
  ``skbio.tree.nj`` (same pair chosen on ties, same node order, same trifurcating root, negative lengths → 0).

The result is an immutable :class:`Tree` with :meth:`Tree.to_newick`, :meth:`Tree.total_branch_length`,
:meth:`Tree.leaf_distances` and :meth:`Tree.bipartitions`; :func:`robinson_foulds` compares two trees by topology.
M is the number of *models* (tens to a few hundred), so the tree side is plain numpy.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxalign._checks import as_features, is_concrete
from jaxalign.tiling import default_tile, map_row_tiles, safe_sqrt

__all__ = ["Tree", "jsd_distance", "neighbor_joining", "robinson_foulds"]

_LN2 = float(np.log(2.0))


# ----------------------------------------------------------------------------------------------------------------------
# Jensen–Shannon distance between similarity profiles
# ----------------------------------------------------------------------------------------------------------------------


def _profiles(c: jax.Array, eps: jax.Array) -> jax.Array:
    """Rows of ``c`` smoothed by ``eps`` and normalised to probability vectors: (C_ij + ε) / (Σ_j' C_ij' + Mε)."""
    m = c.shape[1]
    return (c + eps) / (c.sum(axis=1, keepdims=True) + m * eps)


def _jsd_bits(p: jax.Array, q: jax.Array) -> jax.Array:
    """JSD(p, q) = ½ KL(p‖μ) + ½ KL(q‖μ), μ = (p + q)/2, in bits, summed over the last axis (p, q > 0).

    With s = p + q and t = (p − q)/s the summand is s/4 · g(t), g(t) = (1+t)ln(1+t) + (1−t)ln(1−t) ≥ 0. For |t| < ½
    g is evaluated as ln(1 − t²) + 2t·artanh(t), which keeps full relative precision as t → 0 (nearly equal
    profiles), so the divergence is accurate to rounding even where it is tiny; elsewhere the direct form is used.
    """
    s = p + q
    t = (p - q) / s
    small = jnp.abs(t) < 0.5
    ts = jnp.where(small, t, 0.0)  # double-where: the unused branch never sees |t| -> 1
    g_small = jnp.log1p(-ts * ts) + 2.0 * ts * jnp.arctanh(ts)
    a, b = 2.0 * p / s, 2.0 * q / s  # 1 + t and 1 - t, both > 0
    g_large = a * jnp.log(a) + b * jnp.log(b)
    g = jnp.where(small, g_small, g_large)
    return jnp.maximum((s * g).sum(axis=-1), 0.0) / (4.0 * _LN2)


def _jsd_rows(rows: jax.Array, r: jax.Array, k: jax.Array, alpha: jax.Array) -> jax.Array:
    """Rows ``rows`` of D: α·sqrt(JSD(R_i, R_j)) + (1 − α)·sqrt(JSD(K_i, K_j)) for every j, D_ii = 0."""
    d_out = safe_sqrt(_jsd_bits(r[rows][:, None, :], r[None, :, :]))
    d_in = safe_sqrt(_jsd_bits(k[rows][:, None, :], k[None, :, :]))
    d = alpha * d_out + (1.0 - alpha) * d_in
    return jnp.where(rows[:, None] == jnp.arange(r.shape[0])[None, :], 0.0, d)


@functools.partial(jax.jit, static_argnames=("tile", "mesh"))
def _jsd_distance(c: jax.Array, alpha: jax.Array, eps: jax.Array, *, tile: int, mesh: Mesh | str | None) -> jax.Array:
    r = _profiles(c, eps)
    k = _profiles(c.T, eps)
    d = map_row_tiles(_jsd_rows, c.shape[0], r, k, alpha.astype(c.dtype), tile=tile, mesh=mesh)
    return (d + d.T) / 2  # JSD is symmetric; this removes the last-bit asymmetry of fused multiply-adds


def jsd_distance(
    similarity: Any,
    *,
    alpha: float = 0.5,
    eps: float = 1e-8,
    tile: int | None = None,
    mesh: Mesh | str | None = "auto",
) -> jax.Array:
    """Seed-000 distance between models from their similarity matrix (App. A.1.3, eqs. A9–A12).

    R_i(j) = (C_ij + ε) / (Σ_j' C_ij' + Mε) (how model i sees the others), K_i(j) = (C_ji + ε) / (Σ_j' C_j'i + Mε)
    (how the others see model i), and

        D_ij = α·sqrt(JSD(R_i, R_j)) + (1 − α)·sqrt(JSD(K_i, K_j)),   D_ii = 0,

    with JSD(P, Q) = ½ KL(P‖μ) + ½ KL(Q‖μ), μ = (P + Q)/2, KL in bits, so 0 ≤ D_ij ≤ 1. sqrt(JSD) is a metric
    (Endres & Schindelin 2003), hence D is symmetric and satisfies the triangle inequality. C need not be symmetric
    (cycle-kNN is not); its diagonal (self-similarity) takes part as in the seed. The result is differentiable
    in C (zero gradient on the diagonal).

    Args:
      similarity: (M, M) non-negative similarity matrix, M ≥ 2 models.
      alpha: weight of the outgoing profiles R, in [0, 1] (seed: 0.5).
      eps: smoothing ε > 0 added to every entry (seed: 1e-8).
      tile: rows of D per block (each block holds tile·M² values); default fits a 32 MiB budget.
      mesh: device mesh splitting the row tiles, ``"auto"`` or ``None``.

    Returns:
      (M, M) distance matrix in the dtype of ``similarity`` (float32 by default, float64 under x64).
    """
    c = as_features(similarity, "similarity", min_rows=2)
    m = c.shape[0]
    if c.shape[1] != m:
        raise ValueError(
            f"`similarity` must be square (M models × M models), got shape {c.shape}; pass the model-by-model "
            "similarity matrix, not the features."
        )
    if is_concrete(c) and bool((c < 0).any()):
        raise ValueError(
            f"`similarity` has {int((c < 0).sum())} negative entries (min {float(c.min()):.3g}); the profiles R, K "
            "must be probabilities. Clip them at 0 or shift the similarity (e.g. use (1 + CKA) / 2)."
        )
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"`alpha` must lie in [0, 1] (weight of the outgoing profiles), got {alpha}.")
    if not float(eps) > 0.0:
        raise ValueError(f"`eps` must be > 0 (it keeps every profile entry positive), got {eps}.")
    tile = default_tile(m, m * m) if tile is None else tile
    return _jsd_distance(c, jnp.asarray(alpha, c.dtype), jnp.asarray(eps, c.dtype), tile=tile, mesh=mesh)


# ----------------------------------------------------------------------------------------------------------------------
# Tree
# ----------------------------------------------------------------------------------------------------------------------

_NEWICK_OPERATORS = set(",:_;()[]")


@functools.partial(jax.tree_util.register_dataclass, data_fields=["lengths"], meta_fields=["names", "children", "root"])
@dataclasses.dataclass(frozen=True)
class Tree:
    """An immutable tree: node ``v`` has ``names[v]``, ``children[v]`` (node indices) and ``lengths[v]``.

    ``lengths[v]`` is the length of the branch from ``v`` to its parent (0.0 for the root). Leaves are the nodes
    without children; internal nodes have name ``None``. Trees from :func:`neighbor_joining` number the M leaves
    0..M−1 in input order, the joined clusters M..2M−4 in the order they were formed, and the root 2M−3 last; the
    root has three children (an unrooted tree, as scikit-bio draws it). A pytree whose leaves are the lengths.
    """

    names: tuple[str | None, ...]
    children: tuple[tuple[int, ...], ...]
    lengths: tuple[float, ...]
    root: int

    def __post_init__(self) -> None:
        n = len(self.names)
        if len(self.children) != n or len(self.lengths) != n or not 0 <= self.root < n:
            raise ValueError(
                f"`Tree` needs one name, children tuple and length per node and a root among them; got "
                f"{len(self.names)} names, {len(self.children)} children, {len(self.lengths)} lengths, root "
                f"{self.root}."
            )

    @property
    def leaves(self) -> tuple[int, ...]:
        """Indices of the leaf nodes, in node order."""
        return tuple(v for v, ch in enumerate(self.children) if not ch)

    @property
    def leaf_names(self) -> tuple[str, ...]:
        """Names of the leaves, in node order."""
        return tuple(str(self.names[v]) for v in self.leaves)

    def preorder(self) -> list[int]:
        """Node indices, every parent before its children, children in stored order."""
        order, stack = [], [self.root]
        while stack:
            v = stack.pop()
            order.append(v)
            stack.extend(reversed(self.children[v]))
        return order

    def total_branch_length(self) -> float:
        """Sum of all branch lengths (the tree length minimised by balanced minimum evolution)."""
        return float(sum(float(self.lengths[v]) for v in self.preorder() if v != self.root))

    def leaf_distances(self) -> np.ndarray:
        """(L, L) path (patristic) distances between the leaves, in the order of :attr:`leaf_names`.

        d(a, b) = depth(a) + depth(b) − 2·depth(lca(a, b)), filled at each internal node for the leaves of
        different child subtrees.
        """
        order = self.preorder()
        depth = np.zeros(len(self.names))
        for v in order:
            for c in self.children[v]:
                depth[c] = depth[v] + float(self.lengths[c])
        col = {v: i for i, v in enumerate(self.leaves)}
        leaf_depth = depth[list(self.leaves)]
        out = np.zeros((len(col), len(col)))
        below: dict[int, np.ndarray] = {}
        for v in reversed(order):
            subsets = [below.pop(c) for c in self.children[v]] if self.children[v] else [np.array([col[v]])]
            for a, sa in enumerate(subsets):
                for sb in subsets[a + 1 :]:
                    block = leaf_depth[sa][:, None] + leaf_depth[sb][None, :] - 2 * depth[v]
                    out[np.ix_(sa, sb)] = block
                    out[np.ix_(sb, sa)] = block.T
            below[v] = np.concatenate(subsets)
        return out

    def bipartitions(self) -> dict[frozenset[str], float]:
        """Every branch as the split of the leaf names it induces, mapped to its length (unrooted view).

        A split is keyed by the side *without* the alphabetically first leaf name, so both rootings of one
        unrooted tree give the same keys; the two branches at a two-child root are one unrooted branch (summed).
        Trivial splits (one leaf) are included; :func:`robinson_foulds` ignores them.
        """
        names = self.leaf_names
        first = min(names)
        everything = frozenset(names)
        leafset: dict[int, frozenset[str]] = {}
        splits: dict[frozenset[str], float] = {}
        for v in reversed(self.preorder()):
            ch = self.children[v]
            leafset[v] = frozenset(c for u in ch for c in leafset[u]) if ch else frozenset((str(self.names[v]),))
            if v == self.root:
                continue
            side = leafset[v]
            key = everything - side if first in side else side
            if key:
                splits[key] = splits.get(key, 0.0) + float(self.lengths[v])
        return splits

    def to_newick(self) -> str:
        """Newick text as scikit-bio writes it: ``str(length)`` for every non-root node, ``;`` at the end."""

        def label(v: int) -> str:
            name = self.names[v]
            if not name:
                return ""
            if any(ch in _NEWICK_OPERATORS for ch in name):
                return "'" + name.replace("'", "''") + "'"
            return name.replace(" ", "_")

        def write(v: int) -> str:
            inner = "(" + ",".join(write(c) for c in self.children[v]) + ")" if self.children[v] else ""
            return inner + label(v) + ("" if v == self.root else f":{float(self.lengths[v])!r}")

        return write(self.root) + ";"

    @classmethod
    def from_newick(cls, text: str) -> Tree:
        """Parse Newick text (labels, quoted labels, ``:length``; comments in brackets are skipped).

        Nodes are numbered in preorder; a missing length reads as 0.0. Underscores in unquoted labels become
        spaces, as in scikit-bio.
        """
        tokens = re.findall(r"'(?:[^']|'')*'|[(),:;]|[^\s(),:;\[']+", re.sub(r"\[[^\]]*\]", "", text))
        names: list[str | None] = []
        children: list[list[int]] = []
        lengths: list[float] = []
        stack: list[int] = []
        current = -1
        expect_length = False

        def new_node() -> int:
            names.append(None)
            children.append([])
            lengths.append(0.0)
            return len(names) - 1

        for tok in tokens:
            if tok == ";":
                break
            if expect_length:
                lengths[current] = float(tok)
                expect_length = False
            elif tok == "(":
                node = new_node()
                if stack:
                    children[stack[-1]].append(node)
                stack.append(node)
                current = -1
            elif tok in ",)":
                if current == -1 and stack:  # an empty leaf, e.g. "(,a)"
                    children[stack[-1]].append(new_node())
                current = stack.pop() if tok == ")" else -1
            elif tok == ":":
                if current == -1:
                    current = new_node()
                    if stack:
                        children[stack[-1]].append(current)
                expect_length = True
            else:
                name = tok[1:-1].replace("''", "'") if tok.startswith("'") else tok.replace("_", " ")
                if current == -1:
                    current = new_node()
                    if stack:
                        children[stack[-1]].append(current)
                names[current] = name
        if stack or not names:
            raise ValueError("`text` is not a complete Newick tree: unbalanced parentheses or no nodes.")
        return cls(tuple(names), tuple(tuple(c) for c in children), tuple(lengths), 0)


def robinson_foulds(tree_a: Tree, tree_b: Tree) -> int:
    """Unrooted Robinson–Foulds distance: the number of non-trivial splits found in one tree but not the other.

    0 means the same unrooted topology. Both trees must have the same set of leaf names.
    """
    if set(tree_a.leaf_names) != set(tree_b.leaf_names):
        raise ValueError(
            "`tree_a` and `tree_b` must have the same leaf names to be compared; differing: "
            f"{sorted(set(tree_a.leaf_names) ^ set(tree_b.leaf_names))}."
        )
    n = len(tree_a.leaf_names)

    def nontrivial(tree: Tree) -> set[frozenset[str]]:
        return {s for s in tree.bipartitions() if 1 < len(s) < n - 1}

    return len(nontrivial(tree_a) ^ nontrivial(tree_b))


# ----------------------------------------------------------------------------------------------------------------------
# Neighbour joining
# ----------------------------------------------------------------------------------------------------------------------


def _check_distance(distance: Any) -> np.ndarray:
    """float64 copy of a square, finite, symmetric (to 1000 ulps of its dtype), zero-diagonal matrix, M ≥ 3."""
    try:
        arr = np.asarray(distance)
        d = np.array(arr, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`distance` could not be converted to a float array ({err}).") from None
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"`distance` must be a square (M, M) matrix, got shape {d.shape}.")
    if d.shape[0] < 3:
        raise ValueError(f"`distance` is {d.shape[0]}×{d.shape[0]}; a tree needs at least 3 models.")
    if not np.isfinite(d).all():
        raise ValueError(f"`distance` contains {int((~np.isfinite(d)).sum())} NaN or inf entries; fix them first.")
    ulp = np.finfo(arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64).eps
    tol = 1000 * ulp * max(1.0, float(np.abs(d).max()))
    asym = float(np.abs(d - d.T).max())
    if asym > tol:
        raise ValueError(
            f"`distance` is not symmetric (max |D - Dᵀ| = {asym:.3g}); pass a symmetric matrix, e.g. (D + D.T) / 2."
        )
    if float(np.abs(np.diag(d)).max()) > tol:
        raise ValueError("`distance` must have a zero diagonal (a model is at distance 0 from itself).")
    d = (d + d.T) / 2  # exact no-op on an exactly symmetric matrix
    np.fill_diagonal(d, 0.0)
    return d


def _check_names(names: Sequence[Any] | None, m: int) -> tuple[str, ...]:
    if names is None:
        return tuple(str(i) for i in range(m))  # scikit-bio's default DistanceMatrix ids
    names = tuple(str(n) for n in names)
    if len(names) != m:
        raise ValueError(f"`names` has {len(names)} entries but `distance` is {m}×{m}; pass one name per model.")
    if len(set(names)) != m:
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"`names` must be unique; duplicated: {dup}.")
    return names


def _min_q(d: np.ndarray, sums: np.ndarray, lower_inf: np.ndarray) -> tuple[int, int]:
    """(i, j), i < j, minimising Q_ij = (n − 2)·D_ij − S_i − S_j: the first in row-major order on ties.

    Reproduces scikit-bio's ``nj_minq_cy`` to the last bit: it scans row i keeping the running minimum of
    q⁺_ij = (n − 2)·D_ij − S_j against min_q + S_i (strict <). Here each row's minimum of q⁺ over j > i is
    vectorised, in row blocks that skip most of the lower triangle; the scan is then replayed over the rows whose Q
    is within rounding of the best (no other row can win). ``lower_inf`` is a (b, b) mask, +inf where col ≤ row.
    """
    n = d.shape[0]
    block = lower_inf.shape[0]
    row_min, cols = np.empty(n - 1), np.empty(n - 1, dtype=np.intp)
    for r0 in range(0, n - 1, block):
        r1 = min(r0 + block, n - 1)
        q = d[r0:r1, r0:] * (n - 2.0)
        q -= sums[r0:]
        q[:, : r1 - r0] += lower_inf[: r1 - r0, : r1 - r0]  # keep j > i only
        c = q.argmin(axis=1)
        row_min[r0:r1] = q[np.arange(r1 - r0), c]
        cols[r0:r1] = c + r0
    q = row_min - sums[: n - 1]
    tol = 64 * np.finfo(np.float64).eps * (np.abs(row_min).max() + np.abs(sums).max())
    min_q, pick = np.inf, 0
    for i in np.flatnonzero(q <= q.min() + tol):
        if row_min[i] < min_q + sums[i]:
            min_q, pick = row_min[i] - sums[i], i
    return int(pick), int(cols[pick])


def _nj_linkage(d: np.ndarray) -> np.ndarray:
    """Neighbour joining on ``d`` (overwritten), as scikit-bio 0.7.0 ``_nj``: an (M − 1, 4) linkage matrix.

    Row t holds (cluster a, cluster b, length a, length b) of the t-th join; clusters ≥ M are earlier joins.
    The working matrix shrinks by moving its last row/column into the slot of j, so "first in row-major order"
    refers to this layout, exactly as in scikit-bio.
    """
    m = n = d.shape[0]
    sums = d.sum(axis=0)
    idxs = np.arange(m)
    lm = np.empty((m - 1, 4))
    block = max(64, -(-m // 8))  # row blocks of the Q scan; the blocks skip most of the lower triangle
    lower_inf = np.where(np.tril(np.ones((block, block), dtype=bool)), np.inf, 0.0)
    while n > 3:
        dm, s, ix = d[:n, :n], sums[:n], idxs[:n]
        i, j = _min_q(dm, s, lower_inf)
        half = d[i, j] / 2
        dm[i] += dm[j]
        dm[i] /= 2  # (D_ik + D_jk) / 2
        delta = (s[i] - s[j]) / (2 * n - 4)
        lm[m - n] = ix[i], ix[j], half + delta, half - delta  # l_i = D_ij/2 + (S_i − S_j)/(2(n − 2)), l_j
        s -= dm[i]
        s -= half  # S_k − D_ik − D_jk + D_uk
        dm[i] -= half  # D_uk = (D_ik + D_jk − D_ij) / 2
        dm[:, i] = dm[i]
        last = n - 1
        dm[j] = dm[last]
        dm[:, j] = dm[:, last]
        s[j] = s[last]
        s[i] = dm[i, :last].sum()
        ix[i] = 2 * m - n
        ix[j] = ix[last]
        n -= 1
    l0 = (d[0, 1] + d[0, 2] - d[1, 2]) / 2
    lm[m - 3] = idxs[1], idxs[2], d[0, 1] - l0, d[0, 2] - l0
    lm[m - 2] = idxs[0], 2 * m - 3, l0, 0.0
    return lm


def _tree_from_linkage(lm: np.ndarray, names: tuple[str, ...], neg_as_zero: bool) -> Tree:
    """Nodes 0..M−1 are the leaves, M..2M−4 the joins in order, 2M−3 the trifurcating root."""
    m = len(names)
    n_nodes = 2 * m - 2
    children: list[tuple[int, ...]] = [()] * n_nodes
    lengths = [0.0] * n_nodes

    def attach(node: int, kids: tuple[int, ...], lens: tuple[float, ...]) -> None:
        children[node] = kids
        for kid, length in zip(kids, lens, strict=True):
            lengths[kid] = max(float(length), 0.0) if neg_as_zero else float(length)

    for t, (a, b, la, lb) in enumerate(lm[:-2]):
        attach(m + t, (int(a), int(b)), (la, lb))
    (c0, _, l0, _), (c1, c2, l1, l2) = lm[-1], lm[-2]
    root = n_nodes - 1
    attach(root, (int(c0), int(c1), int(c2)), (l0, l1, l2))  # skbio numbers the root 2M−2; it skips 2M−3
    return Tree(names + (None,) * (m - 2), tuple(children), tuple(lengths), root)


def neighbor_joining(distance: Any, names: Sequence[Any] | None = None, *, neg_as_zero: bool = True) -> Tree:
    """Neighbour-joining tree of M ≥ 3 models from their (M, M) distance matrix (Saitou & Nei 1987).

    While n > 3 clusters remain: S_i = Σ_k D_ik; join the pair minimising Q_ij = (n − 2)·D_ij − S_i − S_j (strict <,
    first in row-major order on ties); branch lengths l_i = D_ij/2 + (S_i − S_j)/(2(n − 2)), l_j = D_ij − l_i; the
    new cluster u gets D_uk = (D_ik + D_jk − D_ij)/2. The last three clusters hang from a trifurcating root. NJ
    recovers any additive (tree-metric) distance exactly (Gascuel & Steel 2006). This is scikit-bio 0.7.0
    ``skbio.tree.nj`` operation for operation, so topology, node order, Newick text and lengths agree.

    Args:
      distance: (M, M) symmetric distance matrix with a zero diagonal, e.g. from :func:`jsd_distance`.
      names: one unique label per model (default ``"0"``, ``"1"``, ... as scikit-bio).
      neg_as_zero: set negative branch lengths to 0 (scikit-bio's default).

    Returns:
      The unrooted :class:`Tree` (root with three children).
    """
    d = _check_distance(distance)
    names = _check_names(names, d.shape[0])
    return _tree_from_linkage(_nj_linkage(d), names, neg_as_zero)
