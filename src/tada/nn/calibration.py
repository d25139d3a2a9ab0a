"""Calibration generators: other sources of the per-frame calibration ``alpha`` (paper Table 3a, A8).

A TAdaConv's kernel is ``W_t = alpha_t * W_b``; TAdaConv's own routing functions
(:mod:`tada.nn.routing`) produce ``alpha`` from local and global temporal context. The paper tests its
hypothesis — *relaxing temporal invariance gives temporal modelling* — by swapping that source for
others. Each generator here has the routing contract: it sees the feature map the convolution sees,
``(B, C, T, H, W)``, and returns ``(B, C_cal, T)`` (or the routing's tuple forms, see below), so it
plugs into :class:`~tada.nn.TAdaConv2d` / :class:`~tada.nn.TAdaConv3d` by name
(``routing="dynamic_t"``, ``routing_kwargs={"init": "random"}``):

========================  =====================  ===================================================
name                      over time              alpha
========================  =====================  ===================================================
``learnable``             fixed                  ``1 + p``, one parameter vector ``p`` (C_cal,)
``learnable_t``           varying                ``1 + p_t``, a parameter ``p`` (C_cal, frames)
``dynamic``               fixed                  DynamicFilter-like, ``1 + MLP(GAP_thw(x))``
``dynamic_t``             varying                DDF-like (channel branch): the same MLP, one output
                                                 per frame, ``1 + MLP(GAP_thw(x))_t``
``tam_global``            fixed (order-aware)    TAM's global branch: per channel, ``1 + MLP_T(v_c)``
``tam_local_global``      varying                TAM's local branch times its global branch:
                                                 ``2 sigmoid(l_t) * (1 + MLP_T(v_c))``
``v1`` (``global_context=False``)                TAdaConv without global context (routing.py)
========================  =====================  ===================================================

``GAP_thw(x)`` is the clip descriptor (mean over T, H, W), ``v_c`` channel ``c``'s sequence of
per-frame spatial means (length T). Every generator has ``init``:

* ``"ones"`` (the paper's "our init"): the layer producing the deviation from 1 is zero-initialised
  (for ``learnable*`` the parameter itself), so ``alpha`` is exactly 1 and a TAda model equals its
  plain model at init;
* ``"random"``: that last layer keeps PyTorch's default initialisation (``U(-1/sqrt(fan_in),
  1/sqrt(fan_in))`` for ``nn.Linear`` / ``nn.Conv1d``; for ``learnable*`` the parameter is drawn
  ``U(-1/sqrt(C), 1/sqrt(C))``), as the original methods are, so ``alpha`` starts away from 1.

**Frame counts.** ``learnable_t``, ``dynamic_t`` and the TAM branches are tied to a number of frames,
``frames`` (default 8, the paper's): ``learnable_t`` and ``dynamic_t`` have one output per frame, and
TAM's global branch is an MLP over a length-``frames`` sequence. At another T the per-frame outputs
are resampled to T by linear interpolation over time (``align_corners=True``: the first and last
frames keep the first and last values), and the TAM global branch sees its input sequence resampled
to ``frames`` the same way. A calibration of exact ones stays exact ones at every T.

**TAM, adapted.** TANet's TAM (Liu et al., 2021) has a local branch ``Conv1d(C -> C/4, k=3) -> BN
-> ReLU -> Conv1d(-> C, 1) -> sigmoid`` on the per-frame descriptors (a temporally varying channel
attention) and a global branch ``Linear(T -> 2T) -> BN -> ReLU -> Linear(2T -> K) -> softmax``
applied to every channel's length-T sequence with weights shared over channels (a K-tap temporal
kernel). To produce calibration weights (paper Appendix J.2) the global branch's last layer here
gives one value per channel instead of a softmax kernel, ``alpha_global = 1 + Linear(2T -> 1)``; the
local branch's sigmoid is scaled by 2 so that it is exactly 1 at zero input; ``tam_local_global`` is
their product. Note that ``tam_global`` is constant over time but *not* blind to order: its MLP reads
the sequence of frames, so a clip and its reversal get different (each time-constant) calibrations.
``learnable`` and ``dynamic`` are blind to order: ``alpha(reversed clip) == alpha(clip)``.

**Output forms**, as the routing functions: ``out_channels`` an int (one calibration) or a pair
``(n_in, n_out)`` (two, for ``cal_dim="cin_cout"``); with ``bias_channels`` a further one for the
bias calibration, returned as ``(alpha, bias_alpha)``. The TAM generators calibrate per input
channel, so each of their outputs must have ``in_channels`` channels.

:class:`PartialCalibration` calibrates only the first channels of a layer (paper Fig. 4, the share
of channels): the rest get exactly 1.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .routing import RouteFuncAttn, RouteFuncMLP, _descriptor, _out_heads, _pos_int

__all__ = [
    "CALIBRATIONS",
    "INITS",
    "ROUTING_TYPES",
    "LearnableCalibration",
    "DynamicCalibration",
    "TAMCalibration",
    "PartialCalibration",
    "build_routing",
    "routing_names",
    "temporally_varying",
]

INITS = ("ones", "random")


def _check_init(init) -> str:
    if not isinstance(init, str) or init not in INITS:
        raise ValueError(f"init must be one of {INITS} ('ones': alpha == 1 at init, the paper's init), got {init!r}")
    return init


def _resample(a: Tensor, frames: int) -> Tensor:
    """``(B, n, T0) -> (B, n, frames)`` by linear interpolation over time (identity when ``T0 == frames``)."""
    if a.shape[-1] == frames:
        return a
    if a.shape[-1] == 1:
        return a.expand(*a.shape[:-1], frames)
    return F.interpolate(a, size=frames, mode="linear", align_corners=True)


def _last_layer_init(m: nn.Module, init: str) -> None:
    if init == "ones":
        nn.init.zeros_(m.weight)
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)
    else:
        m.reset_parameters()  # PyTorch's default init of nn.Linear / nn.Conv1d


class _Generator(nn.Module):
    """Shared plumbing: the output sizes (``heads``, then the optional bias head) and the output form."""

    def __init__(self, in_channels: int, out_channels, bias_channels: Optional[int], init: str):
        super().__init__()
        self.in_channels = _pos_int(in_channels, "in_channels")
        self.heads = _out_heads(out_channels, self.in_channels)
        self.bias_channels = None if bias_channels is None else _pos_int(bias_channels, "bias_channels")
        self.sizes: Tuple[int, ...] = self.heads + ((self.bias_channels,) if self.bias_channels else ())
        self.init = _check_init(init)

    def _form(self, outs: List[Tensor]):
        """``[alpha_1, (alpha_2), (beta)]`` -> the routing contract's return value."""
        alpha = outs[0] if len(self.heads) == 1 else (outs[0], outs[1])
        return (alpha, outs[-1]) if self.bias_channels is not None else alpha

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, sizes={self.sizes}, init={self.init!r}"


class LearnableCalibration(_Generator):
    """``alpha = 1 + p``: a learnt calibration independent of the input (paper Table 3a, "learnable").

    Args:
        in_channels: channels of the feature map (only checked: the calibration does not read it).
        out_channels, bias_channels: output sizes (see the module doc).
        temporal: ``False`` — one ``p`` shared by all frames (``learnable``); ``True`` — one per frame,
            ``p`` of shape ``(C_cal, frames)`` (``learnable_t``), resampled to other frame counts.
        frames: the frame count ``p`` is defined at (``temporal=True``).
        init: ``"ones"`` (``p = 0``) or ``"random"`` (``p ~ U(-1/sqrt(C), 1/sqrt(C))``).
    """

    def __init__(self, in_channels: int, out_channels=None, *, bias_channels: Optional[int] = None,
                 init: str = "ones", temporal: bool = False, frames: int = 8):
        super().__init__(in_channels, out_channels, bias_channels, init)
        self.temporal = bool(temporal)
        self.frames = _pos_int(frames, "frames")
        self.params = nn.ParameterList(
            nn.Parameter(torch.zeros(n, self.frames if self.temporal else 1)) for n in self.sizes
        )
        if init == "random":
            bound = 1.0 / math.sqrt(self.in_channels)
            for p in self.params:
                nn.init.uniform_(p, -bound, bound)

    def forward(self, x: Tensor):
        if x.dim() != 5:
            raise ValueError(f"routing input must be (B, C, T, H, W), got shape {tuple(x.shape)}")
        b, t = x.shape[0], x.shape[2]
        outs = [(1.0 + _resample(p[None], t)).expand(b, -1, t) for p in self.params]
        return self._form(outs)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", temporal=True, frames={self.frames}" if self.temporal else "")


class DynamicCalibration(_Generator):
    """Calibration from the clip descriptor: ``alpha = 1 + fc2(ReLU(fc1(GAP_thw(x))))``.

    ``temporal=False`` is DynamicFilter-like (one ``alpha`` for all frames, ``dynamic``);
    ``temporal=True`` is DDF-like (``dynamic_t``): ``fc2`` has ``C_cal * frames`` outputs, one
    calibration per frame, resampled to other frame counts. The hidden width is ``C // reduction``.
    ``init`` applies to ``fc2`` (one per output head).
    """

    def __init__(self, in_channels: int, out_channels=None, *, bias_channels: Optional[int] = None,
                 init: str = "ones", temporal: bool = False, frames: int = 8, reduction: int = 4):
        super().__init__(in_channels, out_channels, bias_channels, init)
        self.temporal = bool(temporal)
        self.frames = _pos_int(frames, "frames")
        self.reduction = _pos_int(reduction, "reduction")
        hidden = self.in_channels // self.reduction
        if hidden < 1:
            raise ValueError(f"reduction={reduction} leaves no hidden channels for in_channels={in_channels}")
        per = self.frames if self.temporal else 1
        self.fc1 = nn.Linear(self.in_channels, hidden)
        self.fc2 = nn.ModuleList(nn.Linear(hidden, n * per) for n in self.sizes)
        for m in self.fc2:
            _last_layer_init(m, init)

    def forward(self, x: Tensor):
        v = _descriptor(x)  # (B, C, T)
        b, t = v.shape[0], v.shape[2]
        h = F.relu(self.fc1(v.mean(dim=2)))
        per = self.frames if self.temporal else 1
        outs = [(1.0 + _resample(fc(h).view(b, n, per), t)) for fc, n in zip(self.fc2, self.sizes)]
        return self._form(outs)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", temporal={self.temporal}, frames={self.frames}, reduction={self.reduction}"


class TAMCalibration(_Generator):
    """TAM's (TANet) branches adapted to produce calibration weights (see the module doc).

    ``local=False`` (``tam_global``): ``alpha_c = 1 + g(v_c)``, constant over time, from the MLP
    ``Linear(frames -> 2 frames) -> BN -> ReLU -> Linear(2 frames -> 1)`` applied to every channel's
    sequence of frame descriptors (weights shared over channels). ``local=True``
    (``tam_local_global``): also the local branch ``Conv1d(C -> C/r, k) -> BN -> ReLU -> Conv1d(-> C,
    1)`` on the frame descriptors, ``alpha_{c,t} = 2 sigmoid(l_{c,t}) * (1 + g(v_c))``. ``init``
    applies to the last layer of each branch (one per output head).
    """

    def __init__(self, in_channels: int, out_channels=None, *, bias_channels: Optional[int] = None,
                 init: str = "ones", local: bool = False, frames: int = 8, reduction: int = 4,
                 kernel: int = 3, bn_eps: float = 1e-5):
        super().__init__(in_channels, out_channels, bias_channels, init)
        bad = [n for n in self.sizes if n != self.in_channels]
        if bad:
            raise ValueError(
                f"tam_* calibrations work per input channel: every output needs in_channels={self.in_channels} "
                f"channels, got sizes {self.sizes}; use cal_dim='cin' (or a layer with C_out == C_in)"
            )
        self.local = bool(local)
        self.frames = _pos_int(frames, "frames")
        self.reduction = _pos_int(reduction, "reduction")
        kernel = _pos_int(kernel, "kernel")
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd so 'same' temporal padding keeps T, got {kernel}")
        c, f2 = self.in_channels, 2 * self.frames
        self.g1 = nn.Linear(self.frames, f2, bias=False)
        self.g_bn = nn.BatchNorm1d(f2, eps=bn_eps)
        self.g2 = nn.ModuleList(nn.Linear(f2, 1, bias=False) for _ in self.sizes)
        for m in self.g2:
            _last_layer_init(m, init)
        if self.local:
            hidden = c // self.reduction
            if hidden < 1:
                raise ValueError(f"reduction={reduction} leaves no hidden channels for in_channels={in_channels}")
            self.l1 = nn.Conv1d(c, hidden, kernel, padding=kernel // 2, bias=False)
            self.l_bn = nn.BatchNorm1d(hidden, eps=bn_eps)
            self.l2 = nn.ModuleList(nn.Conv1d(hidden, c, 1, bias=False) for _ in self.sizes)
            for m in self.l2:
                _last_layer_init(m, init)

    def forward(self, x: Tensor):
        v = _descriptor(x)  # (B, C, T)
        b, c, t = v.shape
        seq = _resample(v, self.frames).reshape(b * c, self.frames)
        h = F.relu(self.g_bn(self.g1(seq)))
        glob = [1.0 + g2(h).view(b, c, 1) for g2 in self.g2]
        if not self.local:
            return self._form([g.expand(b, c, t) for g in glob])
        hl = F.relu(self.l_bn(self.l1(v)))
        outs = [2.0 * torch.sigmoid(l2(hl)) * g for l2, g in zip(self.l2, glob)]
        return self._form(outs)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", local={self.local}, frames={self.frames}, reduction={self.reduction}"


class PartialCalibration(nn.Module):
    """Calibrate only the first channels of each output; the rest is exactly 1 (paper Fig. 4).

    ``inner`` is a routing module whose outputs have fewer channels than the layer needs; each is
    padded with ones to ``full`` (the layer's sizes: the alpha head(s), then the bias head when
    ``has_bias``), and returned in the routing's output form.
    """

    def __init__(self, inner: nn.Module, full: Tuple[int, ...], has_bias: bool = False):
        super().__init__()
        self.inner = inner
        self.full = tuple(int(n) for n in full)
        self.has_bias = bool(has_bias)

    @staticmethod
    def _pad(a: Tensor, n: int) -> Tensor:
        rest = n - a.shape[1]
        return a if rest == 0 else torch.cat([a, a.new_ones(a.shape[0], rest, a.shape[2])], dim=1)

    def forward(self, x: Tensor):
        out = self.inner(x)
        alpha, beta = out if self.has_bias else (out, None)
        heads = list(alpha) if isinstance(alpha, tuple) else [alpha]
        padded = [self._pad(a, n) for a, n in zip(heads, self.full)]
        alpha = padded[0] if len(padded) == 1 else tuple(padded)
        return (alpha, self._pad(beta, self.full[-1])) if self.has_bias else alpha

    def extra_repr(self) -> str:
        return f"full={self.full}"


#: name -> (class, fixed constructor arguments)
_GENERATORS: Dict[str, Tuple[Type[nn.Module], dict]] = {
    "learnable": (LearnableCalibration, {"temporal": False}),
    "learnable_t": (LearnableCalibration, {"temporal": True}),
    "dynamic": (DynamicCalibration, {"temporal": False}),
    "dynamic_t": (DynamicCalibration, {"temporal": True}),
    "tam_global": (TAMCalibration, {"local": False}),
    "tam_local_global": (TAMCalibration, {"local": True}),
}
_ROUTING_CLASSES = {"v1": RouteFuncMLP, "v2": RouteFuncAttn}
CALIBRATIONS = tuple(_GENERATORS)
#: the module types that produce a TAdaConv's calibration (new by design in any pretrained model)
ROUTING_TYPES = (RouteFuncMLP, RouteFuncAttn, _Generator, PartialCalibration)


def routing_names() -> Tuple[str, ...]:
    """Every routing name a TAdaConv takes: ``v1``, ``v2`` and the calibration generators."""
    return tuple(_ROUTING_CLASSES) + CALIBRATIONS


def temporally_varying(name: str) -> bool:
    """Whether routing ``name`` gives each frame its own calibration (``v1``/``v2`` do)."""
    if name in _ROUTING_CLASSES:
        return True
    if name not in _GENERATORS:
        raise ValueError(f"unknown routing {name!r}; expected one of {routing_names()}")
    fixed = _GENERATORS[name][1]
    return bool(fixed.get("temporal", fixed.get("local", False)))


def _share(n: int, fraction: float) -> int:
    return max(1, math.ceil(n * fraction - 1e-9))


def build_routing(name: str, in_channels: int, out_channels, *, bias_channels: Optional[int] = None,
                  kwargs: Optional[dict] = None, cal_fraction: float = 1.0) -> nn.Module:
    """The routing module called ``name`` for a TAdaConv with ``in_channels`` inputs.

    ``kwargs`` are the routing's own arguments; ``init="ones"|"random"`` is accepted by every name
    (for ``v1``/``v2`` it sets ``zero_init``). With ``cal_fraction < 1`` only the first
    ``ceil(n * cal_fraction)`` channels of each output ``n`` are calibrated and the rest are exactly 1
    (:class:`PartialCalibration`).
    """
    kwargs = dict(kwargs or {})
    reserved = {"in_channels", "out_channels", "bias_channels"} & set(kwargs)
    if reserved:
        raise ValueError(f"routing_kwargs may not set {sorted(reserved)}: they follow from the layer")
    if isinstance(cal_fraction, bool) or not isinstance(cal_fraction, (int, float)) or not 0 < cal_fraction <= 1:
        raise ValueError(f"cal_fraction must be in (0, 1] (the share of calibrated channels), got {cal_fraction!r}")
    full = _out_heads(out_channels, _pos_int(in_channels, "in_channels")) + (
        (_pos_int(bias_channels, "bias_channels"),) if bias_channels is not None else ())
    if cal_fraction < 1:
        shares = tuple(_share(n, cal_fraction) for n in full)
        heads = shares[:len(full) - (bias_channels is not None)]
        out_channels = heads[0] if len(heads) == 1 else tuple(heads)
        bias_channels = shares[-1] if bias_channels is not None else None
    if name in _ROUTING_CLASSES:
        if "init" in kwargs:
            if "zero_init" in kwargs:
                raise ValueError("give init or zero_init, not both")
            kwargs["zero_init"] = _check_init(kwargs.pop("init")) == "ones"
        module = _ROUTING_CLASSES[name](in_channels, out_channels, bias_channels=bias_channels, **kwargs)
    elif name in _GENERATORS:
        cls, fixed = _GENERATORS[name]
        clash = set(fixed) & set(kwargs)
        if clash:
            raise ValueError(f"routing {name!r} fixes {sorted(clash)}; do not pass them in routing_kwargs")
        try:
            module = cls(in_channels, out_channels, bias_channels=bias_channels, **fixed, **kwargs)
        except TypeError as e:
            raise ValueError(f"bad routing_kwargs for routing {name!r}: {e}") from None
    else:
        raise ValueError(f"unknown routing {name!r}; expected one of {routing_names()}, None or an nn.Module")
    if cal_fraction < 1:
        module = PartialCalibration(module, full, has_bias=bias_channels is not None)
    return module
