"""Feature reconstruction measures: GFRE, GFRD and LFRE (Goscinski, Fraux, Imbalzano & Ceriotti 2021, "The role of
feature space in atomistic learning", Mach. Learn.: Sci. Technol. 2, 025028), with scikit-matter 0.4.1's defaults.

How well do the features X reconstruct the features Y?

- Split: unless indices are given, sklearn ``train_test_split(arange(N), test_size=0.5, train_size=0.5,
  shuffle=True, random_state=0x5F3759DF)``: ``RandomState(seed).permutation(N)``, test = its first ceil(N/2)
  entries, train = the next floor(N/2) (in permutation order). One given set → the other is its sorted complement.
- Scaling: X and Y each centred and divided by sqrt(total variance) fitted on the train rows
  (``StandardFlexibleScaler``), so the error of the trivial predictor 0 is 1 on the train set; ``scale="all"`` fits
  it on every row instead, as seed 003 §II A scales "on the analysis dataset".
- GFRE(X→Y) = sqrt(mean_test ‖y_i − x_i W‖²), W from :func:`jaxalign.ridge.fit_ridge2fold` on the train rows.
- GFRD(X→Y) = sqrt(mean_test ‖ŷ_i − x_i Q‖²), ŷ = x W and Q the orthogonal Procrustes map of the train rows X → Ŷ,
  both zero-padded to max(d_X, d_Y) columns (the anchor crashes when d_X > d_Y, scikit-matter issue #269; the
  padding makes the definition symmetric).
- LFRE(X→Y, k) = sqrt(mean_test ‖y_i − ỹ_i‖²), ỹ_i = ȳ + (x_i − x̄) W⁽ⁱ⁾: W⁽ⁱ⁾ is a Ridge2FoldCV fit on the k train
  points nearest to x_i (squared Euclidean distance in scaled X, nearest first), centred on their means x̄, ȳ. The
  local fits use the same seeded 2-fold split of the k neighbours (as scikit-matter's shared estimator does).

Seed 003 uses k = min(d_X, d_Y); scikit-matter has no default ``n_local_points``, so ``k`` is required here too.
LFRE batches the local fits with ``vmap`` over tiles of test points (``map_row_tiles``, sharded over a device mesh);
its neighbour search is a tiled query-vs-train top-k that never holds more than (tile, n_train) distances.

float32: the final ridge fit drops round-off singular values (:mod:`jaxalign.ridge`), so float32 results track float64
(and the anchor's float64 values) to ~1e-6. The anchor run in float32 inverts the round-off singular value of every
rank-deficient neighbourhood (k centred points in d ≥ k dimensions) and drifts by ~1e-3 in LFRE.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxalign._checks import as_features, check_same_n, is_concrete, non_finite_rows, raise_non_finite
from jaxalign._lapack import map_fits, shares_cpu_pool
from jaxalign.cpu import limit_lapack_threads
from jaxalign.neighbors import neighbor_graph
from jaxalign.preprocessing import center_scale_total_variance
from jaxalign.ridge import DEFAULT_ALPHAS, SEED, check_alphas, fit_predict_ridge2fold, fit_ridge2fold
from jaxalign.tiling import TILE_BUDGET, default_tile, map_row_tiles, resolve_mesh, safe_sqrt

__all__ = ["gfrd", "gfre", "lfre", "pointwise_gfrd", "pointwise_gfre", "pointwise_lfre", "train_test_indices"]

#: the rows a scaler can be fitted on (``scale``): the train rows (scikit-matter) or all of them (seed 003).
SCALES = ("train", "all")
#: total variance below which a feature set cannot be scaled (``StandardFlexibleScaler``'s ``atol``).
MIN_TOTAL_VARIANCE = 1e-12


# ---------------------------------------------------------------------------------------------------------------------
# split, validation, scaling


def _check_index_set(idx: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(idx)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"`{name}` must be a non-empty 1-D array of row indices, got shape {arr.shape}.")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"`{name}` must hold integer row indices, got dtype {arr.dtype}; use np.flatnonzero(mask).")
    if arr.min() < 0 or arr.max() >= n:
        raise ValueError(f"`{name}` holds indices outside [0, {n}); they must be rows of `x` and `y`.")
    return arr.astype(np.int64)


def train_test_indices(
    n: int, *, train_idx: Any = None, test_idx: Any = None, random_state: int = SEED
) -> tuple[np.ndarray, np.ndarray]:
    """The (train, test) row indices scikit-matter's reconstruction measures use.

    With neither given: sklearn ``train_test_split(arange(n), test_size=0.5, train_size=0.5, shuffle=True,
    random_state=random_state)``, i.e. p = ``RandomState(random_state).permutation(n)``, test = p[:ceil(n/2)],
    train = p[ceil(n/2):]. With one given, the other is the sorted complement (``np.setdiff1d``).
    """
    if train_idx is None and test_idx is None:
        perm = np.random.RandomState(random_state).permutation(n)
        n_test = -(-n // 2)
        return perm[n_test : n_test + n // 2], perm[:n_test]
    train = None if train_idx is None else _check_index_set(train_idx, n, "train_idx")
    test = None if test_idx is None else _check_index_set(test_idx, n, "test_idx")
    if train is None:
        train = np.setdiff1d(np.arange(n), test)
    if test is None:
        test = np.setdiff1d(np.arange(n), train)
    return train, test


@jax.jit
def _input_stats(x: jax.Array, y: jax.Array, rows: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Rows holding NaN/inf and total variance (sum of column variances) on ``rows``, of ``x`` and ``y`` at once."""
    return (
        jnp.stack([non_finite_rows(x), non_finite_rows(y)]),
        jnp.stack([jnp.var(a[rows], axis=0).sum() for a in (x, y)]),
    )


def _validate(
    x: Any, y: Any, train_idx: Any, test_idx: Any, alphas: Any, random_state: int, scale: str
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """Eager checks shared by every measure; returns (x, y, train, test, alphas) ready for the jitted cores."""
    if scale not in SCALES:
        raise ValueError(f"`scale` must be one of {SCALES} (the rows the total-variance scaler is fitted on), got "
                         f"{scale!r}.")  # fmt: skip
    x = as_features(x, "x", check_finite=False)
    y = as_features(y, "y", check_finite=False)
    check_same_n(x, y)
    train, test = train_test_indices(x.shape[0], train_idx=train_idx, test_idx=test_idx, random_state=random_state)
    if train.size < 2:
        raise ValueError(
            f"the train set has {train.size} row(s); scaling and the 2-fold ridge need at least 2. "
            "Pass more samples or a larger `train_idx`."
        )
    if test.size < 1:
        raise ValueError("the test set is empty; pass `test_idx` or leave some rows out of `train_idx`.")
    train_rows, test_rows = jnp.asarray(train), jnp.asarray(test)
    if is_concrete(x) and is_concrete(y):
        fit_rows = train_rows if scale == "train" else jnp.arange(x.shape[0])
        bad_rows, total_vars = jax.device_get(_input_stats(x, y, fit_rows))
        for name, bad in zip(("x", "y"), bad_rows, strict=True):
            raise_non_finite(name, int(bad))
        for name, total_var in zip(("x", "y"), total_vars, strict=True):
            if total_var < MIN_TOTAL_VARIANCE:
                raise ValueError(
                    f"`{name}` has total variance {total_var:.3g} < {MIN_TOTAL_VARIANCE:g} on the {scale} rows, so it "
                    "cannot be scaled to unit total variance; check for constant or all-zero features."
                )
    dtype = jnp.result_type(x.dtype, y.dtype)
    alphas = jnp.asarray(check_alphas(alphas), dtype=dtype)
    return x.astype(dtype), y.astype(dtype), train_rows, test_rows, alphas


def _scaled_split(x: jax.Array, train: jax.Array, test: jax.Array, scale: str) -> tuple[jax.Array, jax.Array]:
    """Train and test rows of ``x`` scaled by the total-variance scaler fitted on the train rows (``scale="train"``)
    or on every row (``"all"``)."""
    scaled = center_scale_total_variance(x, fit_rows=train if scale == "train" else None)
    return scaled[train], scaled[test]


def _row_norm(r: jax.Array) -> jax.Array:
    """‖r_i‖ per row, with a finite gradient at 0 (perfect reconstruction)."""
    return safe_sqrt(jnp.sum(r * r, axis=-1))


@jax.jit
def _rms(pointwise: jax.Array) -> jax.Array:
    return safe_sqrt(jnp.mean(pointwise**2))


# ---------------------------------------------------------------------------------------------------------------------
# global measures


def _procrustes(a: jax.Array, b: jax.Array) -> jax.Array:
    """Orthogonal Q minimising ‖A Q − B‖_F (Schönemann 1966): U Vᵀ from the SVD of Aᵀ B (scipy's convention)."""
    u, _, vt = jnp.linalg.svd(a.T @ b, full_matrices=False)
    return u @ vt


def _pad(a: jax.Array, rows: int, cols: int) -> jax.Array:
    return jnp.pad(a, ((0, rows - a.shape[0]), (0, cols - a.shape[1])))


@functools.partial(jax.jit, static_argnames=("distortion", "random_state", "shuffle", "scale"))
def _pointwise_global(
    x, y, train, test, alphas, *, distortion: bool, random_state: int, shuffle: bool, scale: str = "train"
) -> jax.Array:
    """Pointwise GFRE (``distortion=False``) or GFRD (``distortion=True``) of the test rows from one ridge fit.

    The flag is static so GFRE never pays for the Procrustes step (an SVD and N·d² products) that only GFRD needs.
    """
    x_train, x_test = _scaled_split(x, train, test, scale)
    y_train, y_test = _scaled_split(y, train, test, scale)
    fit = fit_ridge2fold(x_train, y_train, alphas, random_state=random_state, shuffle=shuffle)
    if not distortion:
        return _row_norm(y_test - x_test @ fit.weights)
    # distortion: zero-pad X and W to max(d_x, d_y) columns, Procrustes X_train → Ŷ_train, compare on the test rows
    width = max(x.shape[1], y.shape[1])
    w = _pad(fit.weights, width, width)
    x_train, x_test = _pad(x_train, x_train.shape[0], width), _pad(x_test, x_test.shape[0], width)
    q = _procrustes(x_train, x_train @ w)
    return _row_norm(x_test @ w - x_test @ q)


_GLOBAL_ARGS = """
    Args:
      x: (N, d_x) source features (numpy, jax or torch).
      y: (N, d_y) target features, row i describing the same sample as row i of ``x``.
      train_idx, test_idx: row indices of the train and test sets; one given → the other is its complement;
        neither → scikit-matter's seeded 50/50 split (:func:`train_test_indices`).
      alphas: relative singular-value cutoffs of the ridge (scikit-matter: ``geomspace(1e-9, 0.9, 20)``).
      random_state: seed of the train/test split and of the ridge's 2-fold split (scikit-matter: 0x5F3759DF).
      shuffle: shuffle the train rows before the ridge's 2-fold split.
      scale: the rows each total-variance scaler is fitted on: ``"train"`` (scikit-matter) or ``"all"`` (seed 003
        §II A: zero mean and unit total variance "on the analysis dataset", train and test rows together).
"""


def pointwise_gfre(
    x: Any,
    y: Any,
    *,
    train_idx: Any = None,
    test_idx: Any = None,
    alphas: Any = DEFAULT_ALPHAS,
    random_state: int = SEED,
    shuffle: bool = True,
    scale: str = "train",
) -> jax.Array:
    """Per-test-point global feature reconstruction error ‖y_i − x_i W‖ (scikit-matter
    ``pointwise_global_reconstruction_error``), in the order of the test indices.
    """
    x, y, train, test, alphas = _validate(x, y, train_idx, test_idx, alphas, random_state, scale)
    return _pointwise_global(
        x, y, train, test, alphas, distortion=False, random_state=int(random_state), shuffle=bool(shuffle), scale=scale
    )


def gfre(
    x: Any,
    y: Any,
    *,
    train_idx: Any = None,
    test_idx: Any = None,
    alphas: Any = DEFAULT_ALPHAS,
    random_state: int = SEED,
    shuffle: bool = True,
    scale: str = "train",
) -> jax.Array:
    """Global feature reconstruction error GFRE(X→Y) = sqrt(mean_test ‖y_i − x_i W‖²) (Goscinski et al. 2021;
    scikit-matter ``global_reconstruction_error``).

    0 means Y is a linear function of X; about 1 means X carries no linear information on Y (scaled Y has unit total
    variance). Not symmetric: compare GFRE(X→Y) with GFRE(Y→X).
    """
    return _rms(
        pointwise_gfre(
            x,
            y,
            train_idx=train_idx,
            test_idx=test_idx,
            alphas=alphas,
            random_state=random_state,
            shuffle=shuffle,
            scale=scale,
        )
    )


def pointwise_gfrd(
    x: Any,
    y: Any,
    *,
    train_idx: Any = None,
    test_idx: Any = None,
    alphas: Any = DEFAULT_ALPHAS,
    random_state: int = SEED,
    shuffle: bool = True,
    scale: str = "train",
) -> jax.Array:
    """Per-test-point global feature reconstruction distortion ‖ŷ_i − x_i Q‖ (scikit-matter
    ``pointwise_global_reconstruction_distortion``), in the order of the test indices; works for any d_x, d_y.
    """
    x, y, train, test, alphas = _validate(x, y, train_idx, test_idx, alphas, random_state, scale)
    return _pointwise_global(
        x, y, train, test, alphas, distortion=True, random_state=int(random_state), shuffle=bool(shuffle), scale=scale
    )


def gfrd(
    x: Any,
    y: Any,
    *,
    train_idx: Any = None,
    test_idx: Any = None,
    alphas: Any = DEFAULT_ALPHAS,
    random_state: int = SEED,
    shuffle: bool = True,
    scale: str = "train",
) -> jax.Array:
    """Global feature reconstruction distortion GFRD(X→Y) = sqrt(mean_test ‖ŷ_i − x_i Q‖²) (Goscinski et al. 2021;
    scikit-matter ``global_reconstruction_distortion``).

    ŷ = x W is the linear reconstruction and Q the orthogonal map of the train rows X → Ŷ: GFRD measures how far the
    linear map is from a rotation (0: X and its reconstruction of Y differ only by an isometry). X and Ŷ are
    zero-padded to max(d_x, d_y) columns, so d_x > d_y works too (the anchor crashes there).
    """
    return _rms(
        pointwise_gfrd(
            x,
            y,
            train_idx=train_idx,
            test_idx=test_idx,
            alphas=alphas,
            random_state=random_state,
            shuffle=shuffle,
            scale=scale,
        )
    )


for _fn in (pointwise_gfre, gfre, pointwise_gfrd, gfrd):
    _fn.__doc__ += _GLOBAL_ARGS


# ---------------------------------------------------------------------------------------------------------------------
# local measure


def _lfre_tile(
    rows, x_train, y_train, x_test, y_test, neighbours, alphas, *, random_state: int, shuffle: bool, mesh: Mesh | None
):
    """Pointwise LFRE of the test points ``rows``: one local ridge fit per point on its train neighbours, batched
    (:func:`~jaxalign._lapack.map_fits`: vmapped, or one at a time per device on a multi-device CPU mesh)."""
    query, neighbours = x_test[rows], neighbours[rows]

    def one(xq: jax.Array, yq: jax.Array, nb: jax.Array) -> jax.Array:
        x_loc, y_loc = x_train[nb], y_train[nb]
        x_mean, y_mean = x_loc.mean(0), y_loc.mean(0)
        pred = fit_predict_ridge2fold(
            x_loc - x_mean, y_loc - y_mean, xq - x_mean, alphas, random_state=random_state, shuffle=shuffle
        )
        return _row_norm(yq - (y_mean + pred))

    return map_fits(one, query, y_test[rows], neighbours, mesh=mesh)


@functools.partial(jax.jit, static_argnames=("k", "random_state", "shuffle", "scale", "tile", "mesh"))
def _pointwise_lfre(
    x,
    y,
    train,
    test,
    alphas,
    *,
    k: int,
    random_state: int,
    shuffle: bool,
    tile: int,
    mesh: Mesh | None,
    scale: str = "train",
) -> jax.Array:
    x_train, x_test = _scaled_split(x, train, test, scale)
    y_train, y_test = _scaled_split(y, train, test, scale)
    graph = neighbor_graph(x_test, x_train, k=k, metric="euclidean", exclude_self=False, mesh=mesh)
    fn = functools.partial(_lfre_tile, random_state=random_state, shuffle=shuffle, mesh=mesh)
    return map_row_tiles(
        fn, test.shape[0], x_train, y_train, x_test, y_test, graph.indices, alphas, tile=tile, mesh=mesh
    )


def pointwise_lfre(
    x: Any,
    y: Any,
    *,
    k: int,
    train_idx: Any = None,
    test_idx: Any = None,
    alphas: Any = DEFAULT_ALPHAS,
    random_state: int = SEED,
    shuffle: bool = True,
    scale: str = "train",
    tile: int | None = None,
    mesh: Mesh | str | None = "auto",
) -> jax.Array:
    """Per-test-point local feature reconstruction error ‖y_i − ỹ_i‖ (scikit-matter
    ``pointwise_local_reconstruction_error`` with ``n_local_points=k``), in the order of the test indices.
    """
    x, y, train, test, alphas = _validate(x, y, train_idx, test_idx, alphas, random_state, scale)
    n_train = int(train.shape[0])
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"`k` must be an integer number of local train points, got {k!r}.")
    if not 2 <= k <= n_train:
        raise ValueError(
            f"`k`={k} local points is out of range: it must satisfy 2 <= k <= {n_train} (the number of train "
            "points; the local 2-fold ridge needs 2). Lower `k` or pass more samples."
        )
    n_test = int(test.shape[0])
    if tile is None:
        # one local fit per row: its neighbours' x and y, and the (d_x, k + 1) matrix of its row-space QR
        width = k * (2 * x.shape[1] + y.shape[1]) + x.shape[1]
        tile = default_tile(n_test, width, TILE_BUDGET)
    mesh = resolve_mesh(mesh)
    run = functools.partial(
        _pointwise_lfre,
        k=int(k),
        random_state=int(random_state),
        shuffle=bool(shuffle),
        scale=scale,
        tile=int(tile),
        mesh=mesh,
    )
    if not shares_cpu_pool(mesh) or not is_concrete(x):
        return run(x, y, train, test, alphas)
    # Several CPU devices run their fits one at a time each (map_fits); the LAPACK library's own threads would only
    # busy-wait against them (measured 7-30x slower on 2 cores), so it runs on one thread until the result exists.
    with limit_lapack_threads():
        return run(x, y, train, test, alphas).block_until_ready()


def lfre(
    x: Any,
    y: Any,
    *,
    k: int,
    train_idx: Any = None,
    test_idx: Any = None,
    alphas: Any = DEFAULT_ALPHAS,
    random_state: int = SEED,
    shuffle: bool = True,
    scale: str = "train",
    tile: int | None = None,
    mesh: Mesh | str | None = "auto",
) -> jax.Array:
    """Local feature reconstruction error LFRE(X→Y, k) = sqrt(mean_test ‖y_i − ỹ_i‖²) (Goscinski et al. 2021;
    scikit-matter ``local_reconstruction_error`` with ``n_local_points=k``).

    ỹ_i = ȳ + (x_i − x̄) W⁽ⁱ⁾ with W⁽ⁱ⁾ the Ridge2FoldCV fit on the k train points nearest to x_i (centred on their
    means x̄, ȳ). Seed 003 uses k = min(d_x, d_y); the reference anchors use k = 20. Time O(n_test · (n_train · d_x
    + k · d² )), memory O(tile · (n_train + k · d)).
    """
    return _rms(
        pointwise_lfre(
            x,
            y,
            k=k,
            train_idx=train_idx,
            test_idx=test_idx,
            alphas=alphas,
            random_state=random_state,
            shuffle=shuffle,
            scale=scale,
            tile=tile,
            mesh=mesh,
        )
    )


_LOCAL_ARGS = (
    _GLOBAL_ARGS
    + """      k: local train points per test point (scikit-matter's ``n_local_points``; required, 2 <= k <= n_train).
      tile: test points per tile (default keeps one (tile, n_train) distance block near 32 MiB).
      mesh: 1-D device mesh splitting the test tiles, ``"auto"`` (all devices) or ``None``.
"""
)
for _fn in (pointwise_lfre, lfre):
    _fn.__doc__ += _LOCAL_ARGS
