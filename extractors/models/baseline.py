"""Seeded random baseline: each structure gets a standard-normal vector drawn from a generator seeded by
sha256(seed, structure id), so a row depends only on its id (not on order, batching or resumption). Alignment of
any model with it measures the metric's chance level."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from extractors.base import OFFLINE_READY, Embedded, Extractor, ModelSpec, check_layer
from extractors.datasets import Record

__all__ = ["LAYERS", "SPECS", "RandomExtractor", "build"]

#: The layers this family reads (``layer=`` / ``MODEL@LAYER``); ``last`` is the default, the one the papers use.
LAYERS = {"last": "the random features (no other layers)"}

SPECS = (
    ModelSpec(
        id="random",
        family="baseline",
        config={"dim": 256, "seed": 0},
        status=OFFLINE_READY,
        packages=(),
        description="seeded Gaussian random features (chance baseline)",
    ),
)


class RandomExtractor(Extractor):
    needs = "none"
    pooling = "none"

    def __init__(self, spec: ModelSpec, *, layer: str = "last", dim: int | None = None, seed: int | None = None):
        self.dim = int(dim if dim is not None else spec.config["dim"])
        self.seed = int(seed if seed is not None else spec.config["seed"])
        check_layer(spec, layer, LAYERS)
        super().__init__(spec, layer=layer, dim=self.dim, seed=self.seed)

    def check(self, record: Record) -> str | None:
        return None

    def embed(self, records: Sequence[Record]) -> list[Embedded]:
        out = []
        for r in records:
            digest = hashlib.sha256(f"{self.seed}\0{r.id}".encode()).digest()
            rng = np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))
            out.append(Embedded(features=rng.standard_normal(self.dim).astype(np.float32)))
        return out

    def info(self) -> dict[str, Any]:
        return {"dim": self.dim, "seed": self.seed}


def build(spec: ModelSpec, **options: Any) -> RandomExtractor:
    return RandomExtractor(spec, **options)
