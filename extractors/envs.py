"""Per-family virtual environments for model families whose packages conflict with the main environment.

Real models pin conflicting dependencies (mace-torch needs e3nn==0.4.4, sevenn needs e3nn>=0.5), so a family such
as MACE runs under its own interpreter: ``python -m extractors run --python $(python -m extractors.envs path mace)
...``. This module creates those environments, one per family, at ``<root>/<family>``; ``root`` is
``$JAXALIGN_ENVS`` when set, else ``$XDG_CACHE_HOME/jaxalign/envs`` (default ``~/.cache/jaxalign/envs``).

An environment holds ``torch==2.13.0`` (always pinned: its CPU wheel is on this machine's disk, while an unpinned
torch pulls a multi-GB CUDA build), numpy, ase, tqdm and pytest, the requirements its family module declares and
this repository installed with ``--no-deps`` (editable, so the environment always runs the current extractors). A
family module ``extractors/models/<family>.py`` declares ``ENV_REQUIREMENTS`` (the environment named after the
family), optionally ``EXTRA_ENVS`` (``{name: requirements}``, further environments, e.g. ``fairchem-v1``) and
``ENV_REMOVE`` (packages uninstalled after the install: unused dependencies whose binaries cannot load beside torch
2.13); :data:`EXTRA_REQUIREMENTS` adds to them. A finished environment carries a ``jaxalign-env.json`` marker
(requirements, installed versions, creation time and seconds); a half-made one has no marker and is rebuilt.

Command line::

    python -m extractors.envs list               # families, their requirements and whether each env exists
    python -m extractors.envs create mace [orb]  # create (or --force re-create); prints the interpreter path
    python -m extractors.envs path mace          # the interpreter path (exit 1 when the env does not exist)
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
import venv
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "BASE_REQUIREMENTS",
    "ENV_VAR",
    "EXTRA_REQUIREMENTS",
    "MARKER",
    "create",
    "env_dir",
    "envs_root",
    "families",
    "find_python",
    "main",
    "requirements",
]

ENV_VAR = "JAXALIGN_ENVS"
MARKER = "jaxalign-env.json"
#: Installed in every family environment. torch stays pinned to the release whose CPU wheel is on disk.
BASE_REQUIREMENTS = ("torch==2.13.0", "numpy", "ase", "tqdm", "pytest")
#: Requirements for families whose module declares none (or additions to what it declares), by family.
EXTRA_REQUIREMENTS: dict[str, tuple[str, ...]] = {}
ROOT = Path(__file__).resolve().parents[1]


def envs_root(root: str | os.PathLike | None = None) -> Path:
    """Where family environments live: ``root``, else ``$JAXALIGN_ENVS``, else ``<user cache>/jaxalign/envs``."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "jaxalign" / "envs"


def env_dir(family: str, root: str | os.PathLike | None = None) -> Path:
    return envs_root(root) / family


def _python_in(directory: Path) -> Path:
    return directory / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _declared() -> dict[str, dict]:
    """Every environment the family modules declare: ``ENV_REQUIREMENTS`` (the env named after the family),
    ``EXTRA_ENVS`` (further named envs, e.g. ``fairchem-v1``), ``ENV_REMOVE`` (packages uninstalled afterwards:
    unused dependencies whose binaries cannot load beside torch 2.13), plus :data:`EXTRA_REQUIREMENTS`."""
    from extractors.registry import FAMILIES

    out: dict[str, dict] = {}
    for family in FAMILIES:
        module = importlib.import_module(f"extractors.models.{family}")
        remove = tuple(getattr(module, "ENV_REMOVE", ()))
        if getattr(module, "ENV_REQUIREMENTS", ()):
            out[family] = {"family": family, "requirements": tuple(module.ENV_REQUIREMENTS), "remove": remove}
        for name, reqs in getattr(module, "EXTRA_ENVS", {}).items():
            out[name] = {"family": family, "requirements": tuple(reqs), "remove": ()}
    for name, reqs in EXTRA_REQUIREMENTS.items():
        entry = out.setdefault(name, {"family": name, "requirements": (), "remove": ()})
        entry["requirements"] = entry["requirements"] + tuple(reqs)
    return out


def families() -> tuple[str, ...]:
    """Names of the declared environments (mostly family names), in registry order."""
    return tuple(_declared())


def requirements(family: str) -> tuple[str, ...]:
    """The requirements of environment ``family`` beyond :data:`BASE_REQUIREMENTS`; ValueError when undeclared."""
    declared = _declared()
    if family not in declared:
        raise ValueError(f"no environment {family!r} is declared; declared: {', '.join(declared)}.")
    return declared[family]["requirements"]


def find_python(family: str, root: str | os.PathLike | None = None) -> Path | None:
    """The interpreter of ``family``'s finished environment, or None when it does not exist (or is half made)."""
    directory = env_dir(family, root)
    python = _python_in(directory)
    if (directory / MARKER).is_file() and python.exists():
        return python
    return None


def _pip(python: Path, args: Sequence[str], quiet: bool) -> None:
    """``pip install args``; quiet: output captured and, on failure, its resolver explanation put in the error."""
    cmd = [str(python), "-m", "pip", "install", *args]
    done = subprocess.run(cmd, capture_output=quiet, text=True)
    if done.returncode:
        lines = [ln for ln in (done.stdout + done.stderr).splitlines() if quiet and "is ignored" not in ln]
        tail = "\n".join(lines[-25:])
        raise RuntimeError(f"`{' '.join(cmd)}` failed with exit code {done.returncode}\n{tail}")


def _installed(python: Path, names: Sequence[str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = 'not installed'\n"
        "print(json.dumps(out))"
    )
    done = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def _name(requirement: str) -> str:
    for sep in "<>=!~[; ":
        requirement = requirement.split(sep)[0]
    return requirement


def create(
    family: str,
    root: str | os.PathLike | None = None,
    *,
    force: bool = False,
    quiet: bool = True,
    extra: Sequence[str] = (),
) -> Path:
    """Create ``family``'s environment (unless a finished one exists and ``force`` is false); return its
    interpreter. ``extra``: further requirements. Raises RuntimeError with pip's error when an install fails."""
    reqs = (*requirements(family), *extra)
    directory = env_dir(family, root)
    if not force and find_python(family, root) is not None:
        return _python_in(directory)
    if directory.exists():
        shutil.rmtree(directory)
    start = time.perf_counter()
    venv.EnvBuilder(with_pip=True, clear=True).create(directory)
    python = _python_in(directory)
    remove = _declared()[family]["remove"]
    try:
        _pip(python, [*BASE_REQUIREMENTS, *reqs], quiet)
        if remove:
            done = subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", *remove], capture_output=True)
            if done.returncode:
                raise RuntimeError(f"pip uninstall {' '.join(remove)} failed: {done.stderr.decode()[-2000:]}")
        if (ROOT / "pyproject.toml").is_file():
            _pip(python, ["--no-deps", "-e", str(ROOT)], quiet)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)  # never leave a half-made environment behind
        raise
    marker = {
        "family": family,
        "requirements": [*BASE_REQUIREMENTS, *reqs],
        "removed": list(remove),
        "versions": _installed(python, [_name(r) for r in (*BASE_REQUIREMENTS, *reqs)]),
        "repository": str(ROOT),
        "python": sys.version.split()[0],
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - start, 1),
    }
    (directory / MARKER).write_text(json.dumps(marker, indent=1))
    return python


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file() and not p.is_symlink())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m extractors.envs", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", help=f"environments directory (default ${ENV_VAR} or ~/.cache/jaxalign/envs)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="families, requirements and environment status")
    c = sub.add_parser("create", help="create family environments; prints each interpreter path")
    c.add_argument("family", nargs="+")
    c.add_argument("--force", action="store_true", help="re-create an existing environment")
    c.add_argument("--verbose", action="store_true", help="show pip's output")
    pa = sub.add_parser("path", help="interpreter path of a family environment")
    pa.add_argument("family")
    args = p.parse_args(argv)

    if args.command == "list":
        for fam in families():
            python = find_python(fam, args.root)
            where = str(python) if python else "not created"
            print(f"{fam:<12} {' '.join(requirements(fam)):<40} {where}")
        return 0
    if args.command == "path":
        python = find_python(args.family, args.root)
        if python is None:
            print(f"no {args.family} environment under {envs_root(args.root)}", file=sys.stderr)
            return 1
        print(python)
        return 0
    status = 0
    for fam in args.family:
        try:
            python = create(fam, args.root, force=args.force, quiet=not args.verbose)
        except (RuntimeError, ValueError) as err:
            print(f"error: {fam}: {err}", file=sys.stderr)
            status = 1
            continue
        marker = json.loads((python.parents[1] / MARKER).read_text())
        size = _size(python.parents[1]) / 2**30
        print(f"{fam}: {python} ({marker['seconds']} s, {size:.1f} GiB)", file=sys.stderr)
        print(python)
    return status


if __name__ == "__main__":
    sys.exit(main())
