"""Issue 17, item 3: Stop, the time limit and a launcher's death end every process of a job, whatever session it
started (torch's elastic launcher starts each rank in a session of its own) and whoever its parent is now.

Attacks: a rank that ignores SIGTERM and one stopped with SIGSTOP, each in its own session, under stand-in
launchers and under a real two-rank `accelerate launch`; the launcher killed with SIGKILL under them.
"""
import os
import signal
import time
from pathlib import Path

import pytest

import standins
from tlab_gradio import jobs as jobs_mod
from tlab_gradio.job_spec import DataRef, JobSpec, Launch, ModelRef
from tlab_gradio.jobs import JobManager

HUNG = ["ignore_term", "stopped"]  # rank 0 ignores SIGTERM, rank 1 is stopped


@pytest.fixture
def manager(home, monkeypatch):
    monkeypatch.setattr(jobs_mod.launcher, "write_launch_files", standins.launch_files)
    mgr = JobManager(home)
    yield mgr
    for job in mgr.list():
        for proc in standins.left_of(job.job_dir):  # never leave a stopped process behind, whatever failed
            proc.kill()


def ranks_up(job, count=2, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [job.job_dir / f"rank-{r}.pid" for r in range(count)]
        if all(p.is_file() and p.read_text() for p in pids):
            time.sleep(0.3)  # the stopped rank stops itself right after writing its pid
            return [int(p.read_text()) for p in pids]
        time.sleep(0.1)
    raise AssertionError(f"the ranks of job {job.id} did not start")


def test_stop_ends_ranks_in_their_own_sessions_that_ignore_sigterm_or_are_stopped(manager):
    job = manager.create(standins.spec("hung", "ranks", ranks=HUNG))
    pids = ranks_up(job)
    assert all(os.getsid(p) != os.getsid(job.pid) for p in pids)  # out of the launcher's group: killpg misses them
    stopping = manager.stop(job.id, grace=1.0)
    assert stopping.state == "STOPPING"
    done = manager.wait(job.id, 30)
    assert (done.state, done.reason) == ("STOPPED", "stopped by the user before its first step")  # no progress.json
    assert standins.left_of(job.job_dir) == []  # recorded STOPPED only once nothing of it is left
    assert (job.job_dir / "rank-1.terminated").is_file()  # the stopped rank was continued: it acted on SIGTERM


def test_the_time_limit_ends_every_rank(manager, monkeypatch):
    monkeypatch.setenv("TLAB_STOP_GRACE", "1")
    monkeypatch.setenv("TLAB_MAX_JOB_SECONDS", "3")
    job = manager.create(standins.spec("slow", "ranks", ranks=HUNG))
    ranks_up(job)
    done = manager.wait(job.id, 30)
    assert (done.state, done.reason) == ("STOPPED", "stopped: ran past this server's limit of 3 s per job")
    assert standins.left_of(job.job_dir) == []


def test_a_killed_launcher_fails_the_job_and_ends_its_orphaned_ranks(manager, monkeypatch):
    monkeypatch.setenv("TLAB_STOP_GRACE", "1")
    job = manager.create(standins.spec("orphans", "ranks", ranks=HUNG))
    ranks_up(job)
    os.kill(job.pid, signal.SIGKILL)
    done = manager.wait(job.id, 30)
    assert (done.state, done.reason) == ("FAILED", "killed by SIGKILL (out of memory?)")
    assert standins.left_of(job.job_dir) == []


def test_the_next_job_gets_the_gpu_only_once_every_rank_of_the_stopped_one_is_gone(manager):
    first = manager.create(standins.spec("first", "ranks", gpus=["0"], ranks=HUNG))
    second = manager.create(standins.spec("second", "sleep", gpus=["0"]))
    ranks_up(first)
    manager.stop(first.id, grace=1.0)
    running = manager.wait(second.id, 30, until=lambda j: j.state == "RUNNING")
    assert running.state == "RUNNING"
    assert manager.get(first.id).state == "STOPPED" and standins.left_of(first.job_dir) == []
    manager.stop(second.id, grace=1.0)
    assert manager.wait(second.id, 30).state == "STOPPED"


# --- a real `accelerate launch` of two CPU ranks ---------------------------------------------------------------
FAKE_TRAINER = Path(__file__).with_name("fake_trainer.py")
TIMEOUT = 180


def real_spec(mode: str, name: str = "real") -> JobSpec:
    """Two CPU ranks under the real launcher (torch's elastic agent), running tests/fake_trainer.py in `mode`."""
    return JobSpec(name=name, plugin="p", model=ModelRef(path="m", source="local"), data=DataRef(dataset={}),
                   launch=Launch(trainer=str(FAKE_TRAINER), device="cpu", num_processes=2),
                   params={"mode": mode})


def test_real_launch_stop_ends_a_rank_ignoring_sigterm_and_a_stopped_one(real_manager, monkeypatch):
    monkeypatch.setenv("TLAB_STOP_GRACE", "2")
    job = real_manager.create(real_spec("hang"))
    pids = ranks_up(job, timeout=TIMEOUT)
    assert all(os.getsid(p) == p for p in pids)  # torch's agent starts each rank in its own session
    real_manager.stop(job.id)
    done = real_manager.wait(job.id, 60)
    assert done.state == "STOPPED", "\n".join(real_manager.log_tail(job.id, 40))
    assert standins.left_of(job.job_dir) == []


def test_real_launch_launcher_killed_leaves_no_rank_training_on(real_manager, monkeypatch):
    monkeypatch.setenv("TLAB_STOP_GRACE", "2")
    job = real_manager.create(real_spec("hang"))
    ranks_up(job, timeout=TIMEOUT)
    os.kill(job.pid, signal.SIGKILL)
    done = real_manager.wait(job.id, 60)
    assert (done.state, done.reason) == ("FAILED", "killed by SIGKILL (out of memory?)")
    left = standins.left_of(job.job_dir)
    assert left == [], [(p.pid, p.ppid()) for p in left]  # reparented ranks (ppid 1) included
