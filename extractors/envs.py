"""Separate virtual environments for packages that conflict with the main environment: model families and anchors.

Real models pin conflicting dependencies (mace-torch needs e3nn==0.4.4, sevenn needs e3nn>=0.5), so a family such
as MACE runs under its own interpreter: ``python -m extractors run --python $(python -m extractors.envs path mace)
...``. Anchor libraries that cannot live beside numpy 2 and the newest jax (DADApy 0.3.4 pins jax==0.4.30 and
builds its C extensions against numpy 1.x) run in one too (``anchors/dadapy_runner.py``). This module creates those
environments at ``<root>/<name>``; ``root`` is ``$JAXALIGN_ENVS`` when set, else ``$XDG_CACHE_HOME/jaxalign/envs``
(default ``~/.cache/jaxalign/envs``).

Each environment is declared by an :class:`EnvSpec`: its requirements, the base it starts from and whether this
repository is installed into it. A family environment starts from the ``torch`` base (:data:`BASE_REQUIREMENTS`:
``torch==2.13.0``, always pinned since its CPU wheel is on this machine's disk while an unpinned torch pulls a
multi-GB CUDA build, numpy, ase, tqdm and pytest) and gets this repository with ``--no-deps`` (editable, so the
environment always runs the current extractors). A family module ``extractors/models/<family>.py`` declares
``ENV_REQUIREMENTS`` (the environment named after the family), optionally ``EXTRA_ENVS`` (``{name: requirements}``,
further environments, e.g. ``fairchem-v1``) and ``ENV_REMOVE`` (packages uninstalled after the install: unused
dependencies whose binaries cannot load beside torch 2.13); :data:`EXTRA_REQUIREMENTS` adds to them. An anchor
environment (:data:`ANCHOR_ENVS`) starts from the empty ``none`` base and holds only its pinned requirements.

A finished environment carries a ``jaxalign-env.json`` marker (requirements, the hash of its spec, installed
versions, creation time and seconds); a half-made one has no marker, and one whose marker hash differs from the
current spec's (the requirements changed) is stale: :func:`create` rebuilds both.

Command line::

    python -m extractors.envs list               # families, their requirements and whether each env exists
    python -m extractors.envs create mace [orb]  # create (or --force re-create); prints the interpreter path
    python -m extractors.envs path mace          # the interpreter path (exit 1 when the env does not exist)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
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
    "ANCHOR_ENVS",
    "BASES",
    "BASE_REQUIREMENTS",
    "DADAPY_REQUIREMENTS",
    "ENV_VAR",
    "EXTRA_REQUIREMENTS",
    "MARKER",
    "EnvSpec",
    "create",
    "env_dir",
    "envs_root",
    "families",
    "find_python",
    "is_current",
    "main",
    "marker",
    "requirements",
    "spec",
    "spec_hash",
]

ENV_VAR = "JAXALIGN_ENVS"
MARKER = "jaxalign-env.json"
#: Installed in every family environment. torch stays pinned to the release whose CPU wheel is on disk.
BASE_REQUIREMENTS = ("torch==2.13.0", "numpy", "ase", "tqdm", "pytest")
#: What an environment starts from, by name: ``torch`` for model families, ``torch-2.4`` for a family whose library
#: pins torch 2.4 (fairchem-core 1.x: EquiformerV2; PyPI's torch 2.4.1 is the CUDA build, several GB), ``none``
#: (nothing) for anchors.
BASES: dict[str, tuple[str, ...]] = {
    "torch": BASE_REQUIREMENTS,
    "torch-2.4": ("torch==2.4.1", "numpy", "ase", "tqdm", "pytest"),
    "none": (),
}
#: Requirements for families whose module declares none (or additions to what it declares), by family.
EXTRA_REQUIREMENTS: dict[str, tuple[str, ...]] = {}
#: DADApy 0.3.4 and what decides whether it imports and which numbers it gives, pinned; pip resolves the rest of
#: its declared dependencies (matplotlib, seaborn, tqdm, networkx). Its compiled extensions are built against numpy
#: 1.x and it pins jax/jaxlib 0.4.30 and flax 0.8.5; ``import dadapy`` imports optax (undeclared, via flax only) and
#: flax.training, so optax and the chex and orbax-checkpoint they pull are pinned to releases that run on jax 0.4.30.
#: scikit-learn is the main environment's release (DADApy's neighbour search).
DADAPY_REQUIREMENTS = (
    "dadapy==0.3.4",
    "numpy==1.26.4",
    "jax==0.4.30",
    "jaxlib==0.4.30",
    "flax==0.8.5",
    "optax==0.2.5",
    "chex==0.1.90",
    "orbax-checkpoint==0.6.4",
    "scipy==1.17.1",
    "scikit-learn==1.8.0",
)
ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """One environment: ``requirements`` installed on top of the base named ``base`` (a key of :data:`BASES`),
    ``remove`` uninstalled afterwards, and this repository installed editable (``--no-deps``) when
    ``install_repo``. ``compiled``: packages the index ships as source only, built afterwards against the installed
    torch (``pip install --no-build-isolation``: torch-scatter, torch-sparse). ``family``: the family module that
    declares it (the environment's own name for anchors)."""

    family: str
    requirements: tuple[str, ...]
    remove: tuple[str, ...] = ()
    base: str = "torch"
    install_repo: bool = True
    compiled: tuple[str, ...] = ()

    def install(self) -> tuple[str, ...]:
        """Everything pip installs: the base's requirements, then the environment's own."""
        return (*BASES[self.base], *self.requirements)


#: Environments of anchor libraries that tests and benchmarks run in their own interpreter: torch-free, without
#: this repository.
ANCHOR_ENVS: dict[str, EnvSpec] = {
    "dadapy": EnvSpec("dadapy", DADAPY_REQUIREMENTS, base="none", install_repo=False),
}


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


def _declared() -> dict[str, EnvSpec]:
    """Every declared environment: those of the family modules (``ENV_REQUIREMENTS``: the env named after the
    family; ``EXTRA_ENVS``: further named envs, e.g. ``fairchem-v1``; ``ENV_REMOVE``: packages uninstalled
    afterwards, unused dependencies whose binaries cannot load beside torch 2.13) plus :data:`EXTRA_REQUIREMENTS`,
    then :data:`ANCHOR_ENVS`."""
    from extractors.registry import FAMILIES

    out: dict[str, EnvSpec] = {}
    for family in FAMILIES:
        module = importlib.import_module(f"extractors.models.{family}")
        remove = tuple(getattr(module, "ENV_REMOVE", ()))
        if getattr(module, "ENV_REQUIREMENTS", ()):
            out[family] = EnvSpec(family, tuple(module.ENV_REQUIREMENTS), remove)
        for name, reqs in getattr(module, "EXTRA_ENVS", {}).items():  # requirements, or {requirements, base}
            if isinstance(reqs, dict):
                out[name] = EnvSpec(
                    family,
                    tuple(reqs["requirements"]),
                    base=reqs.get("base", "torch"),
                    compiled=tuple(reqs.get("compiled", ())),
                )
            else:
                out[name] = EnvSpec(family, tuple(reqs))
    for name, reqs in EXTRA_REQUIREMENTS.items():
        entry = out.get(name, EnvSpec(name, ()))
        out[name] = dataclasses.replace(entry, requirements=entry.requirements + tuple(reqs))
    return {**out, **ANCHOR_ENVS}


def families() -> tuple[str, ...]:
    """Names of the declared environments (family names, further family envs, then anchors), in registry order."""
    return tuple(_declared())


def spec(name: str, extra: Sequence[str] = ()) -> EnvSpec:
    """The declaration of environment ``name``, ``extra`` requirements appended; ValueError when undeclared."""
    declared = _declared()
    if name not in declared:
        raise ValueError(f"no environment {name!r} is declared; declared: {', '.join(declared)}.")
    env = declared[name]
    return dataclasses.replace(env, requirements=(*env.requirements, *extra)) if extra else env


def requirements(family: str) -> tuple[str, ...]:
    """The requirements of environment ``family`` beyond its base's; ValueError when undeclared."""
    return spec(family).requirements


def spec_hash(env: EnvSpec) -> str:
    """A hash of everything that decides an environment's contents: what pip installs, what is removed afterwards
    and whether this repository is installed. The marker records it; a different hash means a stale environment."""
    content = {"install": list(env.install()), "remove": list(env.remove), "install_repo": env.install_repo}
    if env.compiled:
        content["compiled"] = list(env.compiled)
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def find_python(family: str, root: str | os.PathLike | None = None) -> Path | None:
    """The interpreter of ``family``'s finished environment, or None when it does not exist (or is half made).
    It may be stale (built from other requirements): :func:`is_current` tells, :func:`create` rebuilds it."""
    directory = env_dir(family, root)
    python = _python_in(directory)
    if (directory / MARKER).is_file() and python.exists():
        return python
    return None


def marker(family: str, root: str | os.PathLike | None = None) -> dict:
    """The marker of ``family``'s finished environment (requirements, spec hash, installed ``versions``, creation
    time and seconds); empty when there is none or it cannot be read."""
    try:
        return dict(json.loads((env_dir(family, root) / MARKER).read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def _marker_hash(directory: Path) -> str | None:
    """The spec hash recorded in ``directory``'s marker; None when there is no readable marker or it has none."""
    try:
        return json.loads((directory / MARKER).read_text()).get("spec_hash")
    except (OSError, ValueError, AttributeError):
        return None


def is_current(family: str, root: str | os.PathLike | None = None, extra: Sequence[str] = ()) -> bool:
    """Whether ``family``'s environment is finished and was built from its current spec (plus ``extra``)."""
    env = spec(family, extra)
    return find_python(family, root) is not None and _marker_hash(env_dir(family, root)) == spec_hash(env)


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
    """Create ``family``'s environment (unless a finished one built from the current spec exists and ``force`` is
    false); return its interpreter. ``extra``: further requirements. Raises RuntimeError with pip's error when an
    install fails. Processes creating the same environment at once (parallel test workers, two app runs) take turns
    on a lock beside it: the second finds the first's finished environment."""
    from extractors.faults import exclusive_lock

    directory = env_dir(family, root)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(directory.parent / f".{directory.name}.lock", wait=True):
        return _create(family, directory, root, force=force, quiet=quiet, extra=extra)


def _create(
    family: str, directory: Path, root: str | os.PathLike | None, *, force: bool, quiet: bool, extra: Sequence[str]
) -> Path:
    env = spec(family, extra)
    if not force and is_current(family, root, extra):
        return _python_in(directory)
    if directory.exists():
        shutil.rmtree(directory)
    start = time.perf_counter()
    venv.EnvBuilder(with_pip=True, clear=True).create(directory)
    python = _python_in(directory)
    try:
        _pip(python, env.install(), quiet)
        if env.compiled:  # source-only packages whose build imports torch: built against the one just installed
            _pip(python, ["setuptools", "wheel"], quiet)
            _pip(python, ["--no-build-isolation", *env.compiled], quiet)
        if env.remove:
            cmd = [str(python), "-m", "pip", "uninstall", "-y", "-q", *env.remove]
            done = subprocess.run(cmd, capture_output=True)
            if done.returncode:
                raise RuntimeError(f"pip uninstall {' '.join(env.remove)} failed: {done.stderr.decode()[-2000:]}")
        if env.install_repo and (ROOT / "pyproject.toml").is_file():
            _pip(python, ["--no-deps", "-e", str(ROOT)], quiet)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)  # never leave a half-made environment behind
        raise
    marker = {
        "family": env.family,
        "base": env.base,
        "requirements": list(env.install()),
        "removed": list(env.remove),
        "spec_hash": spec_hash(env),
        "versions": _installed(python, [_name(r) for r in env.install()]),
        "repository": str(ROOT) if env.install_repo else None,
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
    sub.add_parser("list", help="environments, requirements and status")
    c = sub.add_parser("create", help="create (or rebuild stale) environments; prints each interpreter path")
    c.add_argument("family", nargs="+")
    c.add_argument("--force", action="store_true", help="re-create an existing, current environment")
    c.add_argument("--verbose", action="store_true", help="show pip's output")
    pa = sub.add_parser("path", help="interpreter path of a family environment")
    pa.add_argument("family")
    args = p.parse_args(argv)

    if args.command == "list":
        for fam in families():
            python = find_python(fam, args.root)
            where = "not created" if python is None else f"{python}{'' if is_current(fam, args.root) else ' (stale)'}"
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
