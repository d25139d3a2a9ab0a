"""Speed and peak memory of BMN's boundary-matching layer: sparse (gather) vs dense (reference matmul).

Two forms, each with ``impl="sparse"`` and ``impl="dense"`` (:mod:`tada.models.bmn`):

* ``bm``   :class:`BoundaryMatchingLayer` alone, ``(B, C, T) -> (B, C, N, D, T)``; its output is
           the same 2.6 GB for both impls at the default size, so time and memory are bound by
           writing it (sparse's backward also copies the cotangent into its own layout: one more
           output-sized buffer);
* ``proj`` :class:`BMProjection`, the BM layer plus BMN's ``Conv3d(C -> 512, (N, 1, 1))``: the form
           BMN uses. Dense builds the ``(B, C, N, D, T)`` tensor and convolves; sparse projects first
           and gathers, never building it.

Default size (SPEC §8): batch 8, C = 256, T = D = 100, N = 32 (3 points per bin), C_out = 512.
``forward`` runs under ``torch.no_grad()``; ``forward+backward`` computes gradients for the input
and the conv weight / bias with a random cotangent drawn once (allocated before timing and before
the memory baseline). Times: median of ``--repeats`` after ``--warmup`` calls, impls interleaved.

**Peak memory is measured**, each (form, impl, mode) in a fresh process: after one warm-up call
(and ``malloc_trim``), the process's peak RSS is reset (``/proc/self/clear_refs``) and the growth
of VmHWM over VmRSS during one more call is read (``_common.peak_memory_growth``; on CUDA, peak
allocated memory). ``buffers`` = the module's fixed sampling data (the dense ``(T, N*D*T)`` mask, or
the CSR index / weight lists), resident before the measurement and reported beside it;
``total = peak growth + buffers``.

    python benchmarks/bm_layer_speed.py [--quick] [--json results/bm_layer_speed.json]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch

from _common import machine_info, peak_memory_growth, sync
from tada.models.bmn import BMProjection, BoundaryMatchingLayer

FORMS = ("bm", "proj")
IMPLS = ("sparse", "dense")
MODES = ("fwd", "fwd_bwd")


@dataclass(frozen=True)
class Size:
    batch: int = 8
    channels: int = 256
    temporal_scale: int = 100
    max_duration: int = 100
    num_samples: int = 32
    out_channels: int = 512


QUICK = Size(batch=2, channels=32, temporal_scale=32, max_duration=32, num_samples=8, out_channels=64)


class Case:
    """One form and impl at one size: the module, an input and a cotangent."""

    def __init__(self, form: str, impl: str, size: Size, device: torch.device, seed: int = 0):
        torch.manual_seed(seed)
        s = size
        geo = dict(temporal_scale=s.temporal_scale, max_duration=s.max_duration, num_samples=s.num_samples)
        if form == "bm":
            self.module = BoundaryMatchingLayer(**geo, impl=impl)
        else:
            self.module = BMProjection(s.channels, s.out_channels, **geo, impl=impl)
        self.module.to(device)
        self.x = torch.randn(s.batch, s.channels, s.temporal_scale, device=device, requires_grad=True)
        out_ch = s.channels if form == "bm" else s.out_channels
        shape = (s.batch, out_ch, s.num_samples, s.max_duration, s.temporal_scale) if form == "bm" else (
            s.batch, out_ch, s.max_duration, s.temporal_scale)
        self.grad = torch.randn(shape, device=device)

    def buffer_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.module.buffers())

    def forward(self) -> None:
        with torch.no_grad():
            self.module(self.x)

    def forward_backward(self) -> None:
        self.module(self.x).backward(self.grad)
        for p in (self.x, *self.module.parameters()):
            p.grad = None

    def run(self, mode: str) -> None:
        (self.forward if mode == "fwd" else self.forward_backward)()


def time_form(form: str, size: Size, device: torch.device, repeats: int, warmup: int) -> dict:
    cases = {impl: Case(form, impl, size, device) for impl in IMPLS}
    cases["dense"].grad = cases["sparse"].grad  # one cotangent (2.6 GB for the bare layer) for both
    out = {}
    for mode in MODES:
        samples = {impl: [] for impl in IMPLS}
        for i in range(warmup + repeats):
            for impl in IMPLS:  # interleaved: drift hits both alike
                sync(device)
                t0 = time.perf_counter()
                cases[impl].run(mode)
                sync(device)
                if i >= warmup:
                    samples[impl].append(time.perf_counter() - t0)
        out[mode] = {impl: statistics.median(v) * 1e3 for impl, v in samples.items()}
    out["buffers"] = {impl: c.buffer_bytes() for impl, c in cases.items()}
    return out


def memory_worker(form: str, impl: str, mode: str, size: dict, device: str) -> int:
    """Fresh process: peak memory growth (bytes) of one call after one warm-up call."""
    dev = torch.device(device)
    case = Case(form, impl, Size(**size), dev)
    case.run(mode)
    return peak_memory_growth(lambda: case.run(mode), dev)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return "unknown"


def _fmt(rows: dict, mem: dict) -> str:
    mb = lambda b: f"{b / 2**20:.1f}"  # noqa: E731
    lines = [
        "| form | impl | fwd ms | fwd+bwd ms | peak MB fwd | peak MB fwd+bwd | buffers MB | total MB fwd+bwd |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for form, r in rows.items():
        for impl in IMPLS:
            m = mem.get(form, {}).get(impl, {})
            buf = r["buffers"][impl]
            pf, pb = m.get("fwd"), m.get("fwd_bwd")
            lines.append(
                f"| {form} | {impl} | {r['fwd'][impl]:.1f} | {r['fwd_bwd'][impl]:.1f} "
                f"| {mb(pf) if pf is not None else '-'} | {mb(pb) if pb is not None else '-'} | {mb(buf)} "
                f"| {mb(pb + buf) if pb is not None else '-'} |"
            )
    return "\n".join(lines)


def _summary(rows: dict, mem: dict) -> dict:
    out = {}
    for form, r in rows.items():
        s = {f"speedup_{mode}": r[mode]["dense"] / r[mode]["sparse"] for mode in MODES}
        for mode in MODES:
            m = mem.get(form, {})
            if "dense" in m and "sparse" in m:
                tot = {impl: m[impl][mode] + r["buffers"][impl] for impl in IMPLS}
                s[f"memory_ratio_{mode}"] = tot["dense"] / max(tot["sparse"], 1)
        out[form] = s
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test in seconds")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per case (default 3, quick 5)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--forms", default=",".join(FORMS), help="comma-separated subset of bm,proj")
    p.add_argument("--no-memory", action="store_true", help="skip the fresh-process peak-memory runs")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    size = QUICK if args.quick else Size()
    repeats = args.repeats or (5 if args.quick else 3)
    forms = [f for f in args.forms.split(",") if f]
    unknown = set(forms) - set(FORMS)
    if unknown:
        p.error(f"unknown forms {sorted(unknown)}; choose from {FORMS}")
    info = machine_info(device)
    info["lscpu_model_name"] = cpu_model()
    print(f"# BM layer: {info['device']} ({info['lscpu_model_name']}), torch {info['torch']}, "
          f"{info['threads']} threads; size {asdict(size)}", flush=True)

    mem: dict = {}
    if not args.no_memory:  # first, each in a fresh process
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=1) as pool:
            for form in forms:
                for impl in IMPLS:
                    for mode in MODES:
                        t0 = time.perf_counter()
                        peak = pool.submit(memory_worker, form, impl, mode, asdict(size), args.device).result()
                        mem.setdefault(form, {}).setdefault(impl, {})[mode] = peak
                        print(f"  [memory] {form:4s} {impl:6s} {mode:7s} peak growth {peak / 2**20:9.1f} MB"
                              f"   ({time.perf_counter() - t0:.0f}s)", flush=True)

    rows = {}
    for form in forms:
        t0 = time.perf_counter()
        rows[form] = time_form(form, size, device, repeats, args.warmup)
        r = rows[form]
        print(f"  [time] {form:4s} fwd sparse {r['fwd']['sparse']:.1f} ms dense {r['fwd']['dense']:.1f} ms; "
              f"fwd+bwd sparse {r['fwd_bwd']['sparse']:.1f} ms dense {r['fwd_bwd']['dense']:.1f} ms"
              f"   ({time.perf_counter() - t0:.0f}s)", flush=True)

    print()
    print(_fmt(rows, mem))
    summary = _summary(rows, mem)
    print()
    for form, s in summary.items():
        speed = ", ".join(f"{k[8:]} {v:.1f}x" for k, v in s.items() if k.startswith("speedup"))
        memory = ", ".join(f"{k[13:]} {v:.1f}x" for k, v in s.items() if k.startswith("memory"))
        print(f"{form}: dense/sparse time {speed}" + (f"; memory (peak growth + buffers) {memory}" if memory else ""))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": info, "size": asdict(size), "repeats": repeats, "warmup": args.warmup,
                       "memory_method": "fresh process per case: VmHWM growth over VmRSS after clear_refs "
                                        "(CPU) / max_memory_allocated (CUDA), plus module buffers",
                       "summary": summary, "time_ms": rows, "peak_growth_bytes": mem}, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
