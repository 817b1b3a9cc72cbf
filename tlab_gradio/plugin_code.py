"""A plugin's code is its trainer module (trainers/sft.py, grpo.py, unsloth_grpo.py): `main()` that trains,
and beside it what the app asks of the plugin before launch, found here through the manifest's `trainer`:

    check(p, placement) -> list[str]   its own checks of the parameters against each other and the machine
                                       (Service.prepare runs them before anything is launched)
    trains_lora(p) -> bool             whether the job trains a LoRA adapter (the memory estimate)

A module without one of them gets the neutral answer (no problems; the whole model). Trainer modules keep
their heavy imports (torch, transformers, TRL, Unsloth) inside `main()`, so importing one here costs
milliseconds and never loads a training stack into the web process.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from .gpus import Placement

Check = Callable[[dict, Placement], list[str]]


def _none(p: dict, placement: Placement) -> list[str]:
    return []


def module(path: Path):
    """The trainer module (manifests name a file in tlab_gradio/trainers/), imported once."""
    return importlib.import_module(f"tlab_gradio.trainers.{Path(path).stem}")


def check(path: Path) -> Check:
    return getattr(module(path), "check", _none)


def trains_lora(path: Path, p: dict) -> bool:
    hook = getattr(module(path), "trains_lora", None)
    return bool(hook(p)) if hook else False
