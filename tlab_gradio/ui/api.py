"""The automation API: named endpoints for gradio_client, over the same Service the page uses.

    from gradio_client import Client
    c = Client("http://127.0.0.1:7860/")
    job = c.predict({"plugin": "llama_sft_multi_gpu", "device": "cpu"}, api_name="/start_job")
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from .. import settings
from ..service import Service
from .chat_tab import checked_stream
from .common import checked, visitor
from .jobs_view import offered

HIDDEN_PATH_KEYS = ("job_dir", "output_dir", "command", "config", "pid")


def _public(job: dict[str, Any]) -> dict[str, Any]:
    """In hosted mode the server's paths are not shown."""
    if not settings.hosted():
        return job
    return {k: v for k, v in job.items() if k not in HIDDEN_PATH_KEYS}


def job_summary(job: dict[str, Any]) -> dict[str, Any]:
    return _public({
        "job_id": job["id"], "name": job["name"], "plugin": job["plugin"], "state": job["state"],
        "gpus": job["gpus"], "created": job["created"], "started": job["started"], "finished": job["finished"],
        "reason": job["reason"], "job_dir": job["job_dir"], "slurm_job_id": job.get("slurm_id"),
    })


def register(svc: Service) -> None:
    """Define the endpoints inside the current gr.Blocks."""

    @checked
    def list_plugins() -> list[dict]:
        """Every plugin: id, name, ready, reason (why not ready), parameters (type, default, limits, help),
        parameter_groups (the config form's sections: title, open, parameters); origin (app or transformerlab),
        runnable / not_runnable (a Transformer Lab manifest this app cannot start, and why), notes."""
        return [
            {k: p.get(k) for k in ("id", "name", "train_type", "description", "devices", "multi_gpu",
                                   "ready", "reason", "parameters", "parameter_groups", "origin", "runnable",
                                   "not_runnable", "notes")}
            for p in svc.plugin_list()
        ]

    @checked
    def start_job(request: dict, visit: gr.Request) -> dict:
        """Start a training job. request: {plugin, name, model, dataset, template, completion_template,
        device, gpu_ids, cpu_processes, params}. Omitted fields take the manifest's defaults, the
        embedded model and the plugin's sample dataset. GRPO plugins take your own reward functions in
        params.custom_rewards: [{"function": "myrewards.py:brevity", "weight": 1.0}]. Returns {job_id, state}."""
        job = svc.start_job(request, visitor(visit))  # a request that is no object is refused there, saying so
        return {"job_id": job["id"], "state": job["state"], "name": job["name"]}

    @checked
    def check_job(request: dict, visit: gr.Request) -> dict:
        """Start's checks without starting (the form's live check): {command, memory} (the estimate: GiB per
        device, the plan, time per step, disk), or an error listing every problem. Same request as /start_job."""
        out = svc.launch_preview(request, visitor(visit))
        return {"command": svc.hide_paths(out["command"]), "memory": out["memory"]}

    @checked
    def dataset_format(dataset: str | dict, template: str | None = None, completion_template: str | None = None,
                       train_type: str = "sft", data_format: str | None = None, visit: gr.Request = None) -> dict:
        """The dataset's format as found from its first rows (or `data_format`, e.g. sharegpt, messages:chat):
        {format: {id, name, description, column}, templates: {template, completion_template} (what a job with
        these templates would use), from_format, columns, rows (None: not counted), rows_checked}."""
        return svc.dataset_format(dataset, template, completion_template, train_type, data_format, visitor(visit))

    @checked
    def job_status(job_id: int, visit: gr.Request) -> dict:
        """{state, step, total_steps, progress (percent), eta_s, last_metrics, exit_code, error, ...}"""
        return svc.job_status(job_id, visitor(visit))

    @checked
    def job_log(job_id: int, lines: int = 100, visit: gr.Request = None) -> str:
        """The last `lines` lines of the job's log (stdout and stderr of every rank)."""
        return "\n".join(svc.job_log(job_id, 100 if lines is None else lines, visitor(visit)))

    @checked
    def stop_job(job_id: int, visit: gr.Request) -> dict:
        """Stop every process of the job. Returns {state}: STOPPING at once, STOPPED when they are gone."""
        job = svc.stop_job(job_id, visitor(visit))
        return {"job_id": job["id"], "state": job["state"]}

    @checked
    def resume_job(job_id: int, visit: gr.Request) -> dict:
        """Resume a stopped or failed job from its last checkpoint. Returns {job_id, state}."""
        job = svc.resume_job(job_id, visitor(visit))
        return {"job_id": job["id"], "state": job["state"]}

    @checked
    def delete_job(job_id: int, visit: gr.Request) -> dict:
        """Delete a finished job (COMPLETE, FAILED or STOPPED): its history entry and its folder, checkpoints
        and output included. Returns {job_id, deleted, freed_mb}; a running job must be stopped first."""
        return svc.delete_job(job_id, visitor(visit))

    @checked
    def list_jobs(visit: gr.Request) -> list[dict]:
        """Every job, newest first: job_id, name, plugin, state, gpus, created, started, finished, reason."""
        return [job_summary(j) for j in svc.list_jobs(owner=visitor(visit))]  # hosted: the visitor's own

    @checked
    def gpu_info() -> list[dict]:
        """Each GPU: index, name, memory used/total (MB), utilisation %, temperature C, power W."""
        return [{k: v for k, v in g.items() if k != "physical"} for g in svc.gpu_info()]

    @checked
    def install_plugin(plugin_id: str) -> dict:
        """Install what a not-ready plugin needs (pip, in its own environment where it has one).
        Returns {plugin_id, ready, reasons, output}; a failed install is an error saying why."""
        from ..installer import InstallError

        lines: list[str] = []
        try:
            for line in svc.install_plugin(plugin_id):
                lines.append(line)
        except InstallError as exc:
            raise gr.Error(f"install failed: {exc}\n" + "\n".join(lines[-20:]), print_exception=False) from None
        row = next(p for p in svc.plugin_list() if p["id"] == plugin_id)
        return {"plugin_id": plugin_id, "ready": row["ready"], "reasons": row["reasons"], "output": "\n".join(lines)}

    @checked
    def list_rewards() -> dict:
        """GRPO's reward functions: {builtin: [names], files: [{file, functions, error}], custom_allowed}.
        A job names a file's function as "file.py:function" in params.custom_rewards."""
        return svc.reward_functions()

    @checked
    def upload_reward_file(file_name: str, source: str) -> dict:
        """Add (or replace) a Python file of reward functions, `def f(prompts, completions, **kwargs) ->
        list[float]`, in the workspace's rewards folder. Returns {file, functions}; off in hosted mode."""
        return svc.save_reward_file(file_name, source)

    @checked
    def export_job(job_id: int, checkpoint: str = "final", visit: gr.Request = None) -> dict:
        """Export a finished job's model as a folder for transformers/vLLM (a LoRA adapter merged into its base in
        the base's dtype, or the full model; tokenizer; generation config; README.md model card from the job) and
        download it: {job_id, checkpoint, kind, dtype, files, card, file} (`file`: the folder as a zip).
        checkpoint: "final" (default) or a checkpoint's name, like "checkpoint-100"."""
        out = svc.export_job(job_id, checkpoint or "final", visitor(visit))
        archive = offered([out["archive"]], settings.hosted())[0]  # hosted: a private copy, the jobs are not served
        keep = ("job_id", "checkpoint", "kind", "step", "dtype", "files", "card") + (
            () if settings.hosted() else ("folder",))
        return {**{k: out[k] for k in keep},
                "file": {"path": archive, "orig_name": Path(out["archive"]).name, "meta": {"_type": "gradio.FileData"}}}

    @checked
    def push_job(job_id: int, repo_id: str, token: str, checkpoint: str = "final", private: bool = True,
                 visit: gr.Request = None) -> dict:
        """Export the job's model (as /export_job) and push it to the Hugging Face Hub repo `repo_id` (created if
        missing; private unless private is false) with your write token, which is used for this call only: never
        stored or shown back. Returns {job_id, repo_id, url, commit, checkpoint}; off in hosted mode."""
        return svc.push_job(job_id, repo_id, token, checkpoint or "final", private, visitor(visit))

    @checked
    def evaluate_job(job_id: int, checkpoint: str = "final", dataset: str | dict | None = None, limit: int = 0,
                     device: str = "auto", visit: gr.Request = None) -> dict:
        """Score a finished job's model (checkpoint: "final" or "checkpoint-N") on its held-out rows (val_size or
        eval_split, the rows its trainer held out), or on every row of `dataset` (a sample name, a Hub id, a file
        path, or {source, name, subset, split}) through the job's templates; limit: the first N rows (0: all);
        device: auto, cpu, cuda. Greedy and seeded: the same model and rows give the same scores. Returns when done:
        {name, job_id, checkpoint, dataset_label, rows, metrics (SFT: eval_loss, perplexity, exact_match; GRPO:
        accuracy, eval_reward, rewards/<name>), settings, seconds, examples: [{prompt, reference, answer, score}]},
        also saved in the job's folder (evaluations/<name>.json)."""
        return svc.evaluate_job(job_id, checkpoint or "final", dataset, limit or None, device or "auto",
                                visitor(visit))

    @checked
    def job_evaluations(job_id: int | str | list, examples: bool = False, visit: gr.Request = None) -> list[dict]:
        """The saved evaluations of a job, or of several side by side (a list of ids, or "3, 5"), newest first for
        each job: {name, job_id, job_name, checkpoint, dataset_label, rows, metrics, settings, created, seconds} and,
        with examples true, each one's table of examples."""
        return svc.evaluations(job_id, bool(examples), visitor(visit))

    @checked_stream
    def chat(request: dict, visit: gr.Request) -> Iterator[dict]:
        """Stream a model's answer: yields {text (the answer so far), done, model} as tokens come, the last with
        done true and tokens, first_token_s, tokens_per_s, device. request: {prompt} or {messages: [{role, content}]}
        ending on the user's turn; system_prompt, temperature (0-2, 0: greedy; default 0.7), top_p (0.9),
        max_new_tokens (256); the model: job_id (a finished job) with checkpoint ("final" or "checkpoint-N") or
        base true (the model it started from), else model (empty: the embedded model; a Hub id, a local folder or
        a .gguf file); device (auto, cpu, cuda)."""
        yield from svc.chat(request, visitor(visit))

    gr.api(chat, api_name="chat", api_description=chat.__doc__)

    for fn in (list_plugins, check_job, start_job, job_status, job_log, stop_job, resume_job, delete_job, list_jobs,
               gpu_info, install_plugin, list_rewards, upload_reward_file, export_job, push_job, dataset_format, evaluate_job,
               job_evaluations):
        gr.api(fn, api_name=fn.__name__, api_description=fn.__doc__)


def register_sweeps(svc: Service) -> None:
    """The sweep endpoints (one job per combination of one or two parameters' values), inside the current gr.Blocks."""

    @checked
    def start_sweep(request: dict, axes: str | dict, visit: gr.Request) -> dict:
        """Start a sweep: the base `request` (as /start_job takes it) with one or two parameters given several
        values, as text "learning_rate=1e-4,2e-4; lora_r=8,16" or an object {"learning_rate": [1e-4, 2e-4],
        "lora_r": [8, 16]}. Every combination is checked as /start_job checks a request; one failing refuses the
        whole sweep (each problem names its combinations) and nothing is queued. At most 16 combinations. Returns
        /sweep_status's answer."""
        return _public_sweep(svc.start_sweep(request, axes, visitor(visit)))

    @checked
    def sweep_status(sweep_id: int, visit: gr.Request) -> dict:
        """{sweep_id, name, state, axes, metric (eval_loss, eval_reward; loss or reward without a held-out split),
        higher_is_better, held_out, note, counts, jobs: [{job_id, name, label, values, state, step, total_steps,
        metric, rank, best}] ranked (the COMPLETE ones; best first), best: {job_id, name, label, values, metric}}."""
        return _public_sweep(svc.sweep_status(sweep_id, visitor(visit)))

    @checked
    def stop_sweep(sweep_id: int, visit: gr.Request) -> dict:
        """Stop a sweep as a whole: its queued jobs are taken off the queue, its running ones stopped. Returns
        /sweep_status's answer with `stopped`: the job ids stopped."""
        return _public_sweep(svc.stop_sweep(sweep_id, visitor(visit)))

    @checked
    def list_sweeps(visit: gr.Request) -> list[dict]:
        """Every sweep, newest first: sweep_id, name, plugin, created, state, metric, held_out, counts, jobs, best."""
        return svc.list_sweeps(visitor(visit))

    for fn in (start_sweep, sweep_status, stop_sweep, list_sweeps):
        gr.api(fn, api_name=fn.__name__, api_description=fn.__doc__)


def _public_sweep(status: dict[str, Any]) -> dict[str, Any]:
    """A sweep's status without the page's bookkeeping (each job's position in the combination order)."""
    return {**status, "jobs": [{k: v for k, v in job.items() if k != "position"} for job in status["jobs"]]}
