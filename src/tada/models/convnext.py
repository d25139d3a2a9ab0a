"""ConvNeXt-layout video models: the TSN baseline, TAdaConvNeXtV2 and TAdaConvNeXt (V1).

One class, :class:`VideoConvNeXt`, covers the three (SPEC §2):

==========================  ==========  ===========  ================  =========================
factory                     ``tada``    ``tubelet``  ``aggregation``   depthwise conv
==========================  ==========  ===========  ================  =========================
``tsn_convnext_*``          ``None``    False        False             Conv2d per frame
``tadaconvnextv2_*``        ``"v2"``    True         True (T-Pool)     TAdaConv2d, RouteFuncAttn
``tadaconvnext_tiny``       ``"v1"``    True         False             TAdaConv2d, RouteFuncMLP
==========================  ==========  ===========  ================  =========================

``tada`` may also name a calibration generator of :mod:`tada.nn.calibration` (``"learnable"``,
``"learnable_t"``, ``"dynamic"``, ``"dynamic_t"``, ``"tam_global"``, ``"tam_local_global"``; paper
Table 3a / A8), e.g. ``tada.create_model("tadaconvnextv2_tiny", tada="dynamic_t",
routing_kwargs={"init": "ones"})``; ``routing_kwargs`` reaches every depthwise TAdaConv's routing.

Block: depthwise 7x7 conv (a TAdaConv2d calibrating its output channels and, V2 and the release's
V1, its bias) -> T-Pool with LayerNorms (or one LayerNorm) -> Linear C->4C -> act -> Linear 4C->C
-> layer scale -> drop path -> residual.

**Layout.** Activations travel between blocks as contiguous ``(B, T, H, W, C)`` tensors (channels
last, frame-major). LayerNorm and the two Linears work on the last dimension with no copy, and the
same memory read as ``(B, C, T, H, W)`` (what :class:`~tada.nn.TAdaConv2d`, the routing and T-Pool
take) or, with frames folded into the batch, as a channels-last ``(B*T, C, H, W)`` image batch (what
the convolutions see) is a free view. The baseline and the TAda models share every layout choice, so
their cost ratio measures what TAda adds. The only layout copy of the network is the input, made
channels-last once before the stem.

**Weights.** :meth:`VideoConvNeXt.checkpoint_filter_fn` reads ImageNet ConvNeXt checkpoints in the
original (``downsample_layers`` / ``dwconv`` / ``pwconv1``) and timm (``stem`` / ``conv_dw`` /
``mlp.fc1``) layouts, the paper's released TAdaConvNeXtV2 checkpoints (``backbone.*``, SPEC §6) and
this project's own. From a 2D checkpoint the tubelet stem is centre-initialised in time and the 2D
block norm becomes T-Pool's first norm; with the routing's zero-initialised last layers and T-Pool's
zero-initialised second norm, TAdaConvNeXtV2 then equals the ImageNet ConvNeXt applied to frames
0, 2, 4, ... (and the TSN baseline equals it on every frame).

**Activation.** ``act="gelu"`` (default) is ImageNet ConvNeXt's exact GELU, so models built from
ImageNet weights are exact at init. The released TAdaConvNeXtV2 checkpoints were trained with
QuickGELU: build those models with ``act="quick_gelu"``, e.g.
``tada.create_model("tadaconvnextv2_tiny", pretrained="k400.pyth", act="quick_gelu")`` (loading a
released checkpoint into a GELU model warns).
"""
from __future__ import annotations

import warnings
from functools import partial
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from ..nn.layers import DropPath
from ..nn import QuickGELU, TAdaConv2d, TemporalAggregation
from ..nn.calibration import ROUTING_TYPES, routing_names
from ..nn.functional import batch_to_frames, frames_to_batch
from ._checks import check_pos_int_seq
from .builders import channels_last_view, conv_then_tpool
from .base import VideoClassifier
from .convert import (Rule, apply_rules, conv3d_to_conv2d, conv_to_linear, convert_released_route_attn, flatten,
                      squeeze_tada_bias, squeeze_tada_weight)
from .pretrained import centre_inflate
from .registry import register_model

__all__ = ["VideoConvNeXt", "FrameConv2d", "ConvNeXtBlock"]

TADA_VERSIONS = (None,) + routing_names()  # None: the TSN baseline; "v1" / "v2" / a calibration generator
ACTS = ("gelu", "quick_gelu")
_LN_EPS = 1e-6


def _is_pos_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


# -- small layers ---------------------------------------------------------------------------------
class FrameConv2d(nn.Conv2d):
    """A Conv2d applied to every frame of a ``(B, C, T, H, W)`` tensor; returns ``(B, C', T, H', W')``.

    The frames are folded into the batch with :func:`~tada.nn.functional.frames_to_batch`, a view for
    frame-major memory (as :class:`~tada.nn.TAdaConv2d` does, so the two cost the same in layout).
    """

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        b, _, t = x.shape[:3]
        return batch_to_frames(super().forward(frames_to_batch(x)), b, t)


class Mlp(nn.Module):
    """Linear C -> hidden -> act -> Linear hidden -> C on the last dimension."""

    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU() if act == "gelu" else QuickGELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Stem(nn.Module):
    """Patchify stem + channels LayerNorm: ``(B, 3, T, H, W) -> (B, T', H/4, W/4, C)``.

    ``tubelet=True``: Conv3d (3, 4, 4), stride (2, 4, 4), padding (1, 0, 0), so ``T' = T / 2`` (T-Down);
    otherwise a 4x4 stride-4 Conv2d per frame.
    """

    def __init__(self, in_chans: int, dim: int, tubelet: bool):
        super().__init__()
        if tubelet:
            self.conv = nn.Conv3d(in_chans, dim, (3, 4, 4), stride=(2, 4, 4), padding=(1, 0, 0))
        else:
            self.conv = FrameConv2d(in_chans, dim, 4, stride=4)
        self.norm = nn.LayerNorm(dim, eps=_LN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        # one copy of the (small) input to channels-last memory; every later tensor stays there
        x = x.contiguous(memory_format=torch.channels_last_3d)
        return self.norm(self.conv(x).permute(0, 2, 3, 4, 1))


class Downsample(nn.Module):
    """LayerNorm then a 2x2 stride-2 conv per frame: ``(B, T, H, W, C) -> (B, T, H/2, W/2, C')``."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=_LN_EPS)
        self.conv = FrameConv2d(dim, out_dim, 2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x).permute(0, 4, 1, 2, 3)
        return channels_last_view(self.conv(x))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block on ``(B, T, H, W, C)``, optionally temporally adaptive.

    Args:
        dim: channels C.
        tada: ``None`` (plain depthwise conv per frame), or the routing of a depthwise
            :class:`~tada.nn.TAdaConv2d` (``cal_dim="cout"``): ``"v1"`` (RouteFuncMLP), ``"v2"``
            (RouteFuncAttn) or a calibration generator name (:func:`tada.nn.routing_names`).
        aggregation: T-Pool (``Norm1(y) + Norm2(AvgPool_T(y))``, LayerNorms) instead of one LayerNorm.
        act: ``"gelu"`` or ``"quick_gelu"``.
        reduction, kernels, head_dim: V1 / V2 routing widths (``head_dim`` for V2 only); not passed to
            a calibration generator.
        routing_kwargs: further routing arguments, merged over (and overriding) the ones above for
            V1 / V2 (V2 is ``zero_init=True`` unless overridden); a generator gets these alone.
        bias_calibration: calibrate the depthwise bias per frame too.
        layer_scale_init: initial layer scale γ (``None`` or 0: no layer scale).
        drop_path: stochastic depth rate of this block.
    """

    def __init__(
        self,
        dim: int,
        *,
        tada: Optional[str] = None,
        aggregation: bool = False,
        act: str = "gelu",
        reduction: int = 2,
        kernels: Sequence[int] = (3, 3),
        head_dim: int = 48,
        bias_calibration: bool = True,
        layer_scale_init: Optional[float] = 1e-6,
        drop_path: float = 0.0,
        mlp_ratio: int = 4,
        routing_kwargs: Optional[Mapping[str, Any]] = None,
    ):
        super().__init__()
        if tada is None:
            if routing_kwargs:
                raise ValueError("routing_kwargs only apply to a TAda block (tada set)")
            self.conv_dw = FrameConv2d(dim, dim, 7, padding=3, groups=dim)
        else:
            self.conv_dw = TAdaConv2d(
                dim, dim, 7, padding=3, groups=dim, bias=True, cal_dim="cout", routing=tada,
                routing_kwargs=_block_routing_kwargs(tada, reduction, kernels, head_dim, routing_kwargs),
                bias_calibration=bias_calibration,
            )
        if aggregation:
            self.norm = None
            self.tpool = TemporalAggregation(dim, norm="ln", eps=_LN_EPS)
        else:
            self.norm = nn.LayerNorm(dim, eps=_LN_EPS)
            self.tpool = None
        self.mlp = Mlp(dim, mlp_ratio * dim, act)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init))) if layer_scale_init else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x5 = x.permute(0, 4, 1, 2, 3)  # (B, C, T, H, W), channels-last memory
        if self.tpool is not None:  # in channels-last memory throughout (no layout round trip)
            y = conv_then_tpool(self.conv_dw, self.tpool, x5, channels_last=True)
        else:
            y = self.conv_dw(x5)
            y = self.norm(y.permute(0, 2, 3, 4, 1))
        y = self.mlp(y)
        if self.gamma is not None:
            y = y * self.gamma
        return x + self.drop_path(y)


def _block_routing_kwargs(tada: str, reduction: int, kernels: Sequence[int], head_dim: int,
                          user: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The routing arguments of a block's depthwise TAdaConv: for ``"v1"`` / ``"v2"`` the block's
    ``reduction`` and ``kernels`` (V2: ``head_dim`` and ``zero_init=True`` too) with ``user``'s on top;
    for a calibration generator ``user``'s alone."""
    if tada in ("v1", "v2"):
        kw: Dict[str, Any] = {"reduction": reduction, "kernels": tuple(kernels)}
        if tada == "v2":
            kw.update(head_dim=head_dim, zero_init=True)
        if user and ("init" in user or "zero_init" in user):
            kw.pop("zero_init", None)  # the user's own choice of init replaces the block's default
        kw.update(user or {})
        return kw
    return dict(user or {})


class Stage(nn.Module):
    def __init__(self, downsample: Optional[nn.Module], blocks: Sequence[nn.Module]):
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


# -- the model ------------------------------------------------------------------------------------
class VideoConvNeXt(VideoClassifier):
    """ConvNeXt-layout video classifier: TSN baseline, TAdaConvNeXtV2 or TAdaConvNeXt (V1).

    Input ``(B, 3, T, H, W)`` (T even with the tubelet stem); :meth:`forward_features` returns
    ``(B, C, T', H/32, W/32)`` with ``T' = T/2`` (tubelet) or ``T``.

    Args:
        depths, dims: blocks and channels per stage (ConvNeXt-T: (3, 3, 9, 3), (96, 192, 384, 768)).
        tada: ``None`` (plain per-frame depthwise convs), ``"v1"`` or ``"v2"`` (TAdaConv2d routing), or
            a calibration generator (``"learnable"``, ``"learnable_t"``, ``"dynamic"``, ``"dynamic_t"``,
            ``"tam_global"``, ``"tam_local_global"``, :mod:`tada.nn.calibration`).
        routing_kwargs: routing arguments merged into (and overriding) what each block builds: for
            ``"v1"`` / ``"v2"`` over ``reduction`` / ``kernels`` / ``head_dim`` (and V2's
            ``zero_init=True``), e.g. ``{"init": "random"}``; a calibration generator gets these alone
            (its own arguments: ``init``, ``frames``, ``reduction``, ``kernel``).
        act: MLP activation, ``"gelu"`` (exact at init from ImageNet weights) or ``"quick_gelu"``
            (the released TAdaConvNeXtV2 checkpoints).
        head_dim: V2 routing attention head size (48 for T/S, 64 for B); each stage's
            ``dim // reduction`` must be a multiple of it.
        reduction: V1 / V2 routing reduction ratio (default 2 for V2, 4 for V1); with a calibration
            generator it is an error (give ``routing_kwargs={"reduction": ...}``).
        kernels: V1 / V2 routing temporal kernel sizes ``(k1, k2)`` (not used by a generator).
        bias_calibration: calibrate the depthwise conv's bias per frame (default True for TAda).
        tubelet: T-Down stem (Conv3d (3,4,4) stride (2,4,4)) instead of a per-frame 4x4 stem.
        aggregation: T-Pool after the depthwise conv instead of a LayerNorm.
        drop_path_rate: stochastic depth at the last block, linearly increasing from 0 over blocks,
            one decision per video.
        layer_scale_init: initial layer scale γ (``None``/0 disables it).
        drop_rate: dropout before the classifier.
        num_classes: classifier size (0: none).
    """

    def __init__(
        self,
        *,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        tada: Optional[str] = None,
        routing_kwargs: Optional[Mapping[str, Any]] = None,
        act: str = "gelu",
        head_dim: int = 48,
        reduction: Optional[int] = None,
        kernels: Sequence[int] = (3, 3),
        bias_calibration: bool = True,
        tubelet: bool = False,
        aggregation: bool = False,
        drop_path_rate: float = 0.0,
        layer_scale_init: Optional[float] = 1e-6,
        drop_rate: float = 0.5,
        num_classes: int = 400,
        in_chans: int = 3,
    ):
        super().__init__()
        depths = check_pos_int_seq(depths, "depths")
        dims = check_pos_int_seq(dims, "dims")
        if len(depths) != len(dims):
            raise ValueError(f"depths {depths} and dims {dims} must have the same length")
        if not (tada is None or isinstance(tada, str)) or tada not in TADA_VERSIONS:
            raise ValueError(f"unknown tada {tada!r}; expected None or a routing name, one of {routing_names()}")
        if routing_kwargs is not None:
            if not isinstance(routing_kwargs, Mapping):
                raise ValueError(f"routing_kwargs must be a dict, got {type(routing_kwargs).__name__}")
            if tada is None:
                raise ValueError("routing_kwargs only apply to TAda models (tada set)")
        routing_kwargs = dict(routing_kwargs or {})
        generator = tada not in (None, "v1", "v2")  # a calibration generator: reduction stays None
        if generator and reduction is not None:
            raise ValueError(
                f"reduction is the V1 / V2 routing width; for tada={tada!r} give routing_kwargs="
                f"{{'reduction': {reduction!r}}} (a calibration generator takes only routing_kwargs)"
            )
        if act not in ACTS:
            raise ValueError(f"unknown act {act!r}; expected one of {ACTS}")
        for name, v in (("tubelet", tubelet), ("aggregation", aggregation), ("bias_calibration", bias_calibration)):
            if not isinstance(v, bool):
                raise ValueError(f"{name} must be a bool, got {v!r}")
        if reduction is None and not generator:
            reduction = 4 if tada == "v1" else 2
        if not generator and (isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1):
            raise ValueError(f"reduction must be a positive int, got {reduction!r}")
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
            raise ValueError(f"head_dim must be a positive int, got {head_dim!r}")
        if tada == "v2":
            # the widths the routing gets: the model's, unless routing_kwargs override them (bad values
            # there are the routing's to report)
            r, hd = routing_kwargs.get("reduction", reduction), routing_kwargs.get("head_dim", head_dim)
            if _is_pos_int(r) and _is_pos_int(hd):
                bad = [d for d in dims if (d // r) % hd or d // r < 1]
                if bad:
                    raise ValueError(
                        f"tada='v2' needs every dim // reduction to be a multiple of head_dim={hd}; "
                        f"dims {list(bad)} // {r} are not"
                    )
                head_dim = hd  # what the released-checkpoint conversion must use
        if not (0.0 <= float(drop_path_rate) < 1.0):
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
        if not (0.0 <= float(drop_rate) <= 1.0):
            raise ValueError(f"drop_rate must be in [0, 1], got {drop_rate!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative int, got {num_classes!r}")

        self.in_chans = in_chans
        self.depths, self.dims = depths, dims
        self.tada, self.act, self.head_dim, self.reduction = tada, act, head_dim, reduction
        self.routing_kwargs = routing_kwargs
        self.tubelet, self.aggregation = tubelet, aggregation
        self.frame_multiple = 2 if tubelet else 1

        self.stem = Stem(in_chans, dims[0], tubelet)
        total = sum(depths)
        rates = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        stages, k = [], 0
        for s, (depth, dim) in enumerate(zip(depths, dims)):
            down = Downsample(dims[s - 1], dim) if s > 0 else None
            blocks = [
                ConvNeXtBlock(
                    dim, tada=tada, aggregation=aggregation, act=act, reduction=reduction, kernels=kernels,
                    head_dim=head_dim, bias_calibration=bias_calibration and tada is not None,
                    layer_scale_init=layer_scale_init, drop_path=rates[k + j],
                    routing_kwargs=routing_kwargs or None,
                )
                for j in range(depth)
            ]
            k += depth
            stages.append(Stage(down, blocks))
        self.stages = nn.Sequential(*stages)
        self._init_head(dims[-1], num_classes, drop_rate, head_norm=nn.LayerNorm(dims[-1], eps=_LN_EPS))
        self._init_weights()

    def _init_weights(self) -> None:
        from timm.layers import trunc_normal_

        skip = set()
        for m in self.modules():
            if isinstance(m, ROUTING_TYPES):
                skip.update(id(x) for x in m.modules())  # routing keeps its own (zero / "ones") init
        for m in self.modules():
            if id(m) in skip:
                continue
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear, TAdaConv2d)):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # -- forward ------------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, 3, T, H, W) -> (B, C, T', H/32, W/32)`` (a view of channels-last memory)."""
        self.check_input(x)
        x = self.stages(self.stem(x))  # (B, T', h, w, C)
        return x.permute(0, 4, 1, 2, 3)

    # -- weights ------------------------------------------------------------------------------
    def _stem_weight(self, w: Tensor) -> Tensor:
        if self.tubelet and w.dim() == 4:
            return centre_inflate(w, 3)
        return w

    def checkpoint_filter_fn(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Convert a checkpoint to this model's keys (pure: the input is not modified).

        Detected layouts, each a rule set below: this project's own (``stem.conv.weight``), timm ConvNeXt
        (``stem.0.weight``), the original ConvNeXt release (``downsample_layers.0.0.weight``) and the
        paper's released TAdaConvNeXtV2 (``backbone.downsample_layers.0.0.weight``). Keys that match no
        rule are kept as they are, so strict loading reports them.
        """
        sd = dict(state_dict)
        if "stem.conv.weight" in sd:
            rules = OWN_RULES
        elif "backbone.downsample_layers.0.0.weight" in sd:
            self._check_released()
            rules = RELEASED_RULES
        elif "downsample_layers.0.0.weight" in sd:
            rules = ORIGINAL_RULES
        elif "stem.0.weight" in sd:
            rules = TIMM_RULES
        else:
            sample = ", ".join(sorted(sd)[:6])
            raise ValueError(
                "unrecognised checkpoint layout: expected a ConvNeXt checkpoint in timm form (stem.0.weight, "
                "stages.N.blocks.M.conv_dw...), original form (downsample_layers.0.0.weight, stages.N.M.dwconv...), "
                "the released TAdaConvNeXtV2 form (backbone.downsample_layers.0.0.weight, backbone.stages.N.M."
                f"dwconv_rf...) or this project's (stem.conv.weight); got keys like {sample}"
            )
        return apply_rules(
            sd, rules, fields={"block_norm": "tpool.norm1" if self.aggregation else "norm"},
            transforms={"stem": self._stem_weight,
                        "route_attn": partial(convert_released_route_attn, head_dim=self.head_dim)},
        )

    def _check_released(self) -> None:
        if self.tada != "v2":
            raise ValueError(
                "this is a released TAdaConvNeXtV2 checkpoint (backbone.stages.N.M.dwconv_rf ...); "
                f"it needs a tada='v2' model (e.g. tadaconvnextv2_tiny), this one has tada={self.tada!r}"
            )
        if self.act != "quick_gelu":
            warnings.warn(
                "loading a released TAdaConvNeXtV2 checkpoint into a model with act='gelu'; the release "
                "was trained with QuickGELU: build the model with act='quick_gelu'",
                stacklevel=3,
            )


# -- checkpoint rule sets (tada.models.convert) ------------------------------------------------------
# {block_norm} is the block's norm ("norm", or T-Pool's "tpool.norm1"); "stem" centre-inflates a 2D
# stem kernel into a tubelet model's (and leaves it as it is otherwise).
_P = r"(?P<p>weight|bias)"
_BLK = "stages.{s}.blocks.{j}"
#: this project's own keys; the block norm follows the model (a TSN checkpoint into a T-Pool model, or back)
OWN_RULES = (
    Rule(r"stages\.(?P<s>\d+)\.blocks\.(?P<j>\d+)\.(?:norm|tpool\.norm1)\." + _P, _BLK + ".{block_norm}.{p}"),
    Rule(r"stem\.conv\.weight", "stem.conv.weight", "stem"),
)
_TIMM_BLK = r"stages\.(?P<s>\d+)\.blocks\.(?P<j>\d+)\."
#: timm ``convnext_*`` (``stem.0``, ``stages.N.downsample``, ``conv_dw``, ``mlp.fc1``, ``head.fc``)
TIMM_RULES = (
    Rule(r"stem\.0\.weight", "stem.conv.weight", "stem"),
    Rule(r"stem\.0\.bias", "stem.conv.bias"),
    Rule(r"stem\.1\." + _P, "stem.norm.{p}"),
    Rule(r"stages\.(?P<s>\d+)\.downsample\.0\." + _P, "stages.{s}.downsample.norm.{p}"),
    Rule(r"stages\.(?P<s>\d+)\.downsample\.1\." + _P, "stages.{s}.downsample.conv.{p}"),
    Rule(_TIMM_BLK + r"conv_dw\." + _P, _BLK + ".conv_dw.{p}"),
    Rule(_TIMM_BLK + r"norm\." + _P, _BLK + ".{block_norm}.{p}"),
    Rule(_TIMM_BLK + r"mlp\.(?P<fc>fc[12])\." + _P, _BLK + ".mlp.{fc}.{p}"),
    Rule(_TIMM_BLK + r"gamma", _BLK + ".gamma"),
    Rule(r"head\.norm\." + _P, "head_norm.{p}"),
    Rule(r"head\.fc\." + _P, "head.{p}"),
)
_ORIG_BLK = r"stages\.(?P<s>\d+)\.(?P<j>\d+)\."
#: the original ConvNeXt release (``downsample_layers``, ``stages.N.M.dwconv``, ``pwconv1``, ``norm``, ``head``)
ORIGINAL_RULES = (
    Rule(r"downsample_layers\.0\.0\.weight", "stem.conv.weight", "stem"),
    Rule(r"downsample_layers\.0\.0\.bias", "stem.conv.bias"),
    Rule(r"downsample_layers\.0\.1\." + _P, "stem.norm.{p}"),
    Rule(r"downsample_layers\.(?P<s>\d+)\.0\." + _P, "stages.{s}.downsample.norm.{p}"),
    Rule(r"downsample_layers\.(?P<s>\d+)\.1\." + _P, "stages.{s}.downsample.conv.{p}"),
    Rule(_ORIG_BLK + r"dwconv\." + _P, _BLK + ".conv_dw.{p}"),
    Rule(_ORIG_BLK + r"norm\." + _P, _BLK + ".{block_norm}.{p}"),
    Rule(_ORIG_BLK + r"pwconv1\." + _P, _BLK + ".mlp.fc1.{p}"),
    Rule(_ORIG_BLK + r"pwconv2\." + _P, _BLK + ".mlp.fc2.{p}"),
    Rule(_ORIG_BLK + r"gamma", _BLK + ".gamma"),
    Rule(r"norm\." + _P, "head_norm.{p}"),
    Rule(r"head\." + _P, "head.{p}"),
)
_REL_BLK = r"backbone\.stages\.(?P<s>\d+)\.(?P<j>\d+)\."
_REL_DOWN = r"backbone\.downsample_layers\."
#: the paper's released TAdaConvNeXtV2 (SPEC §6): the original layout under ``backbone.``, the depthwise
#: conv a 6-D TAdaConv with its V2 routing at ``dwconv_rf``, T-Pool's second norm at ``norm_avgpool``, the
#: pointwise layers, the downsampling convs and the head stored as Conv3d.
RELEASED_RULES = (
    Rule(r"head\.out\.weight", "head.weight", conv_to_linear),
    Rule(r"head\.out\.(?P<p>.+)", "head.{p}", flatten),
    Rule(_REL_BLK + r"dwconv_rf\.(?P<rest>.+)", _BLK + ".conv_dw.routing", group="route_attn"),
    Rule(_REL_BLK + r"dwconv\.weight", _BLK + ".conv_dw.weight", squeeze_tada_weight),
    Rule(_REL_BLK + r"dwconv\.bias", _BLK + ".conv_dw.bias", squeeze_tada_bias),
    Rule(_REL_BLK + r"norm\." + _P, _BLK + ".{block_norm}.{p}"),
    Rule(_REL_BLK + r"norm_avgpool\." + _P, _BLK + ".tpool.norm2.{p}"),
    Rule(_REL_BLK + r"pwconv1\.weight", _BLK + ".mlp.fc1.weight", conv_to_linear),
    Rule(_REL_BLK + r"pwconv2\.weight", _BLK + ".mlp.fc2.weight", conv_to_linear),
    Rule(_REL_BLK + r"pwconv1\.bias", _BLK + ".mlp.fc1.bias", flatten),
    Rule(_REL_BLK + r"pwconv2\.bias", _BLK + ".mlp.fc2.bias", flatten),
    Rule(_REL_BLK + r"gamma", _BLK + ".gamma", flatten),
    Rule(_REL_DOWN + r"0\.0\.weight", "stem.conv.weight", "stem"),
    Rule(_REL_DOWN + r"0\.0\.bias", "stem.conv.bias"),
    Rule(_REL_DOWN + r"0\.1\." + _P, "stem.norm.{p}"),
    Rule(_REL_DOWN + r"(?P<s>\d+)\.0\." + _P, "stages.{s}.downsample.norm.{p}"),
    Rule(_REL_DOWN + r"(?P<s>\d+)\.1\.weight", "stages.{s}.downsample.conv.weight", conv3d_to_conv2d),
    Rule(_REL_DOWN + r"(?P<s>\d+)\.1\.bias", "stages.{s}.downsample.conv.bias"),
    Rule(r"backbone\.norm\." + _P, "head_norm.{p}"),
)


# -- registered factories -------------------------------------------------------------------------
_TINY = {"depths": (3, 3, 9, 3), "dims": (96, 192, 384, 768)}
_SMALL = {"depths": (3, 3, 27, 3), "dims": (96, 192, 384, 768)}
_BASE = {"depths": (3, 3, 27, 3), "dims": (128, 256, 512, 1024)}
_MINI = {"depths": (1, 1, 2, 1), "dims": (32, 64, 128, 256)}

_TSN = {"tada": None, "tubelet": False, "aggregation": False}
_V2 = {"tada": "v2", "tubelet": True, "aggregation": True}
_V1 = {"tada": "v1", "tubelet": True, "aggregation": False}


def _create(defaults: dict, kwargs: dict) -> VideoConvNeXt:
    return VideoConvNeXt(**{**defaults, **kwargs})


@register_model
def tsn_convnext_tiny(**kwargs) -> VideoConvNeXt:
    """TSN baseline: ImageNet ConvNeXt-T applied to every frame."""
    return _create({**_TINY, **_TSN}, kwargs)


@register_model
def tsn_convnext_small(**kwargs) -> VideoConvNeXt:
    """TSN baseline: ConvNeXt-S per frame."""
    return _create({**_SMALL, **_TSN}, kwargs)


@register_model
def tsn_convnext_base(**kwargs) -> VideoConvNeXt:
    """TSN baseline: ConvNeXt-B per frame."""
    return _create({**_BASE, **_TSN}, kwargs)


@register_model
def tsn_convnext_mini(**kwargs) -> VideoConvNeXt:
    """A tiny TSN ConvNeXt for CPU tests (depths (1, 1, 2, 1), dims (32, 64, 128, 256))."""
    return _create({**_MINI, **_TSN}, kwargs)


@register_model
def tadaconvnext_tiny(**kwargs) -> VideoConvNeXt:
    """TAdaConvNeXt-T (V1): RouteFuncMLP (r=4, bias calibration) TAdaConvs, tubelet stem, no T-Pool."""
    return _create({**_TINY, **_V1}, kwargs)


@register_model
def tadaconvnextv2_tiny(**kwargs) -> VideoConvNeXt:
    """TAdaConvNeXtV2-T (head_dim 48)."""
    return _create({**_TINY, **_V2, "head_dim": 48}, kwargs)


@register_model
def tadaconvnextv2_small(**kwargs) -> VideoConvNeXt:
    """TAdaConvNeXtV2-S (head_dim 48)."""
    return _create({**_SMALL, **_V2, "head_dim": 48}, kwargs)


@register_model
def tadaconvnextv2_base(**kwargs) -> VideoConvNeXt:
    """TAdaConvNeXtV2-B (head_dim 64)."""
    return _create({**_BASE, **_V2, "head_dim": 64}, kwargs)


@register_model
def tadaconvnextv2_mini(**kwargs) -> VideoConvNeXt:
    """A tiny TAdaConvNeXtV2 for CPU tests (depths (1, 1, 2, 1), dims (32, 64, 128, 256), head_dim 16,
    so the wider stages have several attention heads)."""
    return _create({**_MINI, **_V2, "head_dim": 16}, kwargs)


VideoConvNeXt.grad_checkpoint_types = (ConvNeXtBlock,)  # set_grad_checkpointing wraps these
