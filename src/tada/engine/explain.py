"""What a TAda model calibrates: the per-frame ``alpha`` of every TAdaConv layer for one video
(``tada explain``).

A TAdaConv's kernel is ``W_t = alpha_t * W``; ``alpha`` ``(B, C_cal, T)`` comes from the layer's routing
function and is exactly 1 at initialisation, so ``alpha - 1`` is what training taught the layer to do
differently per frame. :func:`calibrations` records it with forward hooks while the model runs once:

* :class:`~tada.nn.TAdaConv2d`: the routing's output (the input-side ``alpha_in`` for
  ``cal_dim="cin_cout"``, without the bias calibration), i.e. what ``tada_conv2d`` receives;
* :class:`~tada.nn.TAdaConv3d`: the same brought to the output frames with
  :func:`~tada.nn.functional3d.sample_output_frames`, as the layer passes it to ``tada_conv3d``;
* a layer called with ``alpha=`` by its caller: that ``alpha``.

Nothing is recomputed, so the tensors are the ones the convolutions used.

``tada explain VIDEO --checkpoint CKPT`` reads the video as ``tada predict`` does, with the checkpoint's
config but one view only (the centre clip, the centre crop), runs it and its time reversal (the frame
axis flipped), and writes per layer a heatmap pair of ``alpha - 1`` (channels x frames; the reversed
clip in its own frame order), a plot of the calibration magnitude ``mean_c |alpha_t - 1|`` across depth
and ``calibrations.json``: per layer the shape, the mean ``|alpha - 1|`` and how differently the layer
calibrates the reversed clip, ``max_c |alpha(video)_t - alpha(reversed)_{T-1-t}|`` per frame. A routing
blind to frame order gives 0 there; TAdaConv's temporal convolutions do not. (For a layer with a
temporal stride the flipped output frames are not the same instants of the video; TAda2D and the
TAdaConv3d layers of the model zoo keep every frame.)

    tada explain VIDEO --checkpoint CKPT [--layers NAME|PATTERN ...] [--out DIR] [--device cpu]
"""
from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor

from ..nn import TAdaConv2d, TAdaConv3d
from ..nn.functional3d import sample_output_frames

__all__ = ["tada_layers", "select_layers", "calibrations", "reversal_report", "plot_calibrations",
           "explain_video", "build_parser", "main"]

Layers = Union[None, str, Sequence[str]]


def tada_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """The model's TAdaConv layers (:class:`~tada.nn.TAdaConv2d`, :class:`~tada.nn.TAdaConv3d` and their
    subclasses) by name, in ``named_modules()`` order (input to output)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (TAdaConv2d, TAdaConv3d))}


def select_layers(model: nn.Module, layers: Layers = None) -> Dict[str, nn.Module]:
    """The TAdaConv layers named by ``layers`` (None: all; else names or ``fnmatch`` patterns such as
    ``"layer3.*"``), in depth order. An unknown name, or a model without TAdaConv, is a ValueError."""
    found = tada_layers(model)
    if not found:
        raise ValueError(f"{type(model).__name__} has no TAdaConv layer (TAdaConv2d / TAdaConv3d): there is no "
                         "calibration to show; use a TAda model (e.g. tada2d_r50, tadaconvnextv2_tiny)")
    if layers is None:
        return found
    patterns = [layers] if isinstance(layers, str) else list(layers)
    if not patterns:
        raise ValueError(f"no layers given; the model's TAdaConv layers are: {', '.join(found)}")
    unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in found)]
    if unknown:
        raise ValueError(f"unknown TAdaConv layer(s) {unknown}; the model's TAdaConv layers are: {', '.join(found)}")
    return {n: m for n, m in found.items() if any(fnmatch.fnmatchcase(n, p) for p in patterns)}


def _first(alpha):
    """``alpha_in`` of a ``(alpha_in, alpha_out)`` pair (``cal_dim="cin_cout"``), else ``alpha``."""
    return alpha[0] if isinstance(alpha, (tuple, list)) else alpha


def _as_used(layer: nn.Module, routed):
    """The ``alpha`` the layer hands its functional op, from its routing's output."""
    if layer.bias_calibration:  # (alpha, bias_alpha)
        routed = routed[0]
    alpha = _first(routed)
    if isinstance(layer, TAdaConv3d):  # per input frame -> per output frame, as TAdaConv3d.calibration does
        alpha = sample_output_frames(alpha, layer.kernel_size[0], layer.stride[0], layer.padding[0],
                                     layer.dilation[0])
    return alpha


@torch.no_grad()
def calibrations(model: nn.Module, clip: Tensor, layers: Layers = None) -> Dict[str, Tensor]:
    """``{layer name: alpha}`` of one forward pass of ``model`` (in eval mode, without gradients) on
    ``clip`` ``(B, C, T, H, W)``: per chosen TAdaConv layer (see :func:`select_layers`) the calibration it
    used, a CPU float tensor ``(B, C_cal, T)`` (``T_out`` for a TAdaConv3d). A video-text model runs its
    video tower (``encode_video``). The hooks are removed and every module's train/eval mode restored
    afterwards, also when the forward pass fails."""
    chosen = select_layers(model, layers)
    if not isinstance(clip, Tensor) or clip.dim() != 5:
        got = tuple(clip.shape) if isinstance(clip, Tensor) else type(clip).__name__
        raise ValueError(f"clip must be a (B, C, T, H, W) tensor, got {got}")
    found: Dict[str, Tensor] = {}
    running: List[tuple] = []  # (layer name, alpha given by the caller) of the TAdaConv forward in progress

    def record(name: str, alpha) -> None:
        if name in found:
            raise ValueError(f"TAdaConv layer {name} ran twice in one forward pass; calibrations() expects each "
                             "layer to run once")
        found[name] = alpha.detach().float().cpu()

    def before(name):
        def hook(module, args, kwargs):
            given = args[1] if len(args) > 1 else kwargs.get("alpha")
            running.append((name, given is not None))
            if given is not None:
                record(name, _first(given))
        return hook

    def routed(name, layer):
        def hook(module, args, output):
            if running and running[-1] == (name, False):  # this layer's own routing (a shared one fires for each)
                record(name, _as_used(layer, output))
        return hook

    def after(module, args, output):
        running.pop()  # returns None: the output is left as it is

    handles = []
    try:
        for name, layer in chosen.items():
            handles.append(layer.register_forward_pre_hook(before(name), with_kwargs=True))
            handles.append(layer.register_forward_hook(after))
            if layer.routing is not None:
                handles.append(layer.routing.register_forward_hook(routed(name, layer)))
        modes = {m: m.training for m in model.modules()}  # restored as they were (a frozen BN stays in eval)
        model.eval()
        try:
            param = next(iter(model.parameters()), None)
            x = clip.to(param.device) if param is not None else clip
            getattr(model, "encode_video", model)(x)
        finally:
            for m, training in modes.items():
                m.training = training
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in chosen if n not in found]
    if missing:
        raise ValueError(f"TAdaConv layer(s) {missing} did not run in the forward pass")
    return {n: found[n] for n in chosen}


def reversal_report(alpha: Dict[str, Tensor], alpha_reversed: Dict[str, Tensor]) -> Dict[str, Dict[str, Any]]:
    """Per layer: ``shape``, ``mean_abs_dev`` (mean ``|alpha - 1|`` of the video; also ``_reversed``),
    ``reversal_diff_per_frame`` (frame ``t`` of the video: the max over channels and clips of
    ``|alpha(video)_t - alpha(reversed)_{T-1-t}|``) and its maximum ``reversal_max_diff``."""
    out = {}
    for name, a in alpha.items():
        r = alpha_reversed[name]
        diff = (a - r.flip(-1)).abs()
        out[name] = {"shape": list(a.shape), "mean_abs_dev": float((a - 1).abs().mean()),
                     "mean_abs_dev_reversed": float((r - 1).abs().mean()),
                     "reversal_diff_per_frame": diff.amax(dim=(0, 1)).tolist(), "reversal_max_diff": float(diff.max())}
    return out


def _file_name(i: int, name: str) -> str:
    return f"alpha_{i:02d}_{name.replace('/', '_')}.png"


def plot_calibrations(out, alpha: Dict[str, Tensor], alpha_reversed: Dict[str, Tensor], *,
                      sample: int = 0) -> List[str]:
    """PNGs in folder ``out`` for clip ``sample`` of the batch: per layer ``alpha_{depth}_{name}.png``, the
    heatmaps of ``alpha_t - 1`` (channels x frames) of the video and of its time reversal (in the
    reversed clip's own frame order) on one colour scale symmetric about 0; and
    ``calibration_depth.png``, ``mean_c |alpha_t - 1|`` per layer in depth order, one line per frame.
    Returns the paths written."""
    from .plots import _plt

    plt = _plt()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (name, a) in enumerate(alpha.items()):
        dev, dev_r = (a[sample] - 1).numpy(), (alpha_reversed[name][sample] - 1).numpy()
        lim = float(max(abs(dev).max(), abs(dev_r).max())) or 1e-6  # all zero at init
        c, t = dev.shape
        fig, axes = plt.subplots(1, 2, figsize=(9, 4.4), sharey=True, layout="constrained")
        titles = ("video", "time-reversed video\n(its own frame order: frame 0 = the video's last)")
        for ax, values, title in zip(axes, (dev, dev_r), titles):
            im = ax.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            ax.set(title=title, xlabel="frame t")
            if t <= 32:
                ax.set_xticks(range(t))
        axes[0].set_ylabel("calibrated channel")
        fig.colorbar(im, ax=list(axes), label="α_t − 1", shrink=0.9)
        fig.suptitle(f"{name}: calibration α − 1 ({c} channels × {t} frames)")
        path = out / _file_name(i, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(str(path))
    paths.append(_plot_depth(plt, out / "calibration_depth.png", alpha, sample))
    return paths


def _plot_depth(plt, path: Path, alpha: Dict[str, Tensor], sample: int) -> str:
    names = list(alpha)
    mag = [(a[sample] - 1).abs().mean(dim=0) for a in alpha.values()]  # (T,) per layer
    x = list(range(len(names)))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(names) + 3), 4.6), layout="constrained")
    frames = {m.numel() for m in mag}
    if len(frames) == 1:
        t = frames.pop()
        cmap = plt.get_cmap("viridis", t)  # one colour per frame
        for f in range(t):
            ax.plot(x, [float(m[f]) for m in mag], "o-", color=cmap(f), lw=1, ms=3)
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(-0.5, t - 0.5))
        fig.colorbar(sm, ax=ax, label="frame t", ticks=range(0, t, max(1, t // 16)))
        title = "calibration magnitude across depth (one line per frame)"
    else:  # layers at other frame rates: frames of different layers are not the same instants
        lo, hi = [float(m.min()) for m in mag], [float(m.max()) for m in mag]
        ax.fill_between(x, lo, hi, color="C0", alpha=0.25, label="min–max over frames")
        title = "calibration magnitude across depth (frame counts differ between layers)"
    ax.plot(x, [float(m.mean()) for m in mag], "k--", lw=2, label="mean over frames")
    ax.legend(fontsize=8)
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=7)
    ax.set(title=title, xlabel="TAdaConv layer (input → output)", ylabel="mean over channels of |α_t − 1|")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _centre_view(video, cfg) -> Tensor:
    """The single test view ``(1, 3, T, H, W)`` of ``video`` (centre clip, centre crop) with the
    checkpoint's frames, sampling, sizes and normalisation, read as ``tada predict`` reads its views."""
    from .predict import read_test_views

    x, ds = read_test_views(video, dataclasses.replace(cfg.data, test_clips=1, test_crops=1), None)
    if x is None:
        raise ValueError(f"cannot read video {video}: {ds.failures.get(str(video), 'unreadable video')}")
    return x


def explain_video(video, checkpoint, *, layers: Layers = None, out=None, device: str = "cpu") -> Dict[str, Any]:
    """``tada explain``: the calibrations of ``checkpoint``'s model for ``video`` and its time reversal,
    their plots and ``calibrations.json`` in ``out`` (default: ``explain_{video name}`` beside the
    checkpoint). Returns the JSON's content."""
    from .build import load_for_inference

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available here; use --device cpu")
    if not Path(video).is_file():
        raise FileNotFoundError(f"video not found: {video} (give the path of a video file)")
    model, cfg, _ = load_for_inference(checkpoint, device)
    if not tada_layers(model):
        raise ValueError(f"{checkpoint} holds a {cfg.model.name} model, which has no TAdaConv layer: there is no "
                         "calibration to show; give a checkpoint of a TAda model (e.g. tada2d_r50, "
                         "tadaconvnextv2_tiny)")
    chosen = list(select_layers(model, layers))  # a bad --layers fails before the video is decoded
    x = _centre_view(video, cfg).to(device)
    alpha = calibrations(model, x, chosen)
    alpha_reversed = calibrations(model, x.flip(2), chosen)
    out = Path(out) if out is not None else Path(checkpoint).parent / f"explain_{Path(video).stem}"
    files = plot_calibrations(out, alpha, alpha_reversed)
    d = cfg.data
    report: Dict[str, Any] = {
        "video": str(video), "checkpoint": str(checkpoint), "model": cfg.model.name,
        "view": {"frames": d.frames, "sampling": d.sampling, "rate": d.rate, "short_side": d.test_short_side,
                 "crop_size": d.test_crop_size, "normalize": d.normalize, "clip": "centre", "crop": "centre"},
        "layers": reversal_report(alpha, alpha_reversed),
        "note": "alpha is exactly 1 at initialisation; reversal_diff_per_frame[t] = max over channels of "
                "|alpha(video)_t - alpha(reversed video)_{T-1-t}| (0 for a routing blind to frame order)",
        "files": files,
    }
    path = out / "calibrations.json"
    path.write_text(json.dumps(report, indent=1))
    report["json"] = str(path)
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tada explain",
        description="The per-frame calibration alpha of every TAdaConv layer of a checkpoint for one video and "
                    "its time reversal: heatmaps of alpha - 1, the calibration magnitude across depth, and "
                    "calibrations.json (per layer: shape, mean |alpha - 1|, how differently the reversed video "
                    "is calibrated).")
    p.add_argument("video", help="a video file")
    p.add_argument("--checkpoint", required=True, help="a checkpoint of `tada train` (a TAda model)")
    p.add_argument("--layers", nargs="+", default=None, metavar="NAME",
                   help="TAdaConv layers by name or pattern, e.g. 'layer3.*' (default: all)")
    p.add_argument("--out", default=None, help="output folder (default: explain_<video> beside the checkpoint)")
    p.add_argument("--device", default="cpu")
    return p


def _main(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    r = explain_video(args.video, args.checkpoint, layers=args.layers, out=args.out, device=args.device)
    v = r["view"]
    print(f"{r['model']} on {r['video']}: calibration of {len(r['layers'])} TAdaConv layers "
          f"({v['frames']} frames, centre view {v['crop_size']}x{v['crop_size']})")
    width = max(len(n) for n in r["layers"])
    print(f"  {'layer':<{width}}  {'C_cal x T':>10}  {'mean|α-1|':>10}  {'reversed: max|Δα|':>17}")
    for name, s in r["layers"].items():
        shape = f"{s['shape'][1]} x {s['shape'][2]}"
        print(f"  {name:<{width}}  {shape:>10}  {s['mean_abs_dev']:>10.4g}  {s['reversal_max_diff']:>17.4g}")
    if all(s["mean_abs_dev"] == 0 for s in r["layers"].values()):
        print("every alpha is exactly 1: the routing is still at its initialisation (an untrained checkpoint?)")
    print(f"plots: {Path(r['json']).parent} ({len(r['files'])} PNGs); numbers: {r['json']}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """``tada explain``; returns the exit code (2: a bad option, path or value, with a one-line message)."""
    from .commands import run_command

    return run_command("tada explain", _main, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
