"""Shared fixtures: float64 everywhere, anchor inputs and expected values from ../shared/reference."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

REFERENCE = Path(os.environ.get("JAXALIGN_REFERENCE", Path(__file__).resolve().parents[2] / "shared" / "reference"))
CASES = ("correlated", "independent", "manifold3", "heavytail")


def _load_json(name: str) -> dict:
    path = REFERENCE / name
    if not path.exists():
        pytest.fail(f"anchor file {path} is missing: check out ../shared beside the repository")
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def inputs() -> dict[str, np.ndarray]:
    with np.load(REFERENCE / "inputs.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def expected_platonic() -> dict:
    return _load_json("expected_platonic.json")


@pytest.fixture(scope="session")
def expected_pypi() -> dict:
    return _load_json("expected_pypi.json")


@pytest.fixture(scope="session")
def expected_pcovr() -> dict:
    return _load_json("expected_pcovr.json")


def l2(x: np.ndarray) -> np.ndarray:
    """Rows L2-normalised, as platonic-rep's compute_score does before a metric ('[l2]' keys)."""
    return x / np.linalg.norm(x, axis=1, keepdims=True)
