"""Issue 17, item 4: the watcher and the scheduler survive a store that cannot be written ("database or disk is
full"): a job's true end is recorded once space returns, the queue moves on, Stop never sticks at STOPPING.

The attack: the workspace on a small tmpfs mounted for the test, filled to the last byte while jobs run.
"""
import errno
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import standins
from tlab_gradio import jobs as jobs_mod
from tlab_gradio.jobs import JobError, JobManager


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A 4 MiB tmpfs as the workspace (TLAB_HOME); unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    if not shutil.which("mount"):
        pytest.skip("no mount command to mount a small filesystem for the workspace")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"mounting a tmpfs is not permitted here (needs root with CAP_SYS_ADMIN): {done.stderr.strip()}")
    monkeypatch.setenv("TLAB_HOME", str(mount))
    monkeypatch.setenv("TLAB_STOP_GRACE", "1")
    try:
        yield mount
    finally:
        for job_dir in (mount / "jobs").glob("*"):
            for proc in standins.left_of(job_dir):
                proc.kill()
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Fill the filesystem until not one more byte can be written."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as out:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    out.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


def test_a_full_disk_delays_the_record_of_how_jobs_ended_never_loses_it(small_disk, tmp_path, monkeypatch):
    monkeypatch.setattr(jobs_mod.launcher, "write_launch_files", standins.launch_files)
    monkeypatch.setenv("TLAB_MAX_CONCURRENT_JOBS", "2")
    manager = JobManager(small_disk)
    go = tmp_path / "go"  # outside the full disk: the test says when the first job ends
    ends = manager.create(standins.spec("ends", "wait_for", go=str(go), exit=0))
    stopped = manager.create(standins.spec("stopped", "sleep"))
    queued = manager.create(standins.spec("queued", "finish", seconds=0.1))
    assert [manager.get(j.id).state for j in (ends, stopped, queued)] == ["RUNNING", "RUNNING", "QUEUED"]

    filler = fill(small_disk)
    stopping = manager.stop(stopped.id, grace=0.5)
    assert stopping.state == "STOPPING"  # the click is taken; its processes end though the store is full
    go.touch()
    with pytest.raises(JobError, match="could not be stored"):  # a clear refusal, no half-made job
        manager.create(standins.spec("refused", "sleep"))
    monkeypatch.setenv("TLAB_MAX_CONCURRENT_JOBS", "3")  # room for the queued job, but no disk to launch it on
    manager._schedule()
    assert manager.get(queued.id).state == "QUEUED"  # waits for space; not failed for want of it
    deadline = time.monotonic() + 20
    while (standins.left_of(ends.job_dir) or standins.left_of(stopped.job_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert standins.left_of(ends.job_dir) == [] and standins.left_of(stopped.job_dir) == []
    time.sleep(2)
    # Nothing could be written: the store still shows the old states (this is the attack working)
    assert manager.get(ends.id).state == "RUNNING" and manager.get(queued.id).state == "QUEUED"

    filler.unlink()  # space returns
    assert manager.wait(ends.id, 30).state == "COMPLETE"
    done = manager.wait(stopped.id, 30)
    assert (done.state, done.reason) == ("STOPPED", "stopped by the user before its first step")  # no progress.json
    assert manager.wait(queued.id, 30).state == "COMPLETE"  # the queue moved on
    assert [j.name for j in manager.list()] == ["queued", "stopped", "ends"]


def test_a_job_that_dies_of_a_full_disk_says_so(small_disk, monkeypatch):
    """Its traceback cannot be written to its log either: the reason still names the disk, not just an exit code."""
    monkeypatch.setattr(jobs_mod.launcher, "write_launch_files", standins.launch_files)
    manager = JobManager(small_disk)
    job = manager.create(standins.spec("big checkpoint", "fill_disk"))
    deadline = time.monotonic() + 30
    while not (job.job_dir / "checkpoint.bin").exists() or standins.left_of(job.job_dir):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(2)  # the watcher sees it end, with the disk still full
    (job.job_dir / "checkpoint.bin").unlink()  # the operator frees space: the record can be written
    done = manager.wait(job.id, 30)
    assert done.state == "FAILED"
    assert done.reason == ("no space left on the disk holding the job's folder (the disk is full: delete old jobs' "
                           "checkpoints, or lower Checkpoints Kept) [exited with code 1]"), done.reason


def test_a_job_whose_folder_is_on_a_full_disk_waits_and_starts_when_space_returns(small_disk, monkeypatch):
    """The store can be written but the job's folder cannot (its own small filesystem, full): the job is not
    failed for want of space, and starts once there is some, with nothing else happening to move the queue."""
    monkeypatch.setattr(jobs_mod.launcher, "write_launch_files", standins.launch_files)
    monkeypatch.setenv("TLAB_MAX_CONCURRENT_JOBS", "1")
    manager = JobManager(small_disk)
    manager.create(standins.spec("long", "sleep"))
    waiting = manager.create(standins.spec("waiting", "finish", seconds=0.1))
    config = (waiting.job_dir / "config.json").read_bytes()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(waiting.job_dir)], check=True)
    try:
        (waiting.job_dir / "config.json").write_bytes(config)
        filler = fill(waiting.job_dir)
        monkeypatch.setenv("TLAB_MAX_CONCURRENT_JOBS", "2")
        manager._schedule()  # as at any event: room for it now, but its launch cannot write its log
        assert manager.get(waiting.id).state == "QUEUED", manager.get(waiting.id).reason
        filler.unlink()
        assert manager.wait(waiting.id, 20).state == "COMPLETE"
    finally:
        for proc in standins.left_of(waiting.job_dir):
            proc.kill()
        subprocess.run(["umount", "-l", str(waiting.job_dir)], check=False)
