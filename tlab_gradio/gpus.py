"""The GPUs this machine shows, and a job's device / gpu_ids checked against them.

GPU IDs that users type are CUDA indexes as the app sees them: when the app was
started with CUDA_VISIBLE_DEVICES=2,3, `0` means physical GPU 2. The launcher
passes the physical IDs to accelerate, which sets CUDA_VISIBLE_DEVICES for the
job, so a subset never silently becomes all GPUs.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class GPU:
    index: int  # as the app sees it (after CUDA_VISIBLE_DEVICES)
    physical: str  # what goes into the job's CUDA_VISIBLE_DEVICES: an index or a UUID
    name: str
    memory_total_mb: int
    memory_used_mb: int
    utilization_pct: int | None
    temperature_c: int | None
    compute_capability: tuple[int, int] | None
    power_w: float | None = None
    power_limit_w: float | None = None

    @property
    def supports_bf16(self) -> bool:
        return bool(self.compute_capability and self.compute_capability >= (8, 0))

    def as_dict(self) -> dict:
        return asdict(self)


def _visible_filter(entries: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Keep, in order, the (physical index, uuid) pairs CUDA_VISIBLE_DEVICES names."""
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mask is None:
        return entries
    chosen = []
    for token in (t.strip() for t in mask.split(",")):
        if not token:
            continue
        match = [e for e in entries if (token.isdigit() and e[0] == int(token)) or e[1].startswith(token)]
        if not match:
            break  # CUDA stops at the first invalid entry
        chosen.append(match[0])
    return chosen


def _from_nvml() -> list[GPU] | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver / no NVML library: not a GPU machine, or not an NVIDIA one
        return None
    try:
        handles = {}
        entries = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            handles[i] = handle
            entries.append((i, uuid))
        gpus = []
        for index, (phys, _uuid) in enumerate(_visible_filter(entries)):
            h = handles[phys]
            name = pynvml.nvmlDeviceGetName(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            try:
                util = pynvml.nvmlDeviceGetUtilizationRates(h).gpu
            except Exception:
                util = None
            try:
                temp = pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)
            except Exception:
                temp = None
            try:
                cc = tuple(pynvml.nvmlDeviceGetCudaComputeCapability(h))
            except Exception:
                cc = None
            try:
                power = pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0
                power_limit = pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0
            except Exception:
                power = power_limit = None
            gpus.append(
                GPU(
                    index=index,
                    physical=str(phys),
                    name=name.decode() if isinstance(name, bytes) else name,
                    memory_total_mb=mem.total // 2**20,
                    memory_used_mb=mem.used // 2**20,
                    utilization_pct=util,
                    temperature_c=temp,
                    compute_capability=cc,
                    power_w=power,
                    power_limit_w=power_limit,
                )
            )
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _from_torch() -> list[GPU]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    mask = [t.strip() for t in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if t.strip()]
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        gpus.append(
            GPU(
                index=i,
                physical=mask[i] if i < len(mask) else str(i),
                name=props.name,
                memory_total_mb=total // 2**20,
                memory_used_mb=(total - free) // 2**20,
                utilization_pct=None,
                temperature_c=None,
                compute_capability=(props.major, props.minor),
            )
        )
    return gpus


_CACHE: list[GPU] | None = None


def list_gpus(refresh: bool = False) -> list[GPU]:
    """GPUs visible to the app. NVML first (cheap, no CUDA context); torch as the fallback.

    Torch is only imported when NVML is missing but an NVIDIA driver may still be
    there, so a CPU-only web process does not pay for importing it: the result of
    the first look is cached, and `refresh=True` re-reads live figures.
    """
    global _CACHE
    if os.environ.get("TLAB_FAKE_NO_GPU"):
        return []
    if _CACHE is not None and not refresh:
        return _CACHE
    gpus = _from_nvml()
    if gpus is None:
        gpus = _from_torch() if os.path.exists("/proc/driver/nvidia") else []
    _CACHE = gpus
    return gpus


class DeviceError(ValueError):
    pass


def parse_gpu_ids(text: str | None, available: list[GPU] | None = None) -> list[int] | list[GPU]:
    """`auto` (or not given) = every visible GPU; `0,2` = exactly those, in that order.

    Without `available`, only the syntax is checked and the indexes come back (None for `auto`).
    With it, each index must exist, and the GPUs come back. Raises DeviceError naming the bad value."""
    if text is not None and not text.strip():  # a cleared box is no choice: it was taken as every GPU
        raise DeviceError("gpu_ids is empty: write `auto` for every GPU, or GPU numbers like `0` or `0,1`")
    text = (text or "auto").strip()
    if text.lower() in ("auto", "all"):
        if available is None:
            return None
        if not available:
            raise DeviceError("gpu_ids `auto`: no CUDA GPU is visible on this machine")
        return list(available)
    seen: list[int] = []
    for token in (t.strip() for t in text.split(",")):
        if token == "":
            raise DeviceError(f"gpu_ids {text!r}: empty entry (use `auto` or a list like `0,1,2`)")
        try:
            index = int(token)
        except ValueError:
            raise DeviceError(f"gpu_ids {text!r}: {token!r} is not a GPU number") from None
        if index < 0:
            raise DeviceError(f"gpu_ids {text!r}: {index} is negative")
        if index in seen:
            raise DeviceError(f"gpu_ids {text!r}: GPU {index} is listed twice")
        seen.append(index)
    if available is None:
        return seen
    for index in seen:
        if index >= len(available):
            have = ", ".join(str(g.index) for g in available) or "none"
            raise DeviceError(f"gpu_ids {text!r}: GPU {index} does not exist (GPUs on this machine: {have})")
    return [available[i] for i in seen]


@dataclass(frozen=True)
class Placement:
    """Where a job runs: the device, its GPUs (empty on CPU) and how many processes."""

    device: str
    gpus: tuple[GPU, ...]
    num_processes: int

    @property
    def physical_ids(self) -> list[str]:
        return [g.physical for g in self.gpus]


def resolve(device: str | None, gpu_ids: str | None, cpu_processes: int | None, available: list[GPU]) -> Placement:
    device = (device or ("cuda" if available else "cpu")).strip().lower()
    indexes = parse_gpu_ids(gpu_ids)  # the syntax is checked whatever the device: `abc` is never right
    if device == "cuda":
        if not available and indexes is None:
            raise DeviceError("device `cuda`: this machine has no CUDA GPU; choose device `cpu`")
        gpus = parse_gpu_ids(gpu_ids, available)
        return Placement("cuda", tuple(gpus), len(gpus))
    if device == "cpu":
        n = 1 if cpu_processes is None else int(cpu_processes)
        if n < 1:
            raise DeviceError(f"cpu_processes {n}: must be at least 1")
        return Placement("cpu", (), n)
    raise DeviceError(f"device {device!r}: must be `cuda` or `cpu`")
