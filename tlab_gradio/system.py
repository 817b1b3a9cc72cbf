"""What the Computer tab shows besides the GPUs: CPU, memory, disk, library versions.

Versions are read from package metadata, so the web process learns torch's version
(and its CUDA build) without importing torch.
"""
from __future__ import annotations

import os
import platform
import shutil
from importlib import metadata
from pathlib import Path

LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "gradio", "bitsandbytes", "unsloth")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gb() -> tuple[float | None, float | None]:
    """(total, available) RAM in GiB from /proc/meminfo (Linux), else psutil if present."""
    try:
        info = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0]) * 1024
        return info["MemTotal"] / 2**30, info["MemAvailable"] / 2**30
    except (OSError, KeyError, ValueError):
        try:
            import psutil

            vm = psutil.virtual_memory()
            return vm.total / 2**30, vm.available / 2**30
        except ImportError:
            return None, None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def torch_cuda(torch_version: str | None) -> str:
    """torch's build from its version label: 2.13.0+cu130 -> CUDA 13.0; +cpu -> CPU only."""
    if not torch_version:
        return "not installed"
    label = torch_version.partition("+")[2]
    if label.startswith("cu") and label[2:].isdigit():
        digits = label[2:]
        return f"CUDA {digits[:-1]}.{digits[-1]}"
    if label == "cpu":
        return "CPU only"
    if label.startswith("rocm"):
        return f"ROCm {label[4:]}"
    return "CUDA (default build)" if platform.system() == "Linux" else "default build"


def info(workspace: Path) -> dict:
    total, available = memory_gb()
    disk = shutil.disk_usage(workspace)
    libs = versions()
    return {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "ram_total_gb": total,
        "ram_available_gb": available,
        "disk_free_gb": disk.free / 2**30,
        "disk_total_gb": disk.total / 2**30,
        "platform": platform.platform(),
        "versions": libs,
        "torch_build": torch_cuda(libs.get("torch")),
    }
