"""Plug-in backbones (SPEC §2, §7; paper Table 3c / A5): R(2+1)D-R50, R3D-R50, SlowOnly 8x8 and
SlowFast 4x16 / 8x8 (R50), each with and without TAdaConv.

Every one of them is built from :class:`tada.models.builders.Bottleneck` with other conv factories:

=================  =========================  ===========================  ==========================
model              stem                       ``conv_a`` (1x1)             ``conv_b`` (3x3)
=================  =========================  ===========================  ==========================
R(2+1)D            1x7x7 s(1,2,2), no pool    1x1                          1x3x3 -> BN -> ReLU -> 3x1x1
R3D                3x7x7 s(1,2,2), no pool    1x1x1                        3x3x3
SlowOnly (slow)    1x7x7 + max-pool 1x3x3     kt x1x1, kt = 1,1,3,3        1x3x3
SlowFast fast      5x7x7 + max-pool 1x3x3     3x1x1 in every stage         1x3x3
=================  =========================  ===========================  ==========================

R(2+1)D and R3D keep the paper's R2D layout (no max-pool, stride 2 in the first block of every stage,
``layer1`` included, as TSN-R50); SlowOnly / SlowFast follow PySlowFast (max-pool, ``layer1`` stride 1).
TAda variants replace the spatial convs by :class:`~tada.nn.TAdaConv2d` (``cin``, V1 routing r=4 on
the conv input) — or, in R3D, the 3x3x3 convs by ``tada.nn.TAdaConv3d`` — **without** T-Pool (the
paper's plug-in counts, Table 3c, are the routing functions alone: with T-Pool every one of them would
be 0.0076M larger, e.g. SlowOnly 35.61M instead of 35.60M, R(2+1)D 31.27M instead of 31.26M);
``aggregation=t_pool()`` adds it. ``tada_r2plus1d_r50_2d1d`` also calibrates the temporal 3x1x1 convs
(TAdaConv3d).

The TAda factories take ``routing=`` (any name of :func:`tada.nn.routing_names`: ``"v1"``, the
default, ``"v2"`` or a calibration generator of :mod:`tada.nn.calibration`, paper Table 3a / A8) and
``routing_kwargs=`` for every TAdaConv they build, e.g. ``tada.create_model("tada_r3d_r50",
routing="dynamic_t", routing_kwargs={"init": "ones"})``.

**SlowFast** (:class:`SlowFast`): the fast pathway reads all T frames with ``1/beta`` of the widths,
the slow one every ``alpha``-th frame; after the stem and after ``layer1..layer3`` a lateral connection
``Conv3d(C_f -> 2 C_f, [k, 1, 1], stride [alpha, 1, 1], padding [k // 2, 0, 0]) -> BN -> ReLU`` turns
the fast features into slow-rate ones, concatenated after the slow channels (slow first-block input
widths 80, 320, 640, 1280 for R50). ``forward_features`` returns both pathways on the slow frame grid:
``cat([slow, fast averaged over each slow frame's alpha fast frames])``, so the head's global mean is the
PySlowFast head (each pathway pooled over (T, H, W), concatenated) when ``alpha`` divides T.

**Weights.** ``checkpoint_filter_fn`` reads PySlowFast checkpoints (``SLOWFAST_{4x16,8x8}_R50``,
``SLOW_8x8_R50``: ``s1.pathway0_stem.conv``, ``s2.pathway1_res0.branch2.a``, ``s1_fuse.conv_f2s``,
``head.projection``) and PyTorchVideo ones (``slowfast_r50``, ``slow_r50``:
``blocks.0.multipathway_blocks.0.conv``, ``blocks.1.multipathway_blocks.0.res_blocks.0.branch2.conv_a``,
``blocks.0.multipathway_fusion.conv_fast_to_slow``, ``blocks.6.proj``) into SlowFast / SlowOnly (a pure
renaming; 1 x kh x kw Conv3d kernels are squeezed onto the per-frame Conv2d layers), and torchvision
``resnet50`` state dicts (and this project's own):
a 2D kernel goes to a 3D layer inflated ``W3d[:, :, tau] = W2d / kt`` (Appendix D), to a layer with more
inputs (SlowFast's lateral concatenation) in its first channels with zeros for the lateral ones, and the
layers no 2D network has (R(2+1)D's temporal convs and their BN, SlowFast's fast pathway and lateral
connections: :func:`~tada.models.builders.mark_absent_in_2d`) keep their initialisation. TAda parameters
are new by design (:meth:`~tada.models.base.VideoClassifier.new_parameter_names`).
"""
from __future__ import annotations

import logging
import re
from functools import partial
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from ..nn.calibration import routing_names
from ._checks import check_pos_int, check_pos_int_seq
from .base import VideoClassifier
from .convert import Rule, apply_rules, fit_singleton_time
from .builders import (Bottleneck, ConvFn, FrameMaxPool2d, NormFn, as_video, batch_norm, conv2d, conv2plus1d, conv3d,
                       inflate_conv_weight, mark_absent_in_2d, run_layers, tada_conv2d, tada_conv3d)
from .registry import register_model
from .resnet import R50_DEPTHS, R50_WIDTHS, VideoResNet

__all__ = [
    "VideoResNet3d",
    "SlowFast",
    "DualPathBlock",
    "LateralFusion",
    "r2plus1d_r50",
    "tada_r2plus1d_r50",
    "tada_r2plus1d_r50_2d1d",
    "r3d_r50",
    "tada_r3d_r50",
    "slowonly_r50",
    "tada_slowonly_r50",
    "slowfast_r50_4x16",
    "tada_slowfast_r50_4x16",
    "slowfast_r50_8x8",
    "tada_slowfast_r50_8x8",
    "pytorchvideo_to_pyslowfast",
]

log = logging.getLogger("tada.models")

PerStage = Union[ConvFn, Sequence[ConvFn]]


def _per_stage(f: PerStage, n: int, name: str) -> List[ConvFn]:
    if callable(f):
        return [f] * n
    f = list(f)
    if len(f) != n:
        raise ValueError(f"{name} gives {len(f)} factories for {n} stages")
    return f


def _check_drop_classes(drop_rate, num_classes) -> None:
    if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)) or not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be a float in [0, 1), got {drop_rate!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be a non-negative int, got {num_classes!r}")


def _stem_pool() -> nn.Module:
    return FrameMaxPool2d(3, 2, 1)  # [1, 3, 3], stride [1, 2, 2], padding [0, 1, 1]


# -- converting 2D checkpoints -------------------------------------------------------------------------
class _From2d:
    """Mixin: torchvision ``resnet50`` (2D) state dicts, PySlowFast and PyTorchVideo checkpoints -> a
    model with 3D layers (see the module doc). A class names its rule sets: ``_FROM_2D_RULES`` (after
    the torchvision renaming) and ``_PYSLOWFAST_RULES``."""

    _FROM_2D_RULES: Tuple[Rule, ...] = ()
    _PYSLOWFAST_RULES: Tuple[Rule, ...] = ()

    def _absent_in_2d(self) -> Set[str]:
        out: Set[str] = set()
        for name, m in self.named_modules():
            if getattr(m, "_tada_absent_in_2d", False):
                out.update(f"{name}.{k}" for k in m.state_dict())
        return out

    def _fit_2d(self, sd: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        """The structural step: 2D kernels inflated onto 3D layers, zero lateral inputs, and the layers no
        2D network has keep their initialisation."""
        out: Dict[str, Tensor] = {}
        for k, v in sd.items():
            ref = own.get(k)
            if ref is not None and v.dim() == 4 and ref.dim() == 5:
                v = inflate_conv_weight(v, ref.shape[2])
            if ref is not None and v.dim() == ref.dim() >= 4 and v.shape[0] == ref.shape[0] and v.shape[1] < ref.shape[1] \
                    and v.shape[2:] == ref.shape[2:]:
                # lateral inputs concatenated after the 2D network's own: zero, so they start silent
                pad = v.new_zeros((v.shape[0], ref.shape[1] - v.shape[1]) + tuple(v.shape[2:]))
                v = torch.cat([v, pad], 1)
            out[k] = v
        absent = self._absent_in_2d() - self.new_parameter_names()
        # a 2D checkpoint has none of these; one that has some (this project's own) must have them all
        kept = [] if any(k in out for k in absent) else sorted(absent)
        for k in kept:
            out[k] = own[k].detach().clone()
        if kept:
            log.info("%s: %d tensors have no 2D counterpart and keep their initialisation (e.g. %s)",
                     type(self).__name__, len(kept), kept[0])
        return out

    def checkpoint_filter_fn(self, state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        """A torchvision ``resnet50`` state dict (inflated, see the module doc), a PySlowFast or
        PyTorchVideo checkpoint (SlowFast / Slow R50) or this project's own."""
        keys = list(state_dict)
        if any(k.startswith("blocks.0.") for k in keys) and any(".res_blocks." in k for k in keys):
            state_dict = pytorchvideo_to_pyslowfast(state_dict)
            keys = list(state_dict)
        own = self.state_dict()
        if "s1.pathway0_stem.conv.weight" in state_dict:
            sd = apply_rules(state_dict, self._PYSLOWFAST_RULES, fields=self._fields())
            return fit_singleton_time(sd, own)  # a 1 x kh x kw Conv3d on our per-frame Conv2d
        if any(k.startswith("backbone.") for k in keys):
            raise ValueError(
                f"{type(self).__name__} reads torchvision resnet50 state dicts and this project's checkpoints; "
                f"a released TAda checkpoint ('backbone.' keys) is for tada2d_r50 / the ConvNeXt and ViT families"
            )
        if "conv1.weight" not in state_dict or not any(k.startswith("layer1.") for k in keys):
            raise ValueError(
                "unrecognised checkpoint format: expected a torchvision resnet state dict (conv1.weight, "
                f"layer1.0.conv1.weight, ..., fc.weight) or this project's keys; found e.g. {sorted(keys)[:5]}"
            )
        sd = apply_rules(VideoResNet._from_torchvision(self, state_dict), self._FROM_2D_RULES, targets=own)
        return self._fit_2d(sd, own)


# -- checkpoint rule sets (tada.models.convert) ---------------------------------------------------------
#: R(2+1)D: a 2D network's 3x3 conv is the spatial part of ``conv2`` (where the model has one)
R2PLUS1D_FROM_2D_RULES = (
    Rule(r"(?P<b>layer\d+\.\d+\.conv2)\.weight", "{b}.spatial.weight", if_target_exists=True),
)
#: SlowFast: a 2D network's blocks are the slow pathway (this project's own keys already name theirs)
SLOWFAST_FROM_2D_RULES = (
    Rule(r"(?P<b>layer\d+\.\d+)\.(?!slow\.|fast\.)(?P<rest>.+)", "{b}.slow.{rest}"),
)

_PSF_BRANCH = {"branch1": "downsample.0", "branch1_bn": "downsample.1", "branch2.a": "conv1", "branch2.a_bn": "bn1",
               "branch2.b": "conv2", "branch2.b_bn": "{bn2}", "branch2.c": "conv3", "branch2.c_bn": "bn3"}


def _pyslowfast_blocks(pathway: str, dst: str) -> Tuple[Rule, ...]:
    return tuple(
        Rule(rf"s(?P<s>\d)\.pathway{pathway}_res(?P<j>\d+)\.{re.escape(src)}\.(?P<p>.+)",
             f"layer{{s-1}}.{{j}}{dst}.{ours}.{{p}}")
        for src, ours in _PSF_BRANCH.items()
    )


_PSF_COMMON = (
    Rule(r"s1\.pathway0_stem\.conv\.(?P<p>.+)", "conv1.{p}"),
    Rule(r"s1\.pathway0_stem\.bn\.(?P<p>.+)", "bn1.{p}"),
    Rule(r"s(?P<s>\d)_fuse\.conv_f2s\.(?P<p>.+)", "fuse.{s-1}.conv.{p}"),
    Rule(r"s(?P<s>\d)_fuse\.bn\.(?P<p>.+)", "fuse.{s-1}.bn.{p}"),
    Rule.prefix("head.projection.", "head."),
)
#: PySlowFast ``SLOW_8x8_R50`` -> SlowOnly (pathway 0); pathway-1 keys are kept, so strict loading names them
PYSLOWFAST_SLOW_RULES = _PSF_COMMON + _pyslowfast_blocks("0", "")
#: PySlowFast ``SLOWFAST_*_R50`` -> SlowFast: pathway 0 is ``slow``, pathway 1 ``fast`` / ``fast_conv1``
PYSLOWFAST_SLOWFAST_RULES = _PSF_COMMON + (
    Rule(r"s1\.pathway1_stem\.conv\.(?P<p>.+)", "fast_conv1.{p}"),
    Rule(r"s1\.pathway1_stem\.bn\.(?P<p>.+)", "fast_bn1.{p}"),
) + _pyslowfast_blocks("0", ".slow") + _pyslowfast_blocks("1", ".fast")

_PTV_PATH = r"(?:multipathway_blocks\.(?P<p>\d)\.)?"  # absent in single-pathway models: pathway 0
_PTV_RES = r"blocks\.(?P<n>\d)\." + _PTV_PATH + r"res_blocks\.(?P<j>\d+)\."
_PSF_RES = "s{n+1}.pathway{p}_res{j}."
#: PyTorchVideo ``slowfast_r50`` / ``slow_r50`` keys -> PySlowFast's (a pure renaming; ``{p}`` defaults to 0).
PYTORCHVIDEO_RULES = (
    Rule(r"blocks\.0\." + _PTV_PATH + r"conv\.(?P<rest>.+)", "s1.pathway{p}_stem.conv.{rest}"),
    Rule(r"blocks\.0\." + _PTV_PATH + r"norm\.(?P<rest>.+)", "s1.pathway{p}_stem.bn.{rest}"),
    Rule(r"blocks\.(?P<n>\d)\.multipathway_fusion\.conv_fast_to_slow\.(?P<rest>.+)", "s{n+1}_fuse.conv_f2s.{rest}"),
    Rule(r"blocks\.(?P<n>\d)\.multipathway_fusion\.norm\.(?P<rest>.+)", "s{n+1}_fuse.bn.{rest}"),
    Rule(_PTV_RES + r"branch1_conv\.(?P<rest>.+)", _PSF_RES + "branch1.{rest}"),
    Rule(_PTV_RES + r"branch1_norm\.(?P<rest>.+)", _PSF_RES + "branch1_bn.{rest}"),
    Rule(_PTV_RES + r"branch2\.conv_(?P<x>[abc])\.(?P<rest>.+)", _PSF_RES + "branch2.{x}.{rest}"),
    Rule(_PTV_RES + r"branch2\.norm_(?P<x>[abc])\.(?P<rest>.+)", _PSF_RES + "branch2.{x}_bn.{rest}"),
    Rule(r"blocks\.\d+\.proj\.(?P<rest>.+)", "head.projection.{rest}"),
)


def pytorchvideo_to_pyslowfast(sd: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """PyTorchVideo ``slowfast_r50`` / ``slow_r50`` keys -> PySlowFast's (a pure renaming).

    ``blocks.0[.multipathway_blocks.p].{conv, norm}`` -> ``s1.pathway{p}_stem.{conv, bn}``;
    ``blocks.n[.multipathway_blocks.p].res_blocks.j.{branch1_conv, branch1_norm, branch2.conv_x, branch2.norm_x}``
    -> ``s{n+1}.pathway{p}_res{j}.{branch1, branch1_bn, branch2.x, branch2.x_bn}``;
    ``blocks.n.multipathway_fusion.{conv_fast_to_slow, norm}`` -> ``s{n+1}_fuse.{conv_f2s, bn}``;
    ``blocks.N.proj`` -> ``head.projection``. Other keys are kept as they are.
    """
    return apply_rules(sd, PYTORCHVIDEO_RULES, fields={"p": "0"})


# -- R(2+1)D, R3D, SlowOnly -----------------------------------------------------------------------------
class VideoResNet3d(_From2d, VideoResNet):
    """A single-pathway ResNet video backbone with its layers given as factories (R(2+1)D, R3D, SlowOnly).

    Args:
        depths, widths, stem_width, bottleneck_ratio: as :class:`~tada.models.resnet.VideoResNet`.
        stem_conv: ``stem_conv(3, stem_width, 2)`` builds ``conv1`` (e.g. ``conv2d(7)``, ``conv3d((3, 7, 7))``).
        stem_norm, norm: norm factories of the stem and of the blocks.
        stem_pool: ``stem_pool()`` builds ``maxpool`` after the stem, or None.
        strides: spatial stride of each stage's first block.
        conv_a, conv_b, conv_c, shortcut: conv factories of every block, or one per stage.
        aggregation: T-Pool factory replacing the BN after ``conv_b`` (TAda variants), or None.
        drop_rate, num_classes: head dropout and classifier size.
    """

    _FROM_2D_RULES = R2PLUS1D_FROM_2D_RULES
    _PYSLOWFAST_RULES = PYSLOWFAST_SLOW_RULES

    def __init__(
        self,
        *,
        depths: Sequence[int] = R50_DEPTHS,
        widths: Sequence[int] = R50_WIDTHS,
        stem_width: int = 64,
        bottleneck_ratio: int = 4,
        stem_conv: ConvFn = conv2d(7),
        stem_norm: NormFn = batch_norm,
        stem_pool: Optional[Callable[[], nn.Module]] = None,
        strides: Sequence[int] = (2, 2, 2, 2),
        conv_a: PerStage = conv2d(1),
        conv_b: PerStage = conv2d(3),
        conv_c: PerStage = conv2d(1),
        shortcut: PerStage = conv2d(1),
        norm: NormFn = batch_norm,
        aggregation: Optional[NormFn] = None,
        drop_rate: float = 0.5,
        num_classes: int = 400,
    ):
        VideoClassifier.__init__(self)
        depths = check_pos_int_seq(depths, "depths")
        widths = check_pos_int_seq(widths, "widths")
        strides = check_pos_int_seq(strides, "strides")
        if not len(depths) == len(widths) == len(strides):
            raise ValueError(f"depths {depths}, widths {widths} and strides {strides} need one entry per stage")
        stem_width = check_pos_int(stem_width, "stem_width")
        bottleneck_ratio = check_pos_int(bottleneck_ratio, "bottleneck_ratio")
        _check_drop_classes(drop_rate, num_classes)
        n = len(depths)
        a, b, c, s = (_per_stage(f, n, name) for f, name in
                      ((conv_a, "conv_a"), (conv_b, "conv_b"), (conv_c, "conv_c"), (shortcut, "shortcut")))
        blocks = [partial(Bottleneck, bottleneck_ratio=bottleneck_ratio, conv_a=a[i], conv_b=b[i], conv_c=c[i],
                          shortcut=s[i], norm=norm, aggregation=aggregation) for i in range(n)]
        self.depths, self.widths, self.stem_width = depths, widths, stem_width
        self._build_trunk(stem_conv=stem_conv, stem_width=stem_width, depths=depths, widths=widths, strides=strides,
                          blocks=blocks, stem_norm=stem_norm, stem_pool=stem_pool() if stem_pool else None)
        self.aggregation, self.agg_norm = aggregation is not None, "bn"
        self.tada = bool(self.new_parameter_names())
        self._init_weights()
        self._init_head(widths[-1], num_classes, float(drop_rate))



# -- SlowFast ------------------------------------------------------------------------------------------
class LateralFusion(nn.Module):
    """Fast -> slow lateral connection: ``Conv3d(C_f -> ratio*C_f, [k, 1, 1], stride [alpha, 1, 1],
    padding [k // 2, 0, 0], no bias) -> BN -> ReLU`` (T -> ceil(T / alpha), the slow frame count)."""

    def __init__(self, channels: int, alpha: int, kernel: int, ratio: int = 2):
        super().__init__()
        self.conv = nn.Conv3d(channels, ratio * channels, (kernel, 1, 1), (alpha, 1, 1), (kernel // 2, 0, 0), bias=False)
        self.bn = nn.BatchNorm3d(ratio * channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, fast: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(fast)))


class DualPathBlock(nn.Module):
    """The ``j``-th block of a stage in both pathways (one unit for activation checkpointing)."""

    def __init__(self, slow: nn.Module, fast: nn.Module):
        super().__init__()
        self.slow, self.fast = slow, mark_absent_in_2d(fast)

    def forward(self, slow: Tensor, fast: Tensor):
        return self.slow(slow), self.fast(fast)


class SlowFast(_From2d, VideoResNet):
    """SlowFast (PySlowFast R50 layout, SPEC §7) with the blocks' layers given as factories.

    Args:
        alpha: frame-rate ratio (the slow pathway reads every ``alpha``-th frame); also the lateral stride.
        beta_inv: channel ratio (fast widths = slow widths / ``beta_inv``).
        fusion_kernel: temporal kernel ``k`` of the lateral convs; fusion_ratio: their width multiplier.
        depths, widths, stem_width, bottleneck_ratio, strides: of the slow pathway.
        slow_conv_a, fast_conv_a: the 1x1 (``kt``x1x1) conv factories, one per stage or one for all.
        slow_conv_b, fast_conv_b: the spatial conv factories; slow_aggregation, fast_aggregation: T-Pool or None.
        slow_stem, fast_stem: stem conv factories (``stem(3, width, 2)``).
    """

    _FROM_2D_RULES = SLOWFAST_FROM_2D_RULES
    _PYSLOWFAST_RULES = PYSLOWFAST_SLOWFAST_RULES

    grad_checkpoint_types = (DualPathBlock,)

    def __init__(
        self,
        *,
        alpha: int = 8,
        beta_inv: int = 8,
        fusion_kernel: int = 5,
        fusion_ratio: int = 2,
        depths: Sequence[int] = R50_DEPTHS,
        widths: Sequence[int] = R50_WIDTHS,
        stem_width: int = 64,
        bottleneck_ratio: int = 4,
        strides: Sequence[int] = (1, 2, 2, 2),
        slow_stem: ConvFn = conv2d(7),
        fast_stem: ConvFn = conv3d((5, 7, 7)),
        slow_conv_a: PerStage = (conv2d(1), conv2d(1), conv3d((3, 1, 1)), conv3d((3, 1, 1))),
        fast_conv_a: PerStage = conv3d((3, 1, 1)),
        slow_conv_b: PerStage = conv2d(3),
        fast_conv_b: PerStage = conv2d(3),
        slow_aggregation: Optional[NormFn] = None,
        fast_aggregation: Optional[NormFn] = None,
        drop_rate: float = 0.5,
        num_classes: int = 400,
    ):
        VideoClassifier.__init__(self)
        depths = check_pos_int_seq(depths, "depths")
        widths = check_pos_int_seq(widths, "widths")
        strides = check_pos_int_seq(strides, "strides")
        if not len(depths) == len(widths) == len(strides):
            raise ValueError(f"depths {depths}, widths {widths} and strides {strides} need one entry per stage")
        for name, v in (("alpha", alpha), ("beta_inv", beta_inv), ("fusion_kernel", fusion_kernel),
                        ("fusion_ratio", fusion_ratio), ("stem_width", stem_width),
                        ("bottleneck_ratio", bottleneck_ratio)):
            check_pos_int(v, name)
        if fusion_kernel % 2 == 0:
            raise ValueError(f"fusion_kernel must be odd (same padding), got {fusion_kernel}")
        for i, w in enumerate((stem_width,) + widths):
            if w % (beta_inv * (bottleneck_ratio if i else 1)):
                raise ValueError(f"width {w} is not divisible by beta_inv={beta_inv} x bottleneck_ratio")
        _check_drop_classes(drop_rate, num_classes)
        n = len(depths)
        sa, fa = _per_stage(slow_conv_a, n, "slow_conv_a"), _per_stage(fast_conv_a, n, "fast_conv_a")
        sb, fb = _per_stage(slow_conv_b, n, "slow_conv_b"), _per_stage(fast_conv_b, n, "fast_conv_b")
        self.alpha, self.beta_inv = alpha, beta_inv
        self.depths, self.widths, self.stem_width = depths, widths, stem_width

        fw = stem_width // beta_inv
        self.conv1 = slow_stem(self.in_chans, stem_width, 2)
        self.bn1 = batch_norm(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = _stem_pool()
        self.fast_conv1 = mark_absent_in_2d(fast_stem(self.in_chans, fw, 2))
        self.fast_bn1 = mark_absent_in_2d(nn.BatchNorm3d(fw))
        self.fuse = mark_absent_in_2d(nn.ModuleList())
        slow_in, fast_in = stem_width, fw
        self.stage_names = []
        for i in range(n):
            self.fuse.append(LateralFusion(fast_in, alpha, fusion_kernel, fusion_ratio))
            slow_in += fusion_ratio * fast_in
            w, f = widths[i], widths[i] // beta_inv
            mk_s = partial(Bottleneck, bottleneck_ratio=bottleneck_ratio, conv_a=sa[i], conv_b=sb[i],
                           aggregation=slow_aggregation)
            mk_f = partial(Bottleneck, bottleneck_ratio=bottleneck_ratio, conv_a=fa[i], conv_b=fb[i],
                           aggregation=fast_aggregation)
            blocks = []
            for j in range(depths[i]):
                stride = strides[i] if j == 0 else 1
                blocks.append(DualPathBlock(mk_s(slow_in, w, stride), mk_f(fast_in, f, stride)))
                slow_in, fast_in = w, f
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
        self.aggregation, self.agg_norm = slow_aggregation is not None, "bn"
        self.tada = bool(self.new_parameter_names())
        self._init_weights()
        self._init_head(widths[-1] + widths[-1] // beta_inv, num_classes, float(drop_rate))

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, 3, T, H, W)`` -> ``(B, C_slow + C_fast, ceil(T / alpha), H/32, W/32)``: the slow features
        and, concatenated, the fast ones averaged over the ``alpha`` fast frames of each slow frame."""
        self.check_input(x)
        t = x.shape[2]
        xs = x[:, :, :: self.alpha]
        s = as_video(run_layers((self.conv1, self.bn1, self.relu, self.maxpool), xs, x.shape[0], xs.shape[2]),
                     x.shape[0], xs.shape[2])
        f = as_video(run_layers((self.fast_conv1, self.fast_bn1, self.relu, self.maxpool), x, x.shape[0], t),
                     x.shape[0], t)
        for i, stage in enumerate(self.stages):
            s = torch.cat([s, self.fuse[i](f)], 1)
            for blk in stage:
                s, f = blk(s, f)
        return torch.cat([s, self._to_slow_grid(f, s.shape[2], t)], 1)

    def _to_slow_grid(self, f: Tensor, ts: int, t: int) -> Tensor:
        """Mean of the fast features over each slow frame's ``alpha`` frames (fewer for the last one)."""
        a = self.alpha
        f = nn.functional.pad(f, (0, 0, 0, 0, 0, ts * a - t))
        b, c, _, h, w = f.shape
        counts = torch.full((ts,), float(a), dtype=f.dtype, device=f.device)
        counts[-1] = t - (ts - 1) * a
        return f.reshape(b, c, ts, a, h, w).sum(3) / counts.view(1, 1, ts, 1, 1)



# -- registered models ------------------------------------------------------------------------------------
_TADA = dict(cal_dim="cin", routing="v1")  # the TAda variants' default TAdaConv (V1 routing on the conv input)


def _tada_conv_args(routing: str, routing_kwargs: Optional[Mapping]) -> dict:
    """The TAdaConv factory arguments of a TAda variant, ``routing`` any name of
    :func:`tada.nn.routing_names` (checked here, where it enters)."""
    if not isinstance(routing, str) or routing not in routing_names():
        raise ValueError(f"unknown routing {routing!r}; expected one of {routing_names()}")
    if routing_kwargs is not None and not isinstance(routing_kwargs, Mapping):
        raise ValueError(f"routing_kwargs must be a dict, got {type(routing_kwargs).__name__}")
    return dict(_TADA, routing=routing, routing_kwargs=dict(routing_kwargs) if routing_kwargs else None)


def _no_routing(kwargs: dict) -> None:
    given = sorted({"routing", "routing_kwargs"} & set(kwargs))
    if given:
        raise ValueError(f"{' and '.join(given)}: only the TAda variants (tada_*) take these, not a plain backbone")


def _tada(tada: dict, kernel=3):
    return tada_conv2d(kernel, **tada)


def _create(cls, defaults: dict, kwargs: dict):
    return cls(**{**defaults, **kwargs})


def _r2plus1d(tada: Optional[dict], tada_1d: bool, num_classes: int, kwargs: dict) -> VideoResNet3d:
    """``tada``: the TAdaConv arguments of the 2D (and with ``tada_1d`` the 1D) convs, None: plain."""
    if tada is None:
        _no_routing(kwargs)
    temporal = tada_conv3d((3, 1, 1), **tada) if tada_1d else conv3d((3, 1, 1))
    conv_b = conv2plus1d(_tada(tada) if tada is not None else conv2d(3), temporal)
    return _create(VideoResNet3d, dict(conv_b=conv_b, num_classes=num_classes), kwargs)


@register_model
def r2plus1d_r50(*, num_classes: int = 400, **kwargs) -> VideoResNet3d:
    """R(2+1)D-R50 (R2D layout; every 1x3x3 conv followed by BN, ReLU, 3x1x1): 28.11M, 49.55 GFLOPs at 8x256²."""
    return _r2plus1d(None, False, num_classes, kwargs)


@register_model
def tada_r2plus1d_r50(*, num_classes: int = 400, routing: str = "v1", routing_kwargs: Optional[Mapping] = None,
                      **kwargs) -> VideoResNet3d:
    """R(2+1)D-R50 with TAdaConv on the 2D (1x3x3) convs: 31.26M, 49.57 GFLOPs. ``routing``: any name of
    :func:`tada.nn.routing_names` (default V1), ``routing_kwargs`` its arguments."""
    return _r2plus1d(_tada_conv_args(routing, routing_kwargs), False, num_classes, kwargs)


@register_model
def tada_r2plus1d_r50_2d1d(*, num_classes: int = 400, routing: str = "v1", routing_kwargs: Optional[Mapping] = None,
                           **kwargs) -> VideoResNet3d:
    """R(2+1)D-R50 with TAdaConv on the 2D and the 1D (3x1x1, TAdaConv3d) convs: 34.41M, 49.58 GFLOPs.
    ``routing`` / ``routing_kwargs``: of both."""
    return _r2plus1d(_tada_conv_args(routing, routing_kwargs), True, num_classes, kwargs)


def _r3d(tada: Optional[dict], num_classes: int, kwargs: dict) -> VideoResNet3d:
    if tada is None:
        _no_routing(kwargs)
    return _create(VideoResNet3d, dict(
        stem_conv=conv3d((3, 7, 7)), stem_norm=nn.BatchNorm3d, norm=nn.BatchNorm3d,
        conv_a=conv3d(1), conv_b=tada_conv3d(3, **tada) if tada is not None else conv3d(3), conv_c=conv3d(1),
        shortcut=conv3d(1), num_classes=num_classes,
    ), kwargs)


@register_model
def r3d_r50(*, num_classes: int = 400, **kwargs) -> VideoResNet3d:
    """R3D-R50: R2D inflated x3 in time (3x7x7 stem, 3x3x3 convs): 46.98M, 84.23 GFLOPs at 8x256²."""
    return _r3d(None, num_classes, kwargs)


@register_model
def tada_r3d_r50(*, num_classes: int = 400, routing: str = "v1", routing_kwargs: Optional[Mapping] = None,
                 **kwargs) -> VideoResNet3d:
    """R3D-R50 with TAdaConv3d (one calibration per output frame for the 3 taps): 50.13M, 84.25 GFLOPs.
    ``routing``: any name of :func:`tada.nn.routing_names` (default V1), ``routing_kwargs`` its arguments."""
    return _r3d(_tada_conv_args(routing, routing_kwargs), num_classes, kwargs)


_SLOW_CONV_A = (conv2d(1), conv2d(1), conv3d((3, 1, 1)), conv3d((3, 1, 1)))


def _slowonly(tada: Optional[dict], num_classes: int, kwargs: dict) -> VideoResNet3d:
    if tada is None:
        _no_routing(kwargs)
    return _create(VideoResNet3d, dict(
        stem_pool=_stem_pool, strides=(1, 2, 2, 2), conv_a=_SLOW_CONV_A,
        conv_b=_tada(tada) if tada is not None else conv2d(3), num_classes=num_classes,
    ), kwargs)


@register_model
def slowonly_r50(*, num_classes: int = 400, **kwargs) -> VideoResNet3d:
    """SlowOnly-R50 8x8 (PySlowFast layout): 32.45M, 54.52 GFLOPs at 8x256²."""
    return _slowonly(None, num_classes, kwargs)


@register_model
def tada_slowonly_r50(*, num_classes: int = 400, routing: str = "v1", routing_kwargs: Optional[Mapping] = None,
                      **kwargs) -> VideoResNet3d:
    """SlowOnly-R50 8x8 with TAdaConv on the 1x3x3 convs: 35.60M, 54.53 GFLOPs. ``routing``: any name of
    :func:`tada.nn.routing_names` (default V1), ``routing_kwargs`` its arguments."""
    return _slowonly(_tada_conv_args(routing, routing_kwargs), num_classes, kwargs)


def _slowfast(alpha: int, kernel: int, tada: Optional[dict], num_classes: int, kwargs: dict, tada_fast: bool = False):
    kwargs = dict(kwargs)
    tada_fast = kwargs.pop("tada_fast", tada_fast)
    if tada_fast and tada is None:
        raise ValueError("tada_fast=True applies to the TAda SlowFast models (tada_slowfast_r50_*)")
    if tada is None:
        _no_routing(kwargs)
    defaults = dict(alpha=alpha, fusion_kernel=kernel, num_classes=num_classes)
    if tada is not None:
        defaults.update(slow_conv_b=_tada(tada))
        if tada_fast:
            defaults.update(fast_conv_b=_tada(tada))
    return _create(SlowFast, defaults, kwargs)


@register_model
def slowfast_r50_4x16(*, num_classes: int = 400, **kwargs) -> SlowFast:
    """SlowFast-R50 4x16 (alpha 8, beta 1/8, lateral k=5; reads 32 frames): 34.48M, 36.10 GFLOPs at 32x256²."""
    return _slowfast(8, 5, None, num_classes, kwargs)


@register_model
def tada_slowfast_r50_4x16(*, num_classes: int = 400, routing: str = "v1", routing_kwargs: Optional[Mapping] = None,
                           **kwargs) -> SlowFast:
    """SlowFast-R50 4x16 with TAdaConv on the slow pathway's 1x3x3 convs (``tada_fast=True``: also the fast
    one's): 37.63M (37.68M), 36.11 GFLOPs. ``routing`` / ``routing_kwargs``: of every TAdaConv."""
    return _slowfast(8, 5, _tada_conv_args(routing, routing_kwargs), num_classes, kwargs)


@register_model
def slowfast_r50_8x8(*, num_classes: int = 400, **kwargs) -> SlowFast:
    """SlowFast-R50 8x8 (alpha 4, lateral k=7; reads 32 frames): 34.57M, 65.71 GFLOPs at 32x256²."""
    return _slowfast(4, 7, None, num_classes, kwargs)


@register_model
def tada_slowfast_r50_8x8(*, num_classes: int = 400, routing: str = "v1", routing_kwargs: Optional[Mapping] = None,
                          **kwargs) -> SlowFast:
    """SlowFast-R50 8x8 with TAdaConv on the slow pathway's 1x3x3 convs: 37.72M, 65.73 GFLOPs.
    ``routing`` / ``routing_kwargs``: of every TAdaConv."""
    return _slowfast(4, 7, _tada_conv_args(routing, routing_kwargs), num_classes, kwargs)


VideoResNet3d.grad_checkpoint_types = (Bottleneck,)
