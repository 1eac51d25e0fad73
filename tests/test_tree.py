"""Evolutionary tree (SPEC §10): the seed-000 JSD distance and neighbour joining against scikit-bio 0.7.0."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon

from jaxalign.tree import Tree, jsd_distance, neighbor_joining, robinson_foulds

skbio = pytest.importorskip("skbio")

JSD_KEY = "jsd_distance(alpha=0.5, eps=1e-8)"
NAMES = [f"m{i}" for i in range(9)]


def _jsd_scipy(c: np.ndarray, alpha: float = 0.5, eps: float = 1e-8) -> np.ndarray:
    """Independent dense implementation: scipy's jensenshannon (base 2) is sqrt(JSD) in bits."""
    m = len(c)
    r = (c + eps) / (c.sum(1, keepdims=True) + m * eps)
    k = (c.T + eps) / (c.T.sum(1, keepdims=True) + m * eps)
    d = np.array(
        [
            [
                alpha * jensenshannon(r[i], r[j], base=2) + (1 - alpha) * jensenshannon(k[i], k[j], base=2)
                for j in range(m)
            ]
            for i in range(m)
        ]
    )
    np.fill_diagonal(d, 0.0)
    return d


def _skbio_nj(d: np.ndarray, names: list[str], **kw) -> str:
    return str(skbio.tree.nj(skbio.DistanceMatrix(d, names), **kw)).strip()


def _random_tree(rng: np.random.Generator, m: int) -> Tree:
    """Random unrooted binary tree on m leaves (trifurcating root), branch lengths in [0.05, 1]."""
    names = [f"t{i}" for i in range(m)]
    children: list[tuple[int, ...]] = [()] * m
    active = list(range(m))
    while len(active) > 3:
        a, b = rng.choice(len(active), size=2, replace=False)
        node = len(children)
        children.append((active[a], active[b]))
        active = [v for i, v in enumerate(active) if i not in (a, b)] + [node]
    children.append(tuple(active))
    n_nodes = len(children)
    lengths = tuple(float(x) for x in rng.uniform(0.05, 1.0, size=n_nodes))
    lengths = (*lengths[:-1], 0.0)
    return Tree(tuple(names) + (None,) * (n_nodes - m), tuple(children), lengths, n_nodes - 1)


def _assert_same_tree(a: Tree, b: Tree, rtol: float) -> None:
    assert robinson_foulds(a, b) == 0
    sa, sb = a.bipartitions(), b.bipartitions()
    assert sa.keys() == sb.keys()
    keys = sorted(sa, key=sorted)
    np.testing.assert_allclose([sa[k] for k in keys], [sb[k] for k in keys], rtol=rtol, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# Anchor values
# ---------------------------------------------------------------------------------------------------------------------


def test_jsd_distance_matches_anchor(inputs, expected_pypi):
    expected = np.array(expected_pypi["tree"][JSD_KEY])
    d = jsd_distance(inputs["tree_similarity"], alpha=0.5, eps=1e-8)
    assert d.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(d), expected, rtol=1e-6, atol=1e-12)


def test_jsd_distance_float32_close_to_float64(inputs, expected_pypi):
    d32 = jsd_distance(inputs["tree_similarity"].astype(np.float32))
    assert d32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(d32), np.array(expected_pypi["tree"][JSD_KEY]), atol=1e-4)


@pytest.mark.parametrize("source", ["anchor distance", "jaxalign distance"])
def test_neighbor_joining_matches_anchor_tree(inputs, expected_pypi, source):
    ref = expected_pypi["tree"]
    d = np.array(ref[JSD_KEY]) if source == "anchor distance" else jsd_distance(inputs["tree_similarity"])
    tree = neighbor_joining(d, NAMES)
    expected = Tree.from_newick(ref["skbio.nj newick"])
    _assert_same_tree(tree, expected, rtol=1e-6)
    np.testing.assert_allclose(tree.total_branch_length(), ref["total_branch_length"], rtol=1e-6)
    # The reference newick read by scikit-bio itself agrees on topology.
    assert skbio.TreeNode.read([tree.to_newick()]).compare_rfd(skbio.TreeNode.read([ref["skbio.nj newick"]])) == 0


def test_newick_parser_agrees_with_skbio(expected_pypi):
    text = expected_pypi["tree"]["skbio.nj newick"]
    ours = Tree.from_newick(text)
    theirs = skbio.TreeNode.read([text])
    assert ours.to_newick() == text
    np.testing.assert_allclose(ours.total_branch_length(), theirs.descending_branch_length(), rtol=1e-12)
    names = list(ours.leaf_names)
    np.testing.assert_allclose(ours.leaf_distances(), theirs.tip_tip_distances(names).data, rtol=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# jsd_distance properties
# ---------------------------------------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(
    m=st.integers(2, 9),
    alpha=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
    symmetric=st.booleans(),
    tile=st.integers(1, 9),
)
def test_jsd_distance_properties(m, alpha, seed, symmetric, tile):
    rng = np.random.default_rng(seed)
    c = rng.uniform(0, 1, size=(m, m)) * (rng.uniform(size=(m, m)) > 0.2)  # some exact zeros
    if symmetric:
        c = (c + c.T) / 2
    d = np.asarray(jsd_distance(c, alpha=alpha, tile=tile))
    np.testing.assert_allclose(d, _jsd_scipy(c, alpha), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(d, d.T)
    np.testing.assert_array_equal(np.diag(d), 0.0)
    assert (d >= 0).all() and (d <= 1 + 1e-12).all()
    perm = rng.permutation(m)
    d_perm = np.asarray(jsd_distance(c[np.ix_(perm, perm)], alpha=alpha))
    np.testing.assert_allclose(d_perm, d[np.ix_(perm, perm)], rtol=1e-12, atol=1e-15)


def test_jsd_distance_nearly_identical_profiles_keeps_precision():
    # Two models whose outgoing profiles differ by ~1e-7: JSD ~ 1e-14, where the direct log form loses most digits.
    c = np.array([[1.0, 0.5, 0.2], [1.0, 0.5, 0.2 + 1e-6], [0.1, 0.2, 1.0]])
    d = np.asarray(jsd_distance(c, alpha=1.0))
    r = (c + 1e-8) / (c.sum(1, keepdims=True) + 3e-8)

    def jsd_series(p, q):  # JSD ≈ Σ (p − q)² / (8 μ ln 2) to leading order for nearly equal p, q
        return float(((p - q) ** 2 / (4 * (p + q))).sum() / np.log(2))

    np.testing.assert_allclose(d[0, 1], np.sqrt(jsd_series(r[0], r[1])), rtol=1e-8)  # naive logs: ~1e-4 off


def test_jsd_distance_is_differentiable_and_jittable(inputs):
    c = jnp.asarray(inputs["tree_similarity"])
    grad = jax.grad(lambda s: jsd_distance(s).sum())(c)
    assert grad.shape == c.shape and bool(jnp.isfinite(grad).all())
    eps = 1e-6
    bump = jnp.zeros_like(c).at[0, 1].set(eps)
    numeric = (jsd_distance(c + bump).sum() - jsd_distance(c - bump).sum()) / (2 * eps)
    np.testing.assert_allclose(grad[0, 1], numeric, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(jsd_distance)(c), jsd_distance(c), rtol=1e-14)


# ---------------------------------------------------------------------------------------------------------------------
# neighbor_joining
# ---------------------------------------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(m=st.integers(3, 25), seed=st.integers(0, 2**16))
def test_neighbor_joining_recovers_additive_distances(m, seed):
    truth = _random_tree(np.random.default_rng(seed), m)
    tree = neighbor_joining(truth.leaf_distances(), truth.leaf_names)
    _assert_same_tree(tree, truth, rtol=1e-9)
    np.testing.assert_allclose(tree.leaf_distances(), truth.leaf_distances(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["uniform", "euclidean", "integer ties"])
def test_neighbor_joining_is_skbio_nj(kind):
    """Same pairs joined (ties included), same node order, same lengths: the Newick text is identical."""
    rng = np.random.default_rng(["uniform", "euclidean", "integer ties"].index(kind))
    for _ in range(12):
        m = int(rng.integers(3, 30))
        if kind == "uniform":
            d = rng.uniform(0, 1, size=(m, m))
        elif kind == "euclidean":
            x = rng.normal(size=(m, 3))
            d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        else:
            d = rng.integers(1, 4, size=(m, m)).astype(float)
        d = np.triu(d, 1) + np.triu(d, 1).T
        names = [f"x{i}" for i in range(m)]
        assert neighbor_joining(d, names).to_newick() == _skbio_nj(d, names)
        assert neighbor_joining(d, names, neg_as_zero=False).to_newick() == _skbio_nj(d, names, neg_as_zero=False)


def test_neighbor_joining_wikipedia_example_and_default_names():
    d = np.array([[0, 5, 9, 9, 8], [5, 0, 10, 10, 9], [9, 10, 0, 8, 7], [9, 10, 8, 0, 3], [8, 9, 7, 3, 0]], dtype=float)
    tree = neighbor_joining(d)
    assert tree.leaf_names == ("0", "1", "2", "3", "4")
    assert tree.to_newick() == _skbio_nj(d, ["0", "1", "2", "3", "4"])
    assert len(tree.children[tree.root]) == 3
    np.testing.assert_allclose(tree.leaf_distances(), d, atol=1e-12)  # this matrix is additive


def test_robinson_foulds_counts_differing_splits():
    rng = np.random.default_rng(7)
    for _ in range(10):
        a = _random_tree(rng, 8)
        b = _random_tree(rng, 8)
        expected = skbio.TreeNode.read([a.to_newick()]).compare_rfd(skbio.TreeNode.read([b.to_newick()]))
        assert robinson_foulds(a, b) == expected
        assert robinson_foulds(a, a) == 0


def test_tree_is_an_immutable_pytree(expected_pypi):
    tree = Tree.from_newick(expected_pypi["tree"]["skbio.nj newick"])
    with pytest.raises(AttributeError):
        tree.root = 1  # type: ignore[misc]
    doubled = jax.tree_util.tree_map(lambda x: 2 * x, tree)
    assert isinstance(doubled, Tree) and doubled.children == tree.children
    np.testing.assert_allclose(doubled.total_branch_length(), 2 * tree.total_branch_length(), rtol=1e-12)


def test_newick_quotes_awkward_names():
    d = np.array([[0, 1, 2, 2], [1, 0, 2, 2], [2, 2, 0, 1], [2, 2, 1, 0]], dtype=float)
    names = ["MACE (medium)", "it's:odd", "plain name", "x,y"]
    tree = neighbor_joining(d, names)
    text = tree.to_newick()
    assert text == _skbio_nj(d, names)
    assert set(Tree.from_newick(text).leaf_names) == set(names)


# ---------------------------------------------------------------------------------------------------------------------
# plot_tree
# ---------------------------------------------------------------------------------------------------------------------


def test_plot_tree_labels_every_leaf(expected_pypi):
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    from jaxalign.plots.tree import plot_tree

    tree = neighbor_joining(np.array(expected_pypi["tree"][JSD_KEY]), NAMES)
    families = {n: f"family {i % 3}" for i, n in enumerate(NAMES)}
    ax = plot_tree(tree, families=families, title="models")
    labels = [t.get_text() for t in ax.texts]
    assert sorted(labels) == sorted(NAMES)
    colors = {t.get_text(): t.get_color() for t in ax.texts}
    assert colors["m0"] == colors["m3"] != colors["m1"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["family 0", "family 1", "family 2"]
    with pytest.raises(ValueError, match="families"):
        plot_tree(tree, families=["a", "b"])
    with pytest.raises(ValueError, match="tree"):
        plot_tree(np.zeros((3, 3)))
    plt.close("all")


# ---------------------------------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("similarity", "kwargs", "match"),
    [
        (np.ones((3, 4)), {}, "similarity.*square"),
        (np.ones((1, 1)), {}, "similarity"),
        (np.array([[1.0, -0.1], [0.2, 1.0]]), {}, "similarity.*negative"),
        (np.array([[1.0, np.nan], [0.2, 1.0]]), {}, "similarity.*NaN"),
        (np.ones((3, 3)), {"alpha": 1.5}, "alpha"),
        (np.ones((3, 3)), {"eps": 0.0}, "eps"),
    ],
)
def test_jsd_distance_rejects_bad_input(similarity, kwargs, match):
    with pytest.raises(ValueError, match=match):
        jsd_distance(similarity, **kwargs)


@pytest.mark.parametrize(
    ("distance", "names", "match"),
    [
        (np.zeros((2, 2)), None, "distance.*at least 3"),
        (np.zeros((3, 4)), None, "distance.*square"),
        (np.array([[0, 1, 2], [1, 0, 3], [2, 3.5, 0]]), None, "distance.*symmetric"),
        (np.array([[0, 1, np.nan], [1, 0, 3], [np.nan, 3, 0]]), None, "distance.*NaN"),
        (np.array([[1, 1, 2], [1, 0, 3], [2, 3, 0]]), None, "distance.*diagonal"),
        (np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0]]), ["a", "b"], "names.*one name per model"),
        (np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0]]), ["a", "b", "a"], "names.*unique"),
    ],
)
def test_neighbor_joining_rejects_bad_input(distance, names, match):
    with pytest.raises(ValueError, match=match):
        neighbor_joining(distance, names)


def test_robinson_foulds_rejects_different_leaves():
    d = np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0]], dtype=float)
    with pytest.raises(ValueError, match=r"tree_a.*tree_b"):
        robinson_foulds(neighbor_joining(d, ["a", "b", "c"]), neighbor_joining(d, ["a", "b", "z"]))
