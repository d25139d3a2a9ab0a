"""``TAdaConv2d``: a Conv2d applied per frame whose kernel is recalibrated per frame by its own routing."""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.utils import _pair

from .functional import CAL_DIMS, IMPLS, _as_calibration, _per_frame, auto_impl, tada_conv2d
from .calibration import build_routing, routing_names

__all__ = ["TAdaConv2d", "has_forward_hooks"]


def check_conv_args(in_channels, out_channels, groups, cal_dim, cal_dims, impl, impls, bias, bias_calibration,
                    where: str = "") -> None:
    """The constructor checks TAdaConv2d and TAdaConv3d share (``where``: e.g. " for TAdaConv3d")."""
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"in_channels={in_channels} and out_channels={out_channels} must be divisible by groups={groups}"
        )
    if cal_dim not in cal_dims:
        raise ValueError(f"unknown cal_dim {cal_dim!r}{where}; expected one of {cal_dims}")
    if impl not in impls:
        raise ValueError(f"unknown impl {impl!r}; expected one of {impls}")
    if bias_calibration and not bias:
        raise ValueError("bias_calibration=True needs bias=True")


def has_forward_hooks(*modules: Optional[nn.Module]) -> bool:
    """Whether a forward (pre-)hook is registered on any of ``modules`` or on every module: a fused path
    that skips their ``forward`` calls declines then, so hooks (``tada.engine.explain``, profiler
    marks) see the calls they expect."""
    from torch.nn.modules import module as _module

    if _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return True
    return any(m is not None and (m._forward_hooks or m._forward_pre_hooks) for m in modules)


class TAdaConv2d(nn.Module):
    """Temporally-adaptive 2D convolution on ``(B, C_in, T, H, W)``.

    ``weight`` has the ordinary Conv2d layout ``(C_out, C_in/groups, kh, kw)`` (so 2D checkpoints load
    as they are). The calibration comes from the module's routing function unless ``alpha`` is passed
    to ``forward``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as Conv2d
            (zero padding only).
        cal_dim: ``"cin"`` (dense convs), ``"cout"`` (depthwise convs), ``"cin_cout"`` or ``"k2"``.
        routing: ``"v1"`` (:class:`RouteFuncMLP`, default), ``"v2"`` (:class:`RouteFuncAttn`), a
            calibration generator of :mod:`tada.nn.calibration` (``"learnable"``, ``"learnable_t"``,
            ``"dynamic"``, ``"dynamic_t"``, ``"tam_global"``, ``"tam_local_global"``), ``None`` (the
            caller always passes ``alpha``), or a ready ``nn.Module`` with the same contract.
        routing_kwargs: extra arguments for the routing class (``reduction``, ``kernels``, ``head_dim``,
            ``init="ones"|"random"``…). Its input channels, output channels and bias head follow from
            this layer.
        cal_fraction: the share of channels calibrated (paper Fig. 4): only the first
            ``ceil(n * cal_fraction)`` of each calibration's ``n`` channels get a routed ``alpha``, the
            others exactly 1. Needs a routing given by name.
        bias_calibration: also calibrate the bias per frame (TAdaConvV2); needs ``bias=True``.
        impl: ``"auto"`` | ``"fast"`` | ``"frames"`` | ``"grouped"``, see :func:`tada.nn.functional.tada_conv2d`.
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
        cal_fraction: float = 1.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_conv_args(in_channels, out_channels, groups, cal_dim, CAL_DIMS, impl, IMPLS, bias, bias_calibration)
        if impl in ("fast", "frames") and cal_dim == "k2":
            raise ValueError("cal_dim='k2' has no exact fast path: use impl='grouped' or 'auto'")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair(kernel_size)
        self.stride, self.dilation = _pair(stride), _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.cal_dim, self.impl, self.bias_calibration = cal_dim, impl, bool(bias_calibration)

        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()
        self.cal_fraction = cal_fraction
        self.routing = self._build_routing(routing, routing_kwargs or {}, cal_fraction)
        if self.routing is not None and (device is not None or dtype is not None):
            self.routing.to(**{k: v for k, v in factory.items() if v is not None})

    def _build_routing(self, routing, kwargs, cal_fraction=1.0) -> Optional[nn.Module]:
        if routing is None or isinstance(routing, nn.Module):
            if kwargs:
                raise ValueError("routing_kwargs only apply when the routing is given by name")
            if cal_fraction != 1.0:
                raise ValueError("cal_fraction only applies when the routing is given by name")
            return routing
        if not isinstance(routing, str) or routing not in routing_names():
            raise ValueError(f"unknown routing {routing!r}; expected one of {routing_names()}, None or an nn.Module")
        out = {
            "cin": self.in_channels,
            "cout": self.out_channels,
            "cin_cout": (self.in_channels, self.out_channels),
            "k2": self.kernel_size[0] * self.kernel_size[1],
        }[self.cal_dim]
        bias_channels = self.out_channels if self.bias_calibration else None
        return build_routing(routing, self.in_channels, out, bias_channels=bias_channels, kwargs=kwargs,
                             cal_fraction=cal_fraction)

    def reset_parameters(self) -> None:
        # the same initialisation as nn.Conv2d
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.weight.shape[2] * self.weight.shape[3]
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor, alpha=None, bias_alpha: Optional[Tensor] = None, *, split: bool = False):
        """``x``: ``(B, C_in, T, H, W)``; ``alpha``/``bias_alpha`` override the routing's output.

        ``split=True`` returns ``(y, scale, shift)`` with the output ``y * scale + shift`` (see
        :func:`~tada.nn.functional.tada_conv2d` with ``split=True``: the plain convolution and the per-frame affine of a
        ``cout`` calibration, for the next layer to fold into its pass; ``(output, None, None)`` for
        the other forms)."""
        if alpha is None:
            if self.routing is None:
                raise ValueError("this TAdaConv2d has no routing function (routing=None): pass alpha=")
            if x.dim() != 5:
                raise ValueError(f"x must have shape (B, C_in, T, H, W), got shape {tuple(x.shape)}")
            calibration = self.routing(x)
            if self.bias_calibration:
                alpha, routed_beta = calibration
                bias_alpha = routed_beta if bias_alpha is None else bias_alpha
            else:
                alpha = calibration
        return tada_conv2d(
            x, self.weight, alpha, self.bias,
            stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups,
            cal_dim=self.cal_dim, bias_alpha=bias_alpha, impl=self.impl, split=split,
        )

    def forward_after_bn_relu(self, z: Tensor, norm: nn.Module, batch: int) -> Optional[Tensor]:
        """``self(relu(norm(z)))`` for the frame batch ``z`` ``(B*T, C_in, H, W)`` of ``batch`` clips,
        returned as the frame batch ``(B*T, C_out, H', W')``; ``None`` where it does not apply (the
        caller then runs the three layers).

        It applies at inference (no gradient) with ``norm`` a BatchNorm2d in eval mode with running
        statistics, ``cal_dim="cin"``, a routing that takes the frame descriptors
        (``from_descriptor``: V1, V2), the fast forward (``impl`` ``"fast"``/``"frames"``, or ``"auto"``
        choosing one), float32/float64 CPU tensors with the native kernels built, and no forward hook on
        this layer, its routing or the norm (:func:`has_forward_hooks`: their calls must be seen). Then the norm
        (folded to a per-channel affine), the ReLU, the routing's spatial means and the calibration
        multiply take two passes over ``z`` (``tada_native::bn_relu_mean`` and ``bn_relu_scale``)
        instead of four reads and three writes; the values are the same up to rounding.
        """
        if not self._fuses_bn_relu(z, norm):
            return None
        from . import _native

        if not _native.available():
            return None
        from .aggregation import _bn_affine

        scale, shift = (v.to(z.dtype).contiguous() for v in _bn_affine(norm))
        n, c = z.shape[:2]
        means = torch.ops.tada_native.bn_relu_mean(z, scale, shift)  # (B*T, C)
        frames = n // batch
        alpha = self.routing.from_descriptor(means.reshape(batch, frames, c).transpose(1, 2))
        alpha = _per_frame(_as_calibration(alpha, "alpha", batch, c, frames, "C_in")).to(z.dtype).contiguous()
        xa = torch.ops.tada_native.bn_relu_scale(z, scale, shift, alpha)
        return F.conv2d(xa, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def _fuses_bn_relu(self, z: Tensor, norm: nn.Module) -> bool:
        if torch.is_grad_enabled() or torch.jit.is_tracing() or torch.jit.is_scripting():
            return False
        if has_forward_hooks(self, self.routing, norm):  # their forward must run for the hooks to see it
            return False
        if torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return False
        if self.cal_dim != "cin" or self.bias_calibration or not callable(getattr(self.routing, "from_descriptor", None)):
            return False
        if not (isinstance(norm, nn.BatchNorm2d) and not norm.training and norm.running_mean is not None
                and norm.num_features == self.in_channels):
            return False
        if type(z) is not Tensor or z.dim() != 4 or z.device.type != "cpu" or z.dtype not in (torch.float32, torch.float64):
            return False
        if z.shape[1] != self.in_channels or z.shape[0] == 0:
            return False
        if not (z.is_contiguous() or z.is_contiguous(memory_format=torch.channels_last)):
            return False
        if self.weight.device.type != "cpu" or self.weight.dtype != z.dtype:
            return False
        impl = self.impl
        if impl == "auto":
            impl = auto_impl(self.cal_dim, z.shape, self.weight.shape, self.groups, z.device.type, self.stride)
        return impl in ("fast", "frames")

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d, **kwargs) -> "TAdaConv2d":
        """A TAdaConv2d with ``conv``'s geometry and (copied) weights.

        With a zero-initialised routing (the V1 default, V2 with ``zero_init=True``) the result equals
        ``conv`` applied to every frame. ``kwargs`` are the TAda-specific arguments (``cal_dim``,
        ``routing``, ``routing_kwargs``, ``bias_calibration``, ``impl``).
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"from_conv2d takes an nn.Conv2d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"only zero padding is supported, conv has padding_mode={conv.padding_mode!r}")
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
