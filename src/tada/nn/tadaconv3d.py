"""``TAdaConv3d``: a Conv3d whose kernel is recalibrated per output frame by its own routing.

The plug-in form of TAdaConv for 3D networks (R3D, SlowOnly, SlowFast, the temporal (3,1,1) convs of
R(2+1)D): ``weight`` keeps the ``nn.Conv3d`` layout so 3D checkpoints load as they are, and with the
routing's zero-initialised last layer the module equals the ``nn.Conv3d`` it replaces.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn as nn
from torch import Tensor

from .functional3d import CAL_DIMS_3D, IMPLS_3D, _triple, output_frames, sample_output_frames, tada_conv3d
from .calibration import build_routing, routing_names
from .tadaconv import check_conv_args

__all__ = ["TAdaConv3d"]


class TAdaConv3d(nn.Module):
    """Temporally-adaptive 3D convolution on ``(B, C_in, T, H, W)``: ``W_t = alpha_t * W``.

    ``alpha_t`` belongs to output frame ``t`` and scales all ``kt`` temporal taps of the kernel.

    **Routing at the output frame rate.** The routing function sees the layer's input and produces a
    calibration per *input* frame, ``(B, C_cal, T)``. It is brought to the ``T_out`` output frames by
    :func:`tada.nn.functional3d.sample_output_frames`: output frame ``t`` takes the calibration of the
    input frame at the temporal centre of its receptive field, ``s*t - p + d*(kt-1)/2`` (the mean of
    the two neighbouring frames when that falls half-way, clamped at the clip's ends). With stride 1
    and "same" temporal padding this is the identity; with kernel 3, padding 1, stride 2 it keeps
    frames 0, 2, 4, …, the frames the strided convolution is centred on. Ones stay exactly ones, so the
    layer equals its Conv3d at init.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as Conv3d
            (ints or 3-tuples, zero padding only).
        cal_dim: ``"cin"`` (dense convs) or ``"cout"`` (depthwise convs).
        routing: ``"v1"`` (:class:`RouteFuncMLP`, default), ``"v2"`` (:class:`RouteFuncAttn`), ``None``
            (the caller always passes ``alpha``), or a ready ``nn.Module`` with the same contract
            (``(B, C_in, T, H, W) -> (B, C_cal, T)``, or ``(alpha, beta)`` with bias calibration).
        routing_kwargs: extra arguments for the routing class (``reduction``, ``kernels``, ``head_dim``…).
        bias_calibration: also calibrate the bias per output frame (TAdaConvV2); needs ``bias=True``.
        impl: ``"auto"`` | ``"fast"`` | ``"grouped"``, see :func:`tada.nn.functional3d.tada_conv3d`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = False,
        *,
        cal_dim: str = "cin",
        routing: Union[str, nn.Module, None] = "v1",
        routing_kwargs: Optional[dict] = None,
        bias_calibration: bool = False,
        impl: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_conv_args(in_channels, out_channels, groups, cal_dim, CAL_DIMS_3D, impl, IMPLS_3D, bias,
                        bias_calibration, " for TAdaConv3d")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _triple(kernel_size, "kernel_size", 1)
        self.stride = _triple(stride, "stride", 1)
        self.padding = _triple(padding, "padding", 0)
        self.dilation = _triple(dilation, "dilation", 1)
        self.cal_dim, self.impl, self.bias_calibration = cal_dim, impl, bool(bias_calibration)

        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()
        self.routing = self._build_routing(routing, routing_kwargs or {})
        if self.routing is not None and (device is not None or dtype is not None):
            self.routing.to(**{k: v for k, v in factory.items() if v is not None})

    def _build_routing(self, routing, kwargs) -> Optional[nn.Module]:
        if routing is None or isinstance(routing, nn.Module):
            if kwargs:
                raise ValueError("routing_kwargs only apply when the routing is given by name")
            return routing
        if not isinstance(routing, str) or routing not in routing_names():
            raise ValueError(f"unknown routing {routing!r}; expected one of {routing_names()}, None or an nn.Module")
        out = self.in_channels if self.cal_dim == "cin" else self.out_channels
        bias_channels = self.out_channels if self.bias_calibration else None
        return build_routing(routing, self.in_channels, out, bias_channels=bias_channels, kwargs=kwargs)

    def reset_parameters(self) -> None:
        # the same initialisation as nn.Conv3d
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def output_frames(self, frames: int) -> int:
        """``T_out`` for an input of ``frames`` frames."""
        return output_frames(frames, self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0])

    def calibration(self, x: Tensor):
        """The routing's calibration at the output frame rate: ``alpha`` ``(B, C_cal, T_out)``, or
        ``(alpha, beta)`` with bias calibration."""
        if self.routing is None:
            raise ValueError("this TAdaConv3d has no routing function (routing=None): pass alpha=")
        if x.dim() != 5:
            raise ValueError(f"x must have shape (B, C_in, T, H, W), got shape {tuple(x.shape)}")
        kt, st, pt, dt = self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0]
        if self.output_frames(x.shape[2]) < 1:
            raise ValueError(f"x has {x.shape[2]} frames, too few for temporal kernel {kt} with padding {pt}")
        out = self.routing(x)
        to_out = lambda a: sample_output_frames(a, kt, st, pt, dt)  # noqa: E731
        if self.bias_calibration:
            alpha, beta = out
            return to_out(alpha), to_out(beta)
        return to_out(out)

    def forward(self, x: Tensor, alpha: Optional[Tensor] = None, beta: Optional[Tensor] = None) -> Tensor:
        """``x``: ``(B, C_in, T, H, W)``; ``alpha``/``beta`` (``(B, C, T_out)``) override the routing."""
        if alpha is None:
            calibration = self.calibration(x)
            if self.bias_calibration:
                alpha, routed_beta = calibration
                beta = routed_beta if beta is None else beta
            else:
                alpha = calibration
        return tada_conv3d(
            x, self.weight, alpha, self.bias, beta,
            stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups,
            cal_dim=self.cal_dim, impl=self.impl,
        )

    @classmethod
    def from_conv3d(cls, conv: nn.Conv3d, **kwargs) -> "TAdaConv3d":
        """A TAdaConv3d with ``conv``'s geometry and (copied) weights; equals ``conv`` at init with a
        zero-initialised routing. ``kwargs`` are the TAda-specific arguments."""
        if not isinstance(conv, nn.Conv3d):
            raise TypeError(f"from_conv3d takes an nn.Conv3d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                f"only explicit zero padding is supported, conv has padding={conv.padding!r}, "
                f"padding_mode={conv.padding_mode!r}"
            )
        m = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None,
            device=conv.weight.device, dtype=conv.weight.dtype, **kwargs,
        )
        with torch.no_grad():
            m.weight.copy_(conv.weight)
            if conv.bias is not None:
                m.bias.copy_(conv.bias)
        return m

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"bias={self.bias is not None}, cal_dim={self.cal_dim!r}, impl={self.impl!r}"
        )
        return s + (", bias_calibration=True" if self.bias_calibration else "")
