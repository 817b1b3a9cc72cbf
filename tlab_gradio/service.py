"""The operations the page and the API share, each a thin call into the module that owns the idea:
plugin_catalog (the plugins and their forms), job_request (checking a request into a JobSpec), estimates
(memory and disk), the job store (jobs.JobManager), job files read for a job's page (job_view), presets,
reward files. Every input is checked before anything is launched; problems come back together
(RequestError), each naming the bad value.

`Service` never imports gradio: scripts and tests use it directly.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from . import (data, estimates, gpus, inputs, installer, job_request, jobfiles, launch_settings, launcher, logs,
               manifests, monitor, plugin_catalog, reward_files, settings, slurm, uploads)
from .job_spec import JobSpec
from .jobfiles import CHECKPOINTS, last_checkpoint, read_json
from .jobs import ACTIVE, FINISHED, Job, JobError, JobManager  # the job states, for the page too
from .params import suggest
from .presets import Presets
from .request_error import RequestError

REQUEST_KEYS = job_request.REQUEST_KEYS
VIEW_FILES = 50  # output files listed in a job's view
PREVIEW_ROWS = 50  # the most rows a preview shows (each is rendered)


class Service:
    def __init__(self, home: Path | None = None):
        self.home = Path(home or settings.home())
        self.jobs = JobManager(self.home)
        self.presets = Presets(self.home / "presets")  # hosted mode: presets_for(visitor) instead
        self._start_lock = threading.Lock()  # a visitor's count and their new job, together (10 Starts at once)
        self.monitor = monitor.Monitor()  # the Computer tab's curves; sampling starts when first asked

    # --- hosted mode: no server path in anything shown ------------------------------
    def hide_paths(self, text: Any) -> Any:
        """In hosted mode, the server's folders in a text (a log line, a reason, a message) become names: the
        workspace $TLAB_HOME, the app <app>, Python's <python>, the temp folder <tmp>, the user's home ~. The one
        place every shown text goes through (the README promises a hosted page shows no server path)."""
        if not settings.hosted() or not isinstance(text, str) or not text:
            return text
        for path, name in self._path_names():
            text = text.replace(path, name)
        return text

    def _path_names(self) -> list[tuple[str, str]]:
        named = [(self.home, "$TLAB_HOME"), (settings.REPO_DIR, "<app>"), (Path(sys.prefix), "<python>"),
                 (Path(sys.base_prefix), "<python>"), (Path(tempfile.gettempdir()), "<tmp>"), (Path.home(), "~")]
        if os.environ.get("HF_HOME"):
            named.append((Path(os.environ["HF_HOME"]), "$HF_HOME"))
        pairs = {}
        for path, name in named:
            for form in (str(path), str(path.resolve())):
                if len(form) > 1:  # never "/"
                    pairs.setdefault(form, name)
        return sorted(pairs.items(), key=lambda p: -len(p[0]))  # the longest first: the workspace may be in <tmp>

    # --- plugins and machine ------------------------------------------------------
    def plugins(self) -> tuple[dict[str, manifests.Manifest], list[manifests.ManifestError]]:
        return plugin_catalog.plugins()

    def plugin(self, plugin_id: str) -> manifests.Manifest:
        return plugin_catalog.plugin(plugin_id)

    def plugin_list(self) -> list[dict[str, Any]]:
        """Every plugin with its readiness and parameters; broken manifests with their error. `needs`: what its
        jobs need installed (the pinned lines of its requirements file, else its manifest's requirements), and
        `environment`: the virtual environment of its own they go into (None: the app's)."""
        rows = plugin_catalog.plugin_list()
        found, _ = plugin_catalog.plugins()
        for row in rows:
            if "error" not in row and row["id"] in found:
                self._add_needs(row, found[row["id"]])
        return rows

    def plugin_form(self, plugin_id: str) -> dict[str, Any]:
        """One plugin's entry of plugin_list: what its form is built from (parameters with this machine's
        defaults, help and widget; parameter_groups; train_type; sample_dataset). RequestError when the
        plugin is unknown or its manifest fails to load now."""
        row = plugin_catalog.plugin_form(plugin_id)
        return self._add_needs(row, plugin_catalog.plugins()[0][plugin_id])

    @staticmethod
    def _add_needs(row: dict[str, Any], manifest: manifests.Manifest) -> dict[str, Any]:
        row["needs"] = installer.requirement_lines(manifest)
        row["requirements_file"] = manifest.requirements_file
        return row

    def parameter_specs(self, manifest: manifests.Manifest) -> dict[str, dict[str, Any]]:
        return plugin_catalog.parameter_specs(manifest)

    def machine_defaults(self) -> dict[str, Any]:
        return plugin_catalog.machine_defaults()

    def install_plugin(self, plugin_id: str):
        """Install what the plugin needs; yields pip's output lines, raises installer.InstallError."""
        manifest = plugin_catalog.plugin(plugin_id)
        if settings.hosted():
            raise RequestError(["installing packages is turned off on this server"])
        if not installer.missing(manifest):
            yield f"[tlab] {manifest.name}: every requirement is already installed"
            return
        yield from installer.install(manifest)

    def gpu_info(self) -> list[dict]:
        return [g.as_dict() for g in gpus.list_gpus(refresh=True)]

    def machine_usage(self, owner: str | None = None) -> dict[str, Any]:
        """The machine's load over the last minutes, for the Computer tab's curves: `samples` (oldest first, one
        every monitor.INTERVAL s over monitor.WINDOW s: time, CPU %, memory used/total GiB, each GPU's
        utilisation and memory), and `jobs`: each running job with the devices it holds (GPU ids, or CPU
        processes); in hosted mode `owner`'s only; `chat`: the chat workers, each with its device and GPU (and, not
        hosted, the models it holds). The sampler starts with the first call and runs in a thread of
        this process."""
        self.monitor.start()
        running = [r for r in self.job_rows(owner=owner)  # a Slurm job's processes are on the cluster's nodes
                   if r["state"] in ACTIVE and r["runs_on"] == launch_settings.THIS_MACHINE]
        return {"samples": self.monitor.samples(), "interval_s": self.monitor.interval,
                "window_s": self.monitor.window,
                "jobs": [{"id": r["id"], "name": r["name"], "state": r["state"], "device": r["device"],
                          "gpus": r["gpus"], "processes": r["processes"], "started": r["started"]}
                         for r in running],
                "chat": [{"device": w["device"], "gpu": w["gpu"], "unloads_in_s": w["unloads_in_s"],
                          "models": [] if settings.hosted() else w["models"]} for w in self.chat_status()]}

    # --- checking a request -------------------------------------------------------
    def prepare(self, request: dict[str, Any], check_data: bool = True, owner: str | None = None) -> JobSpec:
        """Check everything and return the job's spec, or raise RequestError listing every problem.
        `check_data=False` skips loading the dataset (the memory estimate does that). In hosted mode a
        dataset file must be one of `owner`'s uploads."""
        return job_request.prepare(self.home, request, check_data, self.uploads_for(owner))

    def uploads_for(self, owner: str | None) -> Path:
        """Where a visitor's uploads are kept: in hosted mode a folder per visitor (named by a hash: no session
        id on disk), so a request can name only its own visitor's files."""
        if not settings.hosted():
            return settings.uploads_dir()
        return settings.uploads_dir() / self._visitor_folder(owner)

    @staticmethod
    def _visitor_folder(owner: str | None) -> str:
        """A visitor's folder name (uploads, presets): a hash, so no session id or login name is on disk."""
        return "visitor-" + hashlib.sha256((owner or "").encode()).hexdigest()[:16]

    def launch_preview(self, request: dict[str, Any], owner: str | None = None) -> dict[str, Any]:
        """What the form shows before Start, from one check of the request: the command and the
        memory estimate. The same checks as start_job, the dataset and templates included (a live verdict that
        passes what Start refuses is wrong); only the visitor's job cap is Start's alone."""
        spec = self.prepare(request, owner=owner)
        command = slurm.preview(spec.launch) if spec.launch.slurm else launcher.preview(spec.launch)
        return {"command": command, "memory": estimates.for_job(spec, self.home)}

    def memory_estimate(self, request: dict[str, Any], owner: str | None = None) -> dict[str, Any]:
        """GPU memory per device the job should need, next to each chosen GPU's free memory."""
        return estimates.for_job(self.prepare(request, check_data=False, owner=owner), self.home)

    def preview_data(self, dataset: Any, template: str | None = None, completion_template: str | None = None,
                     rows: int = 3, owner: str | None = None, train_type: str = "sft",
                     data_format: str | None = None) -> dict[str, Any]:
        """First rows and columns of a dataset and, if the templates fit, the rendered examples, with the templates
        a job would use: the user's, or those of the format found from the columns (`format`: id, name,
        description; `from_format`: the templates are the format's). A template or format that does not fit comes
        back as `template_error` next to the rows; `rows_checked`: how many rows the format was found from."""
        rows = inputs.whole_number("rows", rows, 1, PREVIEW_ROWS)
        try:
            spec = data.parse_spec(dataset)
            # The same rule as Start: a preview reads no server folder and no other visitor's upload.
            job_request.hosted_dataset_check(spec, self.uploads_for(owner))
            out = data.preview(spec, None, rows)
        except data.DataError as exc:
            raise RequestError([self.hide_paths(str(exc))]) from None
        out["format"] = None
        try:
            found = data.resolve(spec, template, completion_template, "grpo" if train_type == "grpo" else "sft",
                                 data_format)
            fmt, templates = found.format, found.templates
            if fmt is not None:
                out["format"] = {"id": fmt.id, "name": fmt.name, "description": fmt.description, "column": fmt.column}
            out["templates"] = {"template": templates.template, "completion_template": templates.completion_template}
            out["from_format"] = fmt is not None and not found.own
            head = found.head.rows[:rows] if found.head is not None else out["rows"]
            out["rows_checked"] = len(found.head.rows) if found.head is not None else len(out["rows"])
            templates.check(found.head.columns if found.head is not None else out["columns"])
            out["rendered"] = templates.rendered(head)  # in a render worker: never stalls this process
        except data.DataError as exc:
            out["template_error"] = self.hide_paths(str(exc))
        return out

    def dataset_format(self, dataset: Any, template: str | None = None, completion_template: str | None = None,
                       train_type: str = "sft", data_format: str | None = None,
                       owner: str | None = None) -> dict[str, Any]:
        """The dataset's format as found from its head (data_formats.detect, or `data_format` where named), for
        the page's "looks like ShareGPT: conversations -> messages": `format` (id, name, description; None when
        none fits), the templates a job would use (`templates`, `from_format`: the format's rather than the
        user's), `columns`, `rows` (None: not counted), `rows_checked`. RequestError for data that cannot be read."""
        try:
            spec = data.parse_spec(dataset)
            job_request.hosted_dataset_check(spec, self.uploads_for(owner))
            found = data.resolve(spec, template, completion_template, "grpo" if train_type == "grpo" else "sft",
                                 data_format)
        except data.DataError as exc:
            raise RequestError([self.hide_paths(str(exc))]) from None
        fmt = found.format
        return {"format": None if fmt is None else {"id": fmt.id, "name": fmt.name, "description": fmt.description,
                                                     "column": fmt.column},
                "templates": {"template": found.templates.template,
                              "completion_template": found.templates.completion_template},
                "from_format": fmt is not None and not found.own, "columns": found.head.columns,
                "rows": found.head.total, "rows_checked": len(found.head.rows)}

    def save_upload(self, path: str, owner: str | None = None) -> str:
        """Keep an uploaded dataset file in the workspace (gradio's upload cache may be cleaned; a resumed job
        needs it) and return the stored path, for the request's dataset. Allowed in hosted mode too: there,
        such a stored upload is the only dataset file a request may name."""
        try:
            if settings.hosted() and Path(path).stat().st_size > settings.hosted_max_upload_mb() * 2**20:
                raise RequestError([f"dataset: the uploaded file is over this server's cap of "
                                    f"{settings.hosted_max_upload_mb():g} MB (hosted mode)"])
            return uploads.save(path, self.uploads_for(owner))
        except OSError as exc:
            raise RequestError([f"dataset: the uploaded file {Path(path).name!r} cannot be read ({exc.strerror})"]
                               ) from None

    # --- jobs ---------------------------------------------------------------------
    def start_job(self, request: dict[str, Any], owner: str | None = None) -> dict[str, Any]:
        """Check and queue a job for `owner` (the visitor: login name or browser session); returns at once.
        Raises RequestError (nothing is created)."""
        owner = self._visitor(owner)
        self._visitor_cap(owner)  # before the slow checks: a flood is refused cheaply
        spec = self.prepare(request, owner=owner)
        choices, _ = reward_files.parse_choices(spec.params.get("custom_rewards"))
        with self._start_lock:
            self._visitor_cap(owner)
            job = self.jobs.create(spec, files=reward_files.job_files(self.home, choices),  # the job's own copies
                                   owner=owner)
        return job.as_dict()

    def _visitor_cap(self, owner: str | None) -> None:
        """Hosted mode: one visitor may have at most TLAB_HOSTED_MAX_JOBS_PER_VISITOR unfinished jobs."""
        if not settings.hosted():
            return
        cap = settings.hosted_max_jobs_per_visitor()
        if self.jobs.count(owner, ("QUEUED", *ACTIVE)) >= cap:
            raise RequestError([f"you have {cap} unfinished jobs, this server's cap per visitor "
                                "(TLAB_HOSTED_MAX_JOBS_PER_VISITOR); wait for one to end or stop one"])

    # --- ownership: in hosted mode a visitor sees and acts on their own jobs only ----------
    @staticmethod
    def _visitor(owner: str | None) -> str | None:
        if settings.hosted() and not (isinstance(owner, str) and owner):
            raise RequestError(["no visitor session: reload the page (a script: use gradio_client)"])
        return owner

    def _get(self, job_id: Any, owner: str | None) -> Job:
        """The job, if this visitor may see it. Another visitor's job (or one stored before jobs had owners)
        is answered as if it did not exist, so ids reveal nothing."""
        job_id = inputs.job_id(job_id)
        job = self.jobs.get(job_id)
        if settings.hosted() and (not owner or job.owner != owner):
            raise JobError(f"no job with id {job_id}")
        return job

    def _list_owner(self, owner: str | None) -> str | None:
        return (owner or "\0") if settings.hosted() else None  # hosted and no visitor: nobody's jobs

    # --- your own reward functions (GRPO) -----------------------------------------
    def reward_functions(self) -> dict[str, Any]:
        """The built-in rewards, and each reward file of the workspace with its functions."""
        from .rewards import SCORERS

        allowed = not settings.hosted()
        return {"builtin": list(SCORERS), "custom_allowed": allowed,
                "files": reward_files.list_files(self.home) if allowed else []}

    def save_reward_file(self, name: str, source: str | bytes) -> dict[str, Any]:
        if settings.hosted():
            raise RequestError([reward_files.HOSTED_REFUSAL])
        try:
            return reward_files.save(self.home, name, source)
        except ValueError as exc:
            raise RequestError([str(exc)]) from None

    def save_reward_upload(self, path: str) -> dict[str, Any]:
        """save_reward_file for a file uploaded through the page, named as uploaded."""
        if settings.hosted():
            raise RequestError([reward_files.HOSTED_REFUSAL])
        try:
            source = Path(path).read_bytes()
        except OSError as exc:
            raise RequestError([f"the uploaded reward file {Path(path).name!r} cannot be read ({exc.strerror})"]
                               ) from None
        return self.save_reward_file(Path(path).name, source)

    def job(self, job_id: int, owner: str | None = None) -> dict[str, Any]:
        job = self._get(job_id, owner)
        out = job.as_dict()
        out["progress"] = read_json(job.job_dir / jobfiles.PROGRESS)
        out["result"] = read_json(job.job_dir / jobfiles.RESULT)
        return out

    def job_status(self, job_id: int, owner: str | None = None) -> dict[str, Any]:
        """The API's compact status: state, step/total, percent, ETA, last metrics, exit code, error."""
        job = self._get(job_id, owner)
        progress = read_json(job.job_dir / jobfiles.PROGRESS) or {}
        last = logs.last_metrics(job.metrics_path, 1)
        error = None
        if job.state == "FAILED":
            tail = [line for line in self._log_tail(job, 30) if line.strip()]
            error = (job.reason or "failed") + ("\n" + "\n".join(tail[-15:]) if tail else "")
            error = self.hide_paths(error)
        return {
            "job_id": job.id, "name": job.name, "plugin": job.plugin, "state": job.state,
            "step": progress.get("step", 0), "total_steps": progress.get("max_steps"),
            "progress": progress.get("percent", 100.0 if job.state == "COMPLETE" else 0.0),
            "eta_s": progress.get("eta_seconds"), "world_size": progress.get("world_size"),
            "last_metrics": last[0] if last else None, "exit_code": job.exit_code,
            "reason": self._reason(job), "error": error, "attempts": job.attempts,
            "created": job.created, "started": job.started, "finished": job.finished,
            "resumable": self._resumable(job), "slurm_job_id": job.slurm_id,
        }

    def _reason(self, job: Job) -> str | None:
        """The job's reason as shown; a queued job waiting for a GPU the Chat tab's model holds says so."""
        if job.state == "QUEUED" and not job.reason and job.gpus:
            held = sorted(set(job.gpus) & self.jobs.held_gpus())
            if held:
                from .chat import idle_seconds

                return (f"waiting for GPU {', '.join(held)}, held by the Chat tab's model (Unload model there frees "
                        f"it; it unloads by itself after {idle_seconds():g} s without a message)")
        return self.hide_paths(job.reason)

    @staticmethod
    def _resumable(job: Job) -> bool:
        """Whether Resume can go on: a stopped or failed job with a complete checkpoint saved (resume_job refuses
        the others, so the page offers Resume only where this holds)."""
        return job.state in ("STOPPED", "FAILED") and last_checkpoint(job.job_dir / CHECKPOINTS) is not None

    def clone_request(self, job_id: int, owner: str | None = None) -> dict[str, Any]:
        """The request that made a job, to start it again (the UI loads it into the form)."""
        job = self._get(job_id, owner)
        request = dict(job.spec.request or {"plugin": job.plugin, "params": job.spec.params})
        request["name"] = f"{job.name} (copy)"
        return request

    def job_view(self, job_id: int, metrics_offset: int = 0, log_lines: int = 300,
                 owner: str | None = None, details: bool = True) -> dict[str, Any]:
        """One snapshot of a job for its page: the row (no paths or config), its status, the log's last
        lines, the metrics records appended since `metrics_offset` (and the offset to ask from next), and,
        with `details`, job_details' command, accelerate.yaml and files. Reads only tails."""
        job = self._get(job_id, owner)
        records, offset = logs.read_metrics(job.metrics_path, metrics_offset)
        view = {
            "job": self._row(job), "status": self.job_status(job.id, owner),
            "log": [self.hide_paths(line) for line in self._log_tail(job, log_lines)],
            "metrics": records, "metrics_offset": offset,
        }
        return {**view, **self._details(job)} if details else view

    @staticmethod
    def _log_tail(job: Job, lines: int) -> list[str]:
        """The log's last lines as the page and the API show them: a job ever ended on purpose (Stop, a limit)
        ends on the plain reason ("[tlab] stopped by the user at step 7"), without its processes' SIGTERM noise
        (torch's SignalException traceback), which the log file keeps."""
        stopped = (job.stop_requested or job.attempts > 1 or job.state in ("STOPPING", "STOPPED")
                   or (job.state == "QUEUED" and job.attempts > 0))
        return logs.shown_tail(job.log_path, lines, bool(stopped))

    def job_details(self, job_id: int, owner: str | None = None) -> dict[str, Any]:
        """What changes only with a job's state: its command and accelerate.yaml once launched, and its files
        once finished (the page asks when the state changes, not at every tick: the files are a folder walk)."""
        return self._details(self._get(job_id, owner))

    def _details(self, job: Job) -> dict[str, Any]:
        accel = job.job_dir / "accelerate.yaml"
        return {
            "command": self.hide_paths(slurm.shown(job.job_dir, job.command, job.slurm_id) if job.on_slurm
                                       else " ".join(job.command) if job.command else ""),
            "accelerate_yaml": self.hide_paths(accel.read_text() if accel.is_file() else ""),
            "files": self._files(job) if job.state in ("COMPLETE", "FAILED", "STOPPED") else [],
            "resumable": self._resumable(job),  # Resume is offered only then
        }

    def job_metrics(self, job_id: int, offset: int = 0, owner: str | None = None) -> tuple[list[dict[str, Any]], int]:
        """A job's metrics records appended since `offset`, and the offset to ask from next (a compared job)."""
        return logs.read_metrics(self._get(job_id, owner).metrics_path, offset)

    @staticmethod
    def _files(job: Job) -> list[str]:
        """The job's whole log and metrics (its page shows only the log's tail), then its output."""
        records = [p for p in (job.log_path, job.metrics_path) if p.is_file()]
        out = job.output_dir
        found = sorted(p for p in out.rglob("*") if p.is_file()) if out.is_dir() else []
        return [str(p) for p in records + found[:VIEW_FILES]]

    def _row(self, job: Job) -> dict[str, Any]:
        """What a jobs list shows of a job: no folders, no config, the processes it runs as."""
        spec = job.spec
        row = {"id": job.id, "name": job.name, "plugin": job.plugin, "state": job.state, "gpus": job.gpus,
               "device": spec.launch.device, "processes": spec.launch.total_processes,
               "reason": self._reason(job),
               "created": job.created, "started": job.started, "finished": job.finished, "attempts": job.attempts,
               "step": None, "total_steps": None,
               "runs_on": launch_settings.SLURM if job.on_slurm else launch_settings.THIS_MACHINE,
               "slurm_job_id": job.slurm_id}
        if job.started and job.state != "COMPLETE":  # where it got to: a stopped or failed job's too
            progress = read_json(job.job_dir / jobfiles.PROGRESS) or {}
            row["step"], row["total_steps"] = progress.get("step"), progress.get("max_steps")
        return row

    def job_row(self, job_id: int, owner: str | None = None) -> dict[str, Any]:
        return self._row(self._get(job_id, owner))

    def job_rows(self, limit: int = 200, owner: str | None = None) -> list[dict[str, Any]]:
        """The jobs list as the page shows it (newest first), from the store alone; hosted: the visitor's."""
        return [self._row(j) for j in self.jobs.list(limit, self._list_owner(owner))]

    # --- presets ------------------------------------------------------------------
    # In hosted mode each visitor has presets of their own (a folder named by a hash of the visitor): another
    # visitor's presets are neither listed nor loaded, overwritten or deleted, and a name says nothing of them.
    # No preset ships with the app; the workspace's shared presets (saved when not hosted) are not shown either:
    # they may name the server's folders.
    def presets_for(self, owner: str | None) -> Presets:
        if not settings.hosted():
            return self.presets
        return Presets(self.home / "presets" / self._visitor_folder(self._visitor(owner)))

    def save_preset(self, name: str, request: dict[str, Any], owner: str | None = None) -> list[str]:
        return self.presets_for(owner).save(name, request)

    def list_presets(self, owner: str | None = None) -> list[str]:
        if settings.hosted() and not owner:
            return []  # no visitor: nobody's presets
        return self.presets_for(owner).names()

    def load_preset(self, name: str, owner: str | None = None) -> dict[str, Any]:
        return self.presets_for(owner).load(name)

    def delete_preset(self, name: str, owner: str | None = None) -> list[str]:
        return self.presets_for(owner).delete(name)

    def list_jobs(self, limit: int = 200, owner: str | None = None) -> list[dict[str, Any]]:
        return [{**j.as_dict(), "reason": self.hide_paths(j.reason)}
                for j in self.jobs.list(limit, self._list_owner(owner))]

    def job_log(self, job_id: int, lines: int = 200, owner: str | None = None) -> list[str]:
        job = self._get(job_id, owner)
        lines = inputs.whole_number("lines", lines, 1, 10000)
        return [self.hide_paths(line) for line in self._log_tail(job, lines)]  # line 1: the argv

    def stop_job(self, job_id: int, owner: str | None = None) -> dict[str, Any]:
        return self.jobs.stop(self._get(job_id, owner).id).as_dict()

    def resume_job(self, job_id: int, owner: str | None = None) -> dict[str, Any]:
        job = self._get(job_id, owner)
        with self._start_lock:  # a resumed job is queued again: it counts toward the visitor's cap
            if job.state in FINISHED:
                self._visitor_cap(owner)
            return self.jobs.resume(job.id).as_dict()

    def delete_job(self, job_id: int, owner: str | None = None) -> dict[str, Any]:
        """Delete a finished job: its row in the history and its whole folder."""
        job_id = self._get(job_id, owner).id
        if settings.hosted():
            raise RequestError(["deleting jobs is turned off on this server"])
        freed = self.jobs.delete(job_id)
        return {"job_id": int(job_id), "deleted": True, "freed_mb": round(freed / 2**20, 1)}

    # --- take the model away: export (a folder and its zip) and push to the Hub (export.py) ---------------
    def export_choices(self, job_id: int, owner: str | None = None) -> list[str]:
        """What a job's Export can be made from: "final" (when it saved a final model), then its checkpoints."""
        from . import export

        return [s.label for s in export.sources(self._get(job_id, owner).job_dir)]

    def export_job(self, job_id: int, checkpoint: str | None = None, owner: str | None = None) -> dict[str, Any]:
        """A finished job's model as a folder for transformers/vLLM (LoRA merged into the base in its dtype,
        tokenizer, generation config, README.md model card) and a zip of it: {job_id, checkpoint, kind, dtype,
        archive, folder, files, card}. Merged in a subprocess (export_model.py); made again only when the
        source changed. RequestError: not finished, no model, unknown checkpoint, the merge failing."""
        from . import export

        job = self._get(job_id, owner)
        try:
            out = export.export(job.job_dir, job.id, job.name, job.state, checkpoint, hide=self.hide_paths)
        except export.ExportError as exc:
            raise RequestError([self.hide_paths(str(exc))]) from None
        return {"job_id": job.id, **out}

    def push_job(self, job_id: int, repo_id: str, token: str, checkpoint: str | None = None, private: bool = True,
                 owner: str | None = None) -> dict[str, Any]:
        """Export the job's model (as export_job) and upload the folder to the Hub repo `repo_id` (created when
        missing, private unless asked) with the user's `token`, which is used for this call only: never stored,
        logged or shown back, and blanked out of any error. Refused in hosted mode. {job_id, repo_id, url,
        commit, checkpoint}."""
        from . import export

        if settings.hosted():
            raise RequestError([export.HOSTED_PUSH_REFUSAL])
        job = self._get(job_id, owner)
        secret = token if isinstance(token, str) else ""
        try:
            repo_id = export.check_repo_id(repo_id)
            token = export.check_token(token)
            export.check_online()  # before the export: an offline machine says so at once
            if not isinstance(private, bool):
                raise export.ExportError(f"private must be true or false, got {private!r}")
            out = export.export(job.job_dir, job.id, job.name, job.state, checkpoint, hide=self.hide_paths)
            pushed = export.push(Path(out["folder"]), repo_id, token, private,
                                 f"Upload {job.name} (job {job.id}, {out['checkpoint']}) from tlab-gradio")
        except export.ExportError as exc:
            raise RequestError([export.redact(self.hide_paths(str(exc)), secret.strip())]) from None
        return {"job_id": job.id, "checkpoint": out["checkpoint"], **pushed}

    # --- evaluate: a job's model scored on its held-out rows or a dataset (evaluate.py, evaluate_model.py) -------
    def has_held_out(self, job_id: int, owner: str | None = None) -> bool:
        """Whether a job kept held-out rows (val_size or an evaluation split): what Evaluate scores when it is
        given no dataset."""
        from . import evaluate

        return evaluate.has_held_out(self._get(job_id, owner).spec.params)

    def evaluate_job(self, job_id: int, checkpoint: str | None = None, dataset: Any = None, limit: Any = None,
                     device: str | None = "auto", owner: str | None = None) -> dict[str, Any]:
        """Score a finished job's model (final or `checkpoint`) on its held-out rows, or every row of `dataset`
        (the form's dataset spec) through the job's templates; `limit`: the first N rows only. Runs the scoring
        program (evaluate_model.py) in a process of its own and returns when it is done: the saved evaluation
        (evaluations()'s summary, with its examples). On a machine with GPUs (device auto or cuda) it holds one GPU
        chosen like a job's, counted by the scheduler while it runs; auto falls back to the CPU when none is free.
        RequestError: not finished, no model, unknown checkpoint, no held-out split and no dataset, bad input."""
        from . import evaluate, gpus

        job = self._get(job_id, owner)
        label, picked, limit, device = evaluate.check(job.job_dir, job.id, job.state, job.spec, checkpoint, dataset,
                                                      limit, device, self.uploads_for(owner))
        holder, gpu = f"evaluate:{job.id}:{threading.get_ident()}", None
        if device in ("auto", "cuda"):
            found = sorted(gpus.list_gpus(refresh=True), key=lambda g: g.memory_used_mb - g.memory_total_mb)
            if found:
                gpu = self.jobs.claim_gpu(holder, [g.physical for g in found])
                if gpu is None and device == "cuda":
                    held = "; ".join(f"GPU {g}: {', '.join(who)}" for g, who in sorted(self.jobs.gpu_users().items()))
                    raise RequestError([f"no GPU is free to evaluate on ({held}); use device cpu or wait"])
            elif device == "cuda":
                raise RequestError(["device cuda: this machine has no CUDA GPU"])
            device = "cuda" if gpu is not None else "cpu"
        try:
            out = evaluate.run(evaluate.command(job.job_dir, label, picked, limit, device), gpu)
        except RequestError as exc:
            raise RequestError([self.hide_paths(p) for p in exc.problems]) from None
        finally:
            if gpu is not None:
                self.jobs.release_gpus(holder)
        found = evaluate.read(job.job_dir, out["name"])
        return self._public_evaluation(evaluate.summary(found[0] if found else out, examples=True))

    def evaluations(self, job_id: Any, examples: bool = False, owner: str | None = None) -> list[dict[str, Any]]:
        """The saved evaluations of a job (or of several: a list of ids, or "3, 5"), newest first for each job:
        {name, job_id, job_name, checkpoint, dataset_label, rows, metrics, settings, created, seconds} and, with
        `examples`, the table of examples (prompt, reference, answer, score)."""
        from . import evaluate

        out = []
        for one in evaluate.job_ids(job_id):
            job = self._get(one, owner)
            out += [self._public_evaluation(evaluate.summary(r, examples)) for r in evaluate.read(job.job_dir)]
        return out

    def compare_evaluations(self, job_ids: Any, owner: str | None = None) -> list[dict[str, Any]]:
        """Evaluations of several jobs side by side: one row each (job, evaluation, checkpoint, dataset, rows and
        the headline metrics: eval_loss, perplexity, exact_match, accuracy, eval_reward)."""
        from . import evaluate

        return evaluate.compare(self.evaluations(job_ids, owner=owner))

    def evaluated_jobs(self, owner: str | None = None) -> list[dict[str, Any]]:
        """The jobs that have saved evaluations, newest first (hosted: the visitor's): {job_id, name, evaluations}."""
        from . import evaluate

        out = []
        for job in self.jobs.list(200, self._list_owner(owner)):
            count = evaluate.count(job.job_dir)
            if count:
                out.append({"job_id": job.id, "name": job.name, "evaluations": count})
        return out

    def _public_evaluation(self, result: dict[str, Any]) -> dict[str, Any]:
        """Hosted mode: no server path in a dataset's name."""
        if settings.hosted():
            result = {**result, "dataset": json.loads(self.hide_paths(json.dumps(result.get("dataset")))),
                      "dataset_label": self.hide_paths(result.get("dataset_label"))}
        return result

    # --- chat: a model in a worker process (chat.py, chat_model.py), on a GPU the scheduler counts, or the CPU --
    @property
    def chats(self):
        """The chat workers of this workspace's app (chat.ChatManager), made at first use."""
        from . import chat

        with chat.LOCK:
            if getattr(self, "_chats", None) is None:
                self._chats = chat.ChatManager(self.home, self.jobs)
            return self._chats

    def chat_sources(self, owner: str | None = None) -> list[dict[str, Any]]:
        """The finished jobs that have a model to chat with, newest first (hosted: the visitor's): {job_id, name,
        state, checkpoints} (checkpoints: "final" when it saved one, then "checkpoint-N", as Export offers)."""
        from . import export

        out = []
        for job in self.jobs.list(200, self._list_owner(owner)):
            if job.state in FINISHED:
                labels = [s.label for s in export.sources(job.job_dir)]
                if labels:
                    out.append({"job_id": job.id, "name": job.name, "state": job.state, "checkpoints": labels})
        return out

    def chat(self, request: dict[str, Any], owner: str | None = None):
        """Stream one answer: a generator of {text (the answer so far), done, model, loading}, the last one with
        done true and tokens, first_token_s, tokens_per_s, device. The model: `job_id` (a finished job of the
        visitor's) with `checkpoint` ("final" or "checkpoint-N") or, with `base` true, the model it started from;
        else `model`: empty for the embedded model, a Hub id, a local folder or .gguf file (hosted: Hub ids
        only). The conversation and settings: chat.parse. The request is checked before this returns
        (RequestError naming every problem); a worker that fails says why, as a RequestError too."""
        from . import chat, export, models

        hosted = settings.hosted()
        if hosted:
            self._visitor(owner)  # hosted: a visitor's session, as for jobs
        messages, options, problems = chat.parse(request, hosted)
        source = key = label = None
        if isinstance(request, dict):
            model, job_id = request.get("model"), request.get("job_id")
            if model is not None and not isinstance(model, str):
                problems.append(f"`model` must be text (a Hub id, a folder or a .gguf file), got {inputs.short(model)}")
            elif job_id is not None and (model or "").strip():
                problems.append("give `job_id` (a job's model) or `model`, not both")
            elif job_id is not None:
                try:
                    job = self._get(job_id, owner)
                    if job.state not in FINISHED:
                        raise RequestError([f"job {job.id} is {job.state}: chat with its model once it has finished"])
                    checkpoint = request.get("checkpoint")
                    found = export.choose(job.job_dir, job.id, job.state, checkpoint)  # one with a model
                    if request.get("base"):
                        source = {"job_dir": str(job.job_dir), "base": True}
                        label = f"job {job.id}'s base model ({export.base_model_name(job.spec).split(' (')[0]})"
                    else:
                        source = {"job_dir": str(job.job_dir), "checkpoint": found.label}
                        label = f"job {job.id} {job.name!r} ({found.label})"
                    files = sorted(found.folder.iterdir()) if found.folder.is_dir() else []
                    key = {**source, "stamp": [(f.name, f.stat().st_mtime_ns) for f in files if f.is_file()]}
                except (RequestError, JobError, export.ExportError) as exc:
                    problems.append(self.hide_paths(str(exc).replace("no model to export", "no model to chat with")))
            else:
                text = (model or "").strip()
                try:
                    if hosted and text and not job_request.hub_id_only(text):
                        raise models.ModelError("local model folders are turned off on this server; give a Hub id "
                                                "(or nothing, for the embedded model)")
                    ref = models.resolve(text)  # a GGUF file is converted once, in a process of its own
                    source = {"model": ref.path, "embedded": ref.source == "embedded"}
                    key = source
                    label = "the embedded model" if ref.source == "embedded" else (
                        text if hosted or ref.source == "hub" else Path(text).name)
                except (models.ModelError, ValueError) as exc:
                    problems.append(self.hide_paths(str(exc)))
        try:
            device = self.chats.device_for(request.get("device") if isinstance(request, dict) else None)
        except chat.ChatError as exc:
            problems.append(str(exc))
        if problems:
            raise RequestError(problems)
        try:
            self.chats.worker(device)  # started (on a free GPU) now: no GPU free is said here, before any answer
        except chat.ChatError as exc:
            raise RequestError([self.hide_paths(str(exc))]) from None
        return self._chat_answers(source, key, label, messages, options, device)

    def _chat_answers(self, source, key, label, messages, options, device):
        from . import chat

        text = ""
        try:
            for event in self.chats.stream(source, key, messages, options, device, label):
                kind = event.get("event")
                if kind == "token":
                    text += event.get("text", "")
                    yield {"text": text, "done": False, "model": label}
                elif kind == "loading":
                    yield {"text": text, "done": False, "model": label, "loading": True}
                elif kind == "done":
                    yield {"text": text, "done": True, "model": label, "device": device,
                           **{k: event.get(k) for k in ("tokens", "first_token_s", "tokens_per_s", "seconds")}}
        except chat.ChatError as exc:
            raise RequestError([self.hide_paths(f"{label}: {exc}")]) from None

    def chat_status(self) -> list[dict[str, Any]]:
        """The chat workers running: device, GPU, models loaded, when each unloads by itself."""
        return [{**w, "models": [self.hide_paths(m) for m in w["models"]]} for w in self.chats.status()]

    def chat_unload(self) -> dict[str, Any]:
        """End the chat workers now (their GPUs go back to the job queue). Refused in hosted mode: others chat too."""
        if settings.hosted():
            raise RequestError(["unloading the chat model is turned off on this server; it unloads by itself when "
                                "nobody has chatted for a while"])
        return {"unloaded": self.chats.unload()}

    # --- sweeps: one job per combination of one or two parameters' values (sweeps.py) ---------------------
    @property
    def sweeps(self):
        """The workspace's sweep store (tables beside the jobs in jobs.sqlite), opened at first use."""
        from . import sweeps

        with _SWEEP_STORE_LOCK:
            if getattr(self, "_sweeps", None) is None:
                self._sweeps = sweeps.SweepStore(self.jobs.db_path)
            return self._sweeps

    def start_sweep(self, request: dict[str, Any], axes: Any, owner: str | None = None) -> dict[str, Any]:
        """Check every combination of `axes` (text "learning_rate=1e-4,2e-4; lora_r=8,16", or an object
        {parameter: [values]}) set in the base `request`, with Start's checks, and queue one job per combination
        under one sweep; the scheduler runs them as GPUs (or CPU slots) free. RequestError, and nothing queued,
        when any combination fails its check (each problem names the combinations it is found in), or the sweep is
        over the cap (sweeps.MAX_COMBINATIONS; hosted mode: the visitor's free job slots). Returns sweep_status."""
        from . import sweeps

        owner = self._visitor(owner)
        job_request.check_shape(request)  # a request that is no object, or a field of the wrong type: said at once
        manifest = plugin_catalog.plugin(request.get("plugin"))
        axes = sweeps.parse_axes(axes)
        known = [*manifest.parameters, *manifests.TLAB_ALIASES]
        unknown = [f"sweep: unknown parameter `{a.name}` for {manifest.name}"
                   f"{suggest(a.name, list(manifest.parameters))}" for a in axes if a.name not in known]
        if unknown:
            raise RequestError(unknown)

        def same(a: str, b: str) -> bool:  # one parameter under two names (Transformer Lab's and ours)
            return (manifests.tlab_target(manifest, a) or a) == (manifests.tlab_target(manifest, b) or b)

        combos = sweeps.combinations(request, axes, same)
        self._sweep_cap(owner, len(combos))
        specs, failed = [], []
        for combo in combos:  # Start's own checks, each combination as it would be started
            try:
                specs.append(self.prepare(combo.request, owner=owner))
            except RequestError as exc:
                failed.append((combo, [self.hide_paths(p) for p in exc.problems]))
        if failed:
            raise RequestError([f"the sweep was not started ({len(failed)} of {len(combos)} combinations failed "
                                "their check; nothing was queued)"] + sweeps.refusal(failed, len(combos)))
        metric = sweeps.ranking_metric(manifest.train_type, [s.params for s in specs])
        store = self.sweeps
        with self._start_lock:  # the visitor's count and their new jobs, together
            self._sweep_cap(owner, len(combos))
            sweep_id = store.create(sweeps.base_name(request), manifest.id, owner, axes, metric)
            made: list[int] = []
            try:
                for combo, spec in zip(combos, specs):
                    choices, _ = reward_files.parse_choices(spec.params.get("custom_rewards"))
                    job = self.jobs.create(spec, files=reward_files.job_files(self.home, choices), owner=owner)
                    made.append(job.id)
                    store.add_job(sweep_id, job.id, combo)
            except Exception:  # a full disk part-way: no half sweep runs on
                for job_id in made:
                    try:
                        self.jobs.stop(job_id, grace=0)
                    except JobError:
                        pass
                store.forget(sweep_id)
                raise
        return self.sweep_status(sweep_id, owner)

    def _sweep_cap(self, owner: str | None, count: int) -> None:
        from . import sweeps

        if count > sweeps.MAX_COMBINATIONS:
            raise RequestError([f"sweep: {count} combinations; a sweep queues at most {sweeps.MAX_COMBINATIONS} "
                                "jobs: give fewer values"])
        if not settings.hosted():
            return
        cap = settings.hosted_max_jobs_per_visitor()
        unfinished = self.jobs.count(owner, ("QUEUED", *ACTIVE))
        if unfinished + count > cap:
            raise RequestError([f"sweep: {count} combinations, and this server lets a visitor have {cap} unfinished "
                                f"jobs (TLAB_HOSTED_MAX_JOBS_PER_VISITOR; you have {unfinished}): give at most "
                                f"{max(cap - unfinished, 0)} combinations, or wait for your jobs to end"])

    def _get_sweep(self, sweep_id: Any, owner: str | None):
        """The sweep, if this visitor may see it (another visitor's is answered as if it did not exist)."""
        sweep_id = inputs.whole_number("sweep_id", sweep_id, 1, inputs.MAX_JOB_ID)
        sweep = self.sweeps.get(sweep_id)
        if sweep is None or (settings.hosted() and (not owner or sweep.owner != owner)):
            raise JobError(f"no sweep with id {sweep_id}")
        return sweep

    def sweep_status(self, sweep_id: int, owner: str | None = None) -> dict[str, Any]:
        """A sweep's state, the metric it is ranked by (and what that means: `note`), and its jobs, ranked: each
        with its combination's values, state, step, the metric's value (`metric`), `rank` (COMPLETE jobs with a
        value; None for the others) and `best`; `best`: the best job so far."""
        from . import sweeps

        sweep = self._get_sweep(sweep_id, owner)
        rows = []
        for link in sweep.jobs:
            try:
                job = self.jobs.get(link["job_id"])
            except JobError:  # deleted since: no longer part of the sweep's record
                continue
            progress = read_json(job.job_dir / jobfiles.PROGRESS) or {}
            found = sweeps.job_metric(job.metrics_path, sweep.metric)
            rows.append({"job_id": job.id, "name": job.name, "label": link["label"], "values": link["values"],
                         "position": link["position"], "state": job.state,
                         "step": progress.get("step"), "total_steps": progress.get("max_steps"),
                         "metric": found["value"], "metric_step": found["step"],
                         "reason": self.hide_paths(job.reason)})
        rows = sweeps.rank(rows, sweep.metric)
        states = [r["state"] for r in rows]
        best = next((r for r in rows if r["best"]), None)
        return {"sweep_id": sweep.id, "name": sweep.name, "plugin": sweep.plugin, "created": sweep.created,
                "state": sweeps.sweep_state(states, sweep.stopped is not None),
                "axes": [{"parameter": a.name, "values": a.values} for a in sweep.axes],
                "metric": sweep.metric.key, "higher_is_better": sweep.metric.higher,
                "held_out": sweep.metric.held_out, "note": sweep.metric.note,
                "counts": {s: states.count(s) for s in dict.fromkeys(states)},
                "jobs": rows,
                "best": None if best is None else {k: best[k] for k in ("job_id", "name", "label", "values", "metric")}}

    def stop_sweep(self, sweep_id: int, owner: str | None = None) -> dict[str, Any]:
        """Stop a sweep as a whole: its queued jobs leave the queue (STOPPED, "stopped before it started") first, so
        none starts as a running one ends, then its running jobs are stopped. Returns sweep_status, with
        `stopped`: the ids of the jobs this call stopped."""
        sweep = self._get_sweep(sweep_id, owner)
        self.sweeps.mark_stopped(sweep.id)
        stopped = []
        for wanted in (("QUEUED",), ("QUEUED", "RUNNING")):  # queued first; then anything the scheduler started
            for link in sweep.jobs:
                try:
                    job = self.jobs.get(link["job_id"])
                    if job.state in wanted:
                        self.jobs.stop(job.id)
                        stopped.append(job.id)
                except JobError:  # deleted, or ended meanwhile
                    continue
        return {**self.sweep_status(sweep.id, owner), "stopped": sorted(set(stopped))}

    def list_sweeps(self, owner: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The sweeps, newest first (hosted: the visitor's): id, name, plugin, state, metric, jobs, best."""
        owner_filter = self._list_owner(owner)
        out = []
        for sweep_id in self.sweeps.ids(owner_filter, limit):
            status = self.sweep_status(sweep_id, owner)
            out.append({k: status[k] for k in ("sweep_id", "name", "plugin", "created", "state", "metric", "held_out",
                                               "counts", "best")} | {"jobs": len(status["jobs"])})
        return out


_SWEEP_STORE_LOCK = threading.Lock()
_SERVICES: dict[Path, Service] = {}
_SERVICES_LOCK = threading.Lock()


def get_service() -> Service:
    """One Service (and so one scheduler) per workspace in this process."""
    home = settings.home()
    with _SERVICES_LOCK:
        if home not in _SERVICES:
            _SERVICES[home] = Service(home)
        return _SERVICES[home]


__all__ = ["Service", "RequestError", "JobError", "Job", "get_service", "ACTIVE", "FINISHED"]
