"""Command-line and app errors, faults and concurrency (issue 10, kind 7).

Every problem the user fixes — an extended XYZ file with no usable structure, a malformed or unparsable frame, an
empty file, a device this torch does not have, an output directory that is read-only or full — gives exactly one
``error: ...`` line naming the file / frame / directory and the fix, exit code 2, and leaves no ``.work``, ``.tmp``
or ``.lock`` file behind; ``--skip-bad-frames`` / ``dataset.skip_bad_frames`` keep the rest of a file. Two app runs
on one cache do not collide (one waits for the other's extraction), a killed app leaves no extraction running, and
CHGNet's refusal of an isolated atom is a per-structure failure record.

Real components throughout: extended XYZ files written with ASE (and edited as text to break them), the real
``python -m extractors`` command line and Hydra app in subprocesses (some command-line cases in-process, the same
``main``), real concurrent processes and signals. The only simulation is a full disk (``os.fsync`` raising ENOSPC).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ase")

from ase import Atoms
from ase.build import molecule
from ase.io import write

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from experiments.stages.extraction import _HideErrors  # noqa: E402
from extractors.__main__ import main as cli_main  # noqa: E402
from extractors.embedding_file import read_npz  # noqa: E402
from extractors.faults import exclusive_lock  # noqa: E402

LIVENESS_S = 180  # how long a test waits for a process to reach a state before it fails (not a timing assertion)
APP = [f"{sys.executable}", str(REPO / "experiments" / "run.py")]


# ------------------------------------------------------------------------------------------------- files
def _mol(name: str) -> Atoms:
    a = molecule(name)
    a.center(vacuum=4.0)
    return a


def _edit_frames(src: Path, dst: Path, edit) -> Path:
    """Copy an extended XYZ file frame by frame, ``edit(frame, lines) -> lines`` on each frame's lines."""
    lines = src.read_text().splitlines()
    out, i, frame = [], 0, 0
    while i < len(lines):
        n = int(lines[i])
        out += edit(frame, lines[i : i + 2 + n])
        i, frame = i + 2 + n, frame + 1
    dst.write_text("\n".join(out) + "\n")
    return dst


@pytest.fixture(scope="module")
def xyz(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """good.xyz (CH4, H2O, NH3, CO2, C2H6: frames 0–4 start at lines 1, 8, 13, 19, 24) and broken copies."""
    d = tmp_path_factory.mktemp("xyz")
    good = d / "good.xyz"
    write(good, [_mol(n) for n in ("CH4", "H2O", "NH3", "CO2", "C2H6")], format="extxyz")
    polonium = [_mol("H2"), _mol("H2O")]
    for a in polonium:
        a.numbers[:] = 84
    write(d / "polonium.xyz", polonium, format="extxyz")
    (d / "empty.xyz").write_text("")
    return {
        "good": good,
        "polonium": d / "polonium.xyz",  # every structure unsupported by SOAP fixed to H, C, N, O
        "empty": d / "empty.xyz",
        # frame 2 (NH3) loses an atom line: the count line of frame 3 is read as an atom, its comment as a count
        "malformed": _edit_frames(good, d / "malformed.xyz", lambda f, ls: ls[:-1] if f == 2 else ls),
        # frame 1 carries a 6-value (Voigt) stress, which ASE's extxyz reader refuses
        "stress6": _edit_frames(
            good, d / "stress6.xyz", lambda f, ls: [ls[0], ls[1] + ' stress="1 2 3 4 5 6"', *ls[2:]] if f == 1 else ls
        ),
    }


def leftovers(root: Path) -> list[str]:
    """Work directories, temporary files and lock files under ``root``."""
    if not root.exists():
        return []
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.endswith((".work", ".lock")) or ".tmp" in p.name or p.name.startswith("tmp")
    )


def assert_one_error(code: int, stderr: str, *fragments: str) -> str:
    """Exit code 2, exactly one ``error:`` line, no traceback; every fragment in that line. Returns the line."""
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert code == 2, (code, stderr[-3000:])
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


# ------------------------------------------------------------------------------------------------- processes
def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "extractors", "run", *args, "--no-progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=LIVENESS_S,
        **kw,
    )


def app_cmd(*overrides: str, cache: Path, run_dir: Path) -> list[str]:
    return [
        *APP,
        *overrides,
        "progress=false",
        "jax_compilation_cache=false",
        f"cache_dir={cache}",
        f"hydra.run.dir={run_dir}",
    ]


def app(*overrides: str, cache: Path, run_dir: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        app_cmd(*overrides, cache=cache, run_dir=run_dir),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=LIVENESS_S,
        **kw,
    )


def _drop_dac_override() -> None:
    """preexec_fn: as root, drop CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH from the bounding set so that the exec'd
    process obeys file permissions (root ignores chmod otherwise)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            os._exit(97)


@pytest.fixture
def read_only(tmp_path: Path):
    """A read-only directory and the ``preexec_fn`` a subprocess needs to be refused writing there."""
    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    preexec = _drop_dac_override if os.geteuid() == 0 else None
    probe = subprocess.run(["touch", str(ro / "probe")], preexec_fn=preexec, capture_output=True)
    if probe.returncode == 0:
        pytest.skip("cannot make a directory read-only for this user (root without a droppable CAP_DAC_OVERRIDE)")
    yield ro, preexec
    ro.chmod(0o755)


# ------------------------------------------------------------------------------------------------- command line
@pytest.mark.parametrize(
    ("case", "args", "fragments"),
    [
        pytest.param(
            "polonium",
            ["--model", "soap", "--opt", 'species=["H","C","N","O"]'],
            ["no structure of", "polonium.xyz", "could be embedded by soap", "all 2 failed", "[84]", "choose a model"],
            id="a-every-structure-unsupported",
        ),
        pytest.param(
            "polonium",
            ["--model", "soap", "--opt", 'species=["H","C","N","O"]', "--drop-unsupported"],
            ["is left to embed by soap", "all 2 were dropped", "drop --drop-unsupported"],
            id="a-every-structure-dropped",
        ),
        pytest.param(
            "malformed",
            ["--model", "random"],
            ["malformed.xyz line 19", "atom count of frame 3", "frame 2 (from line 13)", "fix the file"],
            id="b-malformed",
        ),
        pytest.param(
            "stress6",
            ["--model", "random"],
            ["stress6.xyz frame 1 (line 8)", "stress", "--skip-bad-frames"],
            id="c-six-value-stress",
        ),
        pytest.param(
            "empty", ["--model", "random"], ["empty.xyz", "holds no frame", "regenerate the file"], id="f-empty"
        ),
    ],
)
def test_cli_bad_input(case, args, fragments, xyz, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = cli_main(["run", *args, "--dataset", str(xyz[case]), "--out", str(out), "--no-progress"])
    assert_one_error(code, capsys.readouterr().err, *fragments)
    assert leftovers(tmp_path) == [] and not any(out.glob("*.npz"))


def test_cli_bad_input_in_a_subprocess(xyz, tmp_path) -> None:
    """The same path end to end: the real process's stderr and exit code."""
    proc = cli("--model", "random", "--dataset", str(xyz["stress6"]), "--out", str(tmp_path / "out"))
    assert_one_error(proc.returncode, proc.stderr, "stress6.xyz frame 1 (line 8)", "--skip-bad-frames")
    assert leftovers(tmp_path) == []


def test_cli_skip_bad_frames_keeps_the_rest(xyz, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    args = ["run", "--model", "random", "--dataset", str(xyz["stress6"]), "--out", str(out), "--no-progress"]
    code = cli_main([*args, "--skip-bad-frames"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "skipped 1 unreadable frame(s)" in err and "frame 1 (line 8)" in err
    z = read_npz(out / "random__stress6__last.npz")
    assert z["structure_ids"].tolist() == ["stress6:0", "stress6:2", "stress6:3", "stress6:4"]
    meta = json.loads(str(z["meta"]))
    (dropped,) = meta["dropped"]
    assert dropped["id"] == "stress6:1" and "line 8" in dropped["reason"] and "stress" in dropped["reason"]
    assert meta["filters"]["skip_bad_frames"] is True
    assert leftovers(tmp_path) == []


def test_cli_device_cuda_on_cpu_only_torch(xyz, tmp_path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    pytest.importorskip("chgnet")
    out = tmp_path / "out"
    proc = cli("--model", "chgnet-0.3.0", "--opt", "device=cuda", "--dataset", str(xyz["good"]), "--out", str(out))
    assert_one_error(proc.returncode, proc.stderr, "device 'cuda'", "CPU-only build", "device=cpu")
    assert "CHGNet" not in proc.stderr and not out.exists()  # refused before the model was loaded


def test_cli_read_only_output(xyz, read_only) -> None:
    ro, preexec = read_only
    proc = cli("--model", "random", "--dataset", str(xyz["good"]), "--out", str(ro), preexec_fn=preexec)
    assert_one_error(proc.returncode, proc.stderr, f"cannot write to {ro}", "Permission denied", "--out")
    assert list(ro.iterdir()) == []


def _disk_full(*_args, **_kw):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_cli_full_disk(xyz, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "out"
    monkeypatch.setattr(os, "fsync", _disk_full)  # every atomic write ends in fsync: the disk is "full"
    code = cli_main(["run", "--model", "random", "--dataset", str(xyz["good"]), "--out", str(out), "--no-progress"])
    assert_one_error(code, capsys.readouterr().err, "No space left on device while writing", str(out), "free space")
    assert leftovers(tmp_path) == [] and list(out.iterdir()) == []


def test_cli_busy_output_is_a_clear_error(xyz, tmp_path) -> None:
    """Another process (this one) holds the output's lock: a second writer stops at once with 'cache in use'."""
    out = tmp_path / "out"
    out.mkdir()
    with exclusive_lock(out / ".random__good__last.lock", wait=False):
        proc = cli("--model", "random", "--dataset", str(xyz["good"]), "--out", str(out))
    assert_one_error(proc.returncode, proc.stderr, "cache in use", f"process {os.getpid()}", "--out")
    assert leftovers(tmp_path) == []
    proc = cli("--model", "random", "--dataset", str(xyz["good"]), "--out", str(out))  # free again
    assert proc.returncode == 0, proc.stderr
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------- the app
@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        pytest.param(
            [
                "+dataset=mad",
                "dataset.path={polonium}",
                "models.ids=[soap,random]",
                "++models.options={{soap: {{species: [H, C, N, O]}}}}",
            ],
            ["model 'soap' failed on every structure", "[84]", "drop it from models.ids"],
            id="a-every-structure-unsupported",
        ),
        pytest.param(
            ["+dataset=mad", "dataset.path={polonium}", "dataset.filters.elements=[H,C,N,O]"],
            ["removed by dataset.filters", "relax the filters"],
            id="a-every-structure-filtered",
        ),
        pytest.param(
            ["+dataset=mad", "dataset.path={malformed}"],
            ["malformed.xyz line 19", "frame 2 (from line 13)"],
            id="b-malformed",
        ),
        pytest.param(
            ["+dataset=mad", "dataset.path={stress6}"],
            ["stress6.xyz frame 1 (line 8)", "dataset.skip_bad_frames=true"],
            id="c-six-value-stress",
        ),
        pytest.param(
            ["models.ids=[chgnet-0.3.0,random]", "++models.options={{chgnet-0.3.0: {{device: cuda}}}}"],
            ["model 'chgnet-0.3.0'", "device 'cuda'", "CPU-only build"],
            id="d-device-cuda",
        ),
        pytest.param(["+dataset=mad", "dataset.path={empty}"], ["empty.xyz", "holds no frame"], id="f-empty"),
    ],
)
def test_app_bad_input(overrides, fragments, xyz, tmp_path) -> None:
    if any("cuda" in o for o in overrides):
        torch = pytest.importorskip("torch")
        if torch.cuda.is_available():
            pytest.skip("a CUDA device is available here")
    cache = tmp_path / "cache"
    args = [o.format(**xyz) for o in overrides]
    if not any(a.startswith("+dataset=") for a in args):
        args.insert(0, "+dataset=default")
    proc = app(*args, "dataset.n=10", "debug.stop_after=extraction", cache=cache, run_dir=tmp_path / "run")
    assert_one_error(proc.returncode, proc.stderr, *fragments)
    assert leftovers(cache) == [] and not any(cache.rglob("*.npz"))


def test_app_skip_bad_frames(xyz, tmp_path) -> None:
    cache = tmp_path / "cache"
    proc = app(
        "+dataset=mad",
        f"dataset.path={xyz['stress6']}",
        "dataset.skip_bad_frames=true",
        "debug.stop_after=dataset",
        cache=cache,
        run_dir=tmp_path / "run",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped 1 unreadable frame(s)" in proc.stderr and "frame 1 (line 8)" in proc.stderr
    (summary,) = cache.glob("datasets/*/summary.json")
    s = json.loads(summary.read_text())
    assert s["n_selected"] == 4 and s["dropped"] == {"unreadable frame (dataset.skip_bad_frames)": 1}
    assert [f["id"] for f in s["skipped_frames"]] == ["stress6:1"]


def test_app_read_only_cache(read_only, tmp_path) -> None:
    ro, preexec = read_only
    proc = app("models.ids=[random]", cache=ro, run_dir=tmp_path / "run", preexec_fn=preexec)
    assert_one_error(proc.returncode, proc.stderr, f"cannot write to {ro}", "Permission denied", "cache_dir=")
    assert list(ro.iterdir()) == []


def test_app_full_disk(tmp_path, capsys, monkeypatch) -> None:
    """In-process app (the same function the Hydra entry point calls) on a disk that fills up."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from experiments.run import run_app

    with initialize_config_dir(config_dir=str(REPO / "experiments" / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["models.ids=[random]", "progress=false", "jax_compilation_cache=false"])
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["cache_dir"] = str(tmp_path / "cache")
    monkeypatch.setattr(os, "fsync", _disk_full)
    code = run_app(plain, tmp_path / "run")
    line = assert_one_error(code, capsys.readouterr().err, "No space left on device while writing", "cache_dir=")
    assert str(tmp_path / "cache" / "datasets") in line
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------- concurrency
FAST = ["+dataset=default", "dataset.n=40", "debug.stop_after=extraction"]


def test_two_app_runs_on_one_cache(tmp_path) -> None:
    """Two real app processes started together on one cache both finish; each model is extracted once."""
    cache = tmp_path / "cache"
    procs = [
        subprocess.Popen(
            app_cmd("models.ids=[soap,random]", *FAST, cache=cache, run_dir=tmp_path / f"run{i}"),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=LIVENESS_S) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    for model in ("soap", "random"):
        assert len(list((cache / "embeddings" / model).glob("*.npz"))) == 1
    logs = [
        {e["stage"]: e for e in map(json.loads, (tmp_path / f"run{i}" / "stage_log.jsonl").read_text().splitlines())}
        for i in range(2)
    ]
    assert all(log["extraction"]["computed"] + log["extraction"]["cached"] == 2 for log in logs)
    assert leftovers(cache) == []


def test_app_waits_for_a_run_extracting_the_same_model(tmp_path) -> None:
    """While another process holds a model's extraction lock, the app says so and waits; then it extracts."""
    cache = tmp_path / "cache"
    first = app("models.ids=[random]", *FAST, cache=cache, run_dir=tmp_path / "run0")
    assert first.returncode == 0, first.stderr[-3000:]
    (npz,) = (cache / "embeddings" / "random").glob("*.npz")
    npz.unlink()
    npz.with_suffix(".json").unlink()
    with exclusive_lock(npz.with_name(f".{npz.stem}.extracting.lock"), wait=False):
        proc = subprocess.Popen(
            app_cmd("models.ids=[random]", *FAST, cache=cache, run_dir=tmp_path / "run1"),
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        seen = []
        for line in proc.stderr:  # blocks until the app reports that it waits (or ends)
            seen.append(line)
            if "waiting for" in line:
                break
        assert f"waiting for process {os.getpid()}" in "".join(seen), "".join(seen)
        assert proc.poll() is None and not npz.exists()
    rest = proc.stderr.read()
    assert proc.wait(timeout=LIVENESS_S) == 0, rest[-3000:]
    assert npz.exists() and leftovers(cache) == []


# ------------------------------------------------------------------------------------------------- killed app
def _proc_children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_app_leaves_no_extraction_running(sig, tmp_path) -> None:
    cache = tmp_path / "cache"
    heavy = "++models.options={soap: {n_max: 10, l_max: 8}}"  # a few minutes of work: killed long before the end
    cmd = app_cmd("+dataset=default", "models.ids=[soap]", "dataset.n=null", heavy, "debug.stop_after=extraction",
                  cache=cache, run_dir=tmp_path / "run")  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + LIVENESS_S
    extraction = []
    while not extraction and proc.poll() is None and time.monotonic() < deadline:
        extraction = [c for c in _proc_children(proc.pid) if "experiments.extract" in _cmdline(c)]
        time.sleep(0.05)
    assert extraction, f"no extraction process started: {proc.poll()} {proc.stderr.read()[-2000:]}"
    (child,) = extraction
    proc.send_signal(sig)
    err = proc.communicate(timeout=LIVENESS_S)[1]
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), f"extraction process {child} outlived the app ({_cmdline(child)})"
    assert not list(cache.glob("embeddings/soap/*.npz"))  # it was stopped, not finished
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in err, err[-2000:]


# ------------------------------------------------------------------------------------------------- isolated atoms
def test_chgnet_isolated_atoms_are_failure_records(tmp_path) -> None:
    pytest.importorskip("chgnet")
    from extractors import Record, build_extractor, run_extraction
    from jaxalign.io import load_embedding

    far = _mol("H2O") + Atoms("Ne", positions=[[4.0, 4.0, 20.0]])  # Ne 15 Å from the water: no neighbour in 6 Å
    records = [
        Record(id="H2O", atoms=_mol("H2O")),
        Record(id="far", atoms=far),
        Record(id="Ar", atoms=Atoms("Ar", positions=[[0.0, 0.0, 0.0]])),
        Record(id="CH4", atoms=_mol("CH4")),
    ]
    ext = build_extractor("chgnet-0.3.0")
    path = run_extraction(
        "chgnet-0.3.0", "toy", tmp_path, records=records, extractor=ext, name="iso", batch_size=4, progress=False
    )
    emb = load_embedding(path)
    assert emb.structure_ids.tolist() == ["H2O", "CH4"] and emb.energy.shape == (2,)
    reasons = {f["id"]: f["reason"] for f in emb.meta["failures"]}
    assert set(reasons) == {"far", "Ar"}
    assert "isolated atom(s) Ne#3" in reasons["far"] and "6 Å" in reasons["far"]
    assert "isolated atom(s) Ar#0" in reasons["Ar"]
    alone = build_extractor("chgnet-0.3.0").embed([records[0]])[0]  # the others are unaffected by the refusals
    np.testing.assert_allclose(emb.features[0], alone.features, atol=1e-5)


# ------------------------------------------------------------------------------------------------- units
def test_child_error_lines_are_held_back_from_the_live_stream() -> None:
    f = _HideErrors()
    stream = [b"bar 1%\rbar 50", b"%\rbar 100%\n[extractors] note\ner", b"ror: boom\n", b"erratum\n", b"tail"]
    shown = b"".join(f.feed(chunk) for chunk in stream) + f.close()
    assert shown == b"bar 1%\rbar 50%\rbar 100%\n[extractors] note\nerratum\ntail"
