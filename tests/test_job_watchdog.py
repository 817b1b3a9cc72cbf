"""Issue 17, item 5: a hung job is noticed, and a job's limits and true end survive an app restart.

Attacks: a job whose step stops advancing (with a rank that ignores SIGTERM), an app killed while its job runs
(the job must keep its time limit when adopted), jobs that end while no app runs (finished: COMPLETE from their
files; failed: the reason from their log; launcher dead with a rank left: the rank ended).
"""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import standins
from tlab_gradio import jobs as jobs_mod
from tlab_gradio import settings
from tlab_gradio.jobs import JobManager


pytestmark = pytest.mark.usefixtures("no_leftovers")  # conftest: kills what a test left running


@pytest.fixture
def manager(home, monkeypatch):
    monkeypatch.setattr(jobs_mod.launcher, "write_launch_files", standins.launch_files)
    return JobManager(home)


def test_a_job_whose_step_stops_advancing_is_failed_and_ended(manager, monkeypatch):
    monkeypatch.setenv("TLAB_STALL_SECONDS", "2")
    monkeypatch.setenv("TLAB_STOP_GRACE", "1")
    hung = manager.create(standins.spec("hung", "progress", steps=3, every=0.2, hang=True))
    done = manager.wait(hung.id, 30)
    assert (done.state, done.reason) == ("FAILED", "no progress for 2 s (last step 3)")
    assert standins.left_of(done.job_dir) == []


def test_the_watchdog_spares_a_job_that_makes_progress(manager, monkeypatch):
    """Steps 0.5 s apart for longer than the stall time, with no step before the first for 1 s: never tripped."""
    monkeypatch.setenv("TLAB_STALL_SECONDS", "1.5")
    job = manager.create(standins.spec("steady", "progress", steps=8, every=0.5))
    done = manager.wait(job.id, 30)
    assert (done.state, done.reason) == ("COMPLETE", None)


def test_the_stall_setting(monkeypatch):
    monkeypatch.delenv("TLAB_STALL_SECONDS", raising=False)
    assert settings.stall_seconds() == 1800
    monkeypatch.setenv("TLAB_STALL_SECONDS", "0")
    assert settings.stall_seconds() is None
    for bad in ("-1", "nan"):
        monkeypatch.setenv("TLAB_STALL_SECONDS", bad)
        with pytest.raises(ValueError, match="TLAB_STALL_SECONDS"):
            settings.stall_seconds()


def earlier_app(home: Path, *specs) -> list[int]:
    """Start jobs from an app in another process, then kill that app with SIGKILL (the jobs run on)."""
    app = subprocess.Popen([sys.executable, str(Path(standins.__file__)), str(home),
                            *(s.model_dump_json() for s in specs)], stdout=subprocess.PIPE, text=True)
    try:
        ids = json.loads(app.stdout.readline())
    finally:
        app.kill()
        app.wait()
    return ids


def test_an_adopted_job_keeps_its_time_limit_counted_from_its_start(home, monkeypatch):
    monkeypatch.setenv("TLAB_MAX_JOB_SECONDS", "5")
    monkeypatch.setenv("TLAB_STOP_GRACE", "1")
    [job_id] = earlier_app(home, standins.spec("long", "ranks", ranks=["sleep"]))
    time.sleep(3.5)  # the app is down for most of the job's limit
    manager = JobManager(home)
    assert manager.get(job_id).state == "RUNNING"  # adopted: its launcher lives
    done = manager.wait(job_id, 30)
    assert (done.state, done.reason) == ("STOPPED", "stopped: ran past this server's limit of 5 s per job")
    assert done.finished - done.started < 7.5  # from its start, not from its adoption (that would be 8.5 s on)
    assert standins.left_of(done.job_dir) == []


def wait_gone(job_dir: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while standins.left_of(job_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert standins.left_of(job_dir) == []


def test_jobs_that_ended_while_the_app_was_down_get_their_true_state(home):
    finished, failed = earlier_app(
        home, standins.spec("finished", "finish", seconds=0.5),
        standins.spec("failed", "finish", seconds=0.5, error="the data has no 'text' column"))
    jobs_dir = home / "jobs"
    for job_id in (finished, failed):
        wait_gone(jobs_dir / str(job_id))
    manager = JobManager(home)
    done = manager.get(finished)
    assert (done.state, done.reason) == ("COMPLETE", "finished while the app was down")
    broken = manager.get(failed)
    assert broken.state == "FAILED"
    assert broken.reason == ("ValueError: the data has no 'text' column "
                             "[the app was restarted and the job's process is gone]")


def test_a_launcher_that_died_with_the_app_down_leaves_no_rank(home, monkeypatch):
    monkeypatch.setenv("TLAB_STOP_GRACE", "1")
    [job_id] = earlier_app(home, standins.spec("orphan", "ranks", ranks=["ignore_term", "stopped"]))
    job_dir = home / "jobs" / str(job_id)
    deadline = time.monotonic() + 30
    while not all((job_dir / f"rank-{r}.pid").is_file() for r in (0, 1)) and time.monotonic() < deadline:
        time.sleep(0.1)
    with sqlite3.connect(home / "jobs.sqlite") as db:  # no app runs
        [(state, launcher_pid)] = db.execute("SELECT state, pid FROM jobs WHERE id = ?", (job_id,)).fetchall()
    assert state == "RUNNING"
    os.kill(launcher_pid, signal.SIGKILL)
    while standins.left_of(job_dir) and psutil.pid_exists(launcher_pid) and \
            psutil.Process(launcher_pid).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.05)
    assert len(standins.left_of(job_dir)) == 2  # the ranks live on, their launcher gone
    manager = JobManager(home)
    done = manager.wait(job_id, 30)
    assert done.state == "FAILED"
    assert standins.left_of(job_dir) == []
