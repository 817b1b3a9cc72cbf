"""Take a finished job's model away: a folder ready for transformers or vLLM (a LoRA adapter merged into its
base in the base's dtype, or the fully fine-tuned model; the tokenizer; the generation config) with a model card
written from the job, a zip of it to download, and a push of it to the Hugging Face Hub.

The web process never imports torch: the weights are merged and saved by `python -m tlab_gradio.export_model
JOB_DIR OUT [--checkpoint NAME]` (export_model.py), a plain program a user can run by hand, which this module
starts as an argv list. What is read here (the job's files, its metrics, its spec) and the model card are plain
Python, shared by both.

A job's exports live in its own folder, `JOB/export/<final|checkpoint-N>/` and `JOB/export/<archive>.zip`, so
Delete frees them with the job. An export is made again only when what it was made from changed.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import settings
from .job_spec import JobSpec
from .jobfiles import CHECKPOINTS, METRICS, OUTPUT, RESULT, read_json

FINAL = "final"
EXPORT = "export"  # JOB/export/
CARD = "README.md"
STAMP = ".tlab_export.json"  # beside each exported folder, never in it (nor in its zip or on the Hub)
# What the merge program prints on its last line, for the app to read back
SUMMARY_PREFIX = "[tlab-export] "
TIMEOUT_S = 3600.0
_QUIET = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
STORED = (".safetensors", ".bin", ".pt", ".pth", ".gguf")  # zipped as they are: weights hardly compress

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class ExportError(ValueError):
    """What the user asked cannot be exported, with why (a message for the page and the API)."""


@dataclass(frozen=True)
class Source:
    """What an export is made from: the job's final adapter or model, or one of its checkpoints."""

    label: str  # "final" or "checkpoint-N"
    folder: Path
    kind: str  # "lora" (an adapter to merge into the base) or "full" (a whole model)
    step: int | None = None


def model_kind(folder: Path) -> str | None:
    """"lora" for a PEFT adapter folder, "full" for a whole model's, None for neither."""
    if (folder / "adapter_config.json").is_file():
        return "lora"
    weights = list(folder.glob("*.safetensors")) + list(folder.glob("pytorch_model*.bin"))
    if (folder / "config.json").is_file() and weights:
        return "full"
    return None


def final_source(job_dir: Path) -> Source | None:
    """The model the job saved when it finished (result.json names it), None when there is none."""
    result = read_json(job_dir / RESULT)
    if not result:
        return None
    for key in ("adaptor", "model"):  # the trained weights; a fused copy is remade here in the base's dtype
        if result.get(key):
            folder = job_dir / OUTPUT / Path(result[key]).name  # the job's own folder, wherever it is now
            kind = model_kind(folder)
            if kind:
                return Source(FINAL, folder, kind, result.get("global_step"))
    return None


def checkpoint_sources(job_dir: Path) -> list[Source]:
    """Each complete checkpoint holding a model, oldest first."""
    found = []
    for folder in (job_dir / CHECKPOINTS).glob("checkpoint-*"):
        suffix = folder.name.rsplit("-", 1)[-1]
        if suffix.isdigit() and (folder / "trainer_state.json").is_file():
            kind = model_kind(folder)
            if kind:
                found.append(Source(folder.name, folder, kind, int(suffix)))
    return sorted(found, key=lambda s: s.step)


def sources(job_dir: Path) -> list[Source]:
    """Everything of a job that can be exported: its final model first, then its checkpoints."""
    final = final_source(job_dir)
    return ([final] if final else []) + checkpoint_sources(job_dir)


def choose(job_dir: Path, job_id: int | None, state: str | None, checkpoint: str | None) -> Source:
    """The source to export (`checkpoint`: None or "final" for the final model, else "checkpoint-N"), or
    ExportError saying why there is none. `state`: the job's state (None: not known, a folder given by hand)."""
    name = f"job {job_id}" if job_id is not None else f"job folder {job_dir}"
    if state is not None and state not in ("COMPLETE", "FAILED", "STOPPED"):
        raise ExportError(f"{name} is {state}: export it once it has finished")
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise ExportError(f"checkpoint must be \"final\" or a checkpoint's name like \"checkpoint-100\", "
                          f"got {checkpoint!r}")
    label = (checkpoint or "").strip() or FINAL
    found = sources(job_dir)
    if not found:
        why = ("it saved no model" if state == "COMPLETE" or state is None else
               f"it is {state} and saved no checkpoint")
        raise ExportError(f"{name} has no model to export: {why} (nothing in its output/ or checkpoints/)")
    for source in found:
        if source.label == label:
            return source
    names = ", ".join(s.label for s in found)
    if label == FINAL:
        raise ExportError(f"{name} has no final model ({'it is ' + state if state else 'no result.json'}): "
                          f"export one of its checkpoints instead: {names}")
    raise ExportError(f"{name} has no checkpoint {label!r}; it has: {names}")


def stamp(source: Source, spec: JobSpec, variant: str = "") -> str:
    """What an export depends on: the source's files (names, sizes, times), the base model, this exporter and
    `variant` (how its card is written)."""
    parts = [source.label, source.kind, spec.model.path, _code_version(), variant]
    for path in sorted(source.folder.rglob("*")):
        if path.is_file():
            st = path.stat()
            parts.append(f"{path.relative_to(source.folder)}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def _code_version() -> str:
    here = Path(__file__).resolve().parent
    return ":".join(str((here / f).stat().st_mtime_ns) for f in ("export.py", "export_model.py"))


def archive_name(job_id: int | None, job_name: str, label: str) -> str:
    """`job-7-my-run-final`: the zip's name and the folder inside it."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", job_name or "").strip("-.")[:60] or "model"
    return f"job-{job_id}-{slug}-{label}" if job_id is not None else f"{slug}-{label}"


# --- the merge, in a process of its own -------------------------------------------------------------------
def command(job_dir: Path, out: Path, label: str) -> list[str]:
    """The argv of the program that writes the folder (also what a user runs by hand)."""
    return [sys.executable, "-m", "tlab_gradio.export_model", str(job_dir), str(out), "--checkpoint", label]


def run(job_dir: Path, out: Path, label: str) -> dict[str, Any]:
    """Run the merge program into `out`; its summary (kind, dtype, files). ExportError with the program's own
    last lines when it fails."""
    argv = command(job_dir, out, label)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, cwd=settings.REPO_DIR,
                              env={**os.environ, **_QUIET}, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ExportError(f"exporting {label} took longer than {TIMEOUT_S:.0f} s and was stopped") from None
    if done.returncode:
        lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
        raise ExportError(f"exporting {label} failed:\n" + "\n".join(lines[-8:]))
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(SUMMARY_PREFIX):
            return json.loads(line[len(SUMMARY_PREFIX):])
    return {}


def export(job_dir: Path, job_id: int | None, job_name: str, state: str | None, checkpoint: str | None = None,
           hide: Callable[[str], str] = lambda text: text) -> dict[str, Any]:
    """Export a job's model (made again only when its source changed): `folder` (the model folder), `archive`
    (its zip), `checkpoint` (the label), `kind`, `card` (the model card's text). `hide` rewrites the card's text
    (hosted mode: no server path in it)."""
    job_dir = Path(job_dir)
    source = choose(job_dir, job_id, state, checkpoint)
    spec = JobSpec.read(job_dir)
    root = job_dir / EXPORT
    folder = root / source.label
    name = archive_name(job_id, job_name, source.label)
    zip_path = root / f"{name}.zip"
    with _lock(str(folder)):
        key = stamp(source, spec, hide(str(job_dir)))  # hosted or not: the card's paths differ
        stamp_path = root / f".{source.label}{STAMP}"
        kept = read_json(stamp_path) or {}
        if not (kept.get("stamp") == key and (folder / "config.json").is_file() and zip_path.is_file()
                and kept.get("archive") == zip_path.name):
            root.mkdir(parents=True, exist_ok=True)
            stamp_path.unlink(missing_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{source.label}-", dir=root))
            try:
                summary = run(job_dir, tmp, source.label)
                card = tmp / CARD
                card.write_text(hide(card.read_text()))
                tmp.chmod(0o755)
                if folder.exists():
                    shutil.rmtree(folder)
                os.rename(tmp, folder)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            for old in root.glob(f"*-{source.label}.zip"):  # a renamed job's older archive
                old.unlink(missing_ok=True)
            make_zip(folder, zip_path, name)
            stamp_path.write_text(json.dumps({"stamp": key, "archive": zip_path.name, **summary}))
            kept = read_json(stamp_path) or {}
    return {"checkpoint": source.label, "kind": source.kind, "step": source.step, "folder": str(folder),
            "archive": str(zip_path), "dtype": kept.get("dtype"), "card": (folder / CARD).read_text(),
            "files": sorted(p.name for p in folder.iterdir() if p.is_file())}


def make_zip(folder: Path, dest: Path, inner: str) -> None:
    """The folder as one zip (its files under `inner/`), whole or absent: written aside, then renamed."""
    part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    with zipfile.ZipFile(part, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                method = zipfile.ZIP_STORED if path.suffix in STORED else zipfile.ZIP_DEFLATED
                zf.write(path, f"{inner}/{path.relative_to(folder)}", compress_type=method)
    os.replace(part, dest)


def _lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


# --- the model card --------------------------------------------------------------------------------------
def read_metrics(job_dir: Path) -> list[dict[str, Any]]:
    records = []
    try:
        lines = (job_dir / METRICS).read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def metric_summary(records: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(final training metrics, evaluation metrics): each metric's last logged value. Evaluation metrics are the
    ones named eval_* or eval/* (the trainer's held-out evaluation)."""
    final: dict[str, Any] = {}
    evals: dict[str, Any] = {}
    skip = {"time", "world_size", "epoch", "total_flos"}
    for record in records:
        for key, value in record.items():
            if key in skip or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if key.startswith(("eval_", "eval/")):
                evals[key] = value
                evals["step"] = record.get("step")
            elif key != "step":
                final[key] = value
                final["step"] = record.get("step")
    return final, evals


def base_model_name(spec: JobSpec) -> str:
    """How the card names the base model: the embedded model, the GGUF file or folder given, or the Hub id."""
    from . import tiny_model

    asked = (spec.request or {}).get("model")
    if spec.model.embedded:
        return f"{tiny_model.NAME} (the app's embedded tiny Llama, built in code)"
    if spec.model.source == "hub":
        return spec.model.path
    # a local folder or file by its name: the card may go to the Hub, the machine's folders need not
    given = Path(asked.strip() if isinstance(asked, str) and asked.strip() else spec.model.path)
    if given.suffix.lower() == ".gguf":
        return f"{given.name} (a GGUF file, dequantised)"
    return f"{given.name} (a local model folder)"


def _yaml_list(key: str, values: list[str]) -> list[str]:
    return [f"{key}:"] + [f"- {json.dumps(v)}" for v in values] if values else []


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value) if not isinstance(value, str) else value


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def model_card(job_dir: Path, spec: JobSpec, source: Source, dtype: str, files: list[str] | None = None) -> str:
    """README.md of the exported folder, from the job alone: base model, data, parameters, final and
    evaluation metrics, the command, the date."""
    job_dir = Path(job_dir)
    result = read_json(job_dir / RESULT) or {}
    final, evals = metric_summary(read_metrics(job_dir))
    lora = source.kind == "lora"
    hub_base = spec.model.path if spec.model.source == "hub" else None
    dataset = spec.data.dataset or {}
    hub_data = dataset.get("name") if dataset.get("source") == "hub" else None
    train_type = spec.train_type or ("grpo" if "grpo" in spec.plugin else "sft")
    front = (["---", "library_name: transformers", "pipeline_tag: text-generation"]
             + ([f"base_model: {json.dumps(hub_base)}"] if hub_base else [])
             + _yaml_list("tags", ["tlab-gradio", "trl", train_type] + (["lora", "merged"] if lora else []))
             + (_yaml_list("datasets", [hub_data]) if hub_data else []) + ["---", ""])
    now = datetime.datetime.now(datetime.timezone.utc)
    finished = result.get("finished")
    trained = (datetime.datetime.fromtimestamp(finished, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
               if isinstance(finished, (int, float)) else "not finished")
    what = (f"a LoRA adapter merged into the base model (PEFT `merge_and_unload`), saved in the base's dtype "
            f"({dtype})" if lora else f"the fully fine-tuned model, saved in the base model's dtype ({dtype})")
    lines = front + [
        f"# {spec.name or 'Fine-tuned model'}", "",
        f"Fine-tuned with tlab-gradio ({spec.plugin}, job {spec.job_id}): {what}. "
        f"Load it with `AutoModelForCausalLM.from_pretrained` or serve it with vLLM.", "",
        "| | |", "| --- | --- |",
        f"| base model | {_cell(base_model_name(spec))} |",
        f"| architecture | {_cell(spec.model.architecture or '')} |",
        f"| plugin | {_cell(spec.plugin)} ({train_type}) |",
        f"| exported from | {'the final model' if source.label == FINAL else source.label}"
        f"{f' (step {source.step})' if source.step is not None else ''} |",
        f"| trained | {trained}, {result.get('world_size') or spec.launch.total_processes} process(es) on "
        f"{spec.launch.device}{' GPUs ' + ','.join(spec.launch.gpu_ids) if spec.launch.gpu_ids else ''} |",
        f"| exported | {now.strftime('%Y-%m-%d %H:%M UTC')} |", "",
        "## Data", "",
        f"- dataset: `{json.dumps(dataset, sort_keys=True)}`",
    ]
    if spec.data.info.get("rows") is not None:
        lines.append(f"- rows: {spec.data.info['rows']}")
    if spec.data.template:
        lines += ["- template:", "", "```jinja", spec.data.template, "```"]
    if spec.data.completion_template:
        lines += ["- completion template:", "", "```jinja", spec.data.completion_template, "```"]
    lines += ["", "## Parameters", "", "| parameter | value |", "| --- | --- |"]
    lines += [f"| {_cell(k)} | {_cell(json.dumps(v))} |" for k, v in sorted(spec.params.items())]
    lines += ["", "## Final metrics", ""]
    if result.get("global_step") is not None:
        lines.append(f"- steps: {result['global_step']}")
    if result.get("train_loss") is not None:
        lines.append(f"- train_loss (mean over the run): {_number(result['train_loss'])}")
    lines += [f"- {k}: {_number(v)}" for k, v in final.items()
              if k != "step" and not (k == "train_loss" and result.get("train_loss") is not None)]
    if final.get("step") is not None:
        lines.append(f"- (last logged at step {final['step']})")
    if not final and not result:
        lines.append("No metrics were logged.")
    lines += ["", "## Evaluation metrics", ""]
    if evals:
        lines += [f"- {k}: {_number(v)}" for k, v in evals.items() if k != "step"]
        if evals.get("step") is not None:
            lines.append(f"- (at step {evals['step']})")
    else:
        lines.append("No held-out evaluation was logged.")
    cmd = job_dir / "command.txt"
    if cmd.is_file():
        lines += ["", "## Command", "", "The job ran:", "", "```bash", cmd.read_text().strip(), "```"]
    if files:
        lines += ["", "## Files", "", ", ".join(f"`{f}`" for f in files)]
    return "\n".join(lines) + "\n"


# --- the Hugging Face Hub ----------------------------------------------------------------------------------
HOSTED_PUSH_REFUSAL = ("pushing to the Hugging Face Hub is turned off on this server (hosted mode): "
                       "export the model and download it instead")
UNREACHABLE = "could not reach the Hugging Face Hub"


def check_repo_id(repo_id: Any) -> str:
    """A Hub model repo id (`name` or `namespace/name`), or ExportError saying what is wrong with it."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str) or not repo_id.strip():
        raise ExportError("repo id: give the Hub repo to push to, like your-name/my-model")
    repo_id = repo_id.strip()
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        why = str(exc).splitlines()[0].split(": '")[0]  # without the id again
        shown = repo_id if len(repo_id) <= 100 else repo_id[:100] + "…"
        raise ExportError(f"repo id {shown!r} is not a valid Hub repo id (like your-name/my-model): {why}") from None
    return repo_id


def check_token(token: Any) -> str:
    if not isinstance(token, str) or not token.strip():
        raise ExportError("a Hugging Face token is needed to push: a write token from "
                          "https://huggingface.co/settings/tokens")
    token = token.strip()
    if any(c.isspace() for c in token) or not token.isprintable():
        raise ExportError("the Hugging Face token has spaces or control characters in it: paste it again")
    if len(token) < 8:  # Hub tokens are hf_ and 34 more; a short one would also be blanked out of words in errors
        raise ExportError("the Hugging Face token is too short to be one: paste the whole token (hf_…)")
    return token


def redact(text: str, token: str) -> str:
    """The message with the token (and any bearer header) blanked out."""
    text = text.replace(token, "hf_***") if token else text
    return re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)


def check_online() -> None:
    """huggingface_hub reads HF_HUB_OFFLINE once, at its import; this reads it now (settings are read at call
    time)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ExportError(f"{UNREACHABLE}: offline mode is on (HF_HUB_OFFLINE is set); unset it to push")


def push(folder: Path, repo_id: str, token: str, private: bool = True, message: str = "") -> dict[str, Any]:
    """Create the repo (if it does not exist) and upload the exported folder; {repo_id, url, commit}. The token
    is used for these calls only: it is not saved (no login), and every error message comes back without it
    (ExportError: unreachable Hub, offline mode, a refused token, a repo that is not yours)."""
    check_online()
    from huggingface_hub import HfApi

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token, library_name="tlab-gradio")
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(folder_path=str(folder), repo_id=url.repo_id, repo_type="model",
                                   commit_message=message or "Upload model exported by tlab-gradio")
    except Exception as exc:  # noqa: BLE001 - each way the Hub can fail is said in words, never with the token
        raise ExportError(redact(hub_failure(exc), token)) from None
    return {"repo_id": url.repo_id, "url": str(url), "commit": getattr(commit, "commit_url", None) or str(commit)}


def hub_failure(exc: Exception) -> str:
    """What went wrong talking to the Hub, in words."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, OfflineModeIsEnabled):
        return f"{UNREACHABLE}: offline mode is on (HF_HUB_OFFLINE is set); unset it to push"
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 401:
            return "the Hugging Face Hub refused the token (401): check it, and that it is a write token"
        if status == 403:
            return (f"the Hugging Face Hub refused the push (403): the token may not write to this repo or "
                    f"namespace ({detail})")
        return f"the Hugging Face Hub answered with an error{f' ({status})' if status else ''}: {detail}"
    if isinstance(exc, (ConnectionError, OSError, TimeoutError)) or "Connect" in type(exc).__name__ \
            or "Timeout" in type(exc).__name__ or "Network" in type(exc).__name__:
        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        return f"{UNREACHABLE} ({endpoint}): {type(exc).__name__}: {detail}"
    return f"pushing to the Hugging Face Hub failed: {type(exc).__name__}: {detail}"
