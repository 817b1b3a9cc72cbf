"""The job store (SQLite) and the scheduler that runs, watches and stops jobs.

States: QUEUED -> RUNNING -> COMPLETE | FAILED | STOPPED, with STOPPING between a
Stop click (or the time limit, or the progress watchdog) and the end of the job's
last process. The end state comes from the real exit code of `accelerate launch`
(non-zero if any rank failed), so a failed training is never shown as complete.
Jobs wait QUEUED while one of their GPUs is used by another job (CPU jobs hold no GPU), and in hosted mode
while their visitor already has TLAB_HOSTED_MAX_RUNNING_PER_VISITOR jobs running.

A job's end is recorded only once every process of it is gone (ranks outlive a
killed launcher: launcher.end_job finds them by the job's tag), so a GPU the
scheduler sees free is free. A store that cannot be written (a full disk) delays
that record, never loses it: the watcher retries until it is written, and the
scheduler tries the queue again.

The database is an index: each job's folder holds its config, command, log and
results, so deleting the database loses the list, never the runs.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import shutil
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import launcher, logs, settings
from .job_spec import JobSpec
from .jobfiles import CHECKPOINTS, LOG, METRICS, OUTPUT, PROGRESS, RANK_ERRORS, RESULT, last_checkpoint, read_json

log = logging.getLogger(__name__)

QUEUED, RUNNING, STOPPING, COMPLETE, FAILED, STOPPED = "QUEUED", "RUNNING", "STOPPING", "COMPLETE", "FAILED", "STOPPED"
ACTIVE = (RUNNING, STOPPING)
FINISHED = (COMPLETE, FAILED, STOPPED)
STOP_BY_USER, STOP_AS_FAILURE = 1, 2  # stop_requested: how a job ended on purpose ends (STOPPED, or FAILED: hung)
POLL = 0.5  # seconds between a watcher's looks at its job (exit, time limit, progress)
RETRY_MAX = 5.0  # longest wait between tries to write a store that could not be written

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
    finished REAL,
    owner TEXT,
    slurm_id TEXT
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
    fails_on_stop: bool = False  # ended on purpose as FAILED (the progress watchdog), not STOPPED
    owner: str | None = None  # who started it (login name or browser session): hosted mode shows it to them only
    slurm_id: str | None = None  # handed to Slurm: its job id there (slurm.py), once sbatch took it

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        return cls(
            id=row["id"], name=row["name"], plugin=row["plugin"], state=row["state"],
            config=json.loads(row["config"]), job_dir=Path(row["job_dir"]), output_dir=Path(row["output_dir"]),
            gpus=json.loads(row["gpus"]), command=json.loads(row["command"]) if row["command"] else None,
            pid=row["pid"], exit_code=row["exit_code"], reason=row["reason"],
            stop_requested=bool(row["stop_requested"]), attempts=row["attempts"], created=row["created"],
            started=row["started"], finished=row["finished"],
            fails_on_stop=row["stop_requested"] == STOP_AS_FAILURE, owner=row["owner"],
            slurm_id=row["slurm_id"] if "slurm_id" in row.keys() else None,
        )

    @property
    def on_slurm(self) -> bool:
        """Run on a Slurm cluster (the request's Run on): Slurm schedules, starts and ends it, not this app."""
        return bool((self.config.get("launch") or {}).get("slurm"))

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
            "started": self.started, "finished": self.finished, "slurm_id": self.slurm_id,
        }


def _disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _full_disk_cause(folder: Path) -> str | None:
    """A job that failed with nothing in its log or error files, on a disk with (almost) no space left: the full
    disk is why (the rank's traceback could not be written either)."""
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return None
    if usage.free < min(64 << 20, usage.total // 100):
        return f"no space left on the disk holding the job's folder ({logs.DISK_FULL_HINT})"
    return None


def _failure_reason(job: "Job", code: int | None,
                    ended: str = "ended while the app was restarting; exit code unknown") -> str:
    """What a failed job's page and API say: the error that ended it (the failing rank's, from its error file or
    log, with a hint for known causes), then how the launcher ended (`ended` when that is unknown)."""
    ended = logs.signal_reason(code) if code is not None else ended
    cause = (logs.failure(job.log_path, error_dir=job.job_dir / RANK_ERRORS, since=job.started)
             or _full_disk_cause(job.job_dir))
    return f"{cause} [{ended}]" if cause else ended


def _finished_by_files(job: "Job") -> bool:
    """The trainer's last steps done: result.json written after the output (for a job whose exit code is lost)."""
    output = job.output_dir
    return (job.job_dir / RESULT).is_file() and output.is_dir() and any(p.is_file() for p in output.rglob("*"))


def _last_progress(job: "Job") -> tuple[float, int]:
    """When the job's step last advanced (the trainer rewrites progress.json and metrics.jsonl on steps; before
    its first, the attempt's start) and that step."""
    times = [job.started or 0.0]
    for name in (PROGRESS, METRICS):
        try:
            times.append((job.job_dir / name).stat().st_mtime)
        except OSError:
            pass
    step = (read_json(job.job_dir / PROGRESS) or {}).get("step", 0)
    return max(times), step if isinstance(step, int) else 0


USER_STOP = "stopped by the user"


def _at_step(job: "Job", reason: str) -> str:
    """A user's stop says where it stopped: "stopped by the user at step N" (the last step progress.json saw)."""
    if reason != USER_STOP:
        return reason
    step = _last_progress(job)[1]
    return f"{reason} at step {step}" if step else f"{reason} before its first step"


def _log_line(job: "Job", line: str) -> None:
    """A line of the app's in the job's log (appended, as the processes write it); a log that cannot be written
    loses it, nothing else."""
    try:
        with open(job.log_path, "a") as fh:
            fh.write(line)
    except OSError:
        pass


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
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(jobs)")}
        for column in ("owner", "slurm_id"):  # a store made before them: its jobs keep NULL (owner: nobody's)
            if column not in columns:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} TEXT")
        # The tag every process of a job carries: unique to this workspace on this machine, the same after a restart
        self._workspace = hashlib.sha256(str(self.home.resolve()).encode()).hexdigest()[:16]
        self._procs: dict[int, Any] = {}
        self._ending: dict[int, tuple[str, str, float]] = {}  # job id -> (end state, reason, grace) asked for here
        self._retry: threading.Timer | None = None
        self._closed = False
        self._held: dict[str, set[str]] = {}  # GPUs held outside jobs (the chat worker's): taken for the queue
        self._recover()
        self._schedule()

    def tag(self, job_id: int) -> str:
        """The value of launcher.JOB_TAG in the environment of every process of the job."""
        return f"{self._workspace}:{job_id}"

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

    def list(self, limit: int = 200, owner: str | None = None) -> list[Job]:
        """The newest jobs; only `owner`'s when given."""
        where, args = ("WHERE owner = ? ", (owner,)) if owner is not None else ("", ())
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM jobs {where}ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [Job.from_row(r) for r in rows]

    def count(self, owner: str, states: tuple[str, ...]) -> int:
        """How many of `owner`'s jobs are in one of `states` (the hosted per-visitor caps)."""
        marks = ", ".join("?" * len(states))
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM jobs WHERE owner = ? AND state IN ({marks})",
                                    (owner, *states)).fetchone()[0]

    def create(self, spec: JobSpec, files: dict[str, Path] | None = None, owner: str | None = None) -> Job:
        """Insert the job QUEUED, write its folder, its spec as config.json and the job's own copies of
        `files` (relative path in the folder -> source), and schedule it. One transaction: a failure part-way
        (a full disk) leaves no half-made job for the scheduler to launch."""
        with self._lock:
            job_dir = None
            try:
                self._db.execute("BEGIN IMMEDIATE")
                cur = self._db.execute(
                    "INSERT INTO jobs (name, plugin, state, config, gpus, created, owner) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (spec.name, spec.plugin, QUEUED, json.dumps(spec.to_json()), json.dumps(spec.launch.gpu_ids),
                     time.time(), owner),
                )
                job_id = cur.lastrowid
                # A Slurm job's folder is on the workspace every node sees
                shared = settings.slurm_workspace() if spec.launch.slurm else None
                root = shared / "jobs" if shared else self.jobs_root
                job_dir = root / str(job_id)
                job_dir.mkdir(parents=True, exist_ok=True)
                for rel, src in (files or {}).items():  # before the trainer can start and read them
                    (job_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, job_dir / rel)
                spec = spec.model_copy(update={"job_id": job_id, "job_dir": str(job_dir)})
                spec.write(job_dir)
                self._update(job_id, config=spec.to_json(), job_dir=str(job_dir), output_dir=str(job_dir / OUTPUT))
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if job_dir is not None:  # its id is free again: no file of this attempt may meet the next job
                    shutil.rmtree(job_dir, ignore_errors=True)
                if isinstance(exc, sqlite3.OperationalError) or _disk_full(exc):
                    raise JobError(f"the job could not be stored: {exc}") from exc
                raise
        self._schedule()
        return self.get(job_id)

    # --- scheduling ---------------------------------------------------------------
    def _schedule(self) -> None:
        """Start every queued job whose GPUs are free, oldest first. A waiting job
        reserves its GPUs, so a later job cannot starve it by taking them first.
        A store or disk that cannot be written (a full disk) leaves the queue as it is and
        tries again shortly: the queue never waits for an event that has passed."""
        try:
            self._schedule_queue()
        except (sqlite3.OperationalError, OSError) as exc:
            log.warning("scheduler: %s; trying again in 2 s", exc)
            with self._lock:
                if not self._closed and not (self._retry and self._retry.is_alive()):
                    self._retry = threading.Timer(2.0, self._schedule)
                    self._retry.daemon = True
                    self._retry.start()

    def _schedule_queue(self) -> None:
        with self._lock:
            if self._closed:
                return
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE state IN (?, ?, ?) ORDER BY id", (QUEUED, *ACTIVE)
            ).fetchall()
            jobs = [Job.from_row(r) for r in rows]
            taken = {g for j in jobs if j.state in ACTIVE for g in j.gpus}
            taken |= self.held_gpus()  # the chat worker's GPU
            for job in [j for j in jobs if j.on_slurm]:  # Slurm queues them: handed over at once, never counted here
                if job.state == QUEUED and not job.slurm_id:
                    self._submit(job)
            jobs = [j for j in jobs if not j.on_slurm]
            running = sum(j.state in ACTIVE for j in jobs)
            cap = settings.max_concurrent_jobs()
            # Hosted: a visitor's jobs beyond their running cap wait, reserving nothing, so other visitors' start.
            per_visitor = settings.hosted_max_running_per_visitor() if settings.hosted() else None
            theirs: dict[str, int] = {}
            for j in jobs:
                if j.state in ACTIVE and j.owner:
                    theirs[j.owner] = theirs.get(j.owner, 0) + 1
            for job in jobs:
                if job.state != QUEUED:
                    continue
                if cap is not None and running >= cap:
                    break
                if per_visitor is not None and job.owner and theirs.get(job.owner, 0) >= per_visitor:
                    continue
                wanted = set(job.gpus)
                if wanted & taken:
                    taken |= wanted
                    continue
                taken |= wanted
                if self._launch(job):
                    running += 1
                    if job.owner:
                        theirs[job.owner] = theirs.get(job.owner, 0) + 1

    # --- GPUs held outside jobs (chat.py's worker) ------------------------------------
    def claim_gpu(self, holder: str, candidates: list[str]) -> str | None:
        """Hold the first of `candidates` (physical GPU ids) that no running job uses, no queued job waits for and
        nothing else holds; the scheduler then counts it as taken until release_gpus(holder). None: none free."""
        with self._lock:
            busy = set(self.gpu_users())
            for gpu in candidates:
                if gpu not in busy:
                    self._held.setdefault(holder, set()).add(gpu)
                    return gpu
        return None

    def release_gpus(self, holder: str) -> None:
        """Give back what `holder` held; queued jobs waiting for those GPUs start."""
        with self._lock:
            freed = self._held.pop(holder, None)
        if freed:
            self._schedule()

    def held_gpus(self) -> set[str]:
        """The GPUs held outside jobs (claim_gpu), which queued jobs that need them wait for."""
        with self._lock:
            return {g for held in self._held.values() for g in held}

    def gpu_users(self) -> dict[str, list[str]]:
        """Physical GPU id -> who uses it or waits for it: "job 3 (RUNNING)", "job 5 (QUEUED)", "chat:cuda"."""
        users: dict[str, list[str]] = {}
        with self._lock:
            rows = self._db.execute("SELECT id, state, gpus FROM jobs WHERE state IN (?, ?, ?) ORDER BY id",
                                    (QUEUED, *ACTIVE)).fetchall()
            for row in rows:
                for gpu in json.loads(row["gpus"]):
                    users.setdefault(gpu, []).append(f"job {row['id']} ({row['state']})")
            for holder, held in self._held.items():
                for gpu in held:
                    users.setdefault(gpu, []).append(holder)
        return users

    def _launch(self, job: Job) -> bool:
        """Start the job and its watcher. A full disk or store raises (the job stays QUEUED, _schedule tries again);
        any other failure to start fails the job with the reason."""
        try:
            argv = launcher.write_launch_files(job.job_dir, job.spec.launch)
            with open(job.log_path, "a") as log_file:
                log_file.write(logs.attempt_line(job.id, job.attempts + 1, argv))
            proc = launcher.spawn(argv, job.job_dir, job.log_path, tag=self.tag(job.id))
        except Exception as exc:  # e.g. accelerate missing from the environment
            if _disk_full(exc):
                raise
            self._update(job.id, state=FAILED, reason=f"could not start: {type(exc).__name__}: {exc}",
                         finished=time.time())
            return False
        try:
            self._update(
                job.id, state=RUNNING, pid=proc.pid, command=argv, started=time.time(), finished=None,
                exit_code=None, reason=None, attempts=job.attempts + 1,
            )
        except sqlite3.OperationalError:  # not recorded as running: it must not run unseen
            launcher.end_job(self.tag(job.id), proc.pid, 0.0, job.job_dir)
            proc.wait()
            raise
        self._procs[job.id] = proc
        threading.Thread(target=self._watch, args=(job.id, proc.pid, proc), daemon=True,
                         name=f"job-{job.id}").start()
        return True

    def _watch(self, job_id: int, pid: int, proc: subprocess.Popen | None = None) -> None:
        """One per running job, until its end is recorded. Waits for the launcher (`proc`, this app's child, or,
        for a job adopted after a restart, the process `pid`), stopping the job at the time limit and failing it
        when it stops making progress; then ends every process of the job still there (ranks outlive a killed
        launcher) and records the end state, retrying while the store cannot be written."""
        job = self.get(job_id)
        if proc is None:
            found = launcher.job_process(pid, self.tag(job_id), job.job_dir)
            alive = (lambda: launcher.alive(found)) if found else (lambda: False)
            if job.state == STOPPING and job_id not in self._ending:  # a stop the earlier app did not finish
                self._end(job, FAILED if job.fails_on_stop else STOPPED, job.reason or USER_STOP,
                          settings.stop_grace_seconds())
        code = None
        while not self._closed:
            if proc is not None:
                try:
                    code = proc.wait(timeout=POLL)
                    break
                except subprocess.TimeoutExpired:
                    pass
            elif alive():
                time.sleep(POLL)
            else:
                break
            try:
                self._check_limits(job_id)
            except Exception:  # a store error, a file being replaced: look again at the next poll
                log.exception("job %s: checking its limits", job_id)
        if self._closed:
            return
        try:  # decided as the launcher ends: from its log as it was, before any leftover rank is ended
            decided = self._end_state(self.get(job_id), code)
        except sqlite3.Error:
            decided = None
        ending = self._ending.get(job_id)
        launcher.end_job(self.tag(job_id), pid, ending[2] if ending else settings.stop_grace_seconds(), job.job_dir)
        self._procs.pop(job_id, None)
        if ending and decided and decided[1]:  # ended on purpose: the log ends on why, not on the SIGTERM noise
            _log_line(job, logs.ended_line(decided[1]))
        self._record_end(job_id, code, decided)

    def _check_limits(self, job_id: int) -> None:
        """The server's time limit (counted from the job's start, so it holds across an app restart) and the
        progress watchdog (no new step for settings.stall_seconds())."""
        if job_id in self._ending:
            return
        job = self.get(job_id)
        if job.state != RUNNING or not job.started:
            return
        now = time.time()
        limit = settings.max_job_seconds()
        if limit and now - job.started > limit:
            self.stop(job_id, reason=f"stopped: ran past this server's limit of {limit:g} s per job")
            return
        stall = settings.stall_seconds()
        # Only machine 0's rank 0 writes the progress files: another machine's part of a job has none to watch
        if stall and job.spec.launch.distributed.machine_rank == 0:
            last, step = _last_progress(job)
            if now - last > stall:
                self.stop(job_id, reason=f"no progress for {stall:g} s (last step {step})", failed=True)

    def _end_state(self, job: Job, code: int | None) -> tuple[str, str | None]:
        ending = self._ending.get(job.id)
        if ending:
            return ending[0], _at_step(job, ending[1])
        if job.state == STOPPING:  # stopped through another manager of this workspace
            return (FAILED if job.fails_on_stop else STOPPED), _at_step(job, job.reason or USER_STOP)
        if code == 0:
            return COMPLETE, None
        if code is None:  # adopted after a restart: its exit code is lost, its files say how it ended
            if _finished_by_files(job):
                return COMPLETE, "finished while the app was restarting"
            return FAILED, _failure_reason(job, None)
        return FAILED, _failure_reason(job, code)

    def _record_end(self, job_id: int, code: int | None, decided: tuple[str, str | None] | None = None) -> None:
        """Record how the job ended (`decided`, or decided here once), retrying while the store cannot be
        written: a full disk delays the record until space returns, never loses it. Then the queue moves."""
        delay = 0.5
        while not self._closed:
            try:
                decided = decided or self._end_state(self.get(job_id), code)
                self._update(job_id, state=decided[0], exit_code=code, reason=decided[1], finished=time.time())
                break
            except sqlite3.OperationalError as exc:
                if delay == 0.5:
                    log.warning("job %s: could not record its end (%s); retrying until it can", job_id, exc)
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
        self._ending.pop(job_id, None)
        self._schedule()

    def _recover(self) -> None:
        """Jobs an earlier app left RUNNING or STOPPING. One whose launcher lives is watched again (its time
        limit counted from its start); one that ended meanwhile gets its true state from its files (COMPLETE if
        it wrote its result, else FAILED with the reason its log gives), once any rank it left is ended."""
        with self._lock:  # and Slurm jobs still queued there
            rows = self._db.execute("SELECT * FROM jobs WHERE state IN (?, ?) OR (state = ? AND slurm_id IS NOT NULL)",
                                    (*ACTIVE, QUEUED)).fetchall()
        for job in (Job.from_row(r) for r in rows):
            if job.on_slurm:
                if job.slurm_id:  # Slurm still has it (or knows how it ended): watched again
                    self._watch_slurm_thread(job.id)
                elif job.state in ACTIVE:  # never handed over
                    self._update(job.id, state=FAILED, reason="the app stopped before sbatch took the job",
                                 finished=time.time())
                continue
            tag = self.tag(job.id)
            if launcher.job_process(job.pid, tag, job.job_dir) or launcher.job_processes(tag):
                threading.Thread(target=self._watch, args=(job.id, job.pid), daemon=True,
                                 name=f"job-{job.id}").start()
                continue
            if job.state == STOPPING:
                state, reason = (FAILED if job.fails_on_stop else STOPPED), _at_step(job, job.reason or USER_STOP)
            elif _finished_by_files(job):
                state, reason = COMPLETE, "finished while the app was down"
            else:
                state, reason = FAILED, _failure_reason(job, None,
                                                        "the app was restarted and the job's process is gone")
            try:
                self._update(job.id, state=state, reason=reason, finished=time.time())
            except sqlite3.OperationalError:  # recorded by a watcher once the store can be written
                threading.Thread(target=self._record_end, args=(job.id, None), daemon=True).start()

    # --- user actions -------------------------------------------------------------
    def stop(self, job_id: int, grace: float | None = None, reason: str = USER_STOP,
             failed: bool = False) -> Job:
        """Returns at once with the job STOPPING; SIGTERM then SIGKILL reach every process of the job. It ends
        STOPPED (FAILED if `failed`) with `reason` once they are all gone, even if the store cannot be written now."""
        grace = settings.stop_grace_seconds() if grace is None else grace
        with self._lock:
            job = self.get(job_id)
            if job.on_slurm and job.slurm_id and job.state in (QUEUED, *ACTIVE):
                return self._stop_slurm(job, FAILED if failed else STOPPED, reason)
            if job.state == QUEUED:
                try:
                    self._update(job_id, state=STOPPED, stop_requested=STOP_BY_USER, reason="stopped before it started",
                                 finished=time.time())
                except sqlite3.OperationalError as exc:
                    raise JobError(f"job {job_id} could not be stopped: the job store cannot be written ({exc})")
                return self.get(job_id)
            if job.state not in ACTIVE:
                raise JobError(f"job {job_id} is {job.state}, not running")
            stored = self._end(job, FAILED if failed else STOPPED, reason, grace)
        job = self.get(job_id)
        if not stored:  # what the store will say once it can be written
            job = dataclasses.replace(job, state=STOPPING, stop_requested=True, fails_on_stop=failed, reason=reason)
        return job

    def _end(self, job: Job, state: str, reason: str, grace: float) -> bool:
        """End the job on purpose: its watcher records `state` and `reason` once its processes are gone. Kept
        here first, then in the store (STOPPING); False when the store could not be written (a full disk)."""
        self._ending[job.id] = (state, reason, grace)
        _log_line(job, logs.stopping_line(job.id, reason))  # what the processes print from here on is noise
        threading.Thread(target=launcher.end_job, args=(self.tag(job.id), job.pid, grace, job.job_dir),
                         daemon=True).start()
        try:
            self._update(job.id, state=STOPPING, reason=reason,
                         stop_requested=STOP_AS_FAILURE if state == FAILED else STOP_BY_USER)
            return True
        except sqlite3.OperationalError as exc:
            log.warning("job %s: ending it, but could not record that (%s)", job.id, exc)
            return False

    # --- Slurm (slurm.py) -----------------------------------------------------------
    def _submit(self, job: Job) -> None:
        """Write the batch script and hand the job to sbatch; it stays QUEUED (Slurm's PENDING) with its Slurm id,
        watched by a thread. sbatch refusing it (a bad partition, a time limit over the partition's) fails it
        with sbatch's words."""
        from . import slurm

        try:
            launcher.write_launch_files(job.job_dir, job.spec.launch)  # accelerate.yaml, as for every job
            argv = slurm.write(job.job_dir, job.spec.launch)
            with open(job.log_path, "a") as log_file:
                log_file.write(logs.attempt_line(job.id, job.attempts + 1, argv))
            slurm_id = slurm.submit(argv, self.tag(job.id))
        except Exception as exc:
            if _disk_full(exc):
                raise
            self._update(job.id, state=FAILED, reason=f"could not hand it to Slurm: {exc}", finished=time.time())
            return
        self._update(job.id, slurm_id=slurm_id, command=argv, attempts=job.attempts + 1, exit_code=None,
                     reason=None, finished=None, started=None, pid=None)
        self._watch_slurm_thread(job.id)

    def _watch_slurm_thread(self, job_id: int) -> None:
        threading.Thread(target=self._watch_slurm, args=(job_id,), daemon=True, name=f"slurm-job-{job_id}").start()

    def _watch_slurm(self, job_id: int) -> None:
        """One per Slurm job, until its end is recorded: Slurm's state read every POLL*2 s (one squeue for every
        watched job, slurm.QUEUE) and kept in the store
        (PENDING: QUEUED with Slurm's reason; RUNNING; the end state with its exit code). The server's time limit
        and the progress watchdog hold as for a local job (a stop is scancel)."""
        from . import slurm

        unknown_since = None
        while not self._closed:
            try:
                job = self.get(job_id)
                if job.state in FINISHED:
                    return
                now = slurm.state(job.slurm_id)
            except (slurm.SlurmError, sqlite3.Error, JobError) as exc:
                log.warning("job %s: asking Slurm: %s", job_id, exc)
                time.sleep(POLL * 4)
                continue
            if now is None:  # just submitted (not yet listed) or forgotten by Slurm
                unknown_since = unknown_since or time.monotonic()
                if time.monotonic() - unknown_since > 120:
                    self._record_slurm_end(job, None, FAILED, f"Slurm no longer knows job {job.slurm_id}")
                    return
            elif now.finished:
                ending = self._ending.get(job_id)
                if now.ours == "COMPLETE" and not ending:
                    state, reason = COMPLETE, None
                elif ending or job.state == STOPPING:
                    wanted = ending[0] if ending else (FAILED if job.fails_on_stop else STOPPED)
                    state, reason = wanted, _at_step(job, ending[1] if ending else (job.reason or USER_STOP))
                elif now.ours == STOPPED:
                    state, reason = STOPPED, f"cancelled in Slurm (scancel {job.slurm_id})"
                else:
                    cause = (logs.failure(job.log_path, error_dir=job.job_dir / RANK_ERRORS, since=job.started)
                             or _full_disk_cause(job.job_dir))
                    state, reason = FAILED, f"{cause} [{now.reason}]" if cause else now.reason
                if ending and reason:
                    _log_line(job, logs.ended_line(reason))
                self._record_slurm_end(job, now.exit_code, state, reason)
                return
            elif now.ours == RUNNING and job.state == QUEUED:
                self._update(job_id, state=RUNNING, started=time.time(), reason=None)
            elif now.ours == QUEUED and job.state == QUEUED:
                said = f"Slurm job {job.slurm_id}: PENDING" + (f" ({now.reason})" if now.reason else "")
                if job.reason != said:
                    self._update(job_id, reason=said)
            if now is not None:
                unknown_since = None
            try:
                self._check_limits(job_id)
            except Exception:
                log.exception("job %s: checking its limits", job_id)
            time.sleep(POLL * 2)

    def _record_slurm_end(self, job: Job, code: int | None, state: str, reason: str | None) -> None:
        delay = 0.5
        while not self._closed:
            try:
                self._update(job.id, state=state, exit_code=code, reason=reason, finished=time.time())
                break
            except sqlite3.OperationalError:
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
        self._ending.pop(job.id, None)

    def _stop_slurm(self, job: Job, state: str, reason: str) -> Job:
        """scancel, and STOPPING at once; the watcher records `state` once Slurm says the job has ended."""
        from . import slurm

        self._ending[job.id] = (state, reason, 0.0)
        _log_line(job, logs.stopping_line(job.id, reason))
        try:
            slurm.cancel(job.slurm_id)
        except slurm.SlurmError as exc:
            self._ending.pop(job.id, None)
            raise JobError(f"job {job.id} could not be stopped: {exc}") from exc
        self._update(job.id, state=STOPPING, reason=reason,
                     stop_requested=STOP_AS_FAILURE if state == FAILED else STOP_BY_USER)
        return self.get(job.id)

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
                         reason=f"resuming from {checkpoint.name}", finished=None, pid=None, slurm_id=None)
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
            shared = settings.slurm_workspace() if job.on_slurm else None
            roots = {root, (shared / "jobs").resolve()} if shared else {root}
            inside = folder.is_dir() and folder.resolve().parent in roots  # never a folder outside jobs/
            root = folder.resolve().parent
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
        """Stop watching (the jobs run on; a new manager adopts them) and close the store."""
        with self._lock:
            self._closed = True
            if self._retry:
                self._retry.cancel()
            self._db.close()
