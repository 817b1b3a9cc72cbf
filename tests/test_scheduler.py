"""The job store and GPU queue, with stand-in processes in place of training (fast).

Real training through accelerate is in test_training.py; here the launcher's
command is swapped for a sleeping Python process so the scheduling rules can be
checked on a machine with no GPU.
"""
import json
import sys

import pytest

from tlab_gradio import jobs as jobs_mod
from tlab_gradio.job_spec import DataRef, JobSpec, Launch, ModelRef
from tlab_gradio.jobs import JobError, JobManager


@pytest.fixture
def manager(home, monkeypatch):
    def fake_launch_files(job_dir, launch):
        fake = json.loads((job_dir / "config.json").read_text())["params"]
        code = "import sys, time; time.sleep(float(sys.argv[1])); sys.exit(int(sys.argv[2]))"
        return [sys.executable, "-c", code, str(fake["seconds"]), str(fake["exit"]), str(job_dir)]

    monkeypatch.setattr(jobs_mod.launcher, "write_launch_files", fake_launch_files)
    mgr = JobManager(home)
    yield mgr
    for job in mgr.list():
        if job.state in jobs_mod.ACTIVE:
            mgr.stop(job.id, grace=0.5)
            mgr.wait(job.id, 10)


def config(name, gpus, seconds=60, exit=0):
    """A job spec whose stand-in process sleeps `seconds` and exits with `exit` (read from its params)."""
    return JobSpec(name=name, plugin="p", model=ModelRef(path="m", source="local"), data=DataRef(dataset={}),
                   launch=Launch(trainer="x.py", device="cuda" if gpus else "cpu", gpu_ids=gpus,
                                 num_processes=max(len(gpus), 1)),
                   params={"seconds": seconds, "exit": exit})


def test_a_job_waits_for_its_gpus_and_reservations_keep_order(manager):
    a = manager.create(config("a", ["0"]))
    b = manager.create(config("b", ["0", "1"]))
    c = manager.create(config("c", ["1"]))  # free GPU, but b is waiting for it
    manager.create(config("d", ["2"]))
    manager.create(config("cpu", []))
    states = {j.name: j.state for j in manager.list()}
    assert states == {"a": "RUNNING", "b": "QUEUED", "c": "QUEUED", "d": "RUNNING", "cpu": "RUNNING"}
    manager.stop(a.id, grace=0.5)
    assert manager.wait(a.id, 10).state == "STOPPED"
    assert manager.wait(b.id, 10, until=lambda j: j.state == "RUNNING").state == "RUNNING"
    assert manager.get(c.id).state == "QUEUED"
    manager.stop(b.id, grace=0.5)
    assert manager.wait(c.id, 10, until=lambda j: j.state == "RUNNING").state == "RUNNING"
    stopped_queued = manager.create(config("e", ["1"]))
    assert manager.stop(stopped_queued.id).state == "STOPPED"  # never launched


def test_exit_code_decides_the_end_state(manager):
    ok = manager.create(config("ok", [], seconds=0.1, exit=0))
    bad = manager.create(config("bad", [], seconds=0.1, exit=3))
    assert manager.wait(ok.id, 10).state == "COMPLETE"
    failed = manager.wait(bad.id, 10)
    assert (failed.state, failed.exit_code, failed.reason) == ("FAILED", 3, "exited with code 3")
    assert failed.started and failed.finished >= failed.started and failed.command[-1] == str(failed.job_dir)


def test_stop_refuses_finished_jobs_and_resume_needs_a_checkpoint(manager):
    job = manager.create(config("j", []))
    manager.stop(job.id, grace=0.5)
    manager.wait(job.id, 10)
    with pytest.raises(JobError, match="is STOPPED, not running"):
        manager.stop(job.id)
    with pytest.raises(JobError, match="saved no checkpoint to resume from"):
        manager.resume(job.id)
    with pytest.raises(JobError, match="no job with id 12345"):
        manager.get(12345)


def test_restart_marks_vanished_running_jobs_failed(home, manager):
    job = manager.create(config("j", []))
    manager.stop(job.id, grace=0.5)
    manager.wait(job.id, 10)
    # Pretend the app died while the job ran: the row says RUNNING with a pid that is gone.
    manager._update(job.id, state="RUNNING", pid=2**22 + 7, finished=None)
    again = JobManager(home)
    job = again.get(job.id)
    assert job.state == "FAILED"
    assert job.reason == "the app was restarted and the job's process is gone"


def test_concurrency_cap_keeps_jobs_queued(manager, monkeypatch):
    monkeypatch.setenv("TLAB_MAX_CONCURRENT_JOBS", "1")
    first = manager.create(config("a", []))
    second = manager.create(config("b", [], seconds=0.1))
    assert manager.get(first.id).state == "RUNNING" and manager.get(second.id).state == "QUEUED"
    manager.stop(first.id, grace=0.5)
    assert manager.wait(second.id, 15).state == "COMPLETE"


def test_time_limit_stops_a_job_with_that_reason(manager, monkeypatch):
    monkeypatch.setenv("TLAB_MAX_JOB_SECONDS", "0.5")
    job = manager.create(config("slow", []))
    done = manager.wait(job.id, 15)
    assert done.state == "STOPPED"
    assert done.reason == "stopped: ran past this server's limit of 0.5 s per job"


def test_delete_removes_a_finished_job_and_its_folder_and_refuses_an_active_one(manager):
    running = manager.create(config("running", []))
    gpu_job = manager.create(config("gpu", ["0"]))
    waiting = manager.create(config("waiting", ["0"]))  # queued behind `gpu`
    for job in (running, waiting):
        state = manager.get(job.id).state
        with pytest.raises(JobError, match=f"job {job.id} is {state}: stop it first, then delete it"):
            manager.delete(job.id)
    assert manager.get(running.id).job_dir.is_dir()  # refused: nothing removed

    done = manager.create(config("done", [], seconds=0.1))
    finished = manager.wait(done.id, 10)
    (finished.job_dir / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    (finished.job_dir / "checkpoints" / "checkpoint-1" / "weights.bin").write_bytes(b"\0" * 4096)
    assert manager.delete(done.id) >= 4096
    assert not finished.job_dir.exists()
    with pytest.raises(JobError, match=f"no job with id {done.id}"):
        manager.get(done.id)
    assert [j.name for j in manager.list()] == ["waiting", "gpu", "running"]
    assert [p.name for p in manager.jobs_root.iterdir()] != [] and not list(manager.jobs_root.glob(".deleting-*"))

    # A job whose stored folder lies outside the workspace's jobs/ loses its row, never that folder.
    outside = manager.jobs_root.parent.parent / "not-a-job-folder"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    manager.stop(gpu_job.id, grace=0.5)
    manager.wait(gpu_job.id, 10)
    manager._update(gpu_job.id, job_dir=str(outside))
    assert manager.delete(gpu_job.id) == 0
    assert (outside / "keep.txt").read_text() == "keep"
