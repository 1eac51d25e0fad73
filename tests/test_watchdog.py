"""The stage watchdog (experiments/watchdog.py): the stall rule on fake samples, and real processes that block
without CPU (ended with the error line and exit code 2, their child processes killed), compute without heartbeats,
sleep with heartbeats or wait for a computing child (all left alone)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from experiments.watchdog import EXIT_CODE, Sample, StallRule, WatchdogConfig, stall_message  # noqa: E402

CFG = WatchdogConfig(stall_s=10.0, cpu_fraction=0.05)


def run_rule(cfg: WatchdogConfig, samples: list[tuple[float, float, int]]) -> list[str | None]:
    """The verdict after each of ``samples`` (time, cpu, beats); the first one starts the stage."""
    rule = StallRule.begin(cfg, Sample(*samples[0]))
    verdicts = []
    for s in samples[1:]:
        rule = rule.observe(Sample(*s))
        verdicts.append(rule.verdict)
    return verdicts


def test_no_cpu_no_heartbeat_stalls_after_stall_s() -> None:
    verdicts = run_rule(CFG, [(t, 1.0, 0) for t in range(0, 13)])
    assert verdicts[:9] == [None] * 9  # t = 1 … 9
    assert verdicts[9:] == ["stalled"] * 3  # t = 10, 11, 12


def test_background_noise_below_the_fraction_still_stalls() -> None:
    # 1 ms of CPU per second (idle threads waking up) is far below 5 % of a core
    verdicts = run_rule(CFG, [(t, 1.0 + 0.001 * t, 0) for t in range(0, 12)])
    assert verdicts[-1] == "stalled"


def test_cpu_use_without_heartbeat_is_progress() -> None:
    verdicts = run_rule(CFG, [(t, 0.9 * t, 0) for t in range(0, 60)])  # 90 % of a core, never a heartbeat
    assert set(verdicts) == {None}


def test_heartbeats_without_cpu_are_progress() -> None:
    verdicts = run_rule(CFG, [(t, 0.0, t // 5) for t in range(0, 60)])  # one item every 5 s, no CPU
    assert set(verdicts) == {None}


def test_idle_time_counts_from_the_last_busy_interval() -> None:
    # busy until t = 20 (one core), then nothing: a long busy past must not delay nor hasten the verdict
    samples = [(t, float(min(t, 20)), 0) for t in range(0, 35)]
    verdicts = run_rule(CFG, samples)
    first = next(i for i, v in enumerate(verdicts) if v) + 1
    assert samples[first][0] == 30


def test_one_busy_interval_resets_the_idle_time() -> None:
    samples = [(t, 0.0 if t < 8 else 1.0, 0) for t in range(0, 20)]  # 1 s of CPU between t = 7 and 8
    verdicts = run_rule(CFG, samples)
    assert verdicts[:17] == [None] * 17  # idle again from t = 8: stalled at t = 18
    assert verdicts[17] == "stalled"


def test_cpu_threshold_is_a_fraction_of_the_interval() -> None:
    cfg = WatchdogConfig(stall_s=10.0, cpu_fraction=0.5)
    assert StallRule.begin(cfg, Sample(0, 0, 0)).busy(Sample(2, 0.9, 0)) is False  # 45 % of a core
    assert StallRule.begin(cfg, Sample(0, 0, 0)).busy(Sample(2, 1.1, 0)) is True  # 55 %


def test_stage_limit() -> None:
    cfg = WatchdogConfig(stall_s=0, stage_limit_s=5.0)
    verdicts = run_rule(cfg, [(t, float(t), t) for t in range(0, 7)])  # busy all along
    assert verdicts == [None, None, None, None, "limit", "limit"]


def test_config_from_mapping_defaults_and_disabling() -> None:
    default = WatchdogConfig.from_mapping(None)
    assert (default.stall_s, default.cpu_fraction, default.stage_limit_s) == (300.0, 0.05, None)
    assert default.enabled and default.poll_s == 5.0
    assert not WatchdogConfig.from_mapping({"stall_s": 0}).enabled
    assert WatchdogConfig.from_mapping({"stall_s": 1}).poll_s == pytest.approx(0.1)
    with pytest.raises(ValueError, match="cpu_fraction"):
        WatchdogConfig.from_mapping({"cpu_fraction": 0})


def test_message_names_stage_seconds_and_what_to_do(tmp_path: Path) -> None:
    rule = StallRule.begin(CFG, Sample(0, 0, 0)).observe(Sample(12, 0, 0))
    msg = stall_message("reconstruction", "stalled", rule, tmp_path / "stacks.txt")
    assert msg.startswith("error: stage 'reconstruction' made no progress for 12 s (no CPU use, no completed item)")
    assert "watchdog.stall_s=10" in msg and "resumes from the cache" in msg and str(tmp_path) in msg
    assert "\n" not in msg


# ------------------------------------------------------------------------------------------------ real processes
PROGRAM = """
import sys, threading, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from experiments.watchdog import Watchdog, WatchdogConfig, beat

def blocked():
    threading.Event().wait()  # waits forever, no CPU

def busy():
    end = time.monotonic() + 3.0
    while time.monotonic() < end:
        sum(range(1000))

def sleeping():
    for _ in range(30):
        time.sleep(0.1)
        beat()

def record(message, seconds):
    Path({log!r}).write_text(message)

dog = Watchdog(WatchdogConfig(stall_s=1.0), dump_path=Path({dump!r}))
with dog.watch({body!r}, record):
    {body}()
print("finished")
"""


def run_program(body: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, Path, Path]:
    log, dump = tmp_path / "log.txt", tmp_path / "stacks.txt"
    code = textwrap.dedent(PROGRAM).format(repo=str(REPO), log=str(log), dump=str(dump), body=body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return proc, log, dump


def test_a_stage_blocked_without_cpu_is_ended_with_the_error_line(tmp_path: Path) -> None:
    proc, log, dump = run_program("blocked", tmp_path)
    assert proc.returncode == EXIT_CODE
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: stage 'blocked' made no progress for 1 s"), proc.stderr
    assert "finished" not in proc.stdout
    assert log.read_text() == lines[0]
    assert "blocked" in dump.read_text()  # the stuck main thread's stack names the function


def test_a_stage_busy_on_cpu_without_heartbeats_is_not_ended(tmp_path: Path) -> None:
    proc, log, _ = run_program("busy", tmp_path)
    assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, "finished", "")
    assert not log.exists()


def test_a_stage_that_sleeps_but_beats_is_not_ended(tmp_path: Path) -> None:
    proc, log, _ = run_program("sleeping", tmp_path)
    assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, "finished", "")
    assert not log.exists()


def test_a_stalled_app_stage_is_recorded_in_the_stage_log(tmp_path: Path) -> None:
    """The pipeline's stage wrapper appends the stopped stage to stage_log.jsonl with status ``stalled``."""
    code = textwrap.dedent(f"""
        import sys, threading
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from experiments.cache import StageLog
        from experiments.pipeline import _stage
        from experiments.watchdog import Watchdog, WatchdogConfig
        log = StageLog(Path({str(tmp_path / "stage_log.jsonl")!r}))
        with _stage(log, Watchdog(WatchdogConfig(stall_s=1.0)), "reconstruction") as e:
            e["computed"] += 3
            threading.Event().wait()
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_CODE, proc.stderr
    (entry,) = map(json.loads, (tmp_path / "stage_log.jsonl").read_text().splitlines())
    assert (entry["stage"], entry["status"], entry["computed"]) == ("reconstruction", "stalled", 3)
    assert entry["summary"].startswith("error: stage 'reconstruction' made no progress")


CHILD_PROGRAM = """
import subprocess, sys, threading
sys.path.insert(0, {repo!r})
from experiments.watchdog import Watchdog, WatchdogConfig, child
out = subprocess.DEVNULL
proc = subprocess.Popen([sys.executable, "-c", {child_code!r}], stdout=out, stderr=out)
print(proc.pid, flush=True)
with Watchdog(WatchdogConfig(stall_s=1.0)).watch("extraction"), child(proc.pid):
    proc.wait()
print("finished")
"""
SLEEPING_CHILD = "import time; time.sleep(600)"
BUSY_CHILD = "import time\nend = time.monotonic() + 3.0\nwhile time.monotonic() < end: sum(range(1000))"


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a killed orphan may stay a zombie until init reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def run_parent(child_code: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(CHILD_PROGRAM).format(repo=str(REPO), child_code=child_code)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="child CPU time is read from /proc")


@needs_proc
def test_a_stall_kills_the_running_child_processes() -> None:
    proc = run_parent(SLEEPING_CHILD)
    pid = int(proc.stdout.split()[0])
    try:
        assert proc.returncode == EXIT_CODE, proc.stderr
        assert "error: stage 'extraction' made no progress" in proc.stderr
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pid)
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@needs_proc
def test_the_cpu_time_of_a_running_child_counts_as_progress() -> None:
    proc = run_parent(BUSY_CHILD)  # the parent waits without CPU while its child computes for 3 s
    assert (proc.returncode, proc.stdout.split()[-1], proc.stderr) == (0, "finished", "")
