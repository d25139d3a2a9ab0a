"""Speed and memory of the TAdaConv operator against the convolution it calibrates.

For every distinct TAdaConv shape of TAda2D-R50 (8 frames, 224², batch 2; dense 3x3, cal_dim="cin")
and TAdaConvNeXtV2-T (16 frames -> 8 after the tubelet stem, 224², batch 2; depthwise 7x7,
cal_dim="cout" with bias calibration) it times, interleaved in one run, in a shuffled order each round
(median and minimum of the repeats):

* ``plain``   F.conv2d on the same (B*T) batch of frames: the baseline (a TSN's convolution);
* ``fast``    tada_conv2d(impl="fast") on a frame-major input (how TAda models store activations,
              folding frames into the batch is a view);
* ``fast_nc`` the same on a contiguous (B, C, T, H, W) input (pays one layout copy each way);
* ``frames``  tada_conv2d(impl="frames"): the fast forward, per-frame kernel gradients in backward
              (the same as ``fast`` for the depthwise ``cout`` rows, which scale no input channels);
* ``grouped`` tada_conv2d(impl="grouped"): per-frame kernels + one grouped conv, the release's method;
* ``auto``    tada_conv2d(impl="auto"): the form ``tada.nn.functional.auto_impl`` picks for the shape.

forward-only (no autograd) and forward+backward (grads for input, weight, alpha, bias). Then, each in a
fresh process, the peak memory of one forward+backward: bytes autograd saves for backward and the
growth of the process's peak RSS (CPU) or peak allocated memory (CUDA).

With ``--conv3d`` it measures TAdaConv3d instead, at the 3x3x3 convs of an R3D-R50 (res2-res5 at
8 frames of a 256² input: 64ch@64², 128ch@32², 256ch@16², 512ch@8², batch 1), cal_dim "cin" and
"cout": ``plain`` F.conv3d, ``fast`` tada_conv3d(impl="fast"), ``grouped`` tada_conv3d(impl="grouped")
(per-output-frame kernels, the release's method), all on a contiguous (B, C, T, H, W) input.

    python benchmarks/op_speed.py [--json results/op_speed.json] [--device cuda --dtype bf16]
    python benchmarks/op_speed.py --conv3d [--json results/op_speed3d.json]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from _common import machine_info, peak_memory_growth, speed_probe, sync
from tada.nn.functional import auto_impl, tada_conv2d
from tada.nn.functional3d import tada_conv3d
from tada.utils import tune_cpu_allocator


@dataclass(frozen=True)
class Shape:
    model: str
    layer: str
    channels: int
    size: int  # input H = W
    kernel: int
    stride: int
    frames: int
    batch: int
    depthwise: bool

    @property
    def dense(self) -> bool:
        return not self.depthwise


def model_shapes():
    shapes = []
    # TAda2D-R50: no max-pool, the first block of every stage has stride 2 in its 3x3 conv;
    # stem output is 112², bottleneck widths 64/128/256/512.
    size = 112
    for width in (64, 128, 256, 512):
        shapes.append(Shape("TAda2D-R50", f"{width}ch s2 in", width, size, 3, 2, 8, 2, False))
        size //= 2
        shapes.append(Shape("TAda2D-R50", f"{width}ch s1", width, size, 3, 1, 8, 2, False))
    # TAdaConvNeXtV2-T: stem /4 -> 56², dims 96/192/384/768, 7x7 depthwise.
    size = 56
    for dim in (96, 192, 384, 768):
        shapes.append(Shape("TAdaConvNeXtV2-T", f"{dim}ch dw7", dim, size, 7, 1, 8, 2, True))
        size //= 2
    return shapes


@dataclass(frozen=True)
class Shape3d:
    model: str
    layer: str
    channels: int
    size: int  # input H = W
    kernel: int  # kt = kh = kw
    stride: int
    frames: int
    batch: int
    cal_dim: str


def conv3d_shapes():
    # R3D-R50 at 8 frames of 256²: the 3x3x3 convs of res2-res5 (bottleneck widths 64..512 at
    # 64², 32², 16², 8²), stride 1, "same" padding; each with cal_dim "cin" and "cout".
    shapes = []
    for width, size in ((64, 64), (128, 32), (256, 16), (512, 8)):
        for cal_dim in ("cin", "cout"):
            shapes.append(Shape3d("R3D-R50", f"{width}ch 3x3x3 {cal_dim}", width, size, 3, 1, 8, 1, cal_dim))
    return shapes


IMPLS = ("plain", "fast", "fast_nc", "frames", "grouped", "auto")
IMPLS_3D = ("plain", "fast", "grouped")


class Case:
    """Tensors and callables for one shape, on one device and dtype."""

    impls = IMPLS

    def __init__(self, s: Shape, device, dtype, seed=0):
        torch.manual_seed(seed)
        kw = dict(device=device, dtype=dtype)
        self.s = s
        b, t, c, hw = s.batch, s.frames, s.channels, s.size
        groups = c if s.depthwise else 1
        self.conv_kw = dict(stride=s.stride, padding=s.kernel // 2, groups=groups)
        self.weight = (torch.randn(c, c // groups, s.kernel, s.kernel, **kw) * 0.05).requires_grad_()
        self.bias = torch.randn(c, **kw).requires_grad_() if s.depthwise else None
        self.alpha = (1 + 0.1 * torch.randn(b, c, t, **kw)).requires_grad_()
        self.beta = (1 + 0.1 * torch.randn(b, c, t, **kw)).requires_grad_() if s.depthwise else None
        self.cal_dim = "cout" if s.depthwise else "cin"
        frames = torch.randn(b * t, c, hw, hw, **kw)
        self.x_frames = frames.clone().requires_grad_()  # plain conv input, (B*T, C, H, W)
        # frame-major (B, C, T, H, W) view of the same values, and a contiguous copy
        self.x_fm = frames.clone().reshape(b, t, c, hw, hw).transpose(1, 2).requires_grad_()
        self.x_nc = self.x_fm.detach().contiguous().requires_grad_()
        # one cotangent for every impl, drawn once: (B*T, C, H', W') for plain, its (B, C, T, H', W')
        # view for the others
        with torch.no_grad():
            out = F.conv2d(frames[:1], self.weight, None, **self.conv_kw)
        self.grad_frames = torch.randn(b * t, *out.shape[1:], **kw)
        self.grad_video = self.grad_frames.reshape(b, t, *out.shape[1:]).transpose(1, 2)

    def run(self, impl):
        if impl == "plain":
            return F.conv2d(self.x_frames, self.weight, self.bias, **self.conv_kw)
        x = self.x_nc if impl == "fast_nc" else self.x_fm
        return tada_conv2d(
            x, self.weight, self.alpha, self.bias, cal_dim=self.cal_dim, bias_alpha=self.beta,
            impl="fast" if impl == "fast_nc" else impl, **self.conv_kw,
        )

    def forward(self, impl):
        with torch.no_grad():
            return self.run(impl)

    def forward_backward(self, impl):
        y = self.run(impl)
        y.backward(self.grad_frames if impl == "plain" else self.grad_video)
        for p in (self.x_frames, self.x_fm, self.x_nc, self.weight, self.bias, self.alpha, self.beta):
            if p is not None:
                p.grad = None

    def inputs(self):
        return (self.x_frames, self.x_fm, self.x_nc, self.weight, self.alpha)


class Case3d:
    """TAdaConv3d vs Conv3d for one R3D shape: contiguous (B, C, T, H, W) input, as nn.Conv3d sees it."""

    impls = IMPLS_3D

    def __init__(self, s: Shape3d, device, dtype, seed=0):
        torch.manual_seed(seed)
        kw = dict(device=device, dtype=dtype)
        self.s = s
        b, t, c, hw, k = s.batch, s.frames, s.channels, s.size, s.kernel
        self.conv_kw = dict(stride=s.stride, padding=k // 2)
        self.weight = (torch.randn(c, c, k, k, k, **kw) * 0.05).requires_grad_()
        self.x = torch.randn(b, c, t, hw, hw, **kw).requires_grad_()
        with torch.no_grad():
            out = F.conv3d(self.x, self.weight, None, **self.conv_kw)
        self.alpha = (1 + 0.1 * torch.randn(b, c, out.shape[2], **kw)).requires_grad_()
        self.grad = torch.randn(out.shape, **kw)

    def run(self, impl):
        if impl == "plain":
            return F.conv3d(self.x, self.weight, None, **self.conv_kw)
        return tada_conv3d(self.x, self.weight, self.alpha, cal_dim=self.s.cal_dim, impl=impl, **self.conv_kw)

    def forward(self, impl):
        with torch.no_grad():
            return self.run(impl)

    def forward_backward(self, impl):
        self.run(impl).backward(self.grad)
        for p in (self.x, self.weight, self.alpha):
            p.grad = None

    def inputs(self):
        return (self.x, self.weight, self.alpha)


def make_case(s, device, dtype):
    return Case3d(s, device, dtype) if isinstance(s, Shape3d) else Case(s, device, dtype)


def time_shape(s: Shape, device, dtype, repeats, warmup):
    case = make_case(s, device, dtype)
    results = {}
    for mode, fn in (("fwd", case.forward), ("fwd_bwd", case.forward_backward)):
        samples = {impl: [] for impl in case.impls}
        order = random.Random(f"{s}{mode}")  # the same shuffles in every run
        for i in range(warmup + repeats):
            # interleaved, so drift and thermal effects hit every impl alike, in a new order each round,
            # so no impl always runs right after the one that allocates the most (the grouped form)
            for impl in order.sample(case.impls, len(case.impls)):
                sync(device)
                t0 = time.perf_counter()
                fn(impl)
                sync(device)
                if i >= warmup:
                    samples[impl].append(time.perf_counter() - t0)
        results[mode] = {impl: statistics.median(v) * 1e3 for impl, v in samples.items()}
        # the fastest repeat too: interference on a shared VM only ever adds time, so the minimum is
        # the steadier estimate of what an implementation costs (medians move by ~0.1 between runs)
        results[mode + "_min"] = {impl: min(v) * 1e3 for impl, v in samples.items()}
    return results


def _saved_bytes(case, impl: str) -> int:
    storages = {}

    def pack(t):
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = case.run(impl)
    del y
    leaves = {p.untyped_storage().data_ptr() for p in case.inputs()}
    return sum(n for ptr, n in storages.items() if ptr not in leaves)  # activations only, not the inputs


def memory_worker(shape: dict, impl: str, device: str, dtype: str):
    """Runs in a fresh process: (bytes saved for backward, peak memory growth) of one forward+backward."""
    dev, dt = torch.device(device), getattr(torch, dtype)
    case = make_case(Shape3d(**shape) if "cal_dim" in shape else Shape(**shape), dev, dt)
    saved = _saved_bytes(case, impl)
    return saved, peak_memory_growth(lambda: case.forward_backward(impl), dev)


class Block:
    """BN -> ReLU -> 3x3 conv on the (B*T) frames, as in a TAda2D bottleneck: plain vs fast."""

    def __init__(self, s: Shape, device, dtype, seed=0):
        torch.manual_seed(seed)
        kw = dict(device=device, dtype=dtype)
        self.s = s
        b, t, c, hw = s.batch, s.frames, s.channels, s.size
        self.bn = torch.nn.BatchNorm2d(c).to(**kw)
        self.weight = (torch.randn(c, c, 3, 3, **kw) * 0.05).requires_grad_()
        self.alpha = (1 + 0.1 * torch.randn(b, c, t, **kw)).requires_grad_()
        self.x = torch.randn(b * t, c, hw, hw, **kw).requires_grad_()
        hw_out = (hw + 2 - 3) // s.stride + 1
        self.grad_frames = torch.randn(b * t, c, hw_out, hw_out, **kw)
        self.grad_video = self.grad_frames.reshape(b, t, c, hw_out, hw_out).transpose(1, 2)

    def plain(self, x):
        return F.conv2d(F.relu(self.bn(x)), self.weight, None, self.s.stride, 1)

    def fast(self, x, alpha):
        b, t = self.s.batch, self.s.frames
        z = F.relu(self.bn(x))
        z = z.reshape(b, t, *z.shape[1:]).transpose(1, 2)
        return tada_conv2d(z, self.weight, alpha, stride=self.s.stride, padding=1, impl="fast")

    def step(self, fn, takes_alpha, train):
        args = (self.x, self.alpha) if takes_alpha else (self.x,)
        if not train:
            with torch.no_grad():
                return fn(*args)
        y = fn(*args)
        y.backward(self.grad_frames if len(args) == 1 else self.grad_video)
        for p in (self.x, self.alpha, self.weight, self.bn.weight, self.bn.bias):
            p.grad = None


def time_block(s: Shape, device, dtype, repeats, warmup):
    blk = Block(s, device, dtype)
    fns = {  # name: (callable, takes alpha)
        "plain": (blk.plain, False),
        "fast": (blk.fast, True),
        "plain_compiled": (torch.compile(blk.plain), False),
        "fast_compiled": (torch.compile(blk.fast), True),
    }
    out = {}
    for mode, train in (("fwd", False), ("fwd_bwd", True)):
        blk.bn.train(train)
        torch._dynamo.reset()  # compile each mode afresh: inference graphs vs training graphs
        samples = {k: [] for k in fns}
        for i in range(warmup + 1 + repeats):  # +1: the first call of a compiled fn compiles
            for k, (fn, takes_alpha) in fns.items():
                sync(device)
                t0 = time.perf_counter()
                blk.step(fn, takes_alpha, train)
                sync(device)
                if i > warmup:
                    samples[k].append(time.perf_counter() - t0)
        out[mode] = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    return out


def _fmt_table(rows, mem, tuned):
    head = (
        "| model | layer | C | in | fwd plain ms | fwd fast/plain | fwd grouped/fast | fwd+bwd plain ms "
        "| fwd+bwd fast/plain | fwd+bwd fast_nc/plain | fwd+bwd frames/plain | fwd+bwd grouped/fast | auto picks "
        "| auto/plain fwd | auto/plain fwd+bwd | auto/plain fwd+bwd, minima |"
    )
    if tuned:
        head += (" tuned alloc: fwd+bwd plain ms | fast/plain fwd | fast/plain fwd+bwd | auto/plain fwd+bwd "
                 "| auto/plain fwd+bwd, minima |")
    if mem:
        head += " saved MB fast / frames / grouped | peak MB plain / fast / frames / grouped |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for i, r in enumerate(rows):
        f, fb = r["fwd"], r["fwd_bwd"]
        line = (
            f"| {r['model']} | {r['layer']} | {r['channels']} | {r['size']}² | {f['plain']:.2f} "
            f"| {f['fast'] / f['plain']:.2f} | {f['grouped'] / f['fast']:.2f} | {fb['plain']:.2f} "
            f"| {fb['fast'] / fb['plain']:.2f} | {fb['fast_nc'] / fb['plain']:.2f} | {fb['frames'] / fb['plain']:.2f} "
            f"| {fb['grouped'] / fb['fast']:.2f} "
            f"| {r['auto_picks']} | {f['auto'] / f['plain']:.2f} | {fb['auto'] / fb['plain']:.2f} "
            f"| {r['fwd_bwd_min']['auto'] / r['fwd_bwd_min']['plain']:.2f} |"
        )
        if tuned:
            tf, tfb = tuned[i]["fwd"], tuned[i]["fwd_bwd"]
            tm = tuned[i]["fwd_bwd_min"]
            line += (f" {tfb['plain']:.2f} | {tf['fast'] / tf['plain']:.2f} | {tfb['fast'] / tfb['plain']:.2f} "
                     f"| {tfb['auto'] / tfb['plain']:.2f} | {tm['auto'] / tm['plain']:.2f} |")
        if mem:
            m = mem[i]
            mb = lambda impl, k: f"{m[impl][k] / 2**20:.1f}"  # noqa: E731
            line += (
                f" {mb('fast', 'saved')} / {mb('frames', 'saved')} / {mb('grouped', 'saved')} "
                f"| {mb('plain', 'peak')} / {mb('fast', 'peak')} / {mb('frames', 'peak')} / {mb('grouped', 'peak')} |"
            )
        lines.append(line)
    return "\n".join(lines)


def _fmt_block_table(blocks):
    lines = [
        "| layer | in | fwd plain ms | fwd fast/plain eager | fwd fast/plain compiled | fwd+bwd plain ms "
        "| fwd+bwd fast/plain eager | fwd+bwd fast/plain compiled |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in blocks:
        f, fb = r["fwd"], r["fwd_bwd"]
        lines.append(
            f"| {r['layer']} | {r['size']}² | {f['plain']:.2f} | {f['fast'] / f['plain']:.2f} "
            f"| {f['fast_compiled'] / f['plain_compiled']:.2f} | {fb['plain']:.2f} | {fb['fast'] / fb['plain']:.2f} "
            f"| {fb['fast_compiled'] / fb['plain_compiled']:.2f} |"
        )
    return "\n".join(lines)


def _fmt_table_3d(rows, mem, tuned):
    head = (
        "| model | layer | C | in | fwd plain ms | fwd fast/plain | fwd grouped/fast | fwd+bwd plain ms "
        "| fwd+bwd fast/plain | fwd+bwd grouped/fast |"
    )
    if tuned:
        head += " tuned alloc: fwd+bwd plain ms | fast/plain fwd | fast/plain fwd+bwd | grouped/fast fwd+bwd |"
    if mem:
        head += " saved MB plain / fast / grouped | peak MB plain / fast / grouped |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for i, r in enumerate(rows):
        f, fb = r["fwd"], r["fwd_bwd"]
        line = (
            f"| {r['model']} | {r['layer']} | {r['channels']} | {r['frames']}x{r['size']}² | {f['plain']:.2f} "
            f"| {f['fast'] / f['plain']:.2f} | {f['grouped'] / f['fast']:.2f} | {fb['plain']:.2f} "
            f"| {fb['fast'] / fb['plain']:.2f} | {fb['grouped'] / fb['fast']:.2f} |"
        )
        if tuned:
            tf, tfb = tuned[i]["fwd"], tuned[i]["fwd_bwd"]
            line += (
                f" {tfb['plain']:.2f} | {tf['fast'] / tf['plain']:.2f} | {tfb['fast'] / tfb['plain']:.2f} "
                f"| {tfb['grouped'] / tfb['fast']:.2f} |"
            )
        if mem:
            m = mem[i]
            mb = lambda impl, k: f"{m[impl][k] / 2**20:.1f}"  # noqa: E731
            line += (
                f" {mb('plain', 'saved')} / {mb('fast', 'saved')} / {mb('grouped', 'saved')} "
                f"| {mb('plain', 'peak')} / {mb('fast', 'peak')} / {mb('grouped', 'peak')} |"
            )
        lines.append(line)
    return "\n".join(lines)


def _summary_3d(rows):
    out = {}
    for cal_dim in ("cin", "cout"):
        sel = [r for r in rows if r["cal_dim"] == cal_dim]
        deep = [r for r in sel if r["channels"] >= 256]  # res4, res5
        if not sel:
            continue
        ratio = lambda r, mode: r[mode]["fast"] / r[mode]["plain"]  # noqa: E731
        out[cal_dim] = {
            "fast_over_plain_max_fwd": max(ratio(r, "fwd") for r in sel),
            "fast_over_plain_max_fwd_bwd": max(ratio(r, "fwd_bwd") for r in sel),
            "deep_fast_over_plain_max_fwd_bwd": max((ratio(r, "fwd_bwd") for r in deep), default=float("nan")),
            "grouped_over_fast_fwd_bwd_median": statistics.median(
                r["fwd_bwd"]["grouped"] / r["fwd_bwd"]["fast"] for r in sel
            ),
        }
    return out


def _print_summary_3d(label, sm):
    for cal_dim, v in sm.items():
        print(
            f"{label} {cal_dim}: fast/plain max {v['fast_over_plain_max_fwd']:.2f} (fwd), "
            f"{v['fast_over_plain_max_fwd_bwd']:.2f} (fwd+bwd), {v['deep_fast_over_plain_max_fwd_bwd']:.2f} "
            f"(fwd+bwd, res4-res5); grouped/fast median {v['grouped_over_fast_fwd_bwd_median']:.2f} (fwd+bwd)"
        )


def _time_all(shapes, device, dtype, args, label):
    rows = []
    for s in shapes:
        t0 = time.perf_counter()
        r = time_shape(s, device, dtype, args.repeats, args.warmup)
        if not isinstance(s, Shape3d):
            r["auto_picks"] = auto_impl("cout" if s.depthwise else "cin", (s.batch, s.channels, s.frames, s.size, s.size),
                                        (s.channels, 1 if s.depthwise else s.channels, s.kernel, s.kernel),
                                        s.channels if s.depthwise else 1, device.type, s.stride)
        rows.append({**asdict(s), **r})
        fb = r["fwd_bwd"]
        print(
            f"  [{label}] {s.model:17s} {s.layer:12s} fwd+bwd plain {fb['plain']:7.2f} ms"
            f"  fast/plain {fb['fast'] / fb['plain']:.2f}  auto({r['auto_picks']})/plain {fb['auto'] / fb['plain']:.2f}"
            f"  grouped/fast {fb['grouped'] / fb['fast']:.2f}"
            f"   ({time.perf_counter() - t0:.0f}s)",
            flush=True,
        )
    return rows


def _summary(rows):
    dense = [r for r in rows if not r["depthwise"]]
    if not dense:
        return {}
    worst = lambda mode: max(r[mode]["fast"] / r[mode]["plain"] for r in dense)  # noqa: E731
    within = lambda mode: sum(r[mode]["fast"] / r[mode]["plain"] <= 1.10 for r in dense)  # noqa: E731
    return {
        "dense_fast_over_plain_max_fwd": worst("fwd"),
        "dense_fast_over_plain_max_fwd_bwd": worst("fwd_bwd"),
        "dense_shapes": len(dense),
        "dense_within_1.10_fwd": within("fwd"),
        "dense_within_1.10_fwd_bwd": within("fwd_bwd"),
        "grouped_over_fast_fwd_bwd_median_all": statistics.median(r["fwd_bwd"]["grouped"] / r["fwd_bwd"]["fast"] for r in rows),
        "auto_over_plain_max_fwd_bwd": max(r["fwd_bwd"]["auto"] / r["fwd_bwd"]["plain"] for r in rows),
        "auto_within_1.10_fwd_bwd": sum(r["fwd_bwd"]["auto"] / r["fwd_bwd"]["plain"] <= 1.10 for r in rows),
        "auto_over_plain_max_fwd_bwd_min": max(r["fwd_bwd_min"]["auto"] / r["fwd_bwd_min"]["plain"] for r in rows),
        "auto_within_1.10_fwd_bwd_min": sum(r["fwd_bwd_min"]["auto"] / r["fwd_bwd_min"]["plain"] <= 1.10 for r in rows),
        "shapes": len(rows),
    }


def _print_summary(label, sm):
    if sm:
        n = sm["dense_shapes"]
        print(
            f"{label}: dense fast/plain max {sm['dense_fast_over_plain_max_fwd']:.2f} (fwd), "
            f"{sm['dense_fast_over_plain_max_fwd_bwd']:.2f} (fwd+bwd); within 1.10 on "
            f"{sm['dense_within_1.10_fwd']}/{n} (fwd), {sm['dense_within_1.10_fwd_bwd']}/{n} (fwd+bwd); "
            f"grouped/fast median {sm['grouped_over_fast_fwd_bwd_median_all']:.2f} (fwd+bwd); auto/plain max "
            f"{sm['auto_over_plain_max_fwd_bwd']:.2f}, within 1.10 on {sm['auto_within_1.10_fwd_bwd']}/{sm['shapes']} (fwd+bwd); "
            f"minima: auto/plain max {sm['auto_over_plain_max_fwd_bwd_min']:.2f}, within 1.10 on "
            f"{sm['auto_within_1.10_fwd_bwd_min']}/{sm['shapes']} (fwd+bwd)"
        )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-memory", action="store_true", help="skip the per-process peak-memory runs")
    p.add_argument("--no-tuned", action="store_true", help="CPU: skip the second pass with tada.utils.tune_cpu_allocator()")
    p.add_argument("--only", default=None, help="substring filter on model name")
    p.add_argument("--block", action="store_true",
                   help="also time BN->ReLU->conv blocks (dense shapes), eager and torch.compile'd")
    p.add_argument("--conv3d", action="store_true",
                   help="time TAdaConv3d at R3D-R50 shapes (instead of the TAdaConv2d rows)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    info = machine_info(device)
    op = "TAdaConv3d" if args.conv3d else "TAdaConv"
    print(f"# {op} operator speed: {info['device']}, torch {info['torch']}, {info['threads']} threads, {args.dtype}")
    all_shapes = conv3d_shapes() if args.conv3d else model_shapes()
    shapes = [s for s in all_shapes if args.only is None or args.only in s.model]

    mem = {}
    if not args.no_memory:  # first, in fresh processes, before this process changes its allocator
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=1) as pool:
            for i, s in enumerate(shapes):
                for impl in ("plain", "fast", "frames", "grouped"):
                    saved, peak = pool.submit(memory_worker, asdict(s), impl, args.device, args.dtype).result()
                    mem.setdefault(i, {})[impl] = {"saved": saved, "peak": peak}

    info["speed_probe_ms"] = [speed_probe(device)]
    rows = _time_all(shapes, device, dtype, args, "default alloc")
    tuned = []
    if device.type == "cpu" and not args.no_tuned and tune_cpu_allocator():
        tuned = _time_all(shapes, device, dtype, args, "tuned alloc")
    info["speed_probe_ms"].append(speed_probe(device))
    print(f"speed probe (_common.speed_probe, ~11 ms on a quiet 2-core Xeon): "
          f"{info['speed_probe_ms'][0]:.1f} ms before, {info['speed_probe_ms'][1]:.1f} ms after the timings")

    if args.conv3d:
        print()
        print(_fmt_table_3d(rows, mem, tuned))
        print()
        summary = {"default_allocator": _summary_3d(rows)}
        _print_summary_3d("default allocator", summary["default_allocator"])
        if tuned:
            summary["tuned_allocator"] = _summary_3d(tuned)
            _print_summary_3d("tuned allocator  ", summary["tuned_allocator"])
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as f:
                json.dump({"machine": info, "dtype": args.dtype, "repeats": args.repeats, "summary": summary,
                           "rows": rows, "rows_tuned_allocator": tuned,
                           "memory": {str(k): v for k, v in mem.items()}}, f, indent=1)
            print(f"wrote {args.json}")
        return 0

    blocks = []
    if args.block:
        for s in shapes:
            if s.dense:
                r = time_block(s, device, dtype, args.repeats, args.warmup)
                blocks.append({**asdict(s), **r})
                print(f"  [block] {s.layer:12s} " + "  ".join(
                    f"{m}: eager {r[m]['fast'] / r[m]['plain']:.2f} compiled {r[m]['fast_compiled'] / r[m]['plain_compiled']:.2f}"
                    for m in ("fwd", "fwd_bwd")), flush=True)

    print()
    print(_fmt_table(rows, mem, tuned))
    if blocks:
        print()
        print(_fmt_block_table(blocks))
    print()
    summary = {"default_allocator": _summary(rows)}
    _print_summary("default allocator", summary["default_allocator"])
    if tuned:
        summary["tuned_allocator"] = _summary(tuned)
        _print_summary("tuned allocator  ", summary["tuned_allocator"])
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": info, "dtype": args.dtype, "repeats": args.repeats, "summary": summary,
                       "rows": rows, "rows_tuned_allocator": tuned, "blocks": blocks,
                       "memory": {str(k): v for k, v in mem.items()}}, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
