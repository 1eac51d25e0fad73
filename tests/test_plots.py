"""Figures of jaxalign.plots: structure of every figure, input validation, saving, and a render of each figure type
with realistic fake data (13 models in 6 families, the registry's model ids)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import spearmanr

pytest.importorskip("matplotlib")

from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.figure import Figure

from jaxalign.plots import alignment as al
from jaxalign.plots import intrinsic_dimension as idp
from jaxalign.plots import maps, style
from jaxalign.plots import reconstruction as rc

MODELS = {
    "chgnet-0.3.0": "chgnet", "chgnet-0.2.0": "chgnet", "chgnet-r2scan": "chgnet", "7net-0": "sevennet",
    "7net-0-22may2024": "sevennet", "7net-mf-0-pbe": "sevennet", "7net-mf-0-r2scan": "sevennet",
    "7net-l3i5": "sevennet", "minilm-smiles": "minilm", "minilm-text": "minilm", "soap": "soap", "morgan": "morgan",
    "random": "baseline",
}  # fmt: skip


@pytest.fixture(scope="module")
def zoo():
    """Names and families in a shuffled order, and a symmetric alignment matrix with family structure."""
    rng = np.random.default_rng(0)
    names = list(MODELS)
    names = [names[i] for i in rng.permutation(len(names))]
    fams = [MODELS[n] for n in names]
    same = np.equal.outer(fams, fams)
    m = 0.25 + 0.45 * same + 0.1 * rng.random((len(names), len(names)))
    m = (m + m.T) / 2
    np.fill_diagonal(m, 1.0)
    return names, fams, m


def _texts(fig: Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def _bbox_overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0) * max(h, 0)


# --------------------------------------------------------------------------------------------------------- style
def test_core_imports_without_matplotlib():
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "import jaxalign.plots.style, jaxalign.plots.alignment, jaxalign.plots.maps\n"
        "import jaxalign.plots.intrinsic_dimension, jaxalign.plots.reconstruction\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


def test_save_figure_writes_png_and_svg(tmp_path, zoo):
    names, fams, m = zoo
    fig = al.alignment_heatmap(m, names, families=fams)
    paths = style.save_figure(fig, tmp_path / "sub" / "fig1a.png")  # a .png suffix is dropped from the stem
    assert [p.name for p in paths] == ["fig1a.png", "fig1a.svg"]
    png, svg = (p.read_bytes() for p in paths)
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert b"<svg" in svg[:1000]
    style.save_figure(fig, tmp_path / "again")
    assert (tmp_path / "again.svg").read_bytes() == svg  # deterministic SVG: a rerun writes identical bytes
    assert style.save_figure(fig, tmp_path / "fig.k25")[0].name == "fig.k25.png"


def test_save_figure_rejects_non_figure(tmp_path):
    with pytest.raises(ValueError, match="`fig`"):
        style.save_figure(np.zeros(3), tmp_path / "x")


def test_family_colors_follow_first_appearance():
    pal = style.family_colors(["b", "a", "b", "c"], colors={"c": "black"})
    assert list(pal) == ["b", "a", "c"]
    assert pal["c"] == (0.0, 0.0, 0.0, 1.0)
    assert len(set(style.family_colors([f"f{i}" for i in range(15)]).values())) == 15  # tab20 beyond 10


def test_labels_helpers():
    long = "sentence-transformers/all-MiniLM-L6-v2"
    short = style.shorten(long, 24)
    assert len(short) == 24 and short.startswith("sentence") and short.endswith("L6-v2") and "…" in short
    assert style.shorten("soap") == "soap"
    clash = ["x" * 30 + "a" + "y" * 20, "x" * 30 + "b" + "y" * 20]  # same head and tail: shortening would merge them
    assert style.short_labels(clash, 24) == clash
    assert style.format_value(-0.001) == "0.00" and style.format_value(-0.5) == "-0.50"


def test_place_labels_avoid_overlaps():
    fig = style.new_figure((5, 4))
    ax = fig.add_subplot()
    rng = np.random.default_rng(3)
    x, y = rng.random(12), rng.random(12)
    ax.scatter(x, y)
    ax.margins(0.1)
    labels = [f"model-{i}-r2scan" for i in range(12)]
    texts = style.place_labels(ax, x, y, labels)
    assert [t.get_text() for t in texts] == labels
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in texts]
    overlaps = [_bbox_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]]
    assert max(overlaps) == 0


# ------------------------------------------------------------------------------------------------------ heatmaps
def test_alignment_heatmap_structure(zoo):
    names, _, m = zoo
    fig = al.alignment_heatmap(m, names, title="CKNNA", cbar_label="CKNNA (k = 25)")
    assert isinstance(fig, Figure) and len(fig.axes) == 2  # heatmap + colour bar
    ax, cax = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == names  # no families: order kept
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    assert len(ax.texts) == len(names) ** 2  # one annotation per cell (M ≤ 16)
    assert cax.get_ylabel() == "CKNNA (k = 25)"
    assert ax.images[0].cmap.name == style.SEQUENTIAL_CMAP


def test_alignment_heatmap_groups_families(zoo):
    names, fams, m = zoo
    fig = al.alignment_heatmap(m, names, families=dict(zip(names, fams, strict=True)))
    ax = fig.axes[0]
    shown = [t.get_text() for t in ax.get_yticklabels()]
    shown_fams = [MODELS[n] for n in shown]
    blocks = [f for i, f in enumerate(shown_fams) if i == 0 or f != shown_fams[i - 1]]
    assert sorted(shown) == sorted(names) and len(blocks) == len(set(fams))  # each family one contiguous block
    # the reordered matrix is the original one permuted
    idx = [names.index(n) for n in shown]
    np.testing.assert_array_equal(ax.images[0].get_array().data, m[np.ix_(idx, idx)])
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == list(dict.fromkeys(fams))
    assert len(ax.patches) == 2 * len(set(fams))  # one row strip and one column strip per family


def test_alignment_heatmap_nan_cells_hatched(zoo):
    names, _, m = zoo
    m = m.copy()
    m[2, 5] = m[5, 2] = np.nan
    fig = al.alignment_heatmap(m, names)
    ax = fig.axes[0]
    assert sum(p.get_hatch() == "////" for p in ax.patches) == 2
    assert _texts(fig).count("n/a") == 2
    assert "no value" in fig.axes[1].get_ylabel()


def test_alignment_heatmap_diverging_for_negative_values(zoo):
    names, _, m = zoo
    fig = al.alignment_heatmap(m - 0.5, names, annotate=False)
    image = fig.axes[0].images[0]
    assert image.cmap.name == style.DIVERGING_CMAP
    assert image.norm.vmin == -image.norm.vmax
    assert len(fig.axes[0].texts) == 0


@pytest.mark.parametrize(
    ("matrix", "names", "match"),
    [
        (np.ones((3, 3)), ["a", "b"], "`names` has 2 labels"),
        (np.ones((3, 2)), ["a", "b", "c"], "`matrix` must be square"),
        (np.ones(3), ["a", "b", "c"], "`matrix` must be a non-empty 2-D"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), ["a", "b"], "±inf"),
        (np.ones((2, 2)), "ab", "`names` must be a sequence"),
    ],
)
def test_alignment_heatmap_bad_inputs(matrix, names, match):
    with pytest.raises(ValueError, match=match):
        al.alignment_heatmap(matrix, names)


def test_alignment_heatmap_bad_families(zoo):
    names, fams, m = zoo
    with pytest.raises(ValueError, match="`families` has 12 entries"):
        al.alignment_heatmap(m, names, families=fams[:-1])
    with pytest.raises(ValueError, match="`families` has no entry"):
        al.alignment_heatmap(m, names, families={names[0]: "x"})


def test_family_condensed_means_off_diagonal_blocks():
    rng = np.random.default_rng(1)
    m = rng.random((5, 5))  # asymmetric on purpose: block (a, b) reads rows of a, columns of b
    fams = ["x", "y", "x", "z", "y"]
    cond, unique = al.family_condensed(m, list("abcde"), fams)
    assert unique == ["x", "y", "z"]
    for a, fa in enumerate(unique):
        for b, fb in enumerate(unique):
            vals = [m[i, j] for i in range(5) for j in range(5) if i != j and fams[i] == fa and fams[j] == fb]
            if vals:
                assert cond[a, b] == pytest.approx(np.mean(vals))
            else:
                assert np.isnan(cond[a, b])
    assert np.isnan(cond[2, 2])  # single-member family: no within-family pair


def test_family_condensed_includes_the_diagonal_when_asked():
    """Seed 000 averages whole family blocks, each model with itself included: a one-model family shows its
    self-alignment instead of n/a."""
    m = np.array([[1.0, 0.6, 0.2], [0.6, 1.0, 0.3], [0.2, 0.3, 1.0]])
    cond, unique = al.family_condensed(m, ["a", "b", "c"], ["f", "f", "g"], include_self=True)
    assert unique == ["f", "g"]
    np.testing.assert_allclose(cond, [[(1.0 + 0.6 + 0.6 + 1.0) / 4, 0.25], [0.25, 1.0]])
    off, _ = al.family_condensed(m, ["a", "b", "c"], ["f", "f", "g"])
    assert off[0, 0] == 0.6 and np.isnan(off[1, 1])


def test_family_condensed_ignores_nan_entries():
    m = np.array([[1.0, 0.5, np.nan], [0.5, 1.0, 0.7], [np.nan, 0.7, 1.0]])
    cond, _ = al.family_condensed(m, ["a", "b", "c"], ["f", "f", "f"])
    assert cond[0, 0] == pytest.approx(np.mean([0.5, 0.5, 0.7, 0.7]))
    with pytest.raises(ValueError, match="`families` is required"):
        al.family_condensed(m, ["a", "b", "c"], None)


def test_family_heatmap(zoo):
    names, fams, m = zoo
    fig = al.family_heatmap(m, names, fams, cbar_label="CKNNA")
    ax = fig.axes[0]
    unique = list(dict.fromkeys(fams))
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"{f} ({fams.count(f)})" for f in unique]
    singletons = sum(fams.count(f) == 1 for f in unique)
    assert _texts(fig).count("n/a") == singletons
    assert len(ax.texts) == len(unique) ** 2
    assert fig.axes[1].get_ylabel().startswith("CKNNA")  # a given label is used as given (no "mean mean …")
    default = al.family_heatmap(m, names, fams, title="CKNNA (k = 25)")
    assert default.axes[1].get_ylabel().startswith("mean CKNNA (k = 25)")


# ------------------------------------------------------------------------------------------------------ scatters
def test_alignment_vs_energy_error(zoo):
    names, fams, _ = zoo
    rng = np.random.default_rng(2)
    align = rng.random(len(names))
    mae = 10 + 100 * (1 - align) + rng.random(len(names))
    no_energy = [names.index(n) for n in ("soap", "morgan", "random")]
    mae[no_energy] = np.nan
    ref = "7net-mf-0-r2scan"
    fig = al.alignment_vs_energy_error(align, mae, names, families=fams, reference_name=ref)
    ax = fig.axes[0]
    assert len(fig.axes) == 1
    shown = [i for i in range(len(names)) if i not in no_energy]
    assert sorted(t.get_text() for t in ax.texts) == sorted(names[i] for i in shown)
    pts = [i for i in shown if names[i] != ref]
    rho = spearmanr(align[pts], mae[pts]).statistic
    assert f"Spearman ρ = {rho:.2f} (n = {len(pts)})" in ax.get_title()
    assert all(n in fig.get_supxlabel() for n in ("soap", "morgan", "random"))
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "soap" not in legend and f"reference ({ref})" in legend  # families without points are not listed
    assert ax.get_xlabel() == f"alignment with {ref}"


def test_alignment_vs_energy_error_sizes_points_by_parameter_count(zoo):
    """Seed 000 Fig. 1B: point area grows with the model's parameter count (log scale); unknown counts keep the
    default size."""
    names, fams, _ = zoo
    n = len(names)
    params = np.logspace(5, 9, n)
    params[0] = np.nan
    fig = al.alignment_vs_energy_error(np.linspace(0.1, 0.9, n), np.linspace(90, 10, n), names, families=fams,
                                       n_params=params)  # fmt: skip
    ax = fig.axes[0]
    sizes = np.concatenate([c.get_sizes() for c in ax.collections])
    assert sizes.min() >= 25 and sizes.max() == pytest.approx(260) and 46 in sizes
    assert "area ∝ log(parameters)" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_alignment_vs_energy_error_bad_inputs(zoo):
    names, _, _ = zoo
    n = len(names)
    with pytest.raises(ValueError, match="`mae` has 12 entries"):
        al.alignment_vs_energy_error(np.ones(n), np.ones(n - 1), names)
    with pytest.raises(ValueError, match="`names` has 12 labels"):
        al.alignment_vs_energy_error(np.ones(n), np.ones(n), names[:-1])
    with pytest.raises(ValueError, match="negative"):
        al.alignment_vs_energy_error(np.ones(n), -np.ones(n), names)
    with pytest.raises(ValueError, match="nothing to plot"):
        al.alignment_vs_energy_error(np.ones(n), np.full(n, np.nan), names)


def test_metric_scatter_pairs_from_matrices(zoo):
    names, fams, m = zoo
    rng = np.random.default_rng(4)
    d = m + 0.05 * rng.standard_normal(m.shape)
    d = (d + d.T) / 2
    fig = al.metric_scatter(m, d, names, xlabel="CKNNA", ylabel="dCor", families=fams)
    ax = fig.axes[0]
    n = len(names)
    assert sum(len(c.get_offsets()) for c in ax.collections) == n * (n - 1) // 2  # upper triangle
    iu = np.triu_indices(n, 1)
    assert f"ρ = {spearmanr(m[iu], d[iu]).statistic:.2f}" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cross-family", "within family"]
    assert len(ax.texts) == 0  # 78 pairs: unlabelled by default
    asym = al.metric_scatter(m, d + np.triu(np.ones_like(d)), names, xlabel="a", ylabel="b")
    assert sum(len(c.get_offsets()) for c in asym.axes[0].collections) == n * (n - 1)


def test_metric_scatter_vectors_and_errors():
    fig = al.metric_scatter([0.1, 0.5, 0.9, np.nan], [1.0, 2.0, 4.0, 3.0], ["a", "b", "c", "d"], xlabel="x", ylabel="y")
    ax = fig.axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["a", "b", "c"]
    assert "ρ = 1.00 (n = 3)" in ax.get_title()
    assert "d" in fig.get_supxlabel()
    with pytest.raises(ValueError, match="same shape"):
        al.metric_scatter(np.ones(3), np.ones(4), ["a", "b", "c"], xlabel="x", ylabel="y")
    with pytest.raises(ValueError, match="`names` has 2 labels"):
        al.metric_scatter(np.ones(3), np.ones(3), ["a", "b"], xlabel="x", ylabel="y")


def test_information_imbalance_plane(zoo):
    names, _, _ = zoo
    rng = np.random.default_rng(5)
    pairs = [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]
    same = np.array([MODELS[a] == MODELS[b] for a, b in pairs])
    dab, dba = rng.uniform(0, 1, len(pairs)), rng.uniform(0, 1, len(pairs))
    fig = al.information_imbalance_plane(dab, dba, pairs, same_family=same)
    ax = fig.axes[0]
    assert len(ax.texts) == 4  # the four regions; 78 pairs are not labelled
    points = [len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection)]
    assert points == [(~same).sum(), same.sum()]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["different family", "same family"]
    assert ax.get_xlim() == ax.get_ylim() and ax.get_xlim()[1] >= 1.0
    few = al.information_imbalance_plane(dab[:5], dba[:5], pairs[:5], same_family=same[:5])
    assert {f"{a} → {b}" for a, b in pairs[:5]} <= {t.get_text() for t in few.axes[0].texts}


def test_information_imbalance_plane_bad_inputs():
    with pytest.raises(ValueError, match="`delta_ba` has 2 entries"):
        al.information_imbalance_plane([0.1, 0.2, 0.3], [0.1, 0.2], ["a", "b", "c"], same_family=[True, False, True])
    with pytest.raises(ValueError, match="`names_pairs` must have one entry per pair"):
        al.information_imbalance_plane([0.1, 0.2], [0.1, 0.2], ["a"], same_family=[True, False])
    with pytest.raises(ValueError, match="`same_family` must be a boolean array"):
        al.information_imbalance_plane([0.1, 0.2], [0.1, 0.2], ["a", "b"], same_family=[True])


# -------------------------------------------------------------------------------------------------------- violins
def test_intrinsic_dimension_violins(zoo):
    names, fams, _ = zoo
    rng = np.random.default_rng(6)
    values = {n: rng.gamma(5, 8 if n == "random" else 1.5, 300) for n in names}
    values[names[0]][:7] = np.inf  # degenerate neighbourhoods
    values[names[1]] = np.array([4.0])  # a single estimate: drawn as a marker
    fig = idp.intrinsic_dimension_violins(values, families=fams, global_values={names[2]: 6.0})
    ax = fig.axes[0]
    bodies = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bodies) == len(names) - 1
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[0] == f"{names[0]} (7 n/a)" and ticks[1:] == names[1:]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[: len(set(fams))] == list(dict.fromkeys(fams)) and "global estimate" in legend
    log = idp.intrinsic_dimension_violins(values, logy=True)
    assert "log scale" in log.axes[0].get_ylabel()


def test_intrinsic_dimension_violins_bad_inputs():
    with pytest.raises(ValueError, match="`per_model_values` must be a non-empty mapping"):
        idp.intrinsic_dimension_violins({})
    with pytest.raises(ValueError, match=r"`per_model_values\['a'\]` must be 1-D"):
        idp.intrinsic_dimension_violins({"a": np.ones((3, 2))})
    with pytest.raises(ValueError, match="`global_values` has models"):
        idp.intrinsic_dimension_violins({"a": np.arange(5.0)}, global_values={"b": 1.0})
    with pytest.raises(ValueError, match="`families` has 2 entries"):
        idp.intrinsic_dimension_violins({"a": np.arange(5.0)}, families=["x", "y"])


# ----------------------------------------------------------------------------------------------------------- maps
def test_structure_map_coloured_with_ood():
    rng = np.random.default_rng(7)
    xy = rng.standard_normal((300, 2))
    err = np.abs(rng.standard_normal(300)) * 20
    err[:3] = np.nan
    ood = err > 30
    fig = maps.structure_map(xy, color=err, color_label="|energy error| (meV/atom)", ood_mask=ood, title="7net-0")
    ax, cax = fig.axes
    assert cax.get_ylabel() == "|energy error| (meV/atom)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"out of distribution ({ood.sum()})"]
    sizes = sorted(len(c.get_offsets()) for c in ax.collections)
    assert sizes == sorted([3, 297, int(ood.sum())])  # missing (grey), coloured, OOD rings
    plain = maps.structure_map(xy)
    assert len(plain.axes) == 1 and plain.axes[0].get_legend() is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"coords2d": np.zeros((5, 3))}, r"`coords2d` must have shape \(N, 2\)"),
        ({"coords2d": np.full((5, 2), np.nan)}, "`coords2d` contains NaN"),
        ({"coords2d": np.zeros((5, 2)), "color": np.ones(4)}, "`color` has 4 entries"),
        ({"coords2d": np.zeros((5, 2)), "ood_mask": np.ones(4, bool)}, "`ood_mask` must be a boolean array"),
        ({"coords2d": np.zeros((5, 2)), "color": -np.ones(5), "log_color": True}, "positive"),
    ],
)
def test_structure_map_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        maps.structure_map(**kwargs)


def test_map_grid(zoo):
    names, _, _ = zoo
    rng = np.random.default_rng(8)
    coords = {n: rng.standard_normal((200, 2)) for n in names[:5]}
    colors = {n: np.abs(rng.standard_normal(200)) + 0.1 for n in names[:3]}
    oods = {n: c > 2 for n, c in colors.items()}
    fig = maps.map_grid(coords, color=colors, color_label="|error|", ood_mask=oods, log_color=True, title="maps")
    panels = fig.axes[:-1]
    assert len(panels) == 5 and fig.axes[-1].get_ylabel() == "|error|"  # 5 panels (3×2 grid, 1 removed) + colour bar
    assert [a.get_title().split(" (")[0] for a in panels] == names[:5]
    assert panels[3].get_title().endswith("(no value)")
    assert fig.axes[0].collections[0].norm.__class__.__name__ == "LogNorm"
    shared = maps.map_grid(coords, color=np.arange(200.0), ncols=5)
    assert len(shared.axes) == 6  # one row of five + colour bar


def test_map_grid_background_is_drawn_beneath_each_panel():
    """seed 003 Fig. S8: each panel's own grey background (the structures the projection was fitted on)."""
    rng = np.random.default_rng(10)
    coords = {"a": rng.standard_normal((30, 2)), "b": rng.standard_normal((30, 2))}
    behind = {"a": 5 + rng.standard_normal((80, 2)), "b": -5 + rng.standard_normal((60, 2))}
    fig = maps.map_grid(coords, color=np.arange(30.0), background=behind, background_label="fit set")
    for ax, name in zip(fig.axes[:2], ("a", "b"), strict=True):
        grey, points = ax.collections[0], ax.collections[-1]
        np.testing.assert_array_equal(grey.get_offsets(), behind[name])  # drawn first: beneath
        assert grey.get_zorder() < points.get_zorder() and len(points.get_offsets()) == 30
        lo, hi = ax.get_xlim()
        assert lo <= behind[name][:, 0].min() and hi >= behind[name][:, 0].max()  # the view holds the background
    assert [t.get_text() for leg in fig.legends for t in leg.get_texts()] == ["fit set"]
    with pytest.raises(ValueError, match="`background` names models that have no panel"):
        maps.map_grid(coords, background={"c": np.zeros((3, 2))})
    with pytest.raises(ValueError, match=r"background\['a'\]"):
        maps.map_grid(coords, background={"a": np.zeros(3)})


def test_map_grid_bad_inputs():
    coords = {"a": np.zeros((4, 2)), "b": np.zeros((6, 2))}
    with pytest.raises(ValueError, match="`coords` must be a non-empty mapping"):
        maps.map_grid({})
    with pytest.raises(ValueError, match="`color` has models"):
        maps.map_grid(coords, color={"c": np.ones(4)})
    with pytest.raises(ValueError, match=r"`color\['b'\]` has 4 entries"):
        maps.map_grid(coords, color=np.ones(4))  # one shared array must fit every model's N


# ------------------------------------------------------------------------------------------------ reconstruction
def test_reconstruction_heatmap(zoo):
    names, _, _ = zoo
    rng = np.random.default_rng(9)
    e = rng.uniform(0.1, 0.9, (len(names), len(names)))
    np.fill_diagonal(e, 0.0)
    fig = rc.reconstruction_heatmap(e, names, cbar_label="GFRE")
    ax, cax = fig.axes
    assert ax.get_ylabel() == "source (reconstructs from)" and ax.get_xlabel() == "target"
    assert len(ax.texts) == len(names) ** 2 and "GFRE" in cax.get_ylabel()
    assert ax.images[0].cmap.name == style.ERROR_CMAP and ax.images[0].norm.vmin == 0
    with pytest.raises(ValueError, match="`names` has 3 labels but `errors` has 13"):
        rc.reconstruction_heatmap(e, names[:3])


def test_cumulant_order_heatmap():
    orders = list(range(1, 9))
    e = np.triu(np.add.outer(-np.arange(8.0), np.arange(8.0)).clip(0) * 0.05)
    fig = rc.cumulant_order_heatmap(e, orders)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"φ({o})" for o in orders]
    assert ax.get_ylabel() == "source φ(i) (reconstructs from)" and ax.get_xlabel() == "target φ(j)"
    with pytest.raises(ValueError, match="`orders` has 3 entries"):
        rc.cumulant_order_heatmap(e, [1, 2, 3])
    with pytest.raises(ValueError, match="`orders` must be a sequence of integers"):
        rc.cumulant_order_heatmap(e, ["a"] * 8)


def test_cknna_vs_k():
    ks = np.array([1, 5, 25, 100, 500])
    values = {("chgnet-0.3.0", "7net-0"): np.linspace(0.1, 0.6, 5), "soap – morgan": np.linspace(0.05, 0.3, 5)}
    fig = rc.cknna_vs_k(ks, values, asymptotes={("chgnet-0.3.0", "7net-0"): 0.65})
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and len(ax.lines) == 2 and len(ax.collections) == 1  # 2 curves, 1 asymptote
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["chgnet-0.3.0 – 7net-0", "soap – morgan", "unbiased CKA (k = N − 1)"]
    with pytest.raises(ValueError, match=r"`values\['soap – morgan'\]` has 3 entries"):
        rc.cknna_vs_k(ks, {"soap – morgan": np.ones(3)})
    with pytest.raises(ValueError, match="`ks` must be finite neighbourhood sizes"):
        rc.cknna_vs_k([0, 1], {"a": [0.1, 0.2]})
    with pytest.raises(ValueError, match="`asymptotes` has pairs"):
        rc.cknna_vs_k(ks, values, asymptotes={"x": 1.0})


# -------------------------------------------------------------------------------------------- render every figure
def _all_figures(zoo):
    names, fams, m = zoo
    rng = np.random.default_rng(10)
    n = len(names)
    align, mae = rng.random(n), rng.uniform(5, 200, n)
    pairs = [(names[i], names[j]) for i in range(n) for j in range(i + 1, n)]
    same = np.array([MODELS[a] == MODELS[b] for a, b in pairs])
    xy = rng.standard_normal((500, 2))
    yield "heatmap", lambda: al.alignment_heatmap(m, names, families=fams, title="CKNNA (k = 25)")
    yield "family", lambda: al.family_heatmap(m, names, fams)
    yield "energy", lambda: al.alignment_vs_energy_error(align, mae, names, families=fams, reference_name=names[0])
    yield "scatter", lambda: al.metric_scatter(m, m**2, names, xlabel="CKNNA", ylabel="dCor", families=fams)
    yield "violins", lambda: idp.intrinsic_dimension_violins({k: rng.gamma(4, 2, 200) for k in names}, families=fams)
    yield "ii", lambda: al.information_imbalance_plane(rng.random(78), rng.random(78), pairs, same_family=same)
    yield "map", lambda: maps.structure_map(xy, color=np.abs(xy[:, 0]), color_label="|error|", ood_mask=xy[:, 1] > 2)
    yield "grid", lambda: maps.map_grid({k: xy for k in names[:4]}, color=np.abs(xy[:, 0]), color_label="|error|")
    yield "gfre", lambda: rc.reconstruction_heatmap(1 - m, names)
    yield "cumulant", lambda: rc.cumulant_order_heatmap(np.triu(rng.random((8, 8))), range(1, 9))
    yield "cknna_k", lambda: rc.cknna_vs_k([1, 10, 100], {p: rng.random(3) for p in pairs[:8]})


def test_every_figure_renders_without_clipped_text(tmp_path, zoo):
    """Each figure saves as PNG + SVG, and everything it draws (labels, legends, colour bars) fits on its canvas:
    the layout engine made room, so nothing is clipped or pushed off the figure."""
    for name, make in _all_figures(zoo):
        fig = make()
        assert isinstance(fig, Figure), name
        png, svg = style.save_figure(fig, tmp_path / name)
        assert png.stat().st_size > 5_000 and svg.stat().st_size > 5_000, name
        tight = fig.get_tightbbox(fig.canvas.get_renderer())  # inches, every drawn artist
        width, height = fig.get_size_inches()
        assert tight.x0 >= -0.05 and tight.y0 >= -0.05, (name, tight)
        assert tight.x1 <= width + 0.05 and tight.y1 <= height + 0.05, (name, tight)


# --------------------------------------------------------------------------------------------- energy (seed 000 B2–B4)
def test_parity_grid_one_panel_per_model_with_its_mean_difference():
    from jaxalign.plots import energy as en

    x = np.array([0.0, 1.0, 2.0, np.nan])
    fig = en.parity_grid({"a": (x, x + 0.5), "b": (x, x)}, xlabel="x (eV)", ylabel="y (eV)")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["a\nmean |y − x| = 0.5 eV", "b\nmean |y − x| = 0 eV"]  # the NaN structure is left out
    assert [len(ax.collections[0].get_offsets()) for ax in fig.axes] == [3, 3]
    with pytest.raises(ValueError, match="no structure with finite x and y"):
        en.parity_grid({"a": ([np.nan], [1.0])}, xlabel="x", ylabel="y")
    with pytest.raises(ValueError, match="must be a pair"):
        en.parity_grid({"a": x}, xlabel="x", ylabel="y")


def test_energy_error_bars_sorted_and_coloured_by_group():
    from jaxalign.plots import energy as en

    fig = en.energy_error_bars(
        {"m1": 30.0, "m2": 10.0, "m3": 20.0, "m4": np.nan}, groups={"m1": "PBE", "m2": "r2SCAN", "m3": "PBE"}
    )
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["m2", "m3", "m1"]  # smallest on top
    heights = sorted(ax.patches[:3], key=lambda p: -p.get_y())
    assert [p.get_width() for p in heights] == [10.0, 20.0, 30.0]
    assert heights[1].get_facecolor() == heights[2].get_facecolor() != heights[0].get_facecolor()
    assert "no value: m4" in fig._supxlabel.get_text()
    with pytest.raises(ValueError, match="no finite value"):
        en.energy_error_bars({"a": np.nan})


def test_training_curves_one_line_per_series():
    from jaxalign.plots.training import training_curves

    fig = training_curves([0, 1, 2], {"CKA": [0.1, 0.5, 0.6], "CKNNA": [0.2, np.nan, 0.9]}, ylabel="alignment")
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["CKA", "CKNNA"]
    assert ax.get_legend() is not None and ax.get_title() == "alignment"
    with pytest.raises(ValueError, match="non-empty mapping"):
        training_curves([0, 1], {})
    with pytest.raises(ValueError):
        training_curves([0, 1], {"a": [1.0, 2.0, 3.0]})
