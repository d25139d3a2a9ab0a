"""ResNet-50-layout video classifiers: TSN-R50 (per-frame 2D ResNet) and TAda2D-R50 (SPEC §2).

Layout (a torchvision ``resnet50`` with the max-pool replaced by a stride):

* stem ``conv1`` 7x7 stride 2 on every frame, ``bn1``, ReLU, **no max-pool**;
* stages ``layer1..layer4`` of :class:`Bottleneck` blocks (3-4-6-3 for R50, widths 256/512/1024/2048,
  bottleneck width = width / 4); the first block of *every* stage, ``layer1`` included, has spatial
  stride 2 in its 3x3 conv and in its 1x1 shortcut conv (``downsample``);
* head: mean over (T, H, W), dropout, Linear (:class:`~tada.models.base.VideoClassifier`).

A bottleneck is ``conv1 -> bn1 -> ReLU -> conv2 (3x3) -> bn2 | agg -> ReLU -> conv3 -> bn3``,
``+ downsample(x)``, ReLU. In TAda2D ``conv2`` is a :class:`~tada.nn.TAdaConv2d` (``cin``, no bias, V1
routing r=4 on the conv input, at ``conv2.routing``) and the BN after it is replaced by T-Pool
(:class:`~tada.nn.TemporalAggregation`, at ``agg``: ``agg.norm1`` takes torchvision's ``bn2``,
``agg.norm2`` is zero-initialised). TSN uses an ``nn.Conv2d`` and ``bn2``.

The blocks are :class:`tada.models.builders.Bottleneck` with their convs given as factories
(``conv_b = tada_conv2d(3)`` or ``conv2d(3)``, ``aggregation = t_pool()``); the plug-in backbones of
:mod:`tada.models.resnet3d` (R(2+1)D, R3D, SlowOnly, SlowFast) are the same class with other factories.

Speed: the 2D trunk runs on 4-D ``(B*T, C, H, W)`` tensors with ordinary ``nn.Conv2d`` /
``nn.BatchNorm2d`` (BatchNorm over ``(B*T, H, W)`` has exactly the statistics of a BatchNorm3d over
``(B, T, H, W)``): the blocks run their 2D layers on the frame batch
(:func:`tada.models.builders.run_layers`); only the TAdaConv sees ``(B, C, T, H, W)`` and T-Pool pools
over frames, both through free views of the frame-major ``(B*T, C, H, W)`` memory
(:func:`tada.nn.functional.batch_to_frames`). Blocks take and return ``(B, C, T, H, W)`` tensors stored
frame-major, so chaining them copies nothing.

Weights: :meth:`VideoResNet.checkpoint_filter_fn` reads torchvision ``resnet50`` state dicts (the
same keys as this module, ``fc`` -> ``head``, ``bn2`` -> ``agg.norm1`` when T-Pool is on), the paper's
released TAda2D checkpoints (SPEC §6) and this project's own.
"""
from __future__ import annotations

import re
from functools import partial
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch.nn as nn
from torch import Tensor

from .. import nn as tnn
from ..nn import TAdaConv2d
from ..nn.aggregation import NORMS, POOLS, SHORTCUTS
from ..nn.calibration import routing_names
from ..nn.functional import CAL_DIMS, IMPLS
from .builders import (BlockFn, Bottleneck, ConvFn, NormFn, aggregate_frame_major, as_video, batch_norm, conv2d,
                       make_stage, run_layers, t_pool, tada_conv2d)
from ._checks import check_bool, check_choice, check_pos_int, check_pos_int_seq
from .base import VideoClassifier
from .convert import Rule, apply_rules, conv3d_to_conv2d, convert_released_route_mlp, squeeze_tada_weight
from .registry import register_model

__all__ = [
    "VideoResNet",
    "Bottleneck",
    "aggregate_frame_major",
    "tsn_r50",
    "tada2d_r50",
    "tsn_r_mini",
    "tada2d_r_mini",
]

ROUTINGS = routing_names()

R50_DEPTHS = (3, 4, 6, 3)
R50_WIDTHS = (256, 512, 1024, 2048)
# Mini variant for CPU tests and smoke runs: one block per stage, half the R50 widths and stem.
MINI_DEPTHS = (1, 1, 1, 1)
MINI_WIDTHS = (64, 128, 256, 512)
MINI_STEM = 32


_CONVS = (nn.Conv2d, nn.Conv3d, TAdaConv2d)


# -- the model --------------------------------------------------------------------------------------
class VideoResNet(VideoClassifier):
    """ResNet-layout video classifier (TSN-R50, TAda2D-R50 and their ablations).

    Args:
        depths: blocks per stage (R50: ``(3, 4, 6, 3)``).
        widths: output width of each stage (R50: ``(256, 512, 1024, 2048)``).
        stem_width: channels of the 7x7 stem conv (R50: 64).
        bottleneck_ratio: stage width / bottleneck width (4).
        tada: TAdaConv2d (True) or a plain 3x3 Conv2d (False, TSN) in every bottleneck.
        cal_dim: TAdaConv calibration, ``"cin"`` (default) | ``"cout"`` | ``"cin_cout"`` | ``"k2"``
            (paper Table 3b).
        routing: ``"v1"`` (RouteFuncMLP, default) | ``"v2"`` (RouteFuncAttn) | a calibration generator
            of :mod:`tada.nn.calibration` (``"learnable"``, ``"learnable_t"``, ``"dynamic"``,
            ``"dynamic_t"``, ``"tam_global"``, ``"tam_local_global"``; paper Tables 3a / A8).
        routing_kwargs: extra routing arguments, e.g. ``reduction``, ``kernels``, ``global_context``,
            ``linear`` for V1 (Table 3d), ``head_dim`` for V2, ``init="ones"|"random"`` for all.
        tada_stages: the stages that use TAdaConv, numbered as the paper's res2..res5 (``2`` is
            ``layer1``); default all. The other stages are TSN stages (plain 3x3 conv and ``bn2``, no
            T-Pool). Paper Fig. 4.
        cal_fraction: the share of each TAdaConv's channels that is calibrated (the first
            ``ceil(C * cal_fraction)``; the rest keep alpha = 1). Paper Fig. 4.
        tada_impl: TAdaConv implementation, ``"auto"`` | ``"fast"`` | ``"frames"`` | ``"grouped"``.
        aggregation: T-Pool after the 3x3 conv (default: on exactly when ``tada`` is).
        agg_norm: ``"bn"`` (default) | ``"ln"``; agg_pool: ``"avg"`` | ``"max"`` | ``"mix"``;
        agg_shortcut: ``"separate"`` | ``"shared"`` | ``"none"`` (Table 3e).
        drop_rate: head dropout (0.5).
        num_classes: classifier size (0: ``forward`` returns pooled features).
    """

    def __init__(
        self,
        *,
        depths: Sequence[int] = R50_DEPTHS,
        widths: Sequence[int] = R50_WIDTHS,
        stem_width: int = 64,
        bottleneck_ratio: int = 4,
        tada: bool = True,
        cal_dim: str = "cin",
        routing: str = "v1",
        routing_kwargs: Optional[Mapping[str, Any]] = None,
        tada_impl: str = "auto",
        tada_stages: Optional[Sequence[int]] = None,
        cal_fraction: float = 1.0,
        aggregation: Optional[bool] = None,
        agg_norm: str = "bn",
        agg_pool: str = "avg",
        agg_shortcut: str = "separate",
        drop_rate: float = 0.5,
        num_classes: int = 400,
    ):
        super().__init__()
        depths = check_pos_int_seq(depths, "depths")
        widths = check_pos_int_seq(widths, "widths")
        if len(depths) != len(widths):
            raise ValueError(f"depths {depths} and widths {widths} must have the same length (one per stage)")
        stem_width = check_pos_int(stem_width, "stem_width")
        bottleneck_ratio = check_pos_int(bottleneck_ratio, "bottleneck_ratio")
        for i, w in enumerate(widths):
            if w % bottleneck_ratio:
                raise ValueError(f"widths[{i}]={w} is not divisible by bottleneck_ratio={bottleneck_ratio}")
        tada = check_bool(tada, "tada")
        aggregation = tada if aggregation is None else check_bool(aggregation, "aggregation")
        check_choice(cal_dim, "cal_dim", CAL_DIMS)
        check_choice(routing, "routing", ROUTINGS)
        check_choice(tada_impl, "tada_impl", IMPLS)
        if tada_impl in ("fast", "frames") and cal_dim == "k2":
            raise ValueError("cal_dim='k2' has no exact fast path: use tada_impl='grouped' or 'auto'")
        check_choice(agg_norm, "agg_norm", NORMS)
        check_choice(agg_pool, "agg_pool", POOLS)
        check_choice(agg_shortcut, "agg_shortcut", SHORTCUTS)
        if routing_kwargs is not None:
            if not isinstance(routing_kwargs, Mapping):
                raise ValueError(f"routing_kwargs must be a dict, got {type(routing_kwargs).__name__}")
            if not tada:
                raise ValueError("routing_kwargs only apply to TAda models (tada=True)")
        all_stages = tuple(range(2, 2 + len(depths)))
        if tada_stages is None:
            tada_stages = all_stages if tada else ()
        else:
            if not tada:
                raise ValueError("tada_stages only apply to TAda models (tada=True)")
            tada_stages = tuple(sorted(set(check_pos_int_seq(tada_stages, "tada_stages"))))
            if not tada_stages or not set(tada_stages) <= set(all_stages):
                raise ValueError(
                    f"tada_stages must be a non-empty subset of {all_stages} (res2..res{all_stages[-1]}), "
                    f"got {tada_stages}"
                )
        if (isinstance(cal_fraction, bool) or not isinstance(cal_fraction, (int, float))
                or not 0 < cal_fraction <= 1):
            raise ValueError(f"cal_fraction must be in (0, 1], got {cal_fraction!r}")
        if cal_fraction != 1 and not tada:
            raise ValueError("cal_fraction only applies to TAda models (tada=True)")
        if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)) or not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be a float in [0, 1), got {drop_rate!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative int, got {num_classes!r}")

        self.depths, self.widths, self.stem_width = depths, widths, stem_width
        self.tada, self.aggregation, self.cal_dim, self.routing = tada, aggregation, cal_dim, routing
        self.agg_norm = agg_norm

        self.tada_stages, self.cal_fraction = tada_stages, float(cal_fraction)
        tada_block = partial(
            Bottleneck, bottleneck_ratio=bottleneck_ratio,
            conv_b=tada_conv2d(3, cal_dim=cal_dim, routing=routing, routing_kwargs=routing_kwargs, impl=tada_impl,
                               cal_fraction=cal_fraction),
            aggregation=t_pool(agg_norm, agg_pool, agg_shortcut) if aggregation else None)
        plain_block = partial(Bottleneck, bottleneck_ratio=bottleneck_ratio, conv_b=conv2d(3),
                              aggregation=t_pool(agg_norm, agg_pool, agg_shortcut) if aggregation and not tada else None)
        blocks = tuple(tada_block if s in tada_stages else plain_block for s in all_stages)
        self._build_trunk(stem_conv=conv2d(7), stem_width=stem_width, depths=depths, widths=widths,
                          strides=(2,) * len(depths), blocks=blocks)
        self._init_weights()
        self._init_head(widths[-1], num_classes, float(drop_rate))

    def _build_trunk(self, *, stem_conv: ConvFn, stem_width: int, depths: Sequence[int], widths: Sequence[int],
                     strides: Sequence[int], blocks: Sequence[BlockFn], stem_norm: NormFn = batch_norm,
                     stem_pool: Optional[nn.Module] = None, in_widths: Optional[Sequence[int]] = None) -> None:
        """The stem (``conv1 = stem_conv(3, stem_width, 2)``, ``bn1``, ReLU, optional ``maxpool``) and the
        stages ``layer1..`` (``blocks[i]`` builds stage ``i``'s blocks, the first with ``strides[i]``).
        ``in_widths``: each stage's input width (default: the previous stage's output)."""
        self.conv1 = stem_conv(self.in_chans, stem_width, 2)
        self.bn1 = stem_norm(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = stem_pool
        in_ch = stem_width
        self.stage_names = []
        for i, (depth, width, stride, block) in enumerate(zip(depths, widths, strides, blocks)):
            name = f"layer{i + 1}"
            self.add_module(name, make_stage(in_widths[i] if in_widths else in_ch, width, depth, stride, block))
            self.stage_names.append(name)
            in_ch = width

    def _init_weights(self) -> None:
        # torchvision's ResNet init for the 2D convs (BN is weight 1 / bias 0 by default; T-Pool's
        # norm2 and the routing's last conv keep their zero init).
        for m in self.modules():
            if isinstance(m, _CONVS) or type(m) is getattr(tnn, "TAdaConv3d", None):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def stages(self):
        return [getattr(self, n) for n in self.stage_names]

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, 3, T, H, W)`` -> ``(B, widths[-1], T, H/32, W/32)`` (before pooling)."""
        self.check_input(x)
        b, t = x.shape[0], x.shape[2]
        x = as_video(run_layers((self.conv1, self.bn1, self.relu, self.maxpool), x, b, t), b, t)
        for stage in self.stages:
            x = stage(x)
        return x

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint_filter_fn(self, state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        """Convert a torchvision ``resnet50``, a released TAda2D or this project's state dict to this
        model's keys (a new dict; the input is not modified)."""
        keys = list(state_dict)
        if any(k.startswith("backbone.") for k in keys):
            if "backbone.conv1.a.weight" not in state_dict:
                raise ValueError(
                    "checkpoint has 'backbone.' keys but not the released TAda2D/ResNet layout "
                    "(expected backbone.conv1.a.weight, backbone.conv2.res_*.conv_branch.*); "
                    f"found e.g. {sorted(keys)[:5]}"
                )
            return self._place_bn2(apply_rules(_zero_based_blocks(state_dict), RELEASED_RULES, fields=self._fields()))
        if "conv1.weight" in state_dict and any(k.startswith("layer1.") for k in keys):
            return self._from_torchvision(state_dict)
        raise ValueError(
            "unrecognised checkpoint format for a ResNet video model: expected a torchvision resnet "
            "state dict (conv1.weight, bn1.*, layer1.0.conv1.weight, ..., fc.weight), a released TAda2D "
            "checkpoint (backbone.conv1.a.weight, backbone.conv2.res_*.conv_branch.*, head.out.weight) "
            f"or this project's keys; found e.g. {sorted(keys)[:5]}"
        )

    def _t_pool_layers(self) -> Tuple[str, ...]:
        """The ``layerN`` stages whose blocks have T-Pool."""
        return tuple(n for n in self.stage_names if any(getattr(b, "agg", None) is not None for b in getattr(self, n)))

    def _fields(self) -> Dict[str, str]:
        # the rule sets write every block's bn2 as bn2; _place_bn2 then moves the T-Pool stages' keys
        return {"bn2": "bn2"}

    def _place_bn2(self, sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """``bn2`` -> ``agg.norm1`` in the stages with T-Pool (all of them, or ``tada_stages``); a
        LayerNorm T-Pool takes the BN's affine parameters only (its running statistics have no
        counterpart)."""
        pooled = self._t_pool_layers()
        if not pooled:
            return sd
        block = rf"(?P<b>(?:{'|'.join(pooled)})\.\d+)\.bn2\."
        rules = (Rule(block + r"(?!weight$|bias$).+", None),) if self.agg_norm == "ln" else ()
        rules += (Rule(block + r"(?P<p>.+)", "{b}.agg.norm1.{p}"),)
        return apply_rules(sd, rules)

    def _from_torchvision(self, sd: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        """torchvision keys (and this project's own, which pass unchanged): :data:`TORCHVISION_RULES`,
        then :meth:`_place_bn2`."""
        return self._place_bn2(apply_rules(sd, TORCHVISION_RULES, fields=self._fields()))


# -- checkpoint rule sets (tada.models.convert); {bn2} is "bn2" (VideoResNet._place_bn2 moves T-Pool's) -----
#: torchvision ``resnet50``: this module's keys except ``fc`` (-> ``head``) and ``bn2`` (-> ``{bn2}``).
TORCHVISION_RULES = (
    Rule.prefix("fc.", "head."),
    Rule(r"(?P<b>layer\d+\.\d+)\.bn2\.(?P<p>.+)", "{b}.{bn2}.{p}"),
)


def released_spatial_weight(w: Tensor) -> Tensor:
    """A released block's 3x3 weight: 6-D TAdaConv (squeezed) or 2D stored as Conv3d (time dropped)."""
    return squeeze_tada_weight(w) if w.dim() == 6 else conv3d_to_conv2d(w)


_RES = r"backbone\.conv(?P<s>\d+)\.res_(?P<i>\d+)\."
_BLK = "layer{s-1}.{i}"
#: The paper's released TAda2D layout (SPEC §6), blocks numbered from 0 (:func:`_zero_based_blocks`):
#: ``backbone.conv1.{a, a_bn}`` -> ``conv1`` / ``bn1``; ``backbone.conv{s}.res_{i}`` -> ``layer{s-1}.{i}``
#: with ``short_cut(_bn)`` -> ``downsample.{0,1}``, ``conv_branch.{a, a_bn, b, b_rf, b_bn, b_avgpool_bn,
#: c, c_bn}`` -> ``conv1, bn1, conv2.weight, conv2.routing, {bn2}, agg.norm2, conv3, bn3``; ``head.out`` ->
#: ``head``. Conv3d weights ``(O, I, 1, k, k)`` lose their time dim, the 6-D TAdaConv weight is squeezed.
#: Unknown keys are kept as they are, so strict loading names them.
RELEASED_RULES = (
    Rule.prefix("head.out.", "head."),
    Rule(r"backbone\.conv1\.a\.weight", "conv1.weight", conv3d_to_conv2d),
    Rule(r"backbone\.conv1\.a\.(?P<p>.+)", "conv1.{p}"),
    Rule(r"backbone\.conv1\.a_bn\.(?P<p>.+)", "bn1.{p}"),
    Rule(_RES + r"short_cut\.weight", _BLK + ".downsample.0.weight", conv3d_to_conv2d),
    Rule(_RES + r"short_cut\.(?P<p>.+)", _BLK + ".downsample.0.{p}"),
    Rule(_RES + r"short_cut_bn\.(?P<p>.+)", _BLK + ".downsample.1.{p}"),
    Rule(_RES + r"conv_branch\.b\.weight", _BLK + ".conv2.weight", released_spatial_weight),
    Rule(_RES + r"conv_branch\.b_rf\.(?P<rest>.+)", _BLK + ".conv2.routing", group=convert_released_route_mlp),
    Rule(_RES + r"conv_branch\.a\.weight", _BLK + ".conv1.weight", conv3d_to_conv2d),
    Rule(_RES + r"conv_branch\.c\.weight", _BLK + ".conv3.weight", conv3d_to_conv2d),
    Rule(_RES + r"conv_branch\.a\.(?P<p>.+)", _BLK + ".conv1.{p}"),
    Rule(_RES + r"conv_branch\.c\.(?P<p>.+)", _BLK + ".conv3.{p}"),
    Rule(_RES + r"conv_branch\.a_bn\.(?P<p>.+)", _BLK + ".bn1.{p}"),
    Rule(_RES + r"conv_branch\.b_bn\.(?P<p>.+)", _BLK + ".{bn2}.{p}"),
    Rule(_RES + r"conv_branch\.b_avgpool_bn\.(?P<p>.+)", _BLK + ".agg.norm2.{p}"),
    Rule(_RES + r"conv_branch\.c_bn\.(?P<p>.+)", _BLK + ".bn3.{p}"),
)
_RES_KEY = re.compile(r"^backbone\.conv(\d+)\.res_(\d+)\.(.+)$")


def _zero_based_blocks(sd: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """The release numbers a stage's blocks from 0 or from 1 (``res_{i}``): renumber each stage from 0."""
    first: Dict[str, int] = {}
    for k in sd:
        m = _RES_KEY.match(k)
        if m:
            first[m.group(1)] = min(first.get(m.group(1), int(m.group(2))), int(m.group(2)))
    out = {}
    for k, v in sd.items():
        m = _RES_KEY.match(k)
        if m:
            s, i, rest = m.groups()
            k = f"backbone.conv{s}.res_{int(i) - first[s]}.{rest}"
        out[k] = v
    return out


# -- registered models ------------------------------------------------------------------------------
_R50 = {"depths": R50_DEPTHS, "widths": R50_WIDTHS}
_MINI = {"depths": MINI_DEPTHS, "widths": MINI_WIDTHS, "stem_width": MINI_STEM}


def _create(defaults: dict, kwargs: dict) -> VideoResNet:
    """A VideoResNet from a variant's defaults; ``kwargs`` (e.g. ``depths``, ``widths``) override them."""
    return VideoResNet(**{**defaults, **kwargs})


@register_model
def tsn_r50(*, num_classes: int = 400, **kwargs) -> VideoResNet:
    """TSN-R50: ResNet-50 applied per frame, frames averaged (24.3M params, 33.0 GFLOPs at 8x224²)."""
    return _create({**_R50, "tada": False, "num_classes": num_classes}, kwargs)


@register_model
def tada2d_r50(*, num_classes: int = 400, **kwargs) -> VideoResNet:
    """TAda2D-R50: TAdaConv (cin, V1 routing r=4) + T-Pool in every bottleneck (27.5M, 33.02 GFLOPs)."""
    return _create({**_R50, "tada": True, "num_classes": num_classes}, kwargs)


@register_model
def tsn_r_mini(*, num_classes: int = 400, **kwargs) -> VideoResNet:
    """A small TSN ResNet for CPU tests: one bottleneck per stage, widths 64/128/256/512, stem 32."""
    return _create({**_MINI, "tada": False, "num_classes": num_classes}, kwargs)


@register_model
def tada2d_r_mini(*, num_classes: int = 400, **kwargs) -> VideoResNet:
    """The TAda2D counterpart of :func:`tsn_r_mini` (same code and options as TAda2D-R50)."""
    return _create({**_MINI, "tada": True, "num_classes": num_classes}, kwargs)


VideoResNet.grad_checkpoint_types = (Bottleneck,)  # set_grad_checkpointing wraps these
