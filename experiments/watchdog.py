"""A stage-level watchdog: a run whose stage stops making progress ends with a one-line message instead of waiting
forever.

While a stage runs (:meth:`Watchdog.watch`), a daemon thread samples, every ``poll_s`` seconds, two signs of
progress: the *heartbeat* — a counter that the stages' loops bump with :func:`beat` for every item, model, chunk of
child output or figure done — and the *CPU time* of this process, its finished children and its running extraction
children (registered with :func:`child`). A poll interval is *busy* when the heartbeat moved or the CPU time grew by at
least ``cpu_fraction`` of the interval (that share of one core); the stage is *stalled* when every interval of the
last ``stall_s`` seconds was idle.

Why this separates a deadlock from a slow stage: a process blocked on a lock or a condition burns no CPU at all (the
XLA thread-pool deadlock of issue 9 used 0 %; the idle threads that remain — tqdm's monitor, this thread — wake for
microseconds every few seconds), while a legitimate long computation (XLA, BLAS, torch, Python) keeps at least one
core near 100 % or completes items. ``cpu_fraction = 0.05`` sits an order of magnitude from both ends, and ``stall_s =
300`` requires five minutes of *uninterrupted* idleness, so a stage that computes, compiles, reads a file or hears
from its child process in any 5-second interval is never stopped. What the rule cannot see is a livelock (threads
spinning forever) or a process starved below 5 % of a core for five minutes by other jobs; ``stage_limit_s`` (off by
default, since legitimate stages take seconds to days) bounds the first, and ``stall_s`` can be raised for the second.
The thread needs the GIL, which a thread blocked in C code usually releases (the XLA deadlock did: it was caught).

On a stall (or a stage exceeding ``stage_limit_s``) the thread flushes stdout and stderr, prints one ``error: stage
...`` line, writes the Python stacks of every thread to ``dump_path`` (what to attach to a report), calls ``on_stall``
(the pipeline appends the stage to ``stage_log.jsonl``), kills the running extraction children and ends the process
with :data:`EXIT_CODE` through :func:`os._exit` — the stuck main thread may sit in C code where no exception reaches
it. Every cache file is written to a temporary name and renamed (see :mod:`experiments.cache`), so a rerun resumes
from what the stalled run finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "EXIT_CODE",
    "Sample",
    "StallRule",
    "Watchdog",
    "WatchdogConfig",
    "beat",
    "child",
    "cpu_seconds",
    "sample_now",
    "stall_message",
    "terminate_children",
]

#: exit status of a run that the watchdog ended: the app's code for every error with a one-line message.
EXIT_CODE = 2

_beats = [0]  # the heartbeat count (a list cell: beat() is one item update, no lock and no clock read)
_children: set[int] = set()  # pids of the running extraction processes
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def beat() -> None:
    """Record that the running stage completed something (an item, a model, a chunk of child output)."""
    _beats[0] += 1


@contextlib.contextmanager
def child(pid: int) -> Iterator[None]:
    """Count the running child process ``pid`` in the CPU time and kill it (with its process group: extraction
    children lead their own) if the stage stalls or the app is stopped (:func:`terminate_children`)."""
    _children.add(pid)
    try:
        yield
    finally:
        _children.discard(pid)


def _signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid`` (or to ``pid`` alone when it leads none)."""
    try:
        os.killpg(pid, sig)
    except (OSError, AttributeError):
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie — dead, not yet reaped — does not; without ``/proc`` it counts)."""
    if not os.path.isdir("/proc/self"):
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def terminate_children(pids: Iterable[int] | None = None, grace_s: float = 3.0) -> None:
    """End the extraction children ``pids`` (default: every registered one) with their process groups: SIGTERM,
    then SIGKILL after ``grace_s`` seconds."""
    pids = list(_children if pids is None else pids)
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if _running(pid):
            _signal_group(pid, getattr(signal, "SIGKILL", signal.SIGTERM))


def _proc_cpu(pid: int) -> float:
    """CPU seconds of a running process and its waited-for children from ``/proc`` (0 where there is none)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return sum(int(f) for f in fields[11:15]) / _CLK_TCK  # utime, stime, cutime, cstime


def cpu_seconds() -> float:
    """CPU seconds used so far by this process, its finished children and its running registered children."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system + sum(_proc_cpu(p) for p in list(_children))


@dataclasses.dataclass(frozen=True)
class WatchdogConfig:
    """``watchdog`` in the app's configuration (see experiments/README.md, "Watchdog").

    stall_s: seconds without progress after which a stage is stopped; 0 disables the stall rule.
    cpu_fraction: share of one core below which a poll interval without a heartbeat counts as idle.
    stage_limit_s: hard limit on any one stage's wall time; None (the default) for none.
    """

    stall_s: float = 300.0
    cpu_fraction: float = 0.05
    stage_limit_s: float | None = None

    def __post_init__(self) -> None:
        if self.stall_s < 0 or not 0 < self.cpu_fraction < 1:
            raise ValueError(
                f"watchdog.stall_s must be ≥ 0 and 0 < watchdog.cpu_fraction < 1, got stall_s={self.stall_s}, "
                f"cpu_fraction={self.cpu_fraction}."
            )
        if self.stage_limit_s is not None and self.stage_limit_s <= 0:
            raise ValueError(f"watchdog.stage_limit_s must be positive or null, got {self.stage_limit_s}.")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> WatchdogConfig:
        """From the ``watchdog`` section (missing keys take the defaults)."""
        cfg = dict(cfg or {})
        limit = cfg.get("stage_limit_s")
        return cls(
            stall_s=float(cfg.get("stall_s", cls.stall_s) or 0),
            cpu_fraction=float(cfg.get("cpu_fraction", cls.cpu_fraction)),
            stage_limit_s=None if limit is None else float(limit),
        )

    @property
    def enabled(self) -> bool:
        return self.stall_s > 0 or self.stage_limit_s is not None

    @property
    def poll_s(self) -> float:
        """Seconds between samples: 5, or a tenth of the shortest limit when that is shorter."""
        limits = [x for x in (self.stall_s, self.stage_limit_s) if x]
        return min([5.0, *(x / 10 for x in limits)])


@dataclasses.dataclass(frozen=True)
class Sample:
    """One observation: monotonic time, CPU seconds of the process tree, heartbeat count."""

    t: float
    cpu: float
    beats: int


@dataclasses.dataclass(frozen=True)
class StallRule:
    """The stall rule as a pure state machine: :meth:`observe` takes the next sample and returns the next rule."""

    cfg: WatchdogConfig
    start: float
    last: Sample
    progress_at: float

    @classmethod
    def begin(cls, cfg: WatchdogConfig, first: Sample) -> StallRule:
        return cls(cfg, first.t, first, first.t)

    def busy(self, now: Sample) -> bool:
        """Whether the interval since the previous sample shows progress: a heartbeat, or ≥ cpu_fraction of a core."""
        return now.beats != self.last.beats or now.cpu - self.last.cpu >= self.cfg.cpu_fraction * (now.t - self.last.t)

    def observe(self, now: Sample) -> StallRule:
        return dataclasses.replace(self, last=now, progress_at=now.t if self.busy(now) else self.progress_at)

    @property
    def idle_s(self) -> float:
        """Seconds since the last busy interval ended."""
        return self.last.t - self.progress_at

    @property
    def verdict(self) -> str | None:
        """``"stalled"``, ``"limit"`` (the stage ran past ``stage_limit_s``) or None (keep going)."""
        if self.cfg.stall_s > 0 and self.idle_s >= self.cfg.stall_s:
            return "stalled"
        if self.cfg.stage_limit_s is not None and self.last.t - self.start >= self.cfg.stage_limit_s:
            return "limit"
        return None


def stall_message(stage: str, verdict: str, rule: StallRule, dump_path: Path | None) -> str:
    """The one line printed when the watchdog ends a run."""
    cfg = rule.cfg
    if verdict == "stalled":
        head = (
            f"error: stage {stage!r} made no progress for {rule.idle_s:.0f} s (no CPU use, no completed item); "
            "it is stuck (e.g. a deadlock)"
        )
        knob = f"watchdog.stall_s={cfg.stall_s:g} is the limit (watchdog.stall_s=0 disables the watchdog)"
    else:
        head = f"error: stage {stage!r} ran for {rule.last.t - rule.start:.0f} s, past watchdog.stage_limit_s"
        knob = f"watchdog.stage_limit_s={cfg.stage_limit_s:g} is the limit (null removes it)"
    where = f"; the stacks of every thread are in {dump_path}" if dump_path is not None else ""
    return f"{head}{where}; please report it. Rerunning the same command resumes from the cache; {knob}."


def sample_now() -> Sample:
    """The current :class:`Sample` of this process."""
    return Sample(time.monotonic(), cpu_seconds(), _beats[0])


class Watchdog:
    """Ends the process when a stage watched by :meth:`watch` stalls (see the module docstring)."""

    def __init__(self, cfg: WatchdogConfig, *, dump_path: Path | None = None) -> None:
        self.cfg = cfg
        self.dump_path = dump_path

    @contextlib.contextmanager
    def watch(self, stage: str, on_stall: Callable[[str, float], None] | None = None) -> Iterator[None]:
        """Watch the body as stage ``stage``; ``on_stall(message, seconds)`` runs before the process ends."""
        if not self.cfg.enabled:
            yield
            return
        stop = threading.Event()
        thread = threading.Thread(
            target=self._loop, args=(stage, stop, on_stall), name=f"watchdog-{stage}", daemon=True
        )
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _loop(self, stage: str, stop: threading.Event, on_stall: Callable[[str, float], None] | None) -> None:
        rule = StallRule.begin(self.cfg, sample_now())
        while not stop.wait(self.cfg.poll_s):
            rule = rule.observe(sample_now())
            verdict = rule.verdict
            if verdict is not None and not stop.is_set():
                self._end(stage, verdict, rule, on_stall)

    def _end(self, stage: str, verdict: str, rule: StallRule, on_stall: Callable[[str, float], None] | None) -> None:
        """Report, kill the extraction children and end the process with :data:`EXIT_CODE` (never returns)."""
        try:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            dumped = None
            if self.dump_path is not None:
                with contextlib.suppress(Exception), open(self.dump_path, "w") as fh:
                    faulthandler.dump_traceback(fh, all_threads=True)
                    dumped = self.dump_path
            message = stall_message(stage, verdict, rule, dumped)
            os.write(2, f"\n{message}\n".encode())
            if on_stall is not None:
                with contextlib.suppress(Exception):
                    on_stall(message, rule.last.t - rule.start)
            for pid in list(_children):
                _signal_group(pid, getattr(signal, "SIGKILL", signal.SIGTERM))
        finally:
            os._exit(EXIT_CODE)
