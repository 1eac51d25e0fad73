"""Exact decisions from fast floating-point distance blocks: round-off bounds, dyadic lattices, double-float keys.

Every kNN search and rank count compares entries of a block computed by the expanded formula (one matrix product per
tile), e.g. x·y − |y|²/2. Its round-off is bounded per row: |fl(x·y) − x·y| ≤ γ_n Σ|x_k y_k| ≤ γ_n |x||y| with
γ_n = n u / (1 − n u) and u the unit round-off, whatever the summation order (Higham 2002, "Accuracy and Stability of
Numerical Algorithms", §3.1), which assumes IEEE arithmetic in the working precision (CPU and GPU matrix products at
``Precision.HIGHEST``). A comparison whose computed gap exceeds the sum of the two bounds is *certain*; the others are
*ambiguous* and are decided again by keys computed from the rows themselves in double-float arithmetic
(:mod:`jaxalign._double_float`), accurate to about d·u² relative, as float64 would be for float32 data. Genuine
ties (equal exact values: duplicated rows, integer features) get equal keys, so they are broken by index and the
result depends neither on the tiling nor on the devices.

Data on a small dyadic lattice (binary fingerprints, small counts) need none of this: when every entry is an integer
multiple of one power of two 2^s and ``terms`` · M² ≤ 2^p (M = max|x| / 2^s, p the mantissa bits), every partial
sum of the expanded formula is an integer multiple of 2^(2s−1) smaller than 2^p of them, hence exact in any order.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxalign import _double_float as df

__all__ = [
    "exact_rescale",
    "exact_top_k",
    "expanded_bound",
    "expanded_frame",
    "for_each_true",
    "on_dyadic_lattice",
]


#: Flagged entries decided per step of the double-float loop; rows per step of the fallbacks.
ENTRY_CHUNK = 128
ROW_CHUNK = 8
#: Columns per chunk of the two-stage top-k (:func:`_partial_top_k`): fastest of 64/128/256 at k = 4–28, N = 50,000.
TOP_K_CHUNK = 64


def unit_roundoff(dtype: Any) -> float:
    """u = eps / 2: fl(a ∘ b) = (a ∘ b)(1 + δ) with |δ| ≤ u for normal results."""
    return float(jnp.finfo(dtype).eps) / 2


def gamma(n: int, dtype: Any) -> float:
    """γ_n = n u / (1 − n u), the bound on the relative error of n chained roundings (Higham 2002, Lemma 3.1)."""
    u = unit_roundoff(dtype)
    return n * u / (1 - n * u)


def _underflow(n: int, dtype: Any) -> float:
    """Absolute error of n roundings into the subnormal range (each at most the smallest subnormal)."""
    return n * float(jnp.finfo(dtype).smallest_subnormal)


def exact_rescale(*arrays: jax.Array) -> jax.Array:
    """The power of two 2^−h with max|x| < 2^h over ``arrays`` (1 if all are 0): multiplying by it is exact (barring
    underflow of entries 2^149 times smaller than the largest) and brings the largest entry into [1/2, 1), far from
    the under- and overflow of squares and products."""
    top = jnp.max(jnp.stack([jnp.abs(a).max() for a in arrays]))
    return 1 / df.power_of_two_above(top)


# ---- dyadic lattices -----------------------------------------------------------------------------------------------


def on_dyadic_lattice(*arrays: jax.Array, terms: int) -> jax.Array:
    """True (traced bool) when every entry of ``arrays`` is an integer multiple of q = 2^(h − b), where
    max|x| < 2^h and b = ⌊(p − ⌈log₂ terms⌉) / 2⌋ (p the mantissa bits): then M = max|x| / q < 2^b, so sums of up to
    ``terms`` products (|x|², x·y, |x|² + |y|² − 2x·y, x·y − |y|²/2) are integer multiples of q²/2 below 2^p of
    them — exact in any order — and no product under- or overflows. One scaled comparison per entry."""
    info = jnp.finfo(arrays[0].dtype)
    log_terms = math.ceil(math.log2(max(terms, 1)))
    bits = (info.nmant + 1 - log_terms) // 2
    top = jnp.max(jnp.stack([jnp.abs(a).max() for a in arrays]))
    _, high = jnp.frexp(jnp.where(top > 0, top, 1))  # max|x| < 2^high
    scale = jnp.ldexp(jnp.ones((), top.dtype), bits - high)  # 1 / q, a power of two: x · scale is exact
    on_lattice = jnp.stack(
        [((a * scale == jnp.round(a * scale)) & ((a == 0) | (a * scale != 0))).all() for a in arrays]
    )
    representable = (2 * (high - bits) - 1 >= info.minexp - info.nmant) & (2 * high + log_terms < info.maxexp)
    return on_lattice.all() & (representable | (top == 0))


def expanded_frame(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(data, exact, rows)`` for Euclidean blocks of x by the expanded formula: data = x·2^−h (exact, largest
    entry in [1/2, 1)), whether data lie on a dyadic lattice (:func:`on_dyadic_lattice` with 4·d terms), and the rows
    to use: data themselves on the lattice (every expanded distance exact), centred data elsewhere (round-off
    relative to the spread, not to the offset). The scale is a constant for the gradient."""
    data = x * jax.lax.stop_gradient(exact_rescale(x))
    exact = on_dyadic_lattice(data, terms=4 * data.shape[1])
    return data, exact, data - jnp.where(exact, 0.0, data.mean(0))


# ---- round-off bounds ----------------------------------------------------------------------------------------------


def expanded_bound(norm: jax.Array, radius: jax.Array, d: int, form: str) -> jax.Array:
    """Per-row bound on the round-off of the expanded block, for rows of norm ``norm`` (centred when Euclidean)
    against points of norm at most ``radius``, in d dimensions (1% margin for the rounded norms):

    - ``"ip"``: x·y, γ_d |x| R;
    - ``"half"``: x·y − |y|²/2 of centred rows, γ_(d+1) (|x| R + R²/2) + u (|x| + R)², the last term being the
      centring's (‖fl(x − μ) − fl(y − μ)‖² is within 2u (|x| + R)² of ‖x − y‖²);
    - ``"sq"``: |x|² + |y|² − 2 x·y of centred rows, (γ_(d+2) + 2u) (|x| + R)².
    """
    dtype = norm.dtype
    u = unit_roundoff(dtype)
    if form == "ip":
        bound = gamma(d, dtype) * norm * radius
    elif form == "half":
        bound = gamma(d + 1, dtype) * (norm * radius + 0.5 * radius * radius) + u * (norm + radius) ** 2
    else:
        bound = (gamma(d + 2, dtype) + 2 * u) * (norm + radius) ** 2
    return 1.01 * bound + _underflow(d + 4, dtype)


# ---- loops over flagged entries ------------------------------------------------------------------------------------


def _compact(mask: jax.Array) -> jax.Array:
    """Flat positions where ``mask`` holds, in order, then ``mask.size``: one sort of int32 keys (flagged positions
    first), which XLA:CPU compiles and runs faster than ``nonzero``'s cumulative sum."""
    size = mask.size
    pos = jnp.arange(size, dtype=jnp.int32)
    first = jax.lax.sort(jnp.where(mask.reshape(-1), pos, pos + size))
    return jnp.where(first < size, first, size)


def for_each_true(mask: jax.Array, chunk: int, body: Callable[[jax.Array, Any], Any], state: Any) -> Any:
    """``state = body(positions, state)`` for the flat positions where ``mask`` holds, ``chunk`` at a time.

    Static shapes: the positions are compacted once (padded with ``mask.size``, which ``body`` must treat as absent:
    clamp to gather, ``mode="drop"`` to scatter) and a ``while_loop`` runs ceil(count / chunk) steps, none when
    nothing is flagged. Only for values outside differentiation (its callers work on ``stop_gradient``'ed data).
    """
    positions = _compact(mask)
    positions = jnp.pad(positions, (0, -positions.size % chunk), constant_values=mask.size)
    count = mask.sum()

    def step(carry: tuple[jax.Array, Any]) -> tuple[jax.Array, Any]:
        c, st = carry
        return c + 1, body(jax.lax.dynamic_slice_in_dim(positions, c * chunk, chunk), st)

    return jax.lax.while_loop(lambda carry: carry[0] * chunk < count, step, (jnp.int32(0), state))[1]


# ---- certified top-k -----------------------------------------------------------------------------------------------


def extra_candidates(k: int) -> int:
    """Candidates kept beyond k from the fast block (static): m = 3 + k/32. A row needs the windowed search only
    when more than m points are within round-off of its k-th; on the README benchmarks (N = 10,000, d = 128–256,
    k ≤ 50) no row did with m = 4 and at most 0.1% with m = 2, while each extra candidate costs ~1.5% of top_k."""
    return 3 + k // 32


def _pair_key(a: jax.Array, b: jax.Array, metric: str) -> df.DD:
    """The double-float ranking key, larger is closer: a·b, or −‖a − b‖²."""
    if metric == "ip":
        return df.accurate_dot(a, b)
    hi, lo = df.accurate_sqdist(a, b)
    return -hi, -lo


def _sort_keys(hi: jax.Array, lo: jax.Array, idx: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Each row by key (hi, lo) descending, equal keys by index ascending."""
    neg_hi, neg_lo, idx = jax.lax.sort((-hi, -lo, idx), dimension=1, num_keys=3)
    return -neg_hi, -neg_lo, idx


def _uncertain_gaps(amb: jax.Array, k: int) -> jax.Array:
    """The gaps whose order must be decided exactly, from ``amb`` (t, kc − 1): gap p (between candidates p and p + 1)
    within round-off. Every ambiguous gap inside the top k (the neighbours' order) and the chain of ambiguous gaps
    from the boundary gap k − 1 (between the k-th and the (k+1)-th: the set) up to the first certain one."""
    if k - 1 >= amb.shape[1]:
        return amb
    return jnp.concatenate([amb[:, : k - 1], jnp.cumprod(amb[:, k - 1 :], axis=1).astype(bool)], axis=1)


def _reorder_runs(
    gaps: jax.Array, hi: jax.Array, lo: jax.Array, idx: jax.Array, keyed: jax.Array
) -> tuple[jax.Array, ...]:
    """Sort each run of candidates joined by uncertain ``gaps`` by its double-float keys (descending; equal keys by
    index), leaving the runs in place: the order between runs is certain, and their keys may be in other units.

    Each candidate moves to its run's first position plus the number of run members that precede it: (t, kc, kc)
    comparisons and one scatter of the permutation, several times faster on XLA:CPU than a 4-key sort of the rows."""
    t, kc = hi.shape
    joined = jnp.concatenate([jnp.zeros((t, 1), bool), gaps], 1)  # candidate p is joined to p − 1
    run = jax.lax.cummax(jnp.where(joined, 0, jnp.arange(kc, dtype=jnp.int32)), axis=1)  # its run's first position
    h, low, i = (a[:, :, None] for a in (hi, lo, idx))
    h2, low2, i2 = (a[:, None, :] for a in (hi, lo, idx))
    precedes = (h2 > h) | ((h2 == h) & ((low2 > low) | ((low2 == low) & (i2 < i))))
    position = run + ((run[:, :, None] == run[:, None, :]) & precedes).sum(2, dtype=jnp.int32)
    rows = jnp.arange(t)[:, None]
    source = jnp.zeros((t, kc), jnp.int32).at[rows, position].set(jnp.arange(kc, dtype=jnp.int32))
    return tuple(jnp.take_along_axis(a, source, 1) for a in (hi, lo, idx, keyed))


def _partial_top_k(score: jax.Array, k: int, false: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``lax.top_k`` of each row (descending; equal values by lower index), in two stages when the row is long: the
    row is cut into chunks of TOP_K_CHUNK columns (the last padded with −inf), the k chunks with the largest maxima
    are kept (equal maxima: lower chunk first) and, in column order, searched by ``lax.top_k`` again. The k-th
    largest chunk maximum τ is at most the row's k-th value v (k chunks hold a value ≥ τ), so every value above v
    lies in a kept chunk; values equal to v are taken lowest column first from the lowest chunks holding them, as the
    one-stage search takes them. XLA:CPU's top-k runs ~2x faster on the k·TOP_K_CHUNK candidates plus a max pass.

    The outputs are offset by a zero the compiler cannot fold (from ``false``, a traced False): slicing
    ``lax.top_k``'s outputs directly lets XLA:CPU merge the slices into its sort + slice form and run a full sort of
    the (tile, N) block (~30x slower); ``optimization_barrier`` would keep them apart too, but it crashes XLA's SPMD
    partitioner under ``shard_map`` (jax 0.10.2)."""
    t, n = score.shape
    chunks = -(-n // TOP_K_CHUNK)
    if chunks < 4 * k:
        values, indices = jax.lax.top_k(score, k)
    else:
        padded = jnp.pad(score, ((0, 0), (0, chunks * TOP_K_CHUNK - n)), constant_values=-jnp.inf)
        padded = padded.reshape(t, chunks, TOP_K_CHUNK)
        kept = jnp.sort(jax.lax.top_k(padded.max(2), k)[1], axis=1)
        candidates = jnp.take_along_axis(padded, kept[:, :, None], 1).reshape(t, k * TOP_K_CHUNK)
        values, at = jax.lax.top_k(candidates, k)
        indices = jnp.take_along_axis(kept, at // TOP_K_CHUNK, 1) * TOP_K_CHUNK + at % TOP_K_CHUNK
    return values + jnp.where(false, 1, 0).astype(values.dtype), indices + false.astype(indices.dtype)


def exact_top_k(
    score: jax.Array,
    bound: jax.Array,
    queries: jax.Array,
    reference: jax.Array,
    exact: jax.Array,
    *,
    k: int,
    metric: str,
    exclude_self: bool,
    ordered: bool = True,
    scale: jax.Array | float = 1.0,
    descending: bool = True,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The exact k best reference points of each query row, from a fast (t, n) score block, larger = closer.

    Args:
      score: (t, n) computed scores (x·y, or −D²/2 up to a per-row constant), −inf where excluded (the point itself).
      bound: (t,) bound on each entry's round-off (0 where ``exact``).
      queries, reference: (t, d) query rows and (n, d) reference points, uncentred: the keys are computed from them.
      exact: traced bool, the scores are exact (dyadic lattice): ``lax.top_k``'s order is then the answer.
      k: neighbours wanted; metric: ``"ip"`` (key x·y) or ``"euclidean"`` (key −‖x − y‖²).
      exclude_self: the point itself is excluded (one fewer reference point available).
      ordered: also decide the order inside the top k exactly (else only the set).
      scale: a power of two the keys' rows are multiplied by as they are gathered (the rows the block was computed
        from, exactly, without a scaled copy of ``reference``); the keys are in the scaled units.
      descending: larger scores are closer (as above); False: ``score`` holds squared distances (smaller = closer,
        +inf where excluded), ranked as their negatives without a negated copy of the block.

    Returns:
      ``(indices, keys, keyed)``, each (t, k): int32 indices, best first (genuine ties, equal exact keys, by lower
      index); where ``keyed``, the double-float key's leading part (x·y, or −‖x − y‖²), elsewhere the score.

    Algorithm: ``lax.top_k`` keeps kc = k + m candidates, in score order; a row is *certified* when its k-th score
    beats the last candidate's by more than 2·bound (no other point can then enter its top k). With ``ordered``,
    runs of candidates joined by gaps within 2·bound — inside the top k, or through the k-th/(k+1)-th boundary —
    get double-float keys (a few per cent of the entries; a loop over them only) and are sorted in place. Uncertified
    rows (and, without ``ordered``, rows whose boundary gap is within 2·bound) go through the scores in windows, best
    first, with double-float keys, until a window ends 2·bound below the k-th score: every point that could be in
    the top k was then keyed. For k = 1 no ``lax.top_k`` runs: a max pass and one count pass certify each row
    (:func:`_certified_best`) and only uncertified rows go through the windowed search.
    """
    t, n = score.shape
    available = n - 1 if exclude_self else n
    kc = min(k + extra_candidates(k), available)
    sign = 1.0 if descending else -1.0
    search = functools.partial(_windowed_search, score, sign, bound, queries, reference, k=k, metric=metric,
                               scale=scale, available=available)  # fmt: skip
    if k == 1 and kc < available:
        best, index, certified = _certified_best(score, bound, exact, descending=descending)
        indices, keys = search(sign * best, ~certified, state=(index[:, None], sign * best[:, None]))
        return indices, keys, ~certified[:, None]
    cand_score, cand = _partial_top_k(sign * score, kc, bound[0] < 0)
    certified = exact | (cand_score[:, k - 1] - cand_score[:, kc - 1] > 2 * bound) if kc < available else None
    amb = (cand_score[:, :-1] - cand_score[:, 1:] <= 2 * bound[:, None]) & ~exact
    if ordered:
        gaps = _uncertain_gaps(amb, k) if certified is None else _uncertain_gaps(amb, k) & certified[:, None]
        none = jnp.zeros((t, 1), bool)
        keyed = jnp.concatenate([gaps, none], 1) | jnp.concatenate([none, gaps], 1)

        def decide(p: jax.Array, keys: jax.Array) -> jax.Array:
            r, j = jnp.minimum(p // kc, t - 1), p % kc
            new = jnp.stack(_pair_key(queries[r] * scale, reference[cand[r, j]] * scale, metric), -1)
            return keys.reshape(-1, 2).at[p].set(new, mode="drop").reshape(t, kc, 2)

        start = jnp.stack([cand_score, jnp.zeros_like(cand_score)], -1)  # (hi, lo) of each candidate's key
        hi, lo = jnp.moveaxis(for_each_true(keyed, ENTRY_CHUNK, decide, start), -1, 0)
        hi, _, cand, keyed = jax.lax.cond(keyed.any(), _reorder_runs, lambda g, *a: a, gaps, hi, lo, cand, keyed)
        indices, keys, keyed = cand[:, :k].astype(jnp.int32), hi[:, :k], keyed[:, :k]
        if certified is None:
            return indices, keys, keyed
        redo = ~certified
    else:
        indices, keys, keyed = cand[:, :k].astype(jnp.int32), cand_score[:, :k], jnp.zeros((t, k), bool)
        redo = amb[:, k - 1] if kc > k else jnp.zeros(t, bool)
        redo = redo if certified is None else redo | ~certified

    indices, keys = search(cand_score[:, k - 1], redo, state=(indices, keys))
    return indices, keys, keyed | redo[:, None]


def _certified_best(
    score: jax.Array, bound: jax.Array, exact: jax.Array, *, descending: bool
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(best score, index, certified) of each row of a (t, n) score block (larger is better, or smaller where not
    ``descending``), without ``lax.top_k``: one max (min) pass, then one two-output reduce over the scores within
    2·bound of the best — their count and lowest index. A row is certified when that count is 1 (no other point can
    be the exact best) or the scores are exact (genuine ties: the lowest index). XLA:CPU fuses the first pass into
    the block's products and runs both in a fraction of ``lax.top_k``'s time (which also needs the block
    materialised)."""
    margin = jnp.where(exact, 0.0, 2 * bound)
    if descending:
        best = score.max(1)
        near = score >= (best - margin)[:, None]
    else:
        best = score.min(1)
        near = score <= (best + margin)[:, None]
    cols = jnp.arange(score.shape[1], dtype=jnp.int32)[None, :]
    init = (jnp.int32(0), jnp.int32(score.shape[1]))
    count, index = jax.lax.reduce((near.astype(jnp.int32), jnp.where(near, cols, score.shape[1])), init,
                                  _count_and_lowest, (1,))  # fmt: skip
    return best, index, exact | (count == 1)


def _count_and_lowest(a: tuple[jax.Array, ...], b: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    return a[0] + b[0], jnp.minimum(a[1], b[1])


def _windowed_search(
    score: jax.Array,
    sign: float,
    bound: jax.Array,
    queries: jax.Array,
    reference: jax.Array,
    kth: jax.Array,
    redo: jax.Array,
    *,
    k: int,
    metric: str,
    scale: jax.Array | float,
    available: int,
    state: tuple[jax.Array, jax.Array],
) -> tuple[jax.Array, jax.Array]:
    """The exact top k (indices, leading keys) of the rows flagged ``redo``, written into ``state``: the scores
    ``sign · score`` (negated row by row as gathered, never as a block) are visited in windows, best first, with
    double-float keys, until a window ends 2·bound below the row's computed k-th score ``kth`` (in the same sign):
    every point that could be in the top k was then keyed."""
    t, n = score.shape
    window = min(available, max(k + extra_candidates(k), 64))
    cols = jnp.arange(n, dtype=jnp.int32)

    def search(p: jax.Array, state: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        r = jnp.minimum(p, t - 1)
        srow, q = sign * score[r], queries[r][:, None, :] * scale
        floor = kth[r] - 2 * bound[r]  # below it no point can be in the top k

        def step(carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
            best_hi, best_lo, best_idx, last_score, last_col, _ = carry
            # the next window of scores, in lax.top_k's order (descending, equal scores by index)
            seen = (srow > last_score[:, None]) | ((srow == last_score[:, None]) & (cols <= last_col[:, None]))
            w_score, w_idx = _partial_top_k(jnp.where(seen, -jnp.inf, srow), window, last_col[0] < 0)
            h, low = _pair_key(q, reference[w_idx] * scale, metric)
            h, low = jnp.where(w_score > -jnp.inf, h, -jnp.inf), jnp.where(w_score > -jnp.inf, low, 0)
            merged = (
                jnp.concatenate(pair, 1) for pair in zip((best_hi, best_lo, best_idx), (h, low, w_idx), strict=True)
            )
            best_hi, best_lo, best_idx = (a[:, :k] for a in _sort_keys(*merged))
            done = (w_score[:, -1] < floor) | (w_score[:, -1] == -jnp.inf)
            return best_hi, best_lo, best_idx, w_score[:, -1], w_idx[:, -1], done

        shape = (p.shape[0], k)
        init = (jnp.full(shape, -jnp.inf, score.dtype), jnp.zeros(shape, score.dtype), jnp.zeros(shape, jnp.int32))
        init += (jnp.full(p.shape, jnp.inf, score.dtype), jnp.zeros(p.shape, jnp.int32), jnp.zeros(p.shape, bool))
        best_hi, _, best_idx, *_ = jax.lax.while_loop(lambda c: ~c[-1].all(), step, init)
        indices, keys = state
        return indices.at[p].set(best_idx, mode="drop"), keys.at[p].set(best_hi, mode="drop")

    return for_each_true(redo, ROW_CHUNK, search, state)
