"""Stage: the evolutionary tree of the models (seed 000 Fig. 1F, App. A.1.3): neighbour joining on the Jensen–Shannon
distances between the models' CKNNA profiles, written as Newick (``results/tree.nwk``) and drawn from that text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: The family of the random-baseline model (extractors' registry).
BASELINE_FAMILY = "baseline"


def model_tree(cfg: Mapping[str, Any], names: Sequence[str], families: Sequence[str], cknna: np.ndarray) -> dict:
    """The tree of ``names`` from their (M, M) CKNNA matrix; ``analysis.tree.exclude_baseline`` leaves the random
    baseline out, as seed 000 does. Returns ``{"newick", "models", "excluded"}``, or {} with fewer than 3 models."""
    from jaxalign.tree import jsd_distance, neighbor_joining

    exclude = bool((cfg.get("tree") or {}).get("exclude_baseline", False))
    keep = [i for i, f in enumerate(families) if not (exclude and f == BASELINE_FAMILY)]
    if len(keep) < 3:
        return {}
    sub = np.asarray(cknna, dtype=np.float64)[np.ix_(keep, keep)]
    dist = jsd_distance(np.clip(np.nan_to_num(sub, nan=0.0), 0.0, None))
    tree = neighbor_joining(np.asarray(dist, dtype=np.float64), [names[i] for i in keep])
    return {
        "newick": tree.to_newick(),
        "models": [names[i] for i in keep],
        "excluded": [n for i, n in enumerate(names) if i not in keep],
    }
