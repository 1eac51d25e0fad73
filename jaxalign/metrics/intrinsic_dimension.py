"""Intrinsic dimension from nearest-neighbour distances: TwoNN and the Levina–Bickel MLE (SPEC §5).

Both estimators read only the sorted Euclidean distances T_1 ≤ T_2 ≤ … of every point to its nearest *other* points,
i.e. a :func:`jaxalign.neighbors.knn` graph with ``metric="euclidean"`` (O(N·k) memory, reusable through ``graph=``).

- **TwoNN** (Facco, d'Errico, Rodriguez & Laio 2017, "Estimating the intrinsic dimension of datasets by a minimal
  neighborhood information", Sci. Rep. 7:12140; DADApy 0.3.4 ``Data.compute_id_2NN``). With μ_i = T_2(i)/T_1(i),
  F(μ) = 1 − μ^(−d), so −log(1 − F(μ)) = d·log μ:

  - ``algorithm="base"``: sort log μ ascending and keep the smallest n_eff = int(mu_fraction·N); regress
    y_i = −log(1 − i/N), i = 1..n_eff (denominator N, not n_eff) on x_i = the i-th sorted log μ through the origin:
    d = Σ x_i y_i / Σ x_i² (DADApy fits the same one-parameter model with ``curve_fit``).
  - ``algorithm="ml"``: d = (N − 1) / Σ_i log μ_i over all points (mu_fraction is not used).

- **MLE** (Levina & Bickel 2004, "Maximum likelihood estimation of intrinsic dimension", NIPS 17; scikit-dimension
  0.5.0 ``MLE().fit(X, n_neighbors=k, comb=...)``): per point, with the k nearest other points,
  m_k(x) = (k − 1) / Σ_{j=1..k−1} log(T_k/T_j) (``unbiased=True``: k − 2 instead of k − 1). ``comb="mle"`` pools
  them as 1 / mean(1/m_k) (MacKay & Ghahramani's correction), ``"mean"`` is the arithmetic mean and ``"median"``
  the median.

**Duplicate rows** make T_1 = 0 and both estimators degenerate (the anchors return inf, NaN or 0 with a warning).
``on_duplicates="raise"`` rejects them; ``on_duplicates="drop"`` (default) estimates on the *distinct* rows, exactly as
if ``np.unique(x, axis=0)`` had been passed: every point's copies are skipped in its neighbour list, a group of
identical neighbours counts once, each group of identical rows contributes one point, and N in the formulas is the
number of distinct rows. This is done by masking inside the jit-compiled core (pure; no boolean indexing), so it
also runs under ``jax.jit``. It needs a graph wide enough to see past the copies; the eager wrapper widens the graph
it builds (and warns with the counts), and under ``jit`` a too-narrow graph gives NaN rather than a wrong number.

**Equal distances** (a lattice, or any data whose neighbours sit on shells of one radius) make the estimators
undefined: TwoNN's μ = T_2/T_1 = 1 gives log μ = 0, so ``"base"`` fits 0/0 = NaN when at least the n_eff points of
the fit have μ = 1 and ``"ml"`` gives (N − 1)/0 = inf when all do; MLE's per-point m_k = (k − 1)/0 is infinite when
a point's k distances are equal (``"mean"``, and ``"median"`` when that is most points, give inf; ``"mle"`` only when
every point is affected). Eagerly, such a non-finite estimate raises ``ValueError`` with the count of those points and
the fix (MLE with a k spanning several neighbour shells; noise much smaller than the spacing is no fix, it only makes
μ ≈ 1 and TwoNN huge); under ``jit`` the values cannot be inspected and the NaN/inf is returned.

**Input kinds** follow :func:`jaxalign._checks.as_features`: integers through float64 to the working float, half
precision as float32, complex refused.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxalign import _double_float as df
from jaxalign._checks import as_features, check_k, is_concrete
from jaxalign.neighbors import NeighborGraph, check_graph, knn
from jaxalign.tiling import default_tile, map_row_tiles

__all__ = ["ALGORITHMS", "COMBS", "DUPLICATE_POLICIES", "distinct_neighbor_distances", "mle_id", "twonn"]

ALGORITHMS = ("base", "ml")
COMBS = ("mle", "mean", "median")
DUPLICATE_POLICIES = ("drop", "raise")


# --------------------------------------------------------------------------------------------------------------------
# Distances to distinct neighbours (duplicate handling by masking)


def distinct_neighbor_distances(
    indices: jax.Array, values: jax.Array, k: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Distances from every point to its ``k`` nearest *distinct* other rows, read from a Euclidean kNN graph.

    Rows at distance exactly 0 are copies of one another. Each group of copies is named by its smallest row index
    (its representative), which every member sees among its zero-distance neighbours when the graph is wide enough.
    In row i of the graph, entries at distance 0 (i's own copies) are skipped and, of several copies of the same
    neighbour, only the first counts: the remaining distances are those i would have in the deduplicated data set.

    Args:
      indices: (N, K) neighbour indices (self excluded), nearest first.
      values: (N, K) Euclidean distances, ascending.
      k: distinct neighbours wanted, ``k <= K``.

    Returns:
      ``(dist, keep, complete)``: ``dist`` (N, k) distances to the first k distinct neighbours; ``keep`` (N,) True
      for the representative of each group of identical rows (so ``keep.sum()`` is the number of distinct rows);
      ``complete`` (N,) True where the graph row held k distinct neighbours and all of the point's copies. The
      result is exact when ``complete`` holds for every kept row; otherwise the graph was too narrow.
    """
    position, keep, complete = _distinct_positions(indices, values, k)
    return jnp.take_along_axis(values, position, 1), keep, complete


def _distinct_positions(indices: jax.Array, values: jax.Array, k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(position (N, k) of the first k distinct neighbours in each graph row, keep, complete), as
    :func:`distinct_neighbor_distances` describes."""
    n, width = indices.shape
    arange = jnp.arange(n, dtype=indices.dtype)
    zero = values == 0
    n_copies = zero.sum(1)
    rep = jnp.minimum(arange, jnp.where(zero, indices, n).min(1))
    keep = rep == arange
    group = jnp.where(zero, -1, rep[indices])
    order = jnp.argsort(group, axis=1, stable=True)  # stable: within a group its nearest entry comes first
    sorted_group = jnp.take_along_axis(group, order, 1)
    first_sorted = jnp.concatenate([jnp.ones((n, 1), bool), sorted_group[:, 1:] != sorted_group[:, :-1]], axis=1)
    first = jnp.take_along_axis(first_sorted, jnp.argsort(order, axis=1), 1)
    valid = first & ~zero
    position = jnp.argsort(~valid, axis=1, stable=True)[:, :k]  # valid entries first, in distance order
    complete = (valid.sum(1) >= k) & (n_copies < width)
    return position, keep, complete


def _neighbour_distances(
    graph: NeighborGraph, k: int, on_duplicates: str
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """(dist (N, k), their neighbour indices (N, k), keep (N,), number of points used, invalid flag) under the
    duplicate policy.

    ``"raise"``: the graph's first k neighbours of every point (the wrapper also uses this path once it has checked
    that there are no duplicates); the flag is set when any point has a copy. ``"drop"``: the distinct neighbours of
    the distinct rows; the flag is set when the graph is too narrow for that.
    """
    if on_duplicates == "raise":
        keep = jnp.ones(graph.n, bool)
        return graph.values[:, :k], graph.indices[:, :k], keep, jnp.asarray(graph.n), (graph.values[:, 0] == 0).any()
    position, keep, complete = _distinct_positions(graph.indices, graph.values, k)
    dist = jnp.take_along_axis(graph.values, position, 1)
    neighbours = jnp.take_along_axis(graph.indices, position, 1)
    return dist, neighbours, keep, keep.sum(), ~(complete | ~keep).all()


def _log_ratios(x: jax.Array | None, dist: jax.Array, neighbours: jax.Array, keep: jax.Array) -> jax.Array:
    """log(T_k / T_j), j = 1..k−1, per point (N, k − 1); 0 for the points not used.

    With the features, each ratio is computed from double-float squared distances (:func:`jaxalign._double_float.
    accurate_sqdist`) as ½·log1p((T_k² − T_j²)/T_j²), the difference taken before rounding: relative accuracy of a
    few units of round-off in every ratio, however close T_j is to T_k. From the graph's rounded distances alone a
    ratio 1 + ε carries an error of ~u/ε relative (near-lattice data: float32 TwoNN off by 2e-4 at μ − 1 ≈ 1e-4).
    """
    if x is None:
        safe = jnp.where(keep[:, None], dist, 1)
        return jnp.log(safe[:, -1:] / safe[:, :-1])

    def rows_of(rows: jax.Array, feats: jax.Array, nbrs: jax.Array, used: jax.Array) -> jax.Array:
        hi, lo = df.accurate_sqdist(feats[rows][:, None, :], feats[nbrs[rows]])
        gap_hi, gap_lo = df.add((hi[:, -1:], lo[:, -1:]), df.neg((hi[:, :-1], lo[:, :-1])))
        near = hi[:, :-1] + lo[:, :-1]
        safe = used[rows][:, None] & (near > 0)
        return jnp.where(safe, 0.5 * jnp.log1p((gap_hi + gap_lo) / jnp.where(safe, near, 1)), 0)

    n, k = neighbours.shape
    tile = default_tile(n, width=k * x.shape[1])
    return map_row_tiles(rows_of, n, x, neighbours, keep, tile=tile, mesh=None).astype(dist.dtype)


# --------------------------------------------------------------------------------------------------------------------
# Jit-compiled cores


@functools.partial(jax.jit, static_argnames=("algorithm", "mu_fraction", "on_duplicates"))
def _twonn_core(
    graph: NeighborGraph, x: jax.Array | None, *, algorithm: str, mu_fraction: float, on_duplicates: str
) -> jax.Array:
    dist, neighbours, keep, n_used, invalid = _neighbour_distances(graph, 2, on_duplicates)
    dtype = dist.dtype
    n_used_f = n_used.astype(dtype)
    log_mu = jnp.where(keep, _log_ratios(x, dist, neighbours, keep)[:, 0], 0)
    if algorithm == "ml":
        d = (n_used_f - 1) / log_mu.sum()
    else:
        n = graph.n
        # n_eff = int(n_used * mu_fraction) exactly as Python computes it (float64 product, truncated), by table
        n_eff = jnp.asarray((np.arange(n + 1) * mu_fraction).astype(np.int32))[n_used]
        x = jnp.sort(jnp.where(keep, log_mu, jnp.inf))
        i = jnp.arange(1, n + 1)
        fit = i <= n_eff
        y = -jnp.log1p(-jnp.where(fit, i.astype(dtype) / n_used_f, 0))
        x = jnp.where(fit, x, 0)
        d = (x * y).sum() / (x * x).sum()
    return jnp.where(invalid, jnp.nan, d).astype(dtype)


@functools.partial(jax.jit, static_argnames=("k", "comb", "unbiased", "on_duplicates"))
def _mle_core(
    graph: NeighborGraph, x: jax.Array | None, *, k: int, comb: str, unbiased: bool, on_duplicates: str
) -> jax.Array:
    dist, neighbours, keep, n_used, invalid = _neighbour_distances(graph, k, on_duplicates)
    dtype = dist.dtype
    n_used_f = n_used.astype(dtype)
    kfac = k - 2 if unbiased else k - 1
    log_sum = _log_ratios(x, dist, neighbours, keep).sum(1)  # Σ_{j<k} log(T_k / T_j)
    if comb == "mle":
        d = kfac / (jnp.where(keep, log_sum, 0).sum() / n_used_f)
    else:
        m = kfac / log_sum
        if comb == "mean":
            d = jnp.where(keep, m, 0).sum() / n_used_f
        else:  # median of the kept values, as np.median (mean of the two middle ones for an even count)
            s = jnp.sort(jnp.where(keep, m, jnp.inf))
            d = (s[(n_used - 1) // 2] + s[n_used // 2]) / 2
    return jnp.where(invalid, jnp.nan, d).astype(dtype)


@functools.partial(jax.jit, static_argnames=("k", "on_duplicates"))
def _equal_distance_count(graph: NeighborGraph, *, k: int, on_duplicates: str) -> jax.Array:
    """Number of points used whose k nearest (distinct) neighbours are all equally far, T_k = T_1 (k = 2: μ = 1)."""
    dist, _, keep, _, _ = _neighbour_distances(graph, k, on_duplicates)
    return (keep & (dist[:, -1] == dist[:, 0])).sum()


# --------------------------------------------------------------------------------------------------------------------
# Eager validation and graph preparation


def _equal_distances_message(name: str, estimator: str, n_equal: int, n: int, k: int, value: float) -> str:
    if estimator == "TwoNN":
        return (
            f"`{name}` has {n_equal} of {n} points whose first and second nearest neighbours are equally far "
            f"(μ = T_2/T_1 = 1, as on a lattice or with duplicated spacings): the log μ TwoNN fits are all 0, so the "
            f"TwoNN estimate is undefined (got {value}). TwoNN needs points in general position: for lattice-like data "
            "use mle_id with a k that spans several neighbour shells (e.g. k=20), or perturb the points by noise "
            "comparable to their spacing (small noise only makes every μ ≈ 1 and the estimate huge)."
        )
    return (
        f"`{name}` has {n_equal} of {n} points whose k={k} nearest neighbours are all equally far (T_k = T_1, as on "
        f"a lattice): their MLE (k-1)/Σ log(T_k/T_j) divides by 0, so the estimate is undefined (got {value}). "
        "Raise `k` so that each neighbourhood spans several distances (e.g. k=20 on a square lattice), or use "
        "comb='mle' (pooled; infinite only when every point is affected)."
    )


def _refuse_equal_distances(
    value: jax.Array, graph: NeighborGraph, k: int, policy: str, name: str, estimator: str
) -> jax.Array:
    """``value``, or ``ValueError`` when it is a concrete NaN/inf caused by points whose k distances are all equal.

    Under ``jit`` (traced ``value``) nothing can be inspected and ``value`` is returned as it is.
    """
    if not is_concrete(value) or bool(jnp.isfinite(value)):
        return value
    n_equal = int(_equal_distance_count(graph, k=k, on_duplicates=policy))
    if n_equal:
        n = int(_neighbour_distances(graph, k, policy)[3]) if policy == "drop" else graph.n
        raise ValueError(_equal_distances_message(name, estimator, n_equal, n, k, float(value)))
    return value


def _check_choice(value: Any, name: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")


def _euclidean_graph(
    x: Any,
    graph: NeighborGraph | None,
    k: int,
    on_duplicates: str,
    tile: int | None,
    mesh: Mesh | str | None,
    estimator: str,
) -> tuple[NeighborGraph, str, jax.Array | None]:
    """A Euclidean, self-excluded kNN graph of ``x`` wide enough for ``k`` distinct neighbours, the policy the core
    should apply to it, and ``x`` as checked features (None when only a graph was given).

    Eagerly (concrete values): no duplicates → the graph truncated to ``k`` and policy ``"raise"`` (the plain path,
    no masking needed); duplicates → ValueError (``on_duplicates="raise"``) or a warning and, when needed, a wider
    graph so every distinct row sees ``k`` distinct neighbours. Under ``jit`` the graph is returned as given with
    the caller's policy (the core masks, or returns NaN).
    """
    user_graph = graph is not None
    if x is not None:
        x = as_features(x, "x", min_rows=k + 1)
    if graph is None:
        if x is None:
            raise ValueError("`x` is None and no `graph` was given; pass the (N, d) features or a knn graph.")
        graph = knn(x, k, metric="euclidean", tile=tile, mesh=mesh)
    else:
        n = None if x is None else x.shape[0]
        graph = check_graph(graph, "graph", metric="euclidean", n=n, purpose=estimator)
        if graph.n < k + 1:
            raise ValueError(f"`graph` has {graph.n} rows; {estimator} needs at least {k + 1} points.")
        check_graph(graph, "graph", metric="euclidean", k=k, purpose=estimator)  # wide enough (not truncated here)
    if not is_concrete(graph.values):
        return (graph.truncate(k) if on_duplicates == "raise" and graph.k > k else graph), on_duplicates, x

    n = graph.n
    n_dup = int((graph.values[:, 0] == 0).sum())
    if n_dup == 0:
        return (graph.truncate(k) if graph.k > k else graph), "raise", x
    if on_duplicates == "raise":
        raise ValueError(
            f"`x` has {n_dup} rows with an exact duplicate (nearest-neighbour distance 0), for which {estimator} "
            "divides by zero. Deduplicate the rows first (np.unique(x, axis=0)) or pass on_duplicates='drop'."
        )
    while True:
        _, keep, complete = _distinct_jit(graph.indices, graph.values, k)
        if bool((complete | ~keep).all()):
            break
        if graph.k >= n - 1:
            raise ValueError(
                f"`x` has only {int(keep.sum())} distinct rows; {estimator} needs at least {k + 1}. "
                "Pass more distinct samples."
            )
        if user_graph:
            raise ValueError(
                f"`graph` holds {graph.k} neighbours per point, too few to see past the duplicate rows of `x` "
                f"({n_dup} rows have an exact copy): every row must reach past its own copies and its neighbours'. "
                f"Build a wider graph (e.g. knn(x, {min(2 * graph.k, n - 1)}, metric='euclidean')) or deduplicate the "
                "rows first (np.unique(x, axis=0))."
            )
        graph = knn(x, min(2 * graph.k, n - 1), metric="euclidean", tile=tile, mesh=mesh)
    n_distinct = int(keep.sum())
    warnings.warn(
        f"`x` has {n_dup} rows with an exact duplicate; dropped {n - n_distinct} repeated rows and estimated "
        f"{estimator} on the {n_distinct} distinct rows. Deduplicate first (np.unique(x, axis=0)) to silence this.",
        stacklevel=3,
    )
    return graph, on_duplicates, x


_distinct_jit = jax.jit(distinct_neighbor_distances, static_argnames=("k",))


# --------------------------------------------------------------------------------------------------------------------
# Public estimators


def twonn(
    x: Any,
    *,
    algorithm: str = "base",
    mu_fraction: float = 0.9,
    on_duplicates: str = "drop",
    graph: NeighborGraph | None = None,
    tile: int | None = None,
    mesh: Mesh | str | None = "auto",
) -> jax.Array:
    """TwoNN intrinsic dimension (Facco et al. 2017), DADApy 0.3.4 ``Data(x).compute_id_2NN()`` conventions.

    μ_i = T_2(i)/T_1(i), the ratio of the distances to the second and first nearest neighbours.
    ``"base"``: least-squares slope through the origin of y_i = −log(1 − i/N) on the i-th smallest log μ,
    i = 1..int(mu_fraction·N). ``"ml"``: (N − 1) / Σ log μ_i. As in DADApy, ``mu_fraction = 1`` with ``"base"``
    switches to ``"ml"`` (the last y_i would be infinite).

    Args:
      x: (N, d) features (N ≥ 3), or None when ``graph`` is given.
      algorithm: ``"base"`` (linear fit, DADApy's default) or ``"ml"`` (maximum likelihood).
      mu_fraction: fraction of the smallest μ kept by ``"base"``, in (0, 1].
      on_duplicates: ``"drop"``: estimate on the distinct rows (as ``np.unique(x, axis=0)``), with a warning that
        counts them; ``"raise"``: ValueError. Under ``jit`` nothing can warn or raise: ``"raise"`` returns NaN when
        there are duplicates, ``"drop"`` returns NaN when ``graph`` is too narrow to see past them.
      graph: a precomputed ``knn(x, k >= 2, metric="euclidean")`` graph (one search serves TwoNN and MLE).
      tile, mesh: passed to :func:`jaxalign.knn` when a graph is built.

    Raises:
      ValueError: naming the argument, for bad input (complex, NaN/inf, too few distinct rows), duplicates with
        ``on_duplicates="raise"``, and, eagerly, when μ = 1 for so many points (a lattice) that the estimate is
        NaN (``"base"``: the n_eff smallest μ are all 1) or inf (``"ml"``: every μ is 1). Under ``jit`` those
        cases return NaN/inf.

    Returns:
      The intrinsic dimension, a scalar in the dtype of the distances.
    """
    _check_choice(algorithm, "algorithm", ALGORITHMS)
    _check_choice(on_duplicates, "on_duplicates", DUPLICATE_POLICIES)
    if isinstance(mu_fraction, bool) or not isinstance(mu_fraction, (int, float)) or not 0.0 < mu_fraction <= 1.0:
        raise ValueError(f"`mu_fraction` must be a number in (0, 1], got {mu_fraction!r}.")
    mu_fraction = float(mu_fraction)
    if algorithm == "base" and math.isclose(mu_fraction, 1.0):
        algorithm = "ml"
    g, policy, x = _euclidean_graph(x, graph, 2, on_duplicates, tile, mesh, "TwoNN")
    if algorithm == "base" and int(g.n * mu_fraction) < 1:
        raise ValueError(f"`mu_fraction`={mu_fraction} keeps no point of N={g.n}; raise it (default 0.9).")
    value = _twonn_core(g, x, algorithm=algorithm, mu_fraction=mu_fraction, on_duplicates=policy)
    return _refuse_equal_distances(value, g, 2, policy, "graph" if x is None else "x", "TwoNN")


def mle_id(
    x: Any,
    *,
    k: int = 20,
    comb: str = "mle",
    unbiased: bool = False,
    on_duplicates: str = "drop",
    graph: NeighborGraph | None = None,
    tile: int | None = None,
    mesh: Mesh | str | None = "auto",
) -> jax.Array:
    """Levina–Bickel maximum-likelihood intrinsic dimension, scikit-dimension 0.5.0 ``MLE().fit(x, n_neighbors=k)``.

    Per point m_k = (k − 1) / Σ_{j=1..k−1} log(T_k/T_j) over its k nearest other points (``unbiased``: k − 2);
    ``comb="mle"``: 1 / mean(1/m_k) = (k − 1) N / Σ_i Σ_j log(T_k/T_j); ``"mean"``: mean of m_k; ``"median"``.

    Args:
      x: (N, d) features (N > k), or None when ``graph`` is given.
      k: neighbours per point (self excluded), ``3 <= k <= N-1``. k = 2 is refused: the per-point estimate
        1/log(T_2/T_1) has infinite expectation (log μ is exponential), so ``"mean"`` does not converge, and
        ``unbiased`` would give 0/0. scikit-dimension clamps k ≥ N to N − 1 with a warning; this raises instead.
      comb: ``"mle"`` (pooled, scikit-dimension's default), ``"mean"`` or ``"median"``.
      unbiased: use k − 2 in the numerator (unbiased when there is no noise or boundary).
      on_duplicates: as in :func:`twonn` (``"drop"``: estimate on the distinct rows, with a warning).
      graph: a precomputed ``knn(x, k' >= k, metric="euclidean")`` graph.
      tile, mesh: passed to :func:`jaxalign.knn` when a graph is built.

    Raises:
      ValueError: naming the argument, for bad input (complex, NaN/inf, k out of range, too few distinct rows),
        duplicates with ``on_duplicates="raise"``, and, eagerly, when points whose k distances are all equal (a
        lattice) make the estimate infinite. Under ``jit`` that case returns inf.

    Returns:
      The intrinsic dimension, a scalar in the dtype of the distances.
    """
    _check_choice(comb, "comb", COMBS)
    _check_choice(on_duplicates, "on_duplicates", DUPLICATE_POLICIES)
    if not isinstance(unbiased, (bool, np.bool_)):
        raise ValueError(f"`unbiased` must be True or False, got {unbiased!r}.")
    if x is not None:
        x = as_features(x, "x")
    if isinstance(graph, NeighborGraph) or x is not None:
        check_k(k, graph.n if isinstance(graph, NeighborGraph) else x.shape[0], "k", low=3)
    g, policy, x = _euclidean_graph(x, graph, k, on_duplicates, tile, mesh, "MLE")
    value = _mle_core(g, x, k=int(k), comb=comb, unbiased=bool(unbiased), on_duplicates=policy)
    return _refuse_equal_distances(value, g, int(k), policy, "graph" if x is None else "x", "MLE")
