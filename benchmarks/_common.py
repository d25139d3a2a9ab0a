"""Helpers shared by the benchmark scripts: machine description, synchronisation, peak memory."""
from __future__ import annotations

import ctypes
import os
import platform

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_info(device: torch.device) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
    else:
        cpu = platform.processor()
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        info["device"] = f"CPU: {cpu}, {os.cpu_count()} cores"
    return info


def proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_memory_growth(fn, device: torch.device) -> int:
    """Bytes by which ``fn()`` raises the peak above the memory in use before it: peak allocated
    memory on CUDA, the process's peak RSS (VmHWM, reset via /proc/self/clear_refs) on the CPU. Run it
    in a fresh process so earlier work does not hide the peak."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed memory back, then reset the high-water mark
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = proc_status_kb("VmRSS")
    fn()
    return (proc_status_kb("VmHWM") - base) * 1024
