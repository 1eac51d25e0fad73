"""What goes wrong around an extraction, handled in one place: user errors, output directories, devices, locks and
child processes.

:class:`UsageError` is every problem the user fixes — a bad input file, an output directory that cannot be written,
a device this torch does not have, a cache another process is writing. Its message is one line naming the file (or
frame, directory, option) and the fix; ``python -m extractors``, ``python -m experiments.extract`` and the
experiment app print it as ``error: <message>`` and exit with code 2. It subclasses ``ValueError``, the type the
readers and the registry already raise for bad arguments.

- :func:`output_error` turns the ``OSError`` of a write (read-only directory, full disk, quota) into a
  :class:`UsageError`; :func:`ensure_writable` checks a directory before any work is done.
- :func:`check_device` refuses a device the installed torch cannot use (``device=cuda`` on a CPU-only build) before
  a model is loaded.
- :func:`exclusive_lock` is an advisory ``flock`` lock on a file next to the work it guards: one process at a time
  writes a given embedding file; another either waits or gets :class:`CacheBusy`. The lock file is removed on
  release (race-free: a locker checks that the file it locked is still the one at the path).
- :func:`die_with_parent` makes a child process end when the process that started it dies (Linux
  ``PR_SET_PDEATHSIG``; elsewhere a thread that polls the parent id), so a killed app leaves no extraction running;
  the parent passes its pid in :data:`PARENT_ENV` (:func:`child_env`).

Standard library only: these run in every model's environment.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "PARENT_ENV",
    "CacheBusy",
    "UsageError",
    "atomic_target",
    "check_device",
    "child_env",
    "die_with_parent",
    "ensure_writable",
    "exclusive_lock",
    "one_line",
    "output_error",
]

#: environment variable holding the pid of the process a child must not outlive.
PARENT_ENV = "JAXALIGN_PARENT_PID"

_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class UsageError(ValueError):
    """A problem the user fixes; the message is one line naming what is wrong and the fix."""


class CacheBusy(UsageError):
    """Another live process holds the lock of the output this run would write."""


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


# --------------------------------------------------------------------------------------------------- output
def output_error(err: OSError, directory: str | Path, fix: str) -> UsageError | None:
    """The one-line :class:`UsageError` for a write into ``directory`` that failed with ``err`` (not writable, full
    disk or quota), ending with ``fix`` (e.g. ``"choose another --out"``); None for any other ``OSError``."""
    where = str(directory) if err.filename is None else str(err.filename)
    if err.errno in _NOT_WRITABLE:
        detail = err.strerror if where == str(directory) else f"{err.strerror}: {where}"
        return UsageError(f"cannot write to {directory} ({detail}); make the directory writable or {fix}.")
    if err.errno in _FULL:
        return UsageError(f"{err.strerror} while writing {where}; free space on that disk or {fix}.")
    return None


def ensure_writable(directory: str | Path, fix: str) -> Path:
    """Create ``directory`` if needed and check that a file can be created in it (an anonymous temporary file that
    leaves nothing behind); raises the :func:`output_error` otherwise."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        try:
            with tempfile.TemporaryFile(dir=directory):
                pass
        except OSError as err:  # name the directory, not the probe's random name
            raise OSError(err.errno, err.strerror, str(directory)) from None
    except OSError as err:
        mapped = output_error(err, directory, fix)
        if mapped is None:
            raise
        raise mapped from None
    return directory


@contextlib.contextmanager
def atomic_target(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path`` to write into; on a clean exit it is renamed onto ``path`` (``os.replace``,
    atomic on POSIX), on an error removed, so ``path`` holds the old file or the whole new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# --------------------------------------------------------------------------------------------------- device
def check_device(device: Any) -> None:
    """Raise a :class:`UsageError` when the torch installed here cannot use ``device`` (``"cuda"``, ``"cuda:1"``,
    ``"mps"``, …). ``None`` and ``"cpu"`` always pass, and so does any device when torch is not installed (the model
    then needs no torch, or the missing package is reported by the registry)."""
    if device is None or str(device) == "cpu":
        return
    try:
        import torch
    except ImportError:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(
            f"device {device!r} is not a torch device; use 'cpu', 'cuda', 'cuda:N' or 'mps' (option device=...)."
        ) from None
    build = f"torch {torch.__version__}"
    if dev.type == "cuda":
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            raise UsageError(
                f"device {device!r} requested, but {build} here is a CPU-only build; drop the option (device=cpu) or "
                "run under an interpreter with a CUDA build of torch (--python / models.python.<id>)."
            )
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(
                f"device {device!r} requested, but {build} sees no CUDA device (check the driver and "
                "CUDA_VISIBLE_DEVICES); drop the option (device=cpu) or run where a GPU is visible."
            )
        if dev.index is not None and dev.index >= count:
            raise UsageError(f"device {device!r} requested, but only {count} CUDA device(s) are visible here.")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UsageError(f"device {device!r} requested, but {build} here has no MPS backend; use device=cpu.")


# --------------------------------------------------------------------------------------------------- locks
def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return "another process"
    return f"process {pid}" if pid.isdigit() else "another process"


def _lock_fd(path: Path, blocking: bool) -> int | None:
    """An open descriptor of ``path`` holding its exclusive ``flock``; None when busy and not ``blocking``."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder we waited for removed the file: lock the new one


@contextlib.contextmanager
def exclusive_lock(
    path: str | Path,
    *,
    wait: bool,
    busy: Callable[[str], str] | None = None,
    on_wait: Callable[[str], None] | None = None,
    poll: Callable[[], None] | None = None,
    poll_s: float = 0.5,
) -> Iterator[None]:
    """Hold an exclusive advisory lock on the file ``path`` (created, and removed on release) for the body.

    When another process holds it: with ``wait=False`` raise :class:`CacheBusy` with the message ``busy(holder)``
    (``holder`` is e.g. ``"process 1234"``); with ``wait=True`` call ``on_wait(holder)`` once, then retry every
    ``poll_s`` seconds, calling ``poll()`` each time (the app's watchdog heartbeat: waiting for another run is not a
    stall). The kernel releases the lock of a process that dies, so a killed holder never blocks anyone.
    On platforms without ``fcntl`` the body runs unlocked.
    """
    try:
        import fcntl  # noqa: F401
    except ImportError:
        yield
        return
    path = Path(path)
    fd = _lock_fd(path, blocking=False)
    if fd is None:
        holder = _holder(path)
        if not wait:
            raise CacheBusy(busy(holder) if busy else f"{path} is locked by {holder}.")
        if on_wait is not None:
            on_wait(holder)
        while fd is None:
            time.sleep(poll_s)
            if poll is not None:
                poll()
            fd = _lock_fd(path, blocking=False)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # still holding the lock: a waiter that locked this inode sees it gone and retries
        os.close(fd)


# --------------------------------------------------------------------------------------------------- children
def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's environment) plus :data:`PARENT_ENV` naming this process."""
    out = dict(os.environ if env is None else env)
    out[PARENT_ENV] = str(os.getpid())
    return out


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
            return


def die_with_parent() -> None:
    """End this process (SIGTERM) when the parent named in :data:`PARENT_ENV` dies; no-op without it.

    On Linux the kernel sends the signal (``prctl(PR_SET_PDEATHSIG)``); elsewhere a daemon thread polls the parent
    id every second. If the parent is already gone, exit at once. The variable is removed from the environment so
    that this process's own children do not compare themselves with the wrong parent.
    """
    raw = os.environ.pop(PARENT_ENV, None)
    if not raw or not raw.isdigit():
        return
    parent = int(raw)
    armed = False
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(1, int(signal.SIGTERM), 0, 0, 0) == 0  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the signal was armed
        sys.stderr.write(f"[extractors] parent process {parent} is gone; exiting\n")
        os._exit(1)
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent,), name="watch-parent", daemon=True).start()
