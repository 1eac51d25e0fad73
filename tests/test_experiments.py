"""The experiment app (experiments/run.py): end-to-end runs on a small N, caching, resumption, overrides, errors.

The end-to-end runs go through the real command line in subprocesses (Hydra, one extraction process per model) with
four cheap models; they share one cache of embeddings and one XLA compilation cache so later runs reuse them.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from experiments.cache import Checkpoint, content_key, read_json  # noqa: E402
from experiments.features import compact  # noqa: E402

MODELS = "[chgnet-0.3.0,chgnet-0.2.0,morgan,random]"
SMALL = [
    "+dataset=default",
    f"models.ids={MODELS}",
    "dataset.n=40",
    "analysis=quick",
    "analysis.cknna.k=5",
    "progress=false",
]
REQUIRED_FIGURES = {
    "fig1a_cknna_heatmap",
    "fig1b_alignment_vs_energy_error",
    "fig3_dcor_vs_energy_error",
    "fig1c_cknna_family_heatmap",
    "fig1d_cknna_vs_dcor",
    "fig1e_intrinsic_dimension_violins",
    "fig1f_model_tree",
    "fig2a_structure_maps",
    "fig2a_structure_maps_umap",  # umap-learn is in the experiments extra (seed 000 Fig. 2A uses UMAP)
    "fig2b_information_imbalance_plane_k1_cknna",
    "fig2b_information_imbalance_plane_k1_dcor",
    "fig2b_information_imbalance_plane_k1_id_cor",
    "figC9_information_imbalance_plane_k1_training_data",
    "figC9_information_imbalance_plane_k1_equivariance",
    "fig2d_energy_error_maps",
    "fig_s003_gfre_atom",
    "fig_s003_lfre_atom",
    "fig_s003_gfre_cumulant",
    "fig_s003_lfre_cumulant",
    "fig8_cumulant_orders_chgnet-0.3.0",
    "fig8_single_orders_chgnet-0.3.0",
    "figA1_cknna_vs_k",
    "figB2_composition_fits",
    "figB3_composition_deviations",
    "figB4_energy_error_by_level_of_theory",
    "fig9_cumulant_maps_by_subset",
    "fig9_cumulant_maps_by_energy",
}


def run_app(*overrides: str, cache: Path, run_dir: Path, xla: Path, wait: bool = True) -> Any:
    """The app's command line in a subprocess: its CompletedProcess, or with ``wait=False`` the running Popen."""
    cmd = [
        sys.executable,
        str(REPO / "experiments" / "run.py"),
        *overrides,
        f"cache_dir={cache}",
        f"hydra.run.dir={run_dir}",
        f"jax_compilation_cache={xla}",
    ]
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


def stage_log(run_dir: Path) -> dict[str, dict]:
    lines = (run_dir / "stage_log.jsonl").read_text().splitlines()
    return {e["stage"]: e for e in map(json.loads, lines)}


def matrices(run_dir: Path, dataset: str = "default") -> dict[str, np.ndarray]:
    with np.load(run_dir / "results" / dataset / "matrices.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("experiments")
    return {"root": root, "cache": root / "cache", "xla": root / "xla"}


@pytest.fixture(scope="module")
def first_run(shared: dict[str, Path]) -> Path:
    run_dir = shared["root"] / "run1"
    proc = run_app(*SMALL, cache=shared["cache"], run_dir=run_dir, xla=shared["xla"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


# ------------------------------------------------------------------------------------------------- end to end
def test_small_run_writes_every_figure_and_the_report(first_run: Path) -> None:
    drawn = read_json(first_run / "figures" / "figures.json")
    stems = {f["stem"] for f in drawn}
    assert {f"default/{s}" for s in REQUIRED_FIGURES} <= stems, REQUIRED_FIGURES - {s.split("/")[1] for s in stems}
    for stem in stems:
        for ext in ("png", "svg"):
            path = first_run / "figures" / f"{stem}.{ext}"  # stems are <dataset>/<figure>
            assert path.is_file() and path.stat().st_size > 1000, path
    page = (first_run / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == len(stems)  # self-contained: every image embedded
    assert "src='figures/" not in page and 'src="figures/' not in page
    md = (first_run / "report.md").read_text()
    for stem in stems:
        assert f"figures/{stem}.png" in md
    for heading in ("Qualitative findings", "Dataset", "Models", "Matrices", "Configuration"):
        assert heading in md
    from jaxalign.tree import Tree

    tree = Tree.from_newick((first_run / "results" / "default" / "tree.nwk").read_text().strip())
    # the default keeps the random baseline; analysis.tree.exclude_baseline=true (seed000) leaves it out
    assert sorted(tree.leaf_names) == sorted(["chgnet-0.3.0", "chgnet-0.2.0", "morgan", "random"])
    with np.load(first_run / "results" / "default" / "matrices.npz") as z:
        idcor, p = z["id_cor"], z["id_cor_p"]
    off = ~np.eye(4, dtype=bool)
    assert np.isfinite(idcor[off]).all() and ((p[off] >= 1 / 20) & (p[off] <= 1)).all()  # analysis=quick: 19 draws
    np.testing.assert_array_equal(idcor, idcor.T)
    meta = read_json(first_run / "results" / "default" / "results.json")["metadata"]
    assert meta["chgnet-0.3.0"]["equivariance"] == "invariant" and meta["chgnet-0.3.0"]["training_data"] == ["MPtrj"]
    assert meta["random"]["energy_head"] is False
    checks = read_json(first_run / "results" / "default" / "results.json")["checks"]
    assert len(checks) == 6  # the six findings of the seeds, each with numbers and a verdict
    assert all(c["numbers"] and c["passed"] in (True, False, None) for c in checks)
    stages = stage_log(first_run)
    assert list(stages) == [
        "dataset",
        "extraction",
        "matrices",
        "significance",
        "intrinsic_dimension",
        "id_correlation",
        "tree",
        "reconstruction",
        "energy",
        "maps",
        "figures",
        "report",
    ]
    assert all(s["computed"] > 0 for name, s in stages.items() if name != "report")


def test_the_permutation_null_marks_the_related_pair(first_run: Path) -> None:
    with np.load(first_run / "results" / "default" / "significance.npz") as z:
        sig = {k: z[k] for k in z.files}
    names = list(sig["models"])
    a, b = names.index("chgnet-0.3.0"), names.index("chgnet-0.2.0")
    for key in ("dcor", "cka", "cknna", "ii@1"):  # two versions of one potential share far more than chance
        assert sig[f"{key}:p"][a, b] == pytest.approx(1 / 20), key
        assert sig[f"{key}:observed"][a, b] != sig[f"{key}:mean"][a, b]
    md = (first_run / "report.md").read_text()
    assert "Significance above a permutation null" in md and "19 draws" in md
    assert "* significant" in md


def test_overrides_change_n_k_and_models(first_run: Path) -> None:
    res = read_json(first_run / "results" / "default" / "results.json")
    assert set(res["models"]) == {"chgnet-0.3.0", "chgnet-0.2.0", "morgan", "random"}
    assert res["cknna_k"] == 5
    summary = stage_log(first_run)["dataset"]["summary"]
    assert summary.startswith("40 structures drawn")
    mats = matrices(first_run)
    assert mats["cknna"].shape == (4, 4)
    np.testing.assert_array_equal(mats["cknna"], mats["cknna@5"])
    assert 0 < res["n_structures"] <= 40


def test_rerun_recomputes_nothing(first_run: Path, shared: dict[str, Path]) -> None:
    run_dir = shared["root"] / "rerun"
    proc = run_app(*SMALL, cache=shared["cache"], run_dir=run_dir, xla=shared["xla"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, entry in stage_log(run_dir).items():
        if name != "report":  # the report is re-rendered from cached results
            assert entry["computed"] == 0, (name, entry)
    for key, mat in matrices(first_run).items():
        np.testing.assert_array_equal(matrices(run_dir)[key], mat)


def test_killed_run_resumes_with_identical_matrices(first_run: Path, shared: dict[str, Path]) -> None:
    cache = shared["root"] / "cache-resume"
    for part in ("datasets", "embeddings"):  # keep the extractions, redo the analysis
        shutil.copytree(shared["cache"] / part, cache / part)
    run_dir = shared["root"] / "killed"
    proc = run_app(*SMALL, "debug.fail_after_items=4", cache=cache, run_dir=run_dir, xla=shared["xla"])
    assert proc.returncode == 2 and "fail_after_items" in proc.stderr
    assert not (run_dir / "report.html").exists()
    resumed = shared["root"] / "resumed"
    proc = run_app(*SMALL, cache=cache, run_dir=resumed, xla=shared["xla"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert stage_log(resumed)["matrices"]["cached"] >= 4  # the items saved before the failure were reused
    for key, mat in matrices(first_run).items():
        np.testing.assert_array_equal(matrices(resumed)[key], mat)


def test_two_distributed_processes_write_one_run_equal_to_one_process(first_run: Path, shared: dict[str, Path]) -> None:
    """``distributed={…}``: two app processes on this box share the sweeps' units (each computes its share and
    receives the other's); process 0 writes the run, whose matrices equal a one-process run's; process 1 stops after
    the shared stages and writes only its stage log, under ``process1/``."""
    cache = shared["root"] / "cache-distributed"
    for part in ("datasets", "embeddings"):  # keep the extractions, redo the sweeps
        shutil.copytree(shared["cache"] / part, cache / part)
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    run_dir = shared["root"] / "distributed"
    procs = []
    for rank in range(2):
        where = f"distributed={{coordinator_address:'localhost:{port}',num_processes:2,process_id:{rank}}}"
        procs.append(run_app(*SMALL, where, cache=cache, run_dir=run_dir, xla=shared["xla"], wait=False))
    for proc in procs:
        _, err = proc.communicate(timeout=900)  # liveness limit: the run takes about a minute
        assert proc.returncode == 0, err[-3000:]
    for key, mat in matrices(first_run).items():
        np.testing.assert_array_equal(matrices(run_dir)[key], mat, err_msg=key)
    assert (run_dir / "report.md").is_file()
    assert list(stage_log(run_dir / "process1")) == ["dataset", "extraction", "matrices", "significance"]
    assert not (run_dir / "process1" / "results").exists()
    both = [stage_log(d)["matrices"]["summary"] for d in (run_dir, run_dir / "process1")]
    assert both[0] == both[1]


def test_plus_dataset_with_path(shared: dict[str, Path], tmp_path: Path) -> None:
    """The second documented command line: ``+dataset=omat24 dataset.path=DIR`` on a directory of .aselmdb shards."""
    import ase.db
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(0)
    data = tmp_path / "omat24"
    data.mkdir()
    for shard in range(2):
        with ase.db.connect(str(data / f"data.{shard:04d}.aselmdb"), type="aselmdb") as db:
            for el, a in (("Cu", 3.6), ("Al", 4.05), ("Ni", 3.52), ("Ag", 4.09), ("Pd", 3.89), ("Pt", 3.92)):
                atoms = bulk(el, "fcc", a=a * (1 + 0.02 * rng.standard_normal()), cubic=True)
                atoms.rattle(0.05, seed=int(rng.integers(1000)))
                atoms.calc = SinglePointCalculator(atoms, energy=float(-3.0 * len(atoms) + rng.normal()))
                db.write(atoms)
    run_dir = tmp_path / "run"
    proc = run_app(
        "+dataset=omat24",
        f"dataset.path={data}",
        "models.ids=[chgnet-0.3.0,chgnet-0.2.0,random]",
        "analysis=quick",
        "progress=false",
        cache=shared["cache"],
        run_dir=run_dir,
        xla=shared["xla"],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = read_json(run_dir / "results" / "omat24" / "results.json")
    assert res["n_structures"] == 12
    assert res["energy"]["reference"] == "dataset"
    assert set(res["energy"]["mae_ev"]) == {"chgnet-0.3.0", "chgnet-0.2.0"}
    assert (run_dir / "report.html").is_file()


STUDY = [
    "datasets.molecules.n=30",
    "datasets.crystals.n=30",
    f"models.ids={MODELS}",
    "progress=false",
    # the presets' k and draws are the papers' (N = 50,000); scaled to N = 30 here
    "analysis.cknna.k=5",
    "analysis.cknna.k_sweep=[2,5,10]",
    "analysis.mutual_knn.k=5",
    "analysis.information_imbalance.k=[1,5]",
    "analysis.intrinsic_dimension.mle_k=10",
    "analysis.significance.draws=9",
    "analysis.id_correlation.draws=9",
]
CROSS_FIGURES = {
    "fig1e_intrinsic_dimension_per_dataset",
    "fig2a_joint_maps_pcovr",
    "fig2a_joint_maps_umap",
    "fig2c_in_vs_out_cknna",
    "fig2c_in_vs_out_dcor",
    "fig2c_in_vs_out_ii_k1",
    "fig2d_joint_energy_error_maps",
}


@pytest.mark.parametrize("preset", ["seed000", "seed003"])
def test_two_dataset_study_with_each_paper_preset(preset: str, shared: dict[str, Path], tmp_path: Path) -> None:
    """The default study's molecules and crystals at N = 30 under each paper's preset (its proteins left out: only
    the random baseline of these models reads them): per-dataset results with the models that read each dataset
    (Morgan only on molecules), the cross-dataset figures, checks and the preset's conventions in the results."""
    run_dir = tmp_path / preset
    proc = run_app(*STUDY, f"analysis={preset}", cache=shared["cache"], run_dir=run_dir, xla=shared["xla"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    mol = read_json(run_dir / "results" / "molecules" / "results.json")
    cry = read_json(run_dir / "results" / "crystals" / "results.json")
    assert mol["models"] == ["chgnet-0.3.0", "chgnet-0.2.0", "morgan", "random"]
    assert cry["models"] == ["chgnet-0.3.0", "chgnet-0.2.0", "random"]  # a SMILES model does not run on crystals
    assert (mol["distribution"], cry["distribution"]) == ("out", "in")
    cross = read_json(run_dir / "results" / "cross_dataset" / "cross.json")
    assert (cross["in"], cross["out"], cross["marked"]) == ("crystals", "molecules", True)
    assert cross["in_out_models"] == ["chgnet-0.3.0", "chgnet-0.2.0", "random"]
    assert len(cross["checks"]) == 2 and all(c["passed"] in (True, False) for c in cross["checks"])
    with np.load(run_dir / "results" / "cross_dataset" / "maps.npz") as z:
        assert sorted(np.unique(z["dataset"]).tolist()) == [0, 1]
        assert z["pcovr:chgnet-0.3.0"].shape == (z["dataset"].size, 2)
        assert float(z["pcovr_alpha"]) == 0.5  # both datasets have energy targets (the consensus of two CHGNets)
    stems = {f["stem"] for f in read_json(run_dir / "figures" / "figures.json")}
    assert {f"cross_dataset/{s}" for s in CROSS_FIGURES} <= stems
    assert any(s.startswith("molecules/") for s in stems) and any(s.startswith("crystals/") for s in stems)
    md = (run_dir / "report.md").read_text()
    for heading in ("## Models per dataset", "## Across datasets", "## Dataset: molecules", "## Dataset: crystals"):
        assert heading in md
    assert "not run on this dataset: reads SMILES" in md
    log = [json.loads(line) for line in (run_dir / "stage_log.jsonl").read_text().splitlines()]
    assert [(e.get("dataset"), e["stage"]) for e in log if e["stage"] in ("dataset", "cross_dataset")] == [
        ("molecules", "dataset"),
        ("crystals", "dataset"),
        ("proteins", "dataset"),  # drawn, then left out: of these models only the random baseline reads proteins
        (None, "cross_dataset"),
    ]
    left = [e["summary"] for e in log if e.get("dataset") == "proteins" and e["stage"] == "extraction"]
    assert left == ["dataset left out of the study: fewer than two of the run's models run on it (random)"]
    assert not (run_dir / "results" / "proteins").exists()
    if preset == "seed000":  # max-normalised features, the tree without the random baseline, eV per structure
        leaves = (run_dir / "results" / "molecules" / "tree.nwk").read_text()
        assert "morgan" in leaves and "random" not in leaves
        assert not (run_dir / "results" / "crystals" / "tree.nwk").exists()  # two models left: no tree
        assert "MAE (eV per structure)" in md
    else:  # seed 003: reconstruction on both datasets, stratified test split of at most half the rows
        for name, res in (("molecules", mol), ("crystals", cry)):
            with np.load(run_dir / "results" / name / "reconstruction.npz") as z:
                assert "atom_gfre" in z.files and "cumulant_gfre" in z.files
            assert res["n_structures"] <= 30


def test_two_layers_of_one_model_in_one_run(shared: dict[str, Path], tmp_path: Path) -> None:
    """A model's layer is part of its id (MODEL@LAYER): SevenNet-0's last gate and its third one side by side, each
    extracted under its own key, compared like two models (seed 003 Figs. S3, S9)."""
    layer = "7net-0@2_equivariant_gate"
    run_dir = tmp_path / "layers"
    proc = run_app(
        "+dataset=default",
        "dataset.n=24",
        f"models.ids=[7net-0,{layer},random]",
        "analysis=quick",
        "analysis.cknna.k=5",
        "progress=false",
        cache=shared["cache"],
        run_dir=run_dir,
        xla=shared["xla"],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = read_json(run_dir / "results" / "default" / "results.json")
    assert res["models"] == ["7net-0", layer, "random"]
    assert res["metadata"][layer] == res["metadata"]["7net-0"]  # a layer shares its model's metadata
    cka = matrices(run_dir)["cka"]
    assert 0.3 < cka[0, 1] < 0.9999  # two different but related feature spaces
    stems = {f["stem"] for f in read_json(run_dir / "figures" / "figures.json")}
    assert {"default/figS9_layers_gfre_7net-0", "default/figS9_layers_lfre_7net-0"} <= stems
    assert len(list((shared["cache"] / "embeddings" / layer).glob("*.npz"))) >= 1


def run_distill(*overrides: str, cache: Path, run_dir: Path, xla: Path) -> Any:
    cmd = [sys.executable, str(REPO / "experiments" / "distill.py"), *overrides, f"cache_dir={cache}",
           f"hydra.run.dir={run_dir}", f"jax_compilation_cache={xla}", "progress=false"]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


def test_distillation_raises_alignment_and_resumes_bit_exactly(shared: dict[str, Path], tmp_path: Path) -> None:
    """experiments/distill.py: SOAP → CHGNet 0.3.0 with the CKA loss raises CKA with the teacher on held-out
    structures; a run stopped after 4 epochs and resumed to 8 from its orbax checkpoints ends with exactly the
    numbers of an uninterrupted 8-epoch run."""
    small = ["dataset.n=100", "distill.batch_size=16", "distill.learning_rate=0.005"]
    cache = tmp_path / "cache"
    for part in ("datasets", "embeddings"):
        if (shared["cache"] / part).exists():
            shutil.copytree(shared["cache"] / part, cache / part, dirs_exist_ok=True)
    first = run_distill(*small, "distill.epochs=4", cache=cache, run_dir=tmp_path / "d4", xla=shared["xla"])
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_distill(*small, "distill.epochs=8", cache=cache, run_dir=tmp_path / "d8", xla=shared["xla"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    training = stage_log(tmp_path / "d8")["training"]
    assert (training["computed"], training["cached"]) == (4, 4)  # epochs 5-8 trained, 1-4 restored
    fresh_cache = tmp_path / "fresh"
    shutil.copytree(cache / "datasets", fresh_cache / "datasets")
    shutil.copytree(cache / "embeddings", fresh_cache / "embeddings")
    whole = run_distill(*small, "distill.epochs=8", cache=fresh_cache, run_dir=tmp_path / "w8", xla=shared["xla"])
    assert whole.returncode == 0, whole.stderr[-3000:]
    a = read_json(tmp_path / "d8" / "results" / "distill.json")
    b = read_json(tmp_path / "w8" / "results" / "distill.json")
    for key in ("train_loss", "cka_teacher", "cknna_teacher", "gfre_to_final"):
        np.testing.assert_array_equal(np.asarray(a[key], float), np.asarray(b[key], float), err_msg=key)
    assert a["steps"] == list(range(9))
    assert a["cka_teacher"][-1] > a["cka_teacher"][0] + 0.02  # measurably closer to the teacher
    assert a["cka_final"][-1] == pytest.approx(1.0, abs=1e-4)  # platonic-rep's +1e-6 in the denominator
    md = (tmp_path / "d8" / "report.md").read_text()
    assert "Before and after" in md and "figures/distill_alignment_with_teacher.png" in md


# ------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+dataset=omat24"], "needs a path: add `dataset.path="),
        (["+dataset=qm9", "dataset.path=/no/such/qm9"], "does not exist"),
        (["models.ids=[random,no-such-model]"], "unknown model id(s) ['no-such-model']"),
        (
            ["+dataset=default", "models.ids=[random,soap]", "dataset.filters.min_atoms=1000"],
            "removed by dataset.filters",
        ),
        (["datasets=none"], "the run has no dataset"),
        (
            [
                "datasets=none",
                "+dataset@datasets.molecules=molecules",
                "+dataset@datasets.crystals=crystals",
                "datasets.molecules.models=[morgan]",
                "models.ids=[morgan,chgnet-0.3.0]",
            ],
            "dataset 'molecules': fewer than two of the run's models run on it (morgan); dataset 'crystals'",
        ),
        (["models.envs=off", "models.ids=[random,proteinmpnn-ca]"], "or models.envs=auto to let the app build"),
        (["models.envs=maybe"], "models.envs must be one of ('auto', 'off'), got 'maybe'"),
    ],
)
def test_clear_errors(overrides: list[str], message: str, shared: dict[str, Path], tmp_path: Path) -> None:
    proc = run_app(*overrides, "progress=false", cache=tmp_path / "cache", run_dir=tmp_path / "run", xla=shared["xla"])
    assert proc.returncode == 2
    assert message in proc.stderr, proc.stderr[-2000:]


def test_model_reading_no_dataset_of_the_run(shared: dict[str, Path], tmp_path: Path) -> None:
    """Morgan fingerprints need a molecule; on the embedded crystals alone it reads nothing: one error before any
    extraction, naming the model, the dataset and why."""
    proc = run_app(
        "+dataset=default",
        "models.ids=[morgan,random]",
        "dataset.split=id",
        "dataset.filters.elements=[Cu,Ni,Fe,Au,W,Mo]",
        "dataset.n=null",
        "progress=false",
        cache=tmp_path / "cache",
        run_dir=tmp_path / "run",
        xla=shared["xla"],
    )
    assert proc.returncode == 2
    assert "model 'morgan' is run on no dataset of this run" in proc.stderr, proc.stderr[-2000:]
    assert "default: reads SMILES; none of the" in proc.stderr and "periodic structure: no SMILES" in proc.stderr


def test_datasets_with_fewer_than_two_models_are_left_out(shared: dict[str, Path], tmp_path: Path) -> None:
    """The default study with models that only the molecules hold two of: the crystals (random alone) and the
    proteins (random alone) are left out with a line saying why; the molecules are compared. A run that stops after
    the extraction compares nothing and leaves nothing out."""
    proc = run_app(
        "models.ids=[morgan,random]",
        "datasets.molecules.n=20",
        "analysis=quick",
        *[o for o in STUDY if o.startswith("analysis.")],
        "progress=false",
        cache=tmp_path / "cache",
        run_dir=tmp_path / "run",
        xla=shared["xla"],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("crystals", "proteins"):
        why = "fewer than two of the run's models run on it (random)"
        assert f"[{name}/extraction] dataset left out of the study: {why}" in proc.stderr, proc.stderr[-3000:]
    assert "[molecules/extraction] 2 models on 20 structures" in proc.stderr
    assert read_json(tmp_path / "run" / "results" / "molecules" / "results.json")["models"] == ["morgan", "random"]
    assert not (tmp_path / "run" / "results" / "crystals").exists()
    only = run_app(
        "+dataset=crystals",
        "models.ids=[random]",
        "debug.stop_after=extraction",
        "progress=false",
        cache=tmp_path / "cache",
        run_dir=tmp_path / "run2",
        xla=shared["xla"],
    )
    assert only.returncode == 0 and "left out" not in only.stderr, only.stderr[-3000:]


def test_protein_dataset_with_proteinmpnn_in_its_own_environment(shared: dict[str, Path], tmp_path: Path) -> None:
    """The default study's proteins (real PDB chains shipped by MDAnalysisTests): ProteinMPNN runs in the family
    environment the app builds or reuses (models.envs=auto), SOAP reads the chains' heavy atoms, and the dataset's
    `models` list, given by modality, keeps CHGNet off it (CHGNet still runs on the crystals)."""
    from experiments.cache import read_npz
    from extractors import envs

    proc = run_app(
        "datasets=none",
        "+dataset@datasets.proteins=proteins",
        "+dataset@datasets.crystals=crystals",
        "datasets.proteins.n=12",
        "datasets.crystals.n=12",
        "models.ids=[proteinmpnn-ca,soap,random,chgnet-0.3.0]",
        "debug.stop_after=extraction",
        "progress=false",
        cache=tmp_path / "cache",
        run_dir=tmp_path / "run",
        xla=shared["xla"],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[proteins/extraction] 3 models on 12 structures" in proc.stderr, proc.stderr[-3000:]
    assert "not run (unreadable or left out by its models list): ['chgnet-0.3.0']" in proc.stderr
    sidecar = read_json(next((tmp_path / "cache" / "embeddings" / "proteinmpnn-ca").glob("*.json")))
    assert Path(sidecar["interpreter"]) == envs.find_python("proteinmpnn")
    soap = [f for f in (tmp_path / "cache" / "embeddings" / "soap").glob("*.npz")]
    assert sorted(read_npz(f)["features"].shape[0] for f in soap) == [12, 12]


# ------------------------------------------------------------------------------------------------- units
def test_config_composes_both_command_lines() -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "experiments" / "conf"), version_base="1.3"):
        default = compose("config")
        assert "dataset" not in default and list(default.datasets) == ["molecules", "crystals", "proteins"]
        prot = default.datasets.proteins
        assert (prot.format, prot.options, prot.n, prot.path) == ("proteins", None, None, None)
        assert "proteinmpnn-vanilla" in default.models.ids and default.models.envs == "auto"
        mol, cry = default.datasets.molecules, default.datasets.crystals
        assert (mol.distribution, cry.distribution) == ("out", "in")
        assert list(mol.options.collections) == ["g2", "s22"] and list(cry.options.collections) == ["dcdft"]
        assert mol.filters.min_atoms == 2 and mol.format == "default"  # every key of dataset/default.yaml
        two = compose(
            "config",
            overrides=["datasets=none", "+dataset@datasets.omat24=omat24", "datasets.omat24.path=/a",
                       "+dataset@datasets.omol25=omol25", "datasets.omol25.path=/b"],
        )  # fmt: skip
        assert list(two.datasets) == ["omat24", "omol25"] and two.datasets.omol25.distribution == "out"
        assert len(default.models.ids) == 16 and "random" in default.models.ids
        omat = compose("config", overrides=["+dataset=omat24", "dataset.path=/data/omat24"])
        assert (omat.dataset.name, omat.dataset.format, omat.dataset.path) == ("omat24", "asedb", "/data/omat24")
        assert omat.dataset.filters.min_atoms == 2
        over = compose("config", overrides=["datasets.crystals.n=50", "analysis.cknna.k=10", "models=fast"])
        assert (over.datasets.crystals.n, over.analysis.cknna.k, over.models.name) == (50, 10, "fast")
        slurm = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
        assert slurm.hydra.launcher._target_.endswith("SlurmLauncher")
        seed000 = compose("config", overrides=["analysis=seed000"]).analysis
        assert list(seed000.preprocessing) == ["max_normalize"]
        assert list(seed000.information_imbalance.k) == [50, 200, 500]
        assert (seed000.intrinsic_dimension.mle_k, seed000.condensed.include_self, seed000.tree.exclude_baseline) == (
            50, True, True)  # fmt: skip
        assert seed000.energy.unit == "ev_per_structure" and seed000.cknna.k == 25
        seed003 = compose("config", overrides=["analysis=seed003"]).analysis.reconstruction
        assert (seed003.split.test, seed003.cumulant_components, seed003.cumulant_order, seed003.order_lfre) == (
            1000, None, 8, True)  # fmt: skip
        assert (seed003.scale, default.analysis.reconstruction.scale) == ("all", "train")
        assert default.analysis.name == "default" and default.analysis.reconstruction.split.test is None


def test_model_tree_leaves_out_the_random_baseline_when_asked() -> None:
    from experiments.stages.tree import model_tree

    names, fams = ["a1", "a2", "b1", "rand"], ["a", "a", "b", "baseline"]
    c = np.array([[1, 0.8, 0.4, 0.1], [0.8, 1, 0.5, 0.1], [0.4, 0.5, 1, 0.1], [0.1, 0.1, 0.1, 1.0]])
    full = model_tree({}, names, fams, c)
    assert full["excluded"] == [] and "rand" in full["newick"]
    seed000 = model_tree({"tree": {"exclude_baseline": True}}, names, fams, c)
    assert seed000["excluded"] == ["rand"] and seed000["models"] == ["a1", "a2", "b1"]
    assert "rand" not in seed000["newick"]
    assert model_tree({"tree": {"exclude_baseline": True}}, names[1:], fams[1:], c[1:, 1:]) == {}  # 2 models left


def test_compact_preserves_inner_products_distances_and_duplicates() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 40)).astype(np.float32)
    x[5] = x[2]
    y = compact(x, 16)
    assert y.shape == (12, 16)
    np.testing.assert_allclose(y @ y.T, x @ x.T, atol=1e-4)
    np.testing.assert_array_equal(y[5], y[2])
    z = compact(x[:, :8], 16)
    np.testing.assert_array_equal(z[:, :8], x[:, :8])
    assert not z[:, 8:].any()


def test_content_key_and_checkpoint(tmp_path: Path) -> None:
    assert content_key("a", {"x": 1, "y": [1, 2]}) == content_key("a", {"y": [1, 2], "x": 1})
    assert content_key("a", {"x": 1}) != content_key("a", {"x": 2}) != content_key("b", {"x": 2})
    path = tmp_path / "ck.json"
    with Checkpoint(path, "k1", flush_s=0) as ck:
        ck.put("a", 1.5)
    assert Checkpoint(path, "k1").values == {"a": 1.5}
    assert Checkpoint(path, "k2").values == {}  # another computation's partial results are not reused
