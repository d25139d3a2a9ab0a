"""Helpers shared by the benchmark scripts: machine description, synchronisation, peak memory."""
from __future__ import annotations

import ctypes
import os
import platform
import time

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


def speed_probe(device: torch.device, repeats: int = 15) -> float:
    """Milliseconds of one fixed convolution (64 channels, 56², 16 frames, 3x3; fastest of ``repeats``):
    recorded at the start and the end of a run, so a reader can tell a run on a contended machine
    (other tenants on a shared VM host can slow it 2x and more, and the TAda models more than their
    bases) from one on a quiet one. On the 2-core Xeon of this README's runs: about 11 ms when quiet."""
    import torch.nn.functional as F

    x = torch.randn(16, 64, 56, 56, device=device)
    w = torch.randn(64, 64, 3, 3, device=device)
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            F.conv2d(x, w, None, 1, 1)
            sync(device)
            best = min(best, time.perf_counter() - t0)
    return best * 1e3


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


def peak_tensor_bytes(fn, keep=()) -> int:
    """Peak bytes of tensor storage that ``fn()`` holds at once beyond what already exists: the CPU
    counterpart of CUDA's ``max_memory_allocated`` growth, independent of the C allocator's caching
    and fragmentation (which the peak-RSS measure includes).

    Every tensor an operator returns while ``fn`` runs (forward, backward and optimiser ops alike; a
    :class:`~torch.utils._python_dispatch.TorchDispatchMode` sees them all) is counted by its storage,
    once however many views share it, until the last tensor on that storage is freed. Storages of the
    tensors in ``keep`` (e.g. the parameters, their gradients, buffers, optimiser state and the input:
    ``iter_tensors(model, optimizer, x)``) existed before and are not counted when an op returns a view
    of them; they must outlive ``fn`` (not gradients that ``fn`` frees: their addresses are reused).
    """
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    excluded = {t.untyped_storage().data_ptr() for t in keep}

    class _Live(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.refs, self.size, self.live, self.peak = {}, {}, 0, 0

        def _drop(self, ptr):
            self.refs[ptr] -= 1
            if not self.refs[ptr]:
                del self.refs[ptr]
                self.live -= self.size.pop(ptr)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                    continue
                storage = t.untyped_storage()
                ptr = storage.data_ptr()
                if not ptr or ptr in excluded:
                    continue
                if ptr not in self.refs:
                    self.refs[ptr], self.size[ptr] = 0, storage.nbytes()
                    self.live += storage.nbytes()
                self.refs[ptr] += 1
                weakref.finalize(t, self._drop, ptr)
            self.peak = max(self.peak, self.live)
            return out

    with _Live() as live:
        fn()
    return live.peak


def iter_tensors(*objs):
    """The lasting tensors of modules (parameters, buffers), optimisers (state) and plain tensors."""
    for o in objs:
        if isinstance(o, torch.Tensor):
            yield o
        elif isinstance(o, torch.nn.Module):
            yield from o.parameters()
            yield from o.buffers()
        elif isinstance(o, torch.optim.Optimizer):
            for state in o.state.values():
                yield from (v for v in state.values() if isinstance(v, torch.Tensor))
