"""The on-disk cache that lets a run resume anywhere and a rerun recompute nothing.

Every result is stored under a *content key*: the sha256 of the canonical JSON of everything it depends on (dataset
id and content digest, N, seed, model id, layer, package versions, analysis parameters). Changing any input changes
the key, so stale results are never reused and nothing has to be invalidated by hand. Files are written to a
temporary name in the target directory, fsync'ed and renamed into place (``os.replace`` is atomic on POSIX), so a
run killed at any instant leaves either the old file or the new one, never half a file.

Long stages keep a :class:`Checkpoint` — a JSON map item → value rewritten atomically every few seconds — so a run
killed mid-stage resumes after the last saved item. :class:`StageLog` records, per stage, how many items were
computed and how many were read from the cache (the tests assert that a rerun computes nothing).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxalign.journal import atomic_write_bytes, content_key, read_npz, write_npz

__all__ = [
    "Checkpoint",
    "StageLog",
    "atomic_write_bytes",
    "content_key",
    "read_json",
    "read_npz",
    "write_json",
    "write_npz",
]


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, default=_json_default) + "\n").encode())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


class Checkpoint:
    """Item → JSON value results of one cached computation, saved atomically at most every ``flush_s`` seconds.

    ``with Checkpoint(path, key) as ck:`` loads what a killed run saved under the same ``key`` (anything saved under
    another key is discarded); ``ck.get(item)`` / ``ck.put(item, value)``; leaving the block saves the rest.
    """

    def __init__(self, path: str | Path, key: str, *, flush_s: float = 2.0) -> None:
        self.path = Path(path)
        self.key = key
        self.flush_s = float(flush_s)
        self.values: dict[str, Any] = {}
        self.resumed = 0
        if self.path.exists():
            try:
                saved = read_json(self.path)
            except (json.JSONDecodeError, OSError):
                saved = {}
            if saved.get("key") == key:
                self.values = dict(saved.get("values", {}))
                self.resumed = len(self.values)
        self._dirty = False
        self._last = time.monotonic()

    def __contains__(self, item: str) -> bool:
        return item in self.values

    def get(self, item: str) -> Any:
        return self.values[item]

    def put(self, item: str, value: Any) -> None:
        self.values[item] = value
        self._dirty = True
        if time.monotonic() - self._last >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        if self._dirty:
            write_json(self.path, {"key": self.key, "values": self.values})
            self._dirty = False
        self._last = time.monotonic()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.flush()


class StageLog:
    """Per-stage counts of computed and cached items, wall time and a one-line summary, appended to
    ``<run dir>/stage_log.jsonl`` (one JSON object per finished stage) and echoed to stderr."""

    def __init__(self, path: str | Path, *, echo: bool = True) -> None:
        self.path = Path(path)
        self.echo = echo
        self.stages: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def stage(self, name: str, dataset: str | None = None) -> Iterator[dict[str, Any]]:
        """Time a stage (of one ``dataset`` of the study, or of the whole run); the body fills ``computed``/``cached``
        counts and a ``summary`` in the yielded dict."""
        entry: dict[str, Any] = {"stage": name, "computed": 0, "cached": 0, "summary": ""}
        if dataset is not None:
            entry["dataset"] = dataset
        start = time.perf_counter()
        try:
            yield entry
        finally:
            entry["seconds"] = round(time.perf_counter() - start, 3)
            entry.setdefault("status", "done")
        self.stages.append(entry)
        self.append(entry)
        if self.echo:
            import sys

            where = name if dataset is None else f"{dataset}/{name}"
            print(
                f"[{where}] {entry['summary']} ({entry['computed']} computed, {entry['cached']} cached, "
                f"{entry['seconds']:.1f} s)",
                file=sys.stderr,
                flush=True,
            )

    def append(self, entry: Mapping[str, Any]) -> None:
        """Append one entry to ``stage_log.jsonl`` (finished stages, and a stage the watchdog stopped)."""
        with open(self.path, "a") as fh:
            fh.write(json.dumps(entry, default=_json_default) + "\n")
