"""``tadaify``: TAdaConv as a plug-in for an existing 2D image CNN (timm or torchvision).

``tadaify(model)`` returns a video model on ``(B, C, T, H, W)`` (a :class:`TAdaified`, with the
:class:`~tada.models.base.VideoClassifier` surface) in which

* every spatial convolution of ``model`` (an ``nn.Conv2d`` with ``kh > 1`` or ``kw > 1``) is a
  :class:`FoldedTAdaConv2d`: a :class:`~tada.nn.TAdaConv2d` with the same weights, the same
  parameter names (``<conv>.weight``, ``<conv>.bias``) and its own routing (``<conv>.routing.*``);
  ``cal_dim`` is ``"cout"`` for depthwise convs and ``"cin"`` for dense / grouped ones unless
  overridden;
* optionally, a T-Pool (:class:`PlugInTPool`, ``<conv>.tpool.*``) follows chosen convs;
* everything else (1x1 convs, norms, activations, pooling, SE blocks, the classifier) is the 2D
  network's own, applied to every frame.

The 2D network runs on the frames folded into the batch, ``(B*T, C, H, W)``; each converted conv
unfolds its input to ``(B, C, T, H, W)``, runs the TAdaConv (routing over time included) and folds the
result back. With the routing's last layer zero-initialised (V1, and V2 with ``zero_init=True``, the
defaults; the calibration generators of :mod:`tada.nn.calibration` with their default ``init="ones"``)
the model equals the 2D network run per frame with its logits averaged over frames.

**How the frame count reaches the convs.** ``TAdaified.forward_features`` / ``forward_head`` read
``T`` from the input and set it in a :class:`contextvars.ContextVar` for the duration of the call
(:func:`num_frames`); each :class:`FoldedTAdaConv2d` reads it. Nothing about ``T`` is stored on the
modules, so repeated calls with different ``T``, ``torch.no_grad``, DDP (same thread) and
``nn.DataParallel`` (each replica's forward runs in its own thread and sets its own value) are safe,
and two threads can run one model with different ``T``. A folded conv called outside such a call
(e.g. ``model.backbone(x)`` directly) raises, unless wrapped in ``with num_frames(T):``. Activation
checkpointing *inside* the backbone (timm's ``set_grad_checkpointing``) is not supported: the
recomputation in backward runs outside the forward call and raises for want of ``T``.

**Naming for** :func:`tada.create_model`: ``"tadaify:<timm name>"`` builds ``timm.create_model(<timm
name>, pretrained=False, num_classes=...)`` (a timm pretrained tag such as ``resnet50.a1_in1k`` is
accepted and ignored: nothing is downloaded); ``"tadaify:torchvision.<name>"`` builds
``torchvision.models.get_model(<name>, weights=None, num_classes=...)``. Keyword arguments that
:func:`tadaify` takes (``routing``, ``cal_dim``, ``tpool``...) go to it; the others go to the timm /
torchvision builder (``drop_rate``, ``drop_path_rate``...). ``pretrained=`` takes a local checkpoint
of the 2D network (its own ``state_dict`` keys, e.g. a timm or torchvision ImageNet file):
:meth:`TAdaified.checkpoint_filter_fn` adds the ``backbone.`` prefix, the routing and T-Pool tensors
keep their init, and a classifier of another class count is re-initialised. Alternatively load the
weights into the 2D model first and call ``tadaify(model)``. These names are not in
:func:`tada.list_models`.

Supported sources: any timm CNN with the usual ``forward_features`` / ``forward_head`` /
``get_classifier`` / ``reset_classifier`` surface (ResNet/ResNeXt, RegNet, ConvNeXt, EfficientNet,
MobileNet...), and the torchvision classification CNNs ResNet/ResNeXt/Wide-ResNet, RegNet,
EfficientNet(V2), MobileNetV2/V3, ConvNeXt, VGG and AlexNet.

Caveats: drop path and dropout in the 2D network decide per frame, not per video; BatchNorm
statistics are over all ``B*T`` frames (as in TSN).
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
import difflib
import inspect
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from ..nn import DynamicCalibration, TAdaConv2d, TAMCalibration, TemporalAggregation
from ..nn.calibration import routing_names
from ..nn.functional import CAL_DIMS, batch_to_frames, frames_to_batch
from .base import VideoClassifier
from .convert import Rule, apply_rules
from .registry import TADAIFY_PREFIX

__all__ = [
    "tadaify",
    "TAdaified",
    "FoldedTAdaConv2d",
    "PlugInTPool",
    "num_frames",
    "is_spatial_conv",
    "create_tadaified",
    "TADAIFY_PREFIX",
    "TORCHVISION_PREFIX",
]

TORCHVISION_PREFIX = "torchvision."

Selector = Union[None, bool, str, Sequence[str], Callable[[str, nn.Conv2d], bool]]

_FRAMES: contextvars.ContextVar[Optional[int]] = contextvars.ContextVar("tada_tadaify_frames", default=None)


@contextlib.contextmanager
def num_frames(t: int) -> Iterator[None]:
    """Within this block, :class:`FoldedTAdaConv2d` layers treat their ``(N, C, H, W)`` input as
    ``N = B*T`` frames of clips of ``t`` frames. :class:`TAdaified` sets it itself; use this only to
    call a tadaified backbone directly. Nests (the innermost value wins) and is per thread."""
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise ValueError(f"the frame count must be a positive int, got {t!r}")
    token = _FRAMES.set(t)
    try:
        yield
    finally:
        _FRAMES.reset(token)


def is_spatial_conv(m: nn.Module) -> bool:
    """An ``nn.Conv2d`` (or subclass) with a kernel larger than 1 in height or width."""
    return isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels


class PlugInTPool(TemporalAggregation):
    """T-Pool after a TAdaConv inside someone else's network: ``z = y + Norm2(Pool_T(y))``.

    The 2D network's own norm after the conv plays the role of T-Pool's ``Norm1`` (so ``norm1`` is the
    identity here; ``Norm(y + Norm2(Pool(y)))`` spans what ``Norm1(y) + Norm2'(Pool(y))`` does for an
    affine norm), and ``Norm2`` is zero-initialised, so ``z == y`` at init. Only the ``"separate"``
    shortcut keeps that property, so it is the only one offered.
    """

    def __init__(self, channels: int, *, norm: str = "bn", pool: str = "avg", eps: float = None, momentum: float = 0.1):
        super().__init__(channels, norm=norm, pool=pool, shortcut="separate", eps=eps, momentum=momentum)
        self.norm1 = nn.Identity()


class FoldedTAdaConv2d(TAdaConv2d):
    """A :class:`~tada.nn.TAdaConv2d` inside a per-frame 2D network: ``(B*T, C, H, W)`` in and out.

    ``T`` comes from :func:`num_frames` (set by :class:`TAdaified`'s forward); the frames of a clip are
    consecutive in the batch (row ``b*T + t``), as :func:`tada.nn.functional.frames_to_batch` lays them
    out. ``tpool`` is an optional :class:`PlugInTPool` applied to the conv's output over time.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_module("tpool", None)

    def forward(self, x: Tensor, alpha=None, bias_alpha: Optional[Tensor] = None) -> Tensor:
        t = _FRAMES.get()
        if t is None:
            raise RuntimeError(
                "FoldedTAdaConv2d needs the frame count: call it through the tadaified model's forward / "
                "forward_features (which set it), or inside `with tada.models.tadaify.num_frames(T):`. "
                "Activation checkpointing inside a tadaified backbone is not supported."
            )
        if x.dim() != 4 or x.shape[0] % t:
            raise ValueError(
                f"FoldedTAdaConv2d expects frames folded into the batch, (B*T, C, H, W) with T={t}, "
                f"got shape {tuple(x.shape)}"
            )
        y = super().forward(batch_to_frames(x, x.shape[0] // t, t), alpha, bias_alpha)
        if self.tpool is not None:
            y = self.tpool(y)
        return frames_to_batch(y)


# -- sources: where the features end and what the classifier is ---------------------------------
class _TimmAdapter:
    """timm models: ``forward_features``, ``forward_head(pre_logits=True)``, ``get_classifier``."""

    kind = "timm"

    @staticmethod
    def accepts(model: nn.Module) -> bool:
        return all(callable(getattr(model, a, None)) for a in ("forward_features", "forward_head", "get_classifier", "reset_classifier"))

    def __init__(self, model: nn.Module):
        self.num_features = int(model.num_features)
        self.head_hidden_size = int(getattr(model, "head_hidden_size", self.num_features))

    def features(self, backbone, x):
        return backbone.forward_features(x)

    def pre_logits(self, backbone, f):
        return backbone.forward_head(f, pre_logits=True)

    def logits(self, backbone, f):
        return backbone.forward_head(f)

    def classifier(self, backbone) -> nn.Module:
        return backbone.get_classifier()

    def num_classes(self, backbone) -> int:
        return int(getattr(backbone, "num_classes", 0))

    def reset(self, backbone, num_classes: int) -> None:
        backbone.reset_classifier(num_classes)


_TV_FC = ("ResNet", "RegNet")  # children in forward order ..., avgpool, fc
_TV_CLASSIFIER = ("EfficientNet", "MobileNetV2", "MobileNetV3", "ConvNeXt", "VGG", "AlexNet")  # features, [avgpool], classifier
_TV_NO_FLATTEN = ("ConvNeXt",)  # its classifier starts with LayerNorm2d + Flatten


class _TorchvisionAdapter:
    """torchvision classification CNNs, by class: the feature trunk, the pooling, the classifier."""

    kind = "torchvision"

    @staticmethod
    def accepts(model: nn.Module) -> bool:
        return type(model).__module__.startswith("torchvision.models") and type(model).__name__ in _TV_FC + _TV_CLASSIFIER

    def __init__(self, model: nn.Module):
        name = type(model).__name__
        self.fc_style = name in _TV_FC
        self.flatten = name not in _TV_NO_FLATTEN
        final = model.fc if self.fc_style else model.classifier[-1]
        if not isinstance(final, nn.Linear):
            raise ValueError(f"tadaify expects the torchvision {name}'s last classifier layer to be nn.Linear, got {type(final).__name__}")
        self.head_hidden_size = final.in_features
        if self.fc_style:
            self.trunk = []
            for child, _ in model.named_children():
                if child == "avgpool":
                    break
                self.trunk.append(child)
        convs = [m for m in (model.features if not self.fc_style else model).modules() if isinstance(m, nn.Conv2d)]
        self.num_features = convs[-1].out_channels if convs else self.head_hidden_size

    def features(self, backbone, x):
        if not self.fc_style:
            return backbone.features(x)
        for child in self.trunk:
            x = getattr(backbone, child)(x)
        return x

    def _pool(self, backbone, f):
        pool = getattr(backbone, "avgpool", None)
        f = pool(f) if pool is not None else torch.nn.functional.adaptive_avg_pool2d(f, 1)
        return torch.flatten(f, 1) if self.flatten else f

    def pre_logits(self, backbone, f):
        f = self._pool(backbone, f)
        return f if self.fc_style else backbone.classifier[:-1](f)

    def logits(self, backbone, f):
        return self.classifier(backbone)(self.pre_logits(backbone, f))

    def classifier(self, backbone) -> nn.Module:
        return backbone.fc if self.fc_style else backbone.classifier[-1]

    def num_classes(self, backbone) -> int:
        clf = self.classifier(backbone)
        return clf.out_features if isinstance(clf, nn.Linear) else 0

    def reset(self, backbone, num_classes: int) -> None:
        new = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        if self.fc_style:
            backbone.fc = new
        else:
            backbone.classifier[-1] = new


def _adapter_for(model: nn.Module):
    for cls in (_TorchvisionAdapter, _TimmAdapter):
        if cls.accepts(model):
            return cls(model)
    raise ValueError(
        f"tadaify does not know where the features of a {type(model).__name__} end: it takes timm CNNs "
        "(forward_features / forward_head / get_classifier / reset_classifier) and the torchvision CNNs "
        f"{', '.join(_TV_FC + _TV_CLASSIFIER)}"
    )


# -- the video model ------------------------------------------------------------------------------
class TAdaified(VideoClassifier):
    """A 2D CNN turned into a video model by :func:`tadaify`. Input ``(B, C, T, H, W)``, any ``T``.

    ``backbone`` is the (converted) 2D network, run on the ``B*T`` frames. ``forward_features``
    returns its last feature map as ``(B, C, T, H, W)``; ``forward_head`` runs the 2D network's head up
    to its pre-logits per frame, averages them over time and applies the classifier (for the usual
    pool -> Linear heads that is "average the features over T, H, W, then classify"; for heads with a
    norm or an MLP before the classifier it keeps "the logits averaged over frames" exact at init).

    Attributes:
        tada_layers: ``{name in backbone: cal_dim}`` of the converted convs.
        tpool_layers: names of the convs followed by a T-Pool.
        source: ``"timm"`` or ``"torchvision"``.
    """

    def __init__(self, backbone: nn.Module, adapter, tada_layers: Dict[str, str], tpool_layers: Sequence[str]):
        super().__init__()
        self.backbone = backbone
        self._adapter = adapter
        self.source = adapter.kind
        self.tada_layers = dict(tada_layers)
        self.tpool_layers = tuple(tpool_layers)
        first = next(m for m in backbone.modules() if isinstance(m, (nn.Conv2d, TAdaConv2d)))
        self.in_chans = first.in_channels
        self.num_features = adapter.num_features
        self.head_hidden_size = adapter.head_hidden_size
        self.num_classes = adapter.num_classes(backbone)

    # -- forward ------------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        self.check_input(x)
        b, _, t = x.shape[:3]
        with num_frames(t):
            f = self._adapter.features(self.backbone, frames_to_batch(x))
        if not isinstance(f, Tensor) or f.dim() != 4 or f.shape[0] != b * t:
            shape = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
            raise ValueError(
                f"the 2D network's features have shape {shape} for {b * t} frames; tadaify needs a CNN "
                "whose feature map is (N, C, H, W) (not a transformer's tokens)"
            )
        return batch_to_frames(f, b, t)

    def forward_head(self, feats: Tensor, pre_logits: bool = False) -> Tensor:
        if not isinstance(feats, Tensor) or feats.dim() != 5:
            shape = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
            raise ValueError(f"forward_head expects the (B, C, T, H, W) output of forward_features, got {shape}")
        b, t = feats.shape[0], feats.shape[2]
        frames = frames_to_batch(feats)
        clf = self._adapter.classifier(self.backbone)
        with num_frames(t):
            if pre_logits or isinstance(clf, (nn.Linear, nn.Identity)):
                pre = self._adapter.pre_logits(self.backbone, frames)
                if pre.dim() != 2:
                    raise ValueError(f"the 2D network's pre-logits have shape {tuple(pre.shape)}, expected (N, D)")
                pooled = pre.reshape(b, t, -1).mean(1)
                return pooled if pre_logits else clf(pooled)
            # a classifier that is not linear: average the per-frame logits
            logits = self._adapter.logits(self.backbone, frames)
            return logits.reshape(b, t, -1).mean(1)

    # -- head ---------------------------------------------------------------------------------
    def _classifier_name(self) -> str:
        clf = self._adapter.classifier(self.backbone)
        for name, m in self.backbone.named_modules():
            if m is clf:
                return f"backbone.{name}"
        raise RuntimeError("the classifier is not a submodule of the backbone")

    def head_keys(self):
        prefix = self._classifier_name()
        return {f"{prefix}.{k}" for k in self._adapter.classifier(self.backbone).state_dict()}

    def reset_classifier(self, num_classes: int) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative int, got {num_classes!r}")
        ref = next(self.parameters())
        self._adapter.reset(self.backbone, num_classes)
        self._adapter.classifier(self.backbone).to(device=ref.device, dtype=ref.dtype)
        self.num_classes = num_classes

    # -- weights ------------------------------------------------------------------------------
    def checkpoint_filter_fn(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """A checkpoint of the 2D network (its own keys) gets the ``backbone.`` prefix; this model's
        own checkpoints pass as they are. Without a classifier (``num_classes=0``) the checkpoint's
        classifier is dropped."""
        own = any(k.startswith("backbone.") for k in state_dict)
        rules = () if own else FROM_2D_RULES
        if self.num_classes == 0:  # the classifier's name is this model's: a rule made here, not data
            prefix = self._classifier_name() + "."
            rules = (Rule.prefix(prefix if own else prefix[len("backbone."):], None),) + rules
        return apply_rules(state_dict, rules)


#: a checkpoint of the 2D network (its own keys) -> this model's (tada.models.convert)
FROM_2D_RULES = (Rule(r"(?P<key>.+)", "backbone.{key}"),)


# -- conversion -----------------------------------------------------------------------------------
def _select(spec: Selector, candidates: Dict[str, nn.Conv2d], what: str) -> List[str]:
    """The names in ``candidates`` that ``spec`` picks (None/False: none, True/"all": all, names, predicate)."""
    if spec is None or spec is False:
        return []
    if spec is True or (isinstance(spec, str) and spec == "all"):
        return list(candidates)
    if callable(spec):
        return [n for n, m in candidates.items() if spec(n, m)]
    if isinstance(spec, str):
        raise ValueError(f"{what} takes None, True / 'all', a list of module names or a predicate (name, conv) -> bool; got the string {spec!r}")
    names = list(spec)
    unknown = [n for n in names if n not in candidates]
    if unknown:
        hints = []
        for n in unknown:
            close = difflib.get_close_matches(str(n), list(candidates), n=3, cutoff=0.5)
            hints.append(f"{n!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
        raise ValueError(f"{what}: {', '.join(hints)} name no spatial convolution of the model")
    return [n for n in candidates if n in set(names)]


def _largest_divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def _default_reduction(cls: type) -> int:
    return inspect.signature(cls).parameters["reduction"].default


#: the routings with a hidden layer of ``in_channels // reduction`` channels, and their default reduction
_REDUCTION_DEFAULTS = {
    "v1": 4,
    "v2": 2,
    "dynamic": _default_reduction(DynamicCalibration),
    "dynamic_t": _default_reduction(DynamicCalibration),
    "tam_local_global": _default_reduction(TAMCalibration),
}


def _routing_kwargs(routing: str, base: dict, conv: nn.Conv2d) -> dict:
    """One conv's routing arguments: the reduction (default or given) capped at its input channels, so
    an RGB stem keeps a hidden width >= 1, for the routings that have one; V2's ``head_dim`` when not
    given. The other generators (``learnable*``, ``tam_global``) get ``base`` as it is."""
    kw = dict(base)
    if routing not in _REDUCTION_DEFAULTS:
        return kw
    c = conv.in_channels
    given = kw.get("reduction", _REDUCTION_DEFAULTS[routing])
    r = max(1, min(given, c)) if isinstance(given, int) and not isinstance(given, bool) else given
    if routing in ("v1", "v2") or r != given:
        kw["reduction"] = r  # a generator gets one only where its own would leave no hidden channel
    if routing == "v2" and "head_dim" not in kw and isinstance(kw["reduction"], int) and kw["reduction"] >= 1:
        kw["head_dim"] = _largest_divisor_at_most(c // kw["reduction"], 64)
    return kw


def _check_plain(name: str, conv: nn.Conv2d) -> None:
    cls = type(conv)
    if cls.forward is not nn.Conv2d.forward or cls._conv_forward is not nn.Conv2d._conv_forward:
        raise ValueError(
            f"{name!r} is a {cls.__module__}.{cls.__qualname__}, a Conv2d subclass with its own forward (e.g. timm's "
            f"Conv2dSame or StdConv2d) whose behaviour a TAdaConv2d would not keep: exclude it "
            f"(exclude=[{name!r}]) or use a variant of the model built from plain nn.Conv2d"
        )
    if isinstance(conv.weight, nn.parameter.UninitializedParameter):
        raise ValueError(f"{name!r} is a lazy conv that has not been initialised: run the 2D model once first")


def tadaify(
    model: nn.Module,
    *,
    routing: str = "v1",
    routing_kwargs: Union[None, dict, Callable[[str, nn.Conv2d], dict]] = None,
    cal_dim: Union[str, Callable[[str, nn.Conv2d], str]] = "auto",
    bias_calibration: bool = False,
    exclude: Selector = None,
    tpool: Selector = None,
    tpool_kwargs: Optional[dict] = None,
    impl: str = "auto",
    inplace: bool = False,
) -> TAdaified:
    """Turn a 2D image CNN into a TAda video model (see the module docstring).

    Args:
        model: a timm or torchvision CNN (see the module docstring for the supported sources).
        routing: ``"v1"`` (:class:`~tada.nn.RouteFuncMLP`, TAdaConv), ``"v2"``
            (:class:`~tada.nn.RouteFuncAttn`, TAdaConvV2) or a calibration generator of
            :mod:`tada.nn.calibration` (``"learnable"``, ``"learnable_t"``, ``"dynamic"``,
            ``"dynamic_t"``, ``"tam_global"``, ``"tam_local_global"``): any name of
            :func:`tada.nn.routing_names`. The ``tam_*`` generators calibrate per input channel, so they
            need ``cal_dim="cin"`` or depthwise convs with as many outputs as inputs (and no
            ``bias_calibration`` on a conv whose output width differs).
        routing_kwargs: arguments for the routing class (``reduction``, ``kernels``, ``head_dim``,
            ``global_context``, ``zero_init``...; ``init="ones"|"random"`` for every routing), or a
            function ``(name, conv) -> dict`` giving them per layer. ``reduction`` (default 4 for V1, 2
            for V2, the generator's own for ``dynamic*`` / ``tam_local_global``) is capped at the conv's
            input channels (an RGB stem gets a hidden width >= 1); for V2 without ``head_dim`` the head
            size is the largest divisor of the hidden width that is at most 64. ``zero_init=False`` (or
            ``init="random"``) loses the exactness at init.
        cal_dim: ``"auto"`` (``"cout"`` for depthwise convs, ``"cin"`` otherwise), one of
            ``"cin" | "cout" | "cin_cout" | "k2"`` for every layer, or ``(name, conv) -> cal_dim``.
        bias_calibration: calibrate the bias per frame too (TAdaConvV2), for the convs that have one.
        exclude: spatial convs to leave as plain per-frame convs: a list of module names (as in
            ``model.named_modules()``), a predicate ``(name, conv) -> bool``, or None.
        tpool: convs followed by a T-Pool (:class:`PlugInTPool`): None, True / ``"all"``, a list of
            module names or a predicate; they must be converted convs.
        tpool_kwargs: ``norm`` (``"bn"`` default, or ``"ln"``), ``pool`` (``"avg" | "max" | "mix"``),
            ``eps``, ``momentum``.
        impl: the TAdaConv2d implementation, ``"auto" | "fast" | "frames" | "grouped"``.
        inplace: convert ``model`` itself instead of a deep copy.

    Returns:
        a :class:`TAdaified` video model. Its ``new_parameter_names()`` are the routing and T-Pool
        tensors; everything else keeps the 2D model's names under ``backbone.``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"tadaify takes an nn.Module (a 2D CNN), got {type(model).__name__}")
    if isinstance(model, TAdaified) or any(isinstance(m, TAdaConv2d) for m in model.modules()):
        raise ValueError("this model already has TAdaConvs; tadaify takes a plain 2D CNN")
    if not isinstance(routing, str) or routing not in routing_names():
        raise ValueError(
            f"unknown routing {routing!r}; expected one of {routing_names()} ('v1': RouteFuncMLP, 'v2': "
            "RouteFuncAttn, the others: tada.nn.calibration)"
        )
    if routing_kwargs is not None and not (isinstance(routing_kwargs, dict) or callable(routing_kwargs)):
        raise TypeError(f"routing_kwargs must be a dict or a function (name, conv) -> dict, got {type(routing_kwargs).__name__}")
    if not callable(cal_dim) and cal_dim != "auto" and cal_dim not in CAL_DIMS:
        raise ValueError(f"unknown cal_dim {cal_dim!r}; expected 'auto', one of {CAL_DIMS} or a function (name, conv) -> cal_dim")
    tpool_kwargs = dict(tpool_kwargs or {})
    if "shortcut" in tpool_kwargs:
        raise ValueError("tadaify's T-Pool always uses the 'separate' shortcut (y + Norm2(Pool(y)), exact at init); drop shortcut=")
    unknown_tp = set(tpool_kwargs) - {"norm", "pool", "eps", "momentum"}
    if unknown_tp:
        raise ValueError(f"unknown tpool_kwargs {sorted(unknown_tp)}; expected norm, pool, eps, momentum")

    spatial = {n: m for n, m in model.named_modules() if is_spatial_conv(m)}
    if not spatial:
        raise ValueError(
            f"{type(model).__name__} has no spatial convolution (nn.Conv2d with a kernel > 1): tadaify takes a 2D CNN"
        )
    if all(m.kernel_size == m.stride and m.padding in ((0, 0), "valid") for m in spatial.values()):
        raise ValueError(
            f"the only spatial convolutions of {type(model).__name__} are patch embeddings (kernel == stride): "
            "it looks like a vision transformer, and tadaify takes a 2D CNN"
        )
    adapter = _adapter_for(model)
    skipped = set(_select(exclude, spatial, "exclude"))
    convert = {n: m for n, m in spatial.items() if n not in skipped}
    if not convert:
        raise ValueError("exclude= leaves no spatial convolution to convert")
    by_name = tpool is not None and not isinstance(tpool, (bool, str)) and not callable(tpool)
    with_tpool = _select(tpool, spatial if by_name else convert, "tpool")  # "all" / a predicate: converted convs
    not_converted = [n for n in with_tpool if n not in convert]
    if not_converted:
        raise ValueError(f"tpool names excluded convs {not_converted}: T-Pool follows a converted TAdaConv")
    for n, m in convert.items():
        _check_plain(n, m)

    if not inplace:
        model = copy.deepcopy(model)
        spatial = {n: m for n, m in model.named_modules() if is_spatial_conv(m)}
        convert = {n: spatial[n] for n in convert}

    # every place a converted conv sits (a conv object may be shared), so all of them get the same new module
    places: Dict[int, List[Tuple[nn.Module, str]]] = {}
    for _, parent in model.named_modules(remove_duplicate=False):
        for child_name, child in parent._modules.items():  # named_children() hides a second name of one module
            if child is None:
                continue
            places.setdefault(id(child), []).append((parent, child_name))

    tada_layers: Dict[str, str] = {}
    tpool_set = set(with_tpool)
    for name, conv in convert.items():
        cd = cal_dim(name, conv) if callable(cal_dim) else cal_dim
        if cd == "auto":
            cd = "cout" if _is_depthwise(conv) else "cin"
        if cd not in CAL_DIMS:
            raise ValueError(f"cal_dim for {name!r} is {cd!r}; expected one of {CAL_DIMS}")
        base = routing_kwargs(name, conv) if callable(routing_kwargs) else (routing_kwargs or {})
        if not isinstance(base, dict):
            raise TypeError(f"routing_kwargs({name!r}, conv) must return a dict, got {type(base).__name__}")
        try:
            new = FoldedTAdaConv2d.from_conv2d(
                conv,
                cal_dim=cd,
                routing=routing,
                routing_kwargs=_routing_kwargs(routing, base, conv),
                bias_calibration=bool(bias_calibration) and conv.bias is not None,
                impl=impl,
            )
            if name in tpool_set:
                tp = PlugInTPool(conv.out_channels, **tpool_kwargs)
                new.tpool = tp.to(device=conv.weight.device, dtype=conv.weight.dtype)
        except (TypeError, ValueError) as e:
            raise ValueError(f"cannot turn {name!r} ({conv}) into a TAdaConv2d: {e}") from e
        new.train(conv.training)
        for parent, child_name in places.get(id(conv), []):
            setattr(parent, child_name, new)
        tada_layers[name] = cd

    return TAdaified(model, adapter, tada_layers, with_tpool)


# -- create_model("tadaify:...") ------------------------------------------------------------------
_TADAIFY_KWARGS = frozenset(
    n for n, p in inspect.signature(tadaify).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and n != "inplace"
)


def _build_source(source: str, num_classes: int, kwargs: dict) -> nn.Module:
    if "pretrained" in kwargs or "weights" in kwargs:
        raise ValueError("pass pretrained= (a local checkpoint path) to create_model; nothing is downloaded")
    if source.startswith(TORCHVISION_PREFIX):
        import torchvision.models as tvm

        name = source[len(TORCHVISION_PREFIX):]
        available = tvm.list_models(module=tvm)
        if name not in available:
            close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(TADAIFY_PREFIX + TORCHVISION_PREFIX + c) for c in close)}?" if close else ""
            raise ValueError(f"unknown torchvision classification model {name!r}{hint}")
        return tvm.get_model(name, weights=None, num_classes=num_classes, **kwargs)

    import timm

    if not timm.is_model(source):
        close = difflib.get_close_matches(source, timm.list_models(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(TADAIFY_PREFIX + c) for c in close)}?" if close else ""
        raise ValueError(
            f"unknown timm model {source!r}{hint} (use '{TADAIFY_PREFIX}{TORCHVISION_PREFIX}<name>' for torchvision models)"
        )
    return timm.create_model(source, pretrained=False, num_classes=num_classes, **kwargs)


def create_tadaified(source: str, *, num_classes: int = 400, **kwargs) -> TAdaified:
    """Build the 2D model named ``source`` (a timm name, or ``torchvision.<name>``) with random weights
    and ``num_classes`` classes, and :func:`tadaify` it. ``kwargs`` that :func:`tadaify` takes go to it,
    the rest to the timm / torchvision builder. Used by ``create_model("tadaify:<source>")``."""
    if not isinstance(source, str) or not source:
        raise ValueError(f"tadaify names look like '{TADAIFY_PREFIX}resnet50' or '{TADAIFY_PREFIX}{TORCHVISION_PREFIX}resnet50', got {source!r}")
    tada_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _TADAIFY_KWARGS}
    headless_tv = source.startswith(TORCHVISION_PREFIX) and num_classes == 0  # torchvision would build Linear(D, 0)
    model = _build_source(source, 1 if headless_tv else num_classes, kwargs)
    model = tadaify(model, inplace=True, **tada_kwargs)
    if headless_tv:
        model.reset_classifier(0)
    return model
