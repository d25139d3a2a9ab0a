"""Whole-model cost of TAda against its 2D baseline: inference time, training-step time, peak memory.

Pairs (SPEC §2/§3), batch 1 by default, in one run with the models interleaved (median of repeats):

* ``tada2d_r50`` vs ``tsn_r50``, 8 x 224²;
* ``tadaconvnextv2_tiny`` vs ``tsn_convnext_tiny``, 16 x 224² (the paper's comparison: the TSN
  runs all 16 frames, TAda's tubelet stem halves them), and vs ``tsn_convnext_tiny`` on 8 frames
  (the same frames per layer as TAda after its stem: the cost of the TAda layers themselves);
* ``tadaformer_b16`` on 16 frames vs ``tsn_vit_b16_clip`` (CLIP ViT-B/16 per frame) on 8 (the same
  tokens per layer after TAdaFormer's tubelet stem). Its TAda branches add FLOPs, so its time target
  is 1.05 x its FLOP ratio (printed).

``--grouped`` adds each TAda model with every TAdaConv switched to ``impl="grouped"`` (the release's
per-frame kernels); ``--fast`` with every TAdaConv on ``impl="fast"`` (what ``auto`` replaced);
``--no-native`` (also ``--plain-tpool``) the TAda2D, ConvNeXt (8f base) and TAdaFormer pairs again with
the native kernels of ``tada/nn/csrc`` switched off (T-Pool, the TAdaConv-after-BN+ReLU inference head,
the ``cin`` backward pass as the plain PyTorch composition).
``--profile`` adds, per pair, a ``torch.profiler`` breakdown of one training step and one inference
of both models: the time in each kind of module (blocks, TAdaConvs, routing, T-Pool; forward, from
``record_function`` marks) and the ten costliest ops by self time and by memory. The marks are forward
hooks, so in a profiled inference the TAdaConv-after-BN+ReLU head runs layer by layer (a hooked
module's forward must run: ``tada.nn.has_forward_hooks``). ``--plugins`` times the plug-in backbones instead (Table 3c: SlowOnly 8 frames,
SlowFast 4x16 and 8x8 on 32 frames, R(2+1)D with TAda on the 2D conv and on 2D + 1D convs, R3D with
TAdaConv3d, each against its plain backbone) at ``--size`` (default 112 on the CPU: 3D R50s at 224²
take minutes per training step on two cores). Training step = forward, cross-entropy, backward, SGD step
(fused, as the engine runs it). Peak memory of one training step (after a warm-up step) and one inference
is measured in a fresh process per model, as the growth of peak RSS and, on the CPU, also as the peak of live tensor storage (``_common.peak_tensor_bytes``:
what CUDA's ``max_memory_allocated`` counts, without glibc's caching and fragmentation).
``--tuned-allocator`` times with ``tada.utils.tune_cpu_allocator()`` (no page faults on fresh
activations, which otherwise add run-to-run noise and cost that grows with the number of allocations).

    python benchmarks/model_speed.py [--json results/model_speed.json] [--device cuda --dtype bfloat16 --batch 8]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from _common import iter_tensors, machine_info, peak_memory_growth, peak_tensor_bytes, speed_probe, sync
from tada import create_model
from tada.nn import TAdaConv2d, _native


@dataclass(frozen=True)
class Run:
    label: str
    model: str
    frames: int
    size: int = 224
    impl: str = ""  # "" (the model's default, auto), "grouped" or "fast": every TAdaConv switched to it
    native: bool = True  # False: the native T-Pool kernels switched off (tada.nn._native.disabled)


@dataclass(frozen=True)
class Pair:
    tada: Run
    base: Run


PLUGINS = (("tada_slowonly_r50", "slowonly_r50", 8), ("tada_slowfast_r50_4x16", "slowfast_r50_4x16", 32),
           ("tada_slowfast_r50_8x8", "slowfast_r50_8x8", 32), ("tada_r2plus1d_r50", "r2plus1d_r50", 8),
           ("tada_r2plus1d_r50_2d1d", "r2plus1d_r50", 8), ("tada_r3d_r50", "r3d_r50", 8))


def plugin_pairs(size: int):
    return [Pair(Run(f"{t} {f}f", t, f, size), Run(f"{b} {f}f", b, f, size)) for t, b, f in PLUGINS]


def pairs(grouped: bool, fast: bool = False, plain_tpool: bool = False):
    r50 = Run("tsn_r50 8f", "tsn_r50", 8)
    t2d = Run("tada2d_r50 8f", "tada2d_r50", 8)
    cnx16 = Run("tsn_convnext_tiny 16f", "tsn_convnext_tiny", 16)
    cnx8 = Run("tsn_convnext_tiny 8f", "tsn_convnext_tiny", 8)
    tcn = Run("tadaconvnextv2_tiny 16f", "tadaconvnextv2_tiny", 16)
    vit8 = Run("tsn_vit_b16_clip 8f", "tsn_vit_b16_clip", 8)
    tfm = Run("tadaformer_b16 16f", "tadaformer_b16", 16)
    out = [Pair(t2d, r50), Pair(tcn, cnx16), Pair(tcn, cnx8), Pair(tfm, vit8)]
    for flag, impl in ((grouped, "grouped"), (fast, "fast")):
        if flag:
            out += [Pair(Run(f"{t.label} {impl}", t.model, t.frames, impl=impl), t) for t in (t2d, tcn, tfm)]
    if plain_tpool:  # the same TAda models with the native kernels off, against the same bases
        out += [Pair(Run(f"{pr.tada.label} no-native", pr.tada.model, pr.tada.frames, native=False), pr.base)
                for pr in out[:4] if pr.base is not cnx16]
    return out


class Bench:
    """One model, its input and optimiser, ready to time."""

    def __init__(self, run: Run, device, dtype, batch: int, seed: int = 0):
        torch.manual_seed(seed)
        self.run, self.device = run, device
        self.model = create_model(run.model, num_classes=400).to(device)
        if run.impl:
            for m in self.model.modules():
                if isinstance(m, TAdaConv2d):
                    m.impl = run.impl
        self.x = torch.randn(batch, 3, run.frames, run.size, run.size, device=device)
        self.y = torch.randint(0, 400, (batch,), device=device)
        # fused: one kernel for all tensors, as the engine steps (tada.engine.optim.build_optimizer)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-4, momentum=0.9, fused=True)
        self.autocast = (
            torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
        )

    def _tpool(self):
        return nullcontext() if self.run.native else _native.disabled()

    def infer(self):
        self.model.eval()
        with torch.no_grad(), self.autocast, self._tpool():
            self.model(self.x)

    def train_step(self):
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        with self._tpool():
            with self.autocast:
                loss = F.cross_entropy(self.model(self.x), self.y)
            loss.backward()
        self.opt.step()


def time_all(runs, device, dtype, batch, repeats, warmup):
    benches = {r: Bench(r, device, dtype, batch) for r in runs}
    out = {r: {} for r in runs}
    for mode in ("infer", "train_step"):
        samples = {r: [] for r in runs}
        for i in range(warmup + repeats):
            for r, b in benches.items():  # interleaved: drift hits every model alike
                sync(device)
                t0 = time.perf_counter()
                getattr(b, mode)()
                sync(device)
                if i >= warmup:
                    samples[r].append(time.perf_counter() - t0)
            print(f"  {mode} round {i + 1}/{warmup + repeats}", file=sys.stderr, flush=True)
        for r in runs:
            out[r][mode] = statistics.median(samples[r]) * 1e3
            # the fastest repeat too: on a shared VM interference only ever adds time
            out[r][mode + "_min"] = min(samples[r]) * 1e3
            out[r][mode + "_samples"] = [v * 1e3 for v in samples[r]]
    return out


def memory_worker(run: dict, device: str, dtype: str, batch: int):
    """In a fresh process: peak memory growth of one inference and one training step (after a warm-up
    step, so gradients and optimiser state already exist and only the step's activations count)."""
    dev = torch.device(device)
    b = Bench(Run(**run), dev, getattr(torch, dtype), batch)
    _native.available()  # load the native kernels first: their one-time load (and the build check's imports)
    # is not the inference's memory (it ran inside the first inference of the TAda models otherwise)
    infer = peak_memory_growth(b.infer, dev)
    b.train_step()
    train = peak_memory_growth(b.train_step, dev)
    out = {"infer_peak": infer, "train_peak": train}
    if dev.type == "cpu":  # the tensors' own peak (CUDA's measure above is that already)
        keep = lambda: list(iter_tensors(b.model, b.opt, b.x, b.y))  # noqa: E731
        out["infer_tensor_peak"] = peak_tensor_bytes(b.infer, keep())
        out["train_tensor_peak"] = peak_tensor_bytes(b.train_step, keep())
    return out


_KINDS = (("TAdaConv", "tadaconv"), ("routing", "routing"), ("T-Pool", "tpool"), ("block", "block"))


def _marks(model):
    """``record_function`` marks around every block, TAdaConv, routing and T-Pool forward; returns the
    hook handles."""
    from tada.nn import TemporalAggregation
    from tada.nn.calibration import ROUTING_TYPES

    handles = []

    def mark(module, name):
        ctx = {}

        def pre(_m, _i):
            ctx["r"] = torch.autograd.profiler.record_function(name)
            ctx["r"].__enter__()

        def post(_m, _i, _o):
            ctx.pop("r").__exit__(None, None, None)

        handles.extend([module.register_forward_pre_hook(pre), module.register_forward_hook(post)])

    blocks = getattr(model, "grad_checkpoint_types", ())
    for name, m in model.named_modules():
        kind = ("tadaconv" if isinstance(m, TAdaConv2d) else "routing" if isinstance(m, ROUTING_TYPES)
                else "tpool" if isinstance(m, TemporalAggregation) else "block" if blocks and isinstance(m, blocks)
                else None)
        if kind:
            mark(m, f"{kind}::{name}")
    return handles


def profile_run(run: Run, device, dtype, batch: int) -> dict:
    """One warmed-up training step and one inference under torch.profiler: forward time per module kind
    (marked) and the ten costliest ops by self time and by self memory."""
    from torch.profiler import ProfilerActivity, profile

    b = Bench(run, device, dtype, batch)
    b.train_step()
    handles = _marks(b.model)
    out = {}
    try:
        for mode in ("train_step", "infer"):
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=acts, profile_memory=True) as prof:
                getattr(b, mode)()
            events = prof.key_averages()
            total = sum(e.self_cpu_time_total for e in events) / 1e3
            kinds = {}
            for e in events:
                kind = e.key.split("::", 1)[0]
                if "::" in e.key and kind in {k for _, k in _KINDS}:
                    kinds[kind] = kinds.get(kind, 0.0) + e.cpu_time_total / 1e3
            ops = [e for e in events if "::" in e.key and e.key.split("::", 1)[0] in ("aten", "mkldnn")]
            top_t = sorted(ops, key=lambda e: -e.self_cpu_time_total)[:10]
            top_m = sorted(ops, key=lambda e: -e.self_cpu_memory_usage)[:10]
            out[mode] = {
                "total_ms": total, "forward_ms_by_kind": kinds,
                "top_time": [(e.key, e.self_cpu_time_total / 1e3, e.count) for e in top_t],
                "top_memory": [(e.key, e.self_cpu_memory_usage / 2**20, e.count) for e in top_m],
            }
    finally:
        for h in handles:
            h.remove()
    return out


def print_profile(pr: Pair, prof_t: dict, prof_b: dict) -> None:
    print(f"\n### Profile: {pr.tada.label} vs {pr.base.label}")
    for mode in ("train_step", "infer"):
        t, b = prof_t[mode], prof_b[mode]
        print(f"\n{mode}: profiled total (self time of all ops) {t['total_ms']:.0f} ms vs {b['total_ms']:.0f} ms")
        print("\n| forward time in (incl. children) | TAda ms | base ms |\n|---|---|---|")
        for label, k in _KINDS:
            print(f"| {label} | {t['forward_ms_by_kind'].get(k, 0):.0f} | {b['forward_ms_by_kind'].get(k, 0):.0f} |")
        for what, key, unit in (("self time", "top_time", "ms"), ("self memory", "top_memory", "MiB")):
            print(f"\n| op (TAda, by {what}) | {unit} | calls | op (base) | {unit} | calls |\n|---|---|---|---|---|---|")
            for (n1, v1, c1), (n2, v2, c2) in zip(t[key], b[key]):
                print(f"| {n1} | {v1:.1f} | {c1} | {n2} | {v2:.1f} | {c2} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="autocast dtype (float32: no autocast)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--grouped", action="store_true", help="also time TAda with the release's grouped operator")
    p.add_argument("--fast", action="store_true", help="also time TAda with impl='fast' everywhere (no auto choice)")
    p.add_argument("--no-native", "--plain-tpool", dest="plain_tpool", action="store_true",
                   help="also time the TAda models with the native kernels (T-Pool, the fused inference head, "
                        "the cin backward) switched off")
    p.add_argument("--profile", action="store_true", help="torch.profiler breakdown per pair (see the module doc)")
    p.add_argument("--plugins", action="store_true", help="the plug-in backbones (SlowOnly, SlowFast, R(2+1)D, R3D)")
    p.add_argument("--size", type=int, default=112, help="input size of the --plugins runs (default 112)")
    p.add_argument("--only", default=None, metavar="SUBSTRING",
                   help="measure only the pairs whose TAda model's name contains this (e.g. tada_r3d_r50)")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--tuned-allocator", action="store_true",
                   help="CPU: time with tada.utils.tune_cpu_allocator() (glibc keeps freed blocks: no page faults "
                        "on fresh activations); the memory runs keep the default allocator")
    p.add_argument("--flush-denormal", action="store_true",
                   help="torch.set_flush_denormal(True) (set before any parallel op, so that every thread has it): "
                        "subnormal floats as zero. At init ConvNeXt's layer scale (1e-6) makes its gradients "
                        "subnormal, and x86 matrix products on them run several times slower, in whichever "
                        "model and thread meets them (the memory runs keep the default)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.flush_denormal:  # before any parallel op: the flag is per thread, and new threads inherit it
        print(f"  flush denormal: {torch.set_flush_denormal(True)}", file=sys.stderr, flush=True)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    info = machine_info(device)
    print(f"# Model speed: {info['device']}, torch {info['torch']}, {info['threads']} threads, "
          f"{args.dtype}, batch {args.batch}" + (f", plug-in backbones at {args.size}²" if args.plugins else ""))
    prs = plugin_pairs(args.size) if args.plugins else pairs(args.grouped, args.fast, args.plain_tpool)
    if args.only:
        prs = [pr for pr in prs if args.only in pr.tada.model]
        if not prs:
            p.error(f"--only {args.only!r} matches no pair")
    runs = list(dict.fromkeys(r for pr in prs for r in (pr.tada, pr.base)))

    mem = {}
    if not args.no_memory:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=1) as pool:
            for r in runs:
                mem[r] = pool.submit(memory_worker, asdict(r), args.device, args.dtype, args.batch).result()
                print(f"  memory {r.label}: {mem[r]['train_peak'] / 2**20:.0f} MiB", file=sys.stderr, flush=True)

    if args.tuned_allocator and device.type == "cpu":
        from tada.utils import tune_cpu_allocator

        print(f"  tuned allocator: {tune_cpu_allocator()}", file=sys.stderr, flush=True)
    info["speed_probe_ms"] = [speed_probe(device)]
    times = time_all(runs, device, dtype, args.batch, args.repeats, args.warmup)
    info["speed_probe_ms"].append(speed_probe(device))
    print(f"speed probe (_common.speed_probe, ~11 ms on a quiet 2-core Xeon): "
          f"{info['speed_probe_ms'][0]:.1f} ms before, {info['speed_probe_ms'][1]:.1f} ms after the timings")

    from tada.models.flops import profile as flop_profile

    gflops = {r: flop_profile(r.model, r.frames, r.size).gflops for r in runs}
    rows = []
    for pr in prs:
        t, b = times[pr.tada], times[pr.base]
        flop_ratio = gflops[pr.tada] / gflops[pr.base]
        row = {
            "tada": pr.tada.label, "baseline": pr.base.label,
            "infer_ms": [t["infer"], b["infer"]], "train_step_ms": [t["train_step"], b["train_step"]],
            "infer_ratio": t["infer"] / b["infer"], "train_step_ratio": t["train_step"] / b["train_step"],
            "infer_ratio_min": t["infer_min"] / b["infer_min"],
            "train_step_ratio_min": t["train_step_min"] / b["train_step_min"],
            "samples_ms": {"tada": {m: t[m + "_samples"] for m in ("infer", "train_step")},
                           "base": {m: b[m + "_samples"] for m in ("infer", "train_step")}},
            "gflops": [gflops[pr.tada], gflops[pr.base]], "flop_ratio": flop_ratio,
            "time_target": max(1.10, 1.05 * flop_ratio),
        }
        if mem:
            mt, mb = mem[pr.tada], mem[pr.base]
            row["train_peak_mib"] = [mt["train_peak"] / 2**20, mb["train_peak"] / 2**20]
            row["infer_peak_mib"] = [mt["infer_peak"] / 2**20, mb["infer_peak"] / 2**20]
            row["train_peak_ratio"] = mt["train_peak"] / mb["train_peak"]
            row["infer_peak_ratio"] = mt["infer_peak"] / mb["infer_peak"]
            if "train_tensor_peak" in mt:
                row["train_tensor_mib"] = [mt["train_tensor_peak"] / 2**20, mb["train_tensor_peak"] / 2**20]
                row["infer_tensor_mib"] = [mt["infer_tensor_peak"] / 2**20, mb["infer_tensor_peak"] / 2**20]
                row["train_tensor_ratio"] = mt["train_tensor_peak"] / mb["train_tensor_peak"]
                row["infer_tensor_ratio"] = mt["infer_tensor_peak"] / mb["infer_tensor_peak"]
        rows.append(row)

    profiles = {}
    if args.profile:
        for r in runs:
            profiles[r] = profile_run(r, device, dtype, args.batch)
        for pr in prs:
            print_profile(pr, profiles[pr.tada], profiles[pr.base])

    print()
    print("| TAda | baseline | FLOP ratio | time target | infer ms (TAda / base) | infer ratio | infer ratio, minima "
          "| train step ms (TAda / base) | train ratio | train ratio, minima | train peak MiB (TAda / base) "
          "| train mem ratio | infer mem ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        memcols = (
            f"{r['train_peak_mib'][0]:.0f} / {r['train_peak_mib'][1]:.0f} | {r['train_peak_ratio']:.2f} "
            f"| {r['infer_peak_ratio']:.2f}" if mem else "– | – | –"
        )
        print(f"| {r['tada']} | {r['baseline']} | {r['flop_ratio']:.3f} | {r['time_target']:.2f} "
              f"| {r['infer_ms'][0]:.0f} / {r['infer_ms'][1]:.0f} "
              f"| {r['infer_ratio']:.2f} | {r['infer_ratio_min']:.2f} "
              f"| {r['train_step_ms'][0]:.0f} / {r['train_step_ms'][1]:.0f} "
              f"| {r['train_step_ratio']:.2f} | {r['train_step_ratio_min']:.2f} | {memcols} |")
    tensor_rows = [r for r in rows if "train_tensor_ratio" in r]
    if tensor_rows:
        print("\nTensor memory (CPU; the peak of live tensor storage, as CUDA's max_memory_allocated counts it, "
              "without the C allocator's caching and fragmentation that peak RSS includes):\n")
        print("| TAda | baseline | train tensor peak MiB (TAda / base) | ratio | inference tensor peak MiB | ratio |")
        print("|---|---|---|---|---|---|")
        for r in tensor_rows:
            print(f"| {r['tada']} | {r['baseline']} | {r['train_tensor_mib'][0]:.0f} / {r['train_tensor_mib'][1]:.0f} "
                  f"| {r['train_tensor_ratio']:.3f} | {r['infer_tensor_mib'][0]:.0f} / {r['infer_tensor_mib'][1]:.0f} "
                  f"| {r['infer_tensor_ratio']:.3f} |")
    print("\nTargets: TAda/baseline time <= the time target (1.10, or 1.05 x the FLOP ratio where the TAda "
          "blocks add FLOPs), memory <= 1.15 (plug-in backbones: <= 1.15 time, <= 1.2 memory).")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": info, "dtype": args.dtype, "batch": args.batch, "repeats": args.repeats,
                       "tuned_allocator": bool(args.tuned_allocator),
                       "rows": rows, "profiles": {r.label: v for r, v in profiles.items()}}, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
