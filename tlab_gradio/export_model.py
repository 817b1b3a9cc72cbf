"""Write a job's model as a folder ready for transformers and vLLM, with a model card.

    python -m tlab_gradio.export_model JOB_DIR OUT [--checkpoint final|checkpoint-N]

A LoRA adapter is merged into a fresh copy of its base (PEFT's merge_and_unload) loaded in the base's own dtype
(its config.json's); a fully fine-tuned model is saved in that dtype too. The tokenizer comes from the job's
saved model (or the base), the generation config from the base (its end-of-turn tokens, sampling defaults).
README.md is the model card (tlab_gradio/export.py writes it from the job folder).

The app runs this as a subprocess (the web process never imports torch); it needs nothing from the app.
Its last line of output is a JSON summary after "[tlab-export] ".
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a plain script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tlab_gradio import export  # noqa: E402
from tlab_gradio.job_spec import JobSpec  # noqa: E402

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def base_path(spec: JobSpec) -> str:
    """The base model as the job trained it: the embedded model (built again if the workspace lost it), a
    local folder (a GGUF file's converted folder included) or a Hub id."""
    if spec.model.embedded:
        from tlab_gradio import tiny_model

        return str(tiny_model.ensure(Path(spec.model.path)))
    asked = (spec.request or {}).get("model")
    if spec.model.source == "local" and not Path(spec.model.path).is_dir() and isinstance(asked, str):
        from tlab_gradio import gguf_model

        if gguf_model.is_gguf(Path(asked)) and Path(asked).is_file():  # its converted folder was cleaned away
            return str(gguf_model.ensure(Path(asked)))
    return spec.model.path


def base_dtype(path: str, spec: JobSpec):
    """The base model's own dtype, from its config.json (float32 when it names none)."""
    import torch

    config = spec.model.config or {}
    local = Path(path) / "config.json"
    if local.is_file():
        config = json.loads(local.read_text())
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    dtype = getattr(torch, str(name).replace("torch.", ""), None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def write(job_dir: Path, out: Path, checkpoint: str | None) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    job_dir = job_dir.resolve()
    spec = JobSpec.read(job_dir)
    source = export.choose(job_dir, spec.job_id, None, checkpoint)
    base = base_path(spec)
    dtype = base_dtype(base, spec)
    if source.kind == "lora":
        from peft import PeftModel

        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        model = PeftModel.from_pretrained(model, str(source.folder)).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(source.folder), dtype=dtype)
    try:
        model.generation_config = GenerationConfig.from_pretrained(base)
    except OSError:
        pass  # the base has none: the model's own (from its config) stays
    model.config.dtype = dtype
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    has_tokenizer = any((source.folder / f).is_file() for f in TOKENIZER_FILES)
    AutoTokenizer.from_pretrained(str(source.folder) if has_tokenizer else base).save_pretrained(out)
    dtype_name = str(dtype).replace("torch.", "")
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    (out / export.CARD).write_text(export.model_card(job_dir, spec, source, dtype_name, files + [export.CARD]))
    return {"checkpoint": source.label, "kind": source.kind, "dtype": dtype_name, "base": base,
            "files": sorted(p.name for p in out.iterdir() if p.is_file())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tlab_gradio.export_model", description=__doc__.splitlines()[0])
    parser.add_argument("job_dir", type=Path, help="the job folder (holding config.json, output/, checkpoints/)")
    parser.add_argument("out", type=Path, help="the folder to write (created; files in it are replaced)")
    parser.add_argument("--checkpoint", default=export.FINAL,
                        help='"final" (the model the job saved at its end, the default) or a checkpoint\'s name')
    args = parser.parse_args(argv)
    try:
        summary = write(args.job_dir, args.out, args.checkpoint)
    except export.ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(export.SUMMARY_PREFIX + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
