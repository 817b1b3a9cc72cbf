"""The job store (SQLite) and the scheduler that runs, watches and stops jobs.

States: QUEUED -> RUNNING -> COMPLETE | FAILED | STOPPED, with STOPPING between a
Stop click and the end of the process group. The end state comes from the real
exit code of `accelerate launch` (non-zero if any rank failed), so a failed
training is never shown as complete. Jobs wait QUEUED while one of their GPUs is
used by another job; CPU jobs hold no GPU.

The database is an index: each job's folder holds its config, command, log and
results, so deleting the database loses the list, never the runs.
"""
from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import launcher, logs, settings
from .job_spec import JobSpec
from .jobfiles import CHECKPOINTS, LOG, METRICS, OUTPUT, RESULT, last_checkpoint

QUEUED, RUNNING, STOPPING, COMPLETE, FAILED, STOPPED = "QUEUED", "RUNNING", "STOPPING", "COMPLETE", "FAILED", "STOPPED"
ACTIVE = (RUNNING, STOPPING)
FINISHED = (COMPLETE, FAILED, STOPPED)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    plugin TEXT NOT NULL,
    state TEXT NOT NULL,
    config TEXT NOT NULL,
    job_dir TEXT NOT NULL DEFAULT '',
    output_dir TEXT NOT NULL DEFAULT '',
    gpus TEXT NOT NULL DEFAULT '[]',
    command TEXT,
    pid INTEGER,
    exit_code INTEGER,
    reason TEXT,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL
)
"""


class JobError(ValueError):
    pass


@dataclass
class Job:
    id: int
    name: str
    plugin: str
    state: str
    config: dict
    job_dir: Path
    output_dir: Path
    gpus: list[str]
    command: list[str] | None
    pid: int | None
    exit_code: int | None
    reason: str | None
    stop_requested: bool
    attempts: int
    created: float
    started: float | None
    finished: float | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        return cls(
            id=row["id"], name=row["name"], plugin=row["plugin"], state=row["state"],
            config=json.loads(row["config"]), job_dir=Path(row["job_dir"]), output_dir=Path(row["output_dir"]),
            gpus=json.loads(row["gpus"]), command=json.loads(row["command"]) if row["command"] else None,
            pid=row["pid"], exit_code=row["exit_code"], reason=row["reason"],
            stop_requested=bool(row["stop_requested"]), attempts=row["attempts"], created=row["created"],
            started=row["started"], finished=row["finished"],
        )

    @property
    def spec(self) -> JobSpec:
        """The job's spec (a job stored before the spec was typed is read from its flat config)."""
        return JobSpec.model_validate(self.config)

    @property
    def log_path(self) -> Path:
        return self.job_dir / LOG

    @property
    def metrics_path(self) -> Path:
        return self.job_dir / METRICS

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "plugin": self.plugin, "state": self.state,
            "config": self.config, "job_dir": str(self.job_dir), "output_dir": str(self.output_dir),
            "gpus": self.gpus, "command": self.command, "pid": self.pid, "exit_code": self.exit_code,
            "reason": self.reason, "attempts": self.attempts, "created": self.created,
            "started": self.started, "finished": self.finished,
        }


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with code {code}"


def _failure_reason(job: "Job", code: int | None) -> str:
    """What a failed job's page and API say: the error its log ends on (with a hint for known causes),
    then how the process ended (unknown for a job that ended while the app was restarting)."""
    ended = _exit_reason(code) if code is not None else "ended while the app was restarting; exit code unknown"
    cause = logs.failure(job.log_path)
    return f"{cause} [{ended}]" if cause else ended


def _pid_runs_job(pid: int, job_dir: Path) -> bool:
    """Is `pid` alive and still our job (not a recycled pid)? Its command line names the job folder."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return str(job_dir).encode() in cmdline


class JobManager:
    """One per workspace per process. Thread-safe; watcher threads are daemons."""

    def __init__(self, home: Path | None = None):
        self.home = Path(home or settings.home())
        self.jobs_root = self.home / "jobs"
        self.jobs_root.mkdir(parents=True, exist_ok=True)
        self.db_path = self.home / "jobs.sqlite"
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(SCHEMA)
        self._procs: dict[int, Any] = {}
        self._recover()
        self._schedule()

    # --- store --------------------------------------------------------------------
    def _update(self, job_id: int, **fields: Any) -> None:
        for key in ("config", "gpus", "command"):
            if key in fields and not isinstance(fields[key], str) and fields[key] is not None:
                fields[key] = json.dumps(fields[key])
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))

    def get(self, job_id: int) -> Job:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
        if row is None:
            raise JobError(f"no job with id {job_id}")
        return Job.from_row(row)

    def list(self, limit: int = 200) -> list[Job]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [Job.from_row(r) for r in rows]

    def create(self, spec: JobSpec, files: dict[str, Path] | None = None) -> Job:
        """Insert the job QUEUED, write its folder, its spec as config.json and the job's own copies of
        `files` (relative path in the folder -> source), and schedule it."""
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO jobs (name, plugin, state, config, gpus, created) VALUES (?, ?, ?, ?, ?, ?)",
                (spec.name, spec.plugin, QUEUED, json.dumps(spec.to_json()), json.dumps(spec.launch.gpu_ids),
                 time.time()),
            )
            job_id = cur.lastrowid
            job_dir = self.jobs_root / str(job_id)
            job_dir.mkdir(parents=True, exist_ok=True)
            for rel, src in (files or {}).items():  # before the trainer can start and read them
                (job_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, job_dir / rel)
            spec = spec.model_copy(update={"job_id": job_id, "job_dir": str(job_dir)})
            spec.write(job_dir)
            self._update(job_id, config=spec.to_json(), job_dir=str(job_dir), output_dir=str(job_dir / OUTPUT))
        self._schedule()
        return self.get(job_id)

    # --- scheduling ---------------------------------------------------------------
    def _schedule(self) -> None:
        """Start every queued job whose GPUs are free, oldest first. A waiting job
        reserves its GPUs, so a later job cannot starve it by taking them first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE state IN (?, ?, ?) ORDER BY id", (QUEUED, *ACTIVE)
            ).fetchall()
            jobs = [Job.from_row(r) for r in rows]
            taken = {g for j in jobs if j.state in ACTIVE for g in j.gpus}
            running = sum(j.state in ACTIVE for j in jobs)
            cap = settings.max_concurrent_jobs()
            for job in jobs:
                if job.state != QUEUED:
                    continue
                if cap is not None and running >= cap:
                    break
                wanted = set(job.gpus)
                if wanted & taken:
                    taken |= wanted
                    continue
                taken |= wanted
                if self._launch(job):
                    running += 1

    def _launch(self, job: Job) -> bool:
        try:
            argv = launcher.write_launch_files(job.job_dir, job.spec.launch)
            with open(job.log_path, "a") as log:
                log.write(f"[tlab] job {job.id} attempt {job.attempts + 1}: {' '.join(argv)}\n")
            proc = launcher.spawn(argv, job.job_dir, job.log_path)
        except Exception as exc:  # e.g. accelerate missing from the environment
            self._finish(job.id, FAILED, None, f"could not start: {type(exc).__name__}: {exc}")
            return False
        self._procs[job.id] = proc
        self._update(
            job.id, state=RUNNING, pid=proc.pid, command=argv, started=time.time(), finished=None,
            exit_code=None, reason=None, attempts=job.attempts + 1,
        )
        threading.Thread(target=self._watch, args=(job.id, proc), daemon=True, name=f"job-{job.id}").start()
        limit = settings.max_job_seconds()
        if limit:
            timer = threading.Timer(limit, self._time_limit, args=(job.id, proc.pid, limit))
            timer.daemon = True
            timer.start()
        return True

    def _time_limit(self, job_id: int, pid: int, limit: float) -> None:
        job = self.get(job_id)
        if job.state == RUNNING and job.pid == pid:
            self.stop(job_id, reason=f"stopped: ran past this server's limit of {limit:g} s per job")

    def _watch(self, job_id: int, proc) -> None:
        code = proc.wait()
        launcher.kill_group(proc.pid)  # ranks orphaned by a crashed launcher
        self._procs.pop(job_id, None)
        job = self.get(job_id)
        if job.stop_requested:
            self._finish(job_id, STOPPED, code, job.reason or "stopped by the user")
        elif code == 0:
            self._finish(job_id, COMPLETE, code, None)
        else:
            self._finish(job_id, FAILED, code, _failure_reason(job, code))

    def _watch_adopted(self, job_id: int, pid: int) -> None:
        """A job started by an earlier app process: not our child, so poll until its group is gone."""
        while launcher.group_alive(pid):
            time.sleep(1.0)
        job = self.get(job_id)
        if job.stop_requested:
            self._finish(job_id, STOPPED, None, job.reason or "stopped by the user")
        elif (job.job_dir / RESULT).is_file():
            self._finish(job_id, COMPLETE, None, "finished while the app was restarting")
        else:
            self._finish(job_id, FAILED, None, _failure_reason(job, None))

    def _finish(self, job_id: int, state: str, code: int | None, reason: str | None) -> None:
        self._update(job_id, state=state, exit_code=code, reason=reason, finished=time.time())
        self._schedule()

    def _recover(self) -> None:
        """Jobs an earlier app left RUNNING: adopt the live ones, fail the vanished ones."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE state IN (?, ?)", ACTIVE).fetchall()
        for job in (Job.from_row(r) for r in rows):
            if job.pid and _pid_runs_job(job.pid, job.job_dir):
                threading.Thread(target=self._watch_adopted, args=(job.id, job.pid), daemon=True).start()
            else:
                self._update(
                    job.id, state=FAILED, finished=time.time(),
                    reason="the app was restarted and the job's process is gone",
                )

    # --- user actions -------------------------------------------------------------
    def stop(self, job_id: int, grace: float | None = None, reason: str = "stopped by the user") -> Job:
        """Returns at once with the job STOPPING; SIGTERM then SIGKILL reach every rank."""
        grace = settings.stop_grace_seconds() if grace is None else grace
        with self._lock:
            job = self.get(job_id)
            if job.state == QUEUED:
                self._update(job_id, state=STOPPED, stop_requested=1, reason="stopped before it started",
                             finished=time.time())
                return self.get(job_id)
            if job.state not in ACTIVE:
                raise JobError(f"job {job_id} is {job.state}, not running")
            self._update(job_id, state=STOPPING, stop_requested=1, reason=reason)
        threading.Thread(target=launcher.terminate_group, args=(job.pid, grace), daemon=True).start()
        return self.get(job_id)

    def resume(self, job_id: int) -> Job:
        """Queue a stopped or failed job again from its last checkpoint, in the same folder."""
        with self._lock:
            job = self.get(job_id)
            if job.state not in (STOPPED, FAILED):
                raise JobError(f"job {job_id} is {job.state}; only a stopped or failed job can be resumed")
            checkpoint = last_checkpoint(job.job_dir / CHECKPOINTS)
            if checkpoint is None:
                raise JobError(f"job {job_id} saved no checkpoint to resume from; start it again instead")
            spec = job.spec.model_copy(update={"resume_from_checkpoint": str(checkpoint)})
            spec.write(job.job_dir)
            (job.job_dir / RESULT).unlink(missing_ok=True)
            self._update(job_id, state=QUEUED, config=spec.to_json(), stop_requested=0, exit_code=None,
                         reason=f"resuming from {checkpoint.name}", finished=None, pid=None)
        self._schedule()
        return self.get(job_id)

    def delete(self, job_id: int) -> int:
        """Forget a finished job and delete its folder (log, metrics, checkpoints, output); returns the
        bytes freed. A queued or running job must be stopped first: its processes would write on."""
        with self._lock:
            job = self.get(job_id)
            if job.state not in FINISHED:
                raise JobError(f"job {job_id} is {job.state}: stop it first, then delete it")
            folder = job.job_dir
            root = self.jobs_root.resolve()
            inside = folder.is_dir() and folder.resolve().parent == root  # never a folder outside jobs/
            size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if inside else 0
            if inside:  # renamed first: a crash mid-delete leaves no half folder under a live id
                trash = root / f".deleting-{job_id}-{time.time_ns()}"
                folder.rename(trash)
            self._db.execute("DELETE FROM jobs WHERE id = ?", (int(job_id),))
        if inside:
            shutil.rmtree(trash, ignore_errors=True)
        return size

    def wait(self, job_id: int, timeout: float, until: Callable[[Job], bool] | None = None) -> Job:
        """Poll until the job is finished (or `until` holds); for scripts and tests."""
        until = until or (lambda j: j.state in FINISHED)
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if until(job) or time.monotonic() > deadline:
                return job
            time.sleep(0.2)

    def log_tail(self, job_id: int, lines: int = 50) -> list[str]:
        return logs.tail(self.get(job_id).log_path, lines)

    def close(self) -> None:
        with self._lock:
            self._db.close()
