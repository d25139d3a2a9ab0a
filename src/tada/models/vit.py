"""TAdaFormer (CLIP ViT with TAda branches, SPEC §2) and its per-frame CLIP ViT baseline (TSN).

Layout of :class:`VideoViT` (keys named after CLIP where CLIP has the same tensor, so conversion from
OpenAI / open_clip is a renaming):

```
patch_embed            Conv3d (3,p,p) stride (2,p,p) pad (1,0,0), no bias: T -> T/2   (tubelet)
                       or Conv2d (p,p) stride p, no bias, per frame                     (TSN)
class_embedding        (D,)   one CLS token per frame
positional_embedding   (1 + g*g, D)   CLIP's spatial one (no temporal embedding), g = img_size // p
ln_pre
blocks.{i}             VideoViTBlock:
    tada               TAdaBlock on the patch tokens (CLS gets 0), no LayerNorm before it
    ln_1, attn         pre-norm spatial self-attention within each frame (CLIP's in_proj / out_proj)
    tada2              optional second TAda branch (double_tada, SSV2 recipe)
    ln_2, mlp          c_fc D->4D, QuickGELU, c_proj 4D->D
head_norm              CLIP's ln_post, applied to the mean over T' of the per-frame CLS tokens
head                   dropout + Linear on the ln_post-ed features (the classifier)
proj                   (D, embed_dim), optional: CLIP's ``visual.proj`` into the joint video-text space
```

``forward_features`` returns the per-frame CLS tokens *before* ``ln_post`` as ``(B, D, T', 1, 1)``,
so :meth:`VideoClassifier.pool` (mean over T, H, W) is the temporal mean and ``head_norm`` is ln_post.
With ``embed_dim`` set, ``forward_embed`` gives the video embedding of the video-text model,
``proj(ln_post(mean over T' of the CLS tokens))`` (un-normalised); at init on a clip of identical frames
it is CLIP's image embedding of that frame. The classifier ``head`` does not use ``proj``.

Every TAda branch ends in a zero-initialised Linear, so at init a TAdaFormer built from CLIP weights
gives, for frame ``2t``, exactly CLIP's CLS token (the centre-initialised tubelet sees frames
0, 2, 4, ...), and the TSN baseline gives CLIP's CLS token for every frame.

**Routing.** The branch's TAdaConv routes with ``"v2"`` (RouteFuncAttn, r=2, ``tada_head_dim``, not
zero-initialised: the released recipe and checkpoints). ``tada_routing`` selects any name of
:func:`tada.nn.routing_names` instead (``"v1"`` or a calibration generator of
:mod:`tada.nn.calibration`, paper Table 3a / A8) and ``tada_routing_kwargs`` passes it arguments, e.g.
``tada.create_model("tadaformer_b16", tada_routing="dynamic_t", tada_routing_kwargs={"init": "random"})``.
"""
from __future__ import annotations

import math
import re
from functools import partial
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..nn.layers import DropPath
from ..nn import QuickGELU, TAdaConv2d, TemporalAggregation
from ..nn.calibration import routing_names
from .base import VideoClassifier, mark_new_by_design
from .builders import conv_then_tpool
from .convert import Rule, apply_rules, conv_to_linear, convert_released_route_attn, squeeze_tada_bias, squeeze_tada_weight
from .pretrained import centre_inflate
from .registry import register_model

__all__ = [
    "VideoViT",
    "VideoViTBlock",
    "TAdaBlock",
    "Attention",
    "Mlp",
    "DropPath",
    "resample_pos_embed",
    "tsn_vit_b16_clip",
    "tsn_vit_l14_clip",
    "tadaformer_b16",
    "tadaformer_l14",
]

MLP_ACTS = ("quick_gelu", "gelu")


# ---------------------------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head self-attention over ``(N, L, D)`` with ``nn.MultiheadAttention``'s parameter names
    (``in_proj_weight`` ``(3D, D)``, ``in_proj_bias``, ``out_proj``), so CLIP weights map 1:1, computed
    with :func:`F.scaled_dot_product_attention`. ``causal=True``: each position attends to itself and
    the positions before it only (CLIP's text tower)."""

    def __init__(self, dim: int, num_heads: int, *, causal: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by heads={num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.causal = bool(causal)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, length, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(n, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (N, heads, L, head_dim)
        return self.out_proj(out.transpose(1, 2).reshape(n, length, d))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}" + (", causal=True" if self.causal else "")


class Mlp(nn.Module):
    """CLIP's MLP: ``c_fc`` D->hidden, activation, ``c_proj`` hidden->D."""

    def __init__(self, dim: int, hidden: int, act: str = "quick_gelu"):
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden)
        self.act = QuickGELU() if act == "quick_gelu" else nn.GELU()
        self.c_proj = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class TAdaBlock(nn.Module):
    """TAdaFormer's TAda branch on the patch tokens of one clip.

    ``pre_proj`` (Linear D->D/2, or with ``temp_enhance`` a temporal Conv3d (3,1,1) D->D/2 with bias,
    like the Linear it replaces) -> depthwise 3x3 :class:`TAdaConv2d` on D/2 channels (``cout``,
    bias + bias calibration, V2 routing r=2, ``head_dim``, *not* zero-init) -> T-Pool with BatchNorm
    -> QuickGELU -> ``proj`` Linear D/2->D, zero-initialised (weight and bias) so the branch adds
    exactly 0 at init.

    ``routing`` may be any name of :func:`tada.nn.routing_names`: ``"v1"`` / ``"v2"`` get
    ``reduction`` (and V2 ``head_dim``) and ``zero_init=False`` with ``routing_kwargs`` on top; a
    calibration generator gets ``routing_kwargs`` alone.

    ``forward(x, batch, grid)``: ``x`` ``(B*T, N, D)`` patch tokens (no CLS; with ``cls_first=True``
    ``(B*T, 1 + N, D)``, CLS first), ``grid = (T, gh, gw)`` with ``N = gh * gw``; returns ``(B*T, N, D)``.
    """

    def __init__(self, dim: int, *, temp_enhance: bool = False, head_dim: int = 64, reduction: int = 2,
                 routing: str = "v2", routing_kwargs: Optional[Mapping[str, Any]] = None):
        super().__init__()
        if dim % 2:
            raise ValueError(f"TAdaBlock needs an even width, got {dim}")
        _check_routing(routing, routing_kwargs, "routing")
        c = dim // 2
        self.dim, self.channels, self.temp_enhance = dim, c, bool(temp_enhance)
        if temp_enhance:
            self.pre_proj = nn.Conv3d(dim, c, (3, 1, 1), padding=(1, 0, 0), bias=True)
        else:
            self.pre_proj = nn.Linear(dim, c)
        self.conv = TAdaConv2d(
            c, c, 3, padding=1, groups=c, bias=True, cal_dim="cout", bias_calibration=True,
            routing=routing, routing_kwargs=_branch_routing_kwargs(routing, reduction, head_dim, routing_kwargs),
        )
        self.tpool = TemporalAggregation(c, norm="bn")
        self.act = QuickGELU(lean=True)  # the branch's own activation keeps only its input for backward
        self.proj = nn.Linear(c, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, batch: int, grid: Tuple[int, int, int], *, cls_first: bool = False) -> Tensor:
        """``cls_first=True``: ``x`` is ``(B*T, 1 + N, D)`` with the CLS token first, which the branch
        skips (the linear ``pre_proj`` then runs on all tokens, so the contiguous ``x`` needs no copy, and
        the CLS row of its output is dropped)."""
        t, gh, gw = grid
        n, length, d = x.shape
        if cls_first and not self.temp_enhance:
            y = self.pre_proj(x)[:, 1:].reshape(batch, t, gh, gw, self.channels).permute(0, 4, 1, 2, 3)
            length -= 1
        else:
            if cls_first:
                x, length = x[:, 1:], length - 1
            x = x.reshape(batch, t, gh, gw, d)
            if self.temp_enhance:
                y = self.pre_proj(x.permute(0, 4, 1, 2, 3))  # (B, C, T, gh, gw)
            else:
                y = self.pre_proj(x).permute(0, 4, 1, 2, 3)
        y = self.act(conv_then_tpool(self.conv, self.tpool, y))  # (B, C, T, gh, gw)
        y = y.permute(0, 2, 3, 4, 1).reshape(n, length, self.channels)
        return self.proj(y)


def _check_routing(routing, routing_kwargs, name: str) -> None:
    if not isinstance(routing, str) or routing not in routing_names():
        raise ValueError(f"unknown {name} {routing!r}; expected one of {routing_names()}")
    if routing_kwargs is not None and not isinstance(routing_kwargs, Mapping):
        raise ValueError(f"{name}_kwargs must be a dict, got {type(routing_kwargs).__name__}")


def _branch_routing_kwargs(routing: str, reduction: int, head_dim: int,
                           user: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """The TAda branch's routing arguments: V1 / V2 get the branch's widths and ``zero_init=False``
    (V2: the released TAdaFormer's), with ``user``'s on top; a calibration generator gets ``user``'s."""
    user = dict(user or {})
    if routing not in ("v1", "v2"):
        return user
    kw: Dict[str, Any] = {"reduction": reduction}
    if routing == "v2":
        kw["head_dim"] = head_dim
    if "init" not in user:  # init="ones"|"random" replaces zero_init
        kw["zero_init"] = False
    kw.update(user)
    return kw


class VideoViTBlock(nn.Module):
    """Pre-norm CLIP residual block with optional TAda branches (see the module docstring)."""

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, mlp_act: str = "quick_gelu",
                 tada: bool = True, temp_enhance: bool = False, double_tada: bool = False,
                 tada_head_dim: int = 64, drop_path: float = 0.0, ln_eps: float = 1e-5,
                 tada_routing: str = "v2", tada_routing_kwargs: Optional[Mapping[str, Any]] = None):
        super().__init__()
        def branch():
            return mark_new_by_design(TAdaBlock(dim, temp_enhance=temp_enhance, head_dim=tada_head_dim,
                                                routing=tada_routing, routing_kwargs=tada_routing_kwargs))

        self.tada = branch() if tada else None
        self.ln_1 = nn.LayerNorm(dim, eps=ln_eps)
        self.attn = Attention(dim, num_heads)
        self.tada2 = branch() if tada and double_tada else None
        self.ln_2 = nn.LayerNorm(dim, eps=ln_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), mlp_act)
        self.drop_path = DropPath(drop_path)

    def _tada(self, branch: TAdaBlock, x: Tensor, batch: int, grid) -> Tensor:
        y = self.drop_path(branch(x, batch, grid, cls_first=True), batch)
        # the CLS token gets 0: a zero row in front (the backward then hands x the whole gradient, no
        # slices; a cat writes each element once where F.pad fills the whole tensor first)
        return x + torch.cat([y.new_zeros(y.shape[0], 1, y.shape[2]), y], dim=1)

    def forward(self, x: Tensor, batch: int, grid: Tuple[int, int, int]) -> Tensor:
        """``x``: ``(B*T, 1 + gh*gw, D)`` tokens (CLS first) of ``batch`` videos; ``grid = (T, gh, gw)``."""
        if self.tada is not None:
            x = self._tada(self.tada, x, batch, grid)
        x = x + self.drop_path(self.attn(self.ln_1(x)), batch)
        if self.tada2 is not None:
            x = self._tada(self.tada2, x, batch, grid)
        return x + self.drop_path(self.mlp(self.ln_2(x)), batch)


def resample_pos_embed(pos: Tensor, grid: Tuple[int, int]) -> Tensor:
    """CLIP positional embedding ``(1 + g*g, D)`` -> ``(1 + gh*gw, D)``: bicubic on the square patch
    grid, CLS position kept. Returns ``pos`` itself when the grid already matches."""
    n, d = pos.shape
    g = math.isqrt(n - 1)
    if g * g != n - 1:
        raise ValueError(f"positional embedding with {n - 1} patch positions is not a square grid")
    gh, gw = grid
    if (gh, gw) == (g, g):
        return pos
    patch = pos[1:].reshape(1, g, g, d).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=(gh, gw), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1], patch.permute(0, 2, 3, 1).reshape(gh * gw, d)], dim=0)


def _is_pos_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _pos_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def _rate(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be a float in [0, 1), got {v!r}")
    return float(v)


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
# -- checkpoint rule sets (tada.models.convert); "patch_embed" / "pos" fit a CLIP patch embedding and
# positional embedding to this model (tubelet, grid), "branch" converts one released TAda branch
_CLIP_BLOCK = (r"(?P<rest>(?:ln_1|ln_2|attn\.out_proj|mlp\.c_fc|mlp\.c_proj)\.(?:weight|bias)"
               r"|attn\.in_proj_weight|attn\.in_proj_bias)")
_NORM = r"(?P<p>weight|bias|running_mean|running_var|num_batches_tracked)"


def _proj_rules(prefix: str):
    """CLIP's projection into the joint embedding space: loaded into ``proj`` when the model has one
    (``embed_dim`` set), dropped otherwise (a classifier does not use it)."""
    return (Rule(prefix + r"proj", "proj", if_target_exists=True), Rule(prefix + r"proj", None))


def _stem_and_post(prefix: str):
    """The keys CLIP and the release share outside the blocks (``prefix``: a regex)."""
    return (
        Rule(prefix + r"conv1\.weight", "patch_embed.weight", "patch_embed"),
        Rule(prefix + r"positional_embedding", "positional_embedding", "pos"),
        Rule(prefix + r"(?P<k>class_embedding|ln_pre\.weight|ln_pre\.bias)", "{k}"),
        Rule(prefix + r"ln_post\.(?P<p>weight|bias)", "head_norm.{p}"),
        *_proj_rules(prefix),
    )


#: this project's own keys: only the patch and positional embeddings are fitted
OWN_RULES = (
    Rule(r"patch_embed\.weight", "patch_embed.weight", "patch_embed"),
    Rule(r"positional_embedding", "positional_embedding", "pos"),
    *_proj_rules(""),
)
#: tensors OpenAI's TorchScript CLIP archives carry besides the weights
OPENAI_EXTRAS_RULES = (Rule(r"input_resolution|context_length|vocab_size", None),)
#: a CLIP visual tower (OpenAI / open_clip keys without ``visual.``)
CLIP_VISUAL_RULES = _stem_and_post("") + (
    Rule(r"transformer\.resblocks\.(?P<i>\d+)\." + _CLIP_BLOCK, "blocks.{i}.{rest}"),
)
#: the paper's released TAdaFormer: CLIP's keys under ``backbone.`` (``layers.N`` for ``resblocks.N``), the
#: TAda branches ``layers.N.tada(2)`` (:data:`RELEASED_BRANCH_RULES`), ``head.out``
RELEASED_RULES = (
    Rule(r"head\.out\.(?P<p>weight|bias)", "head.{p}"),
    *_stem_and_post(r"backbone\."),
    Rule(r"backbone\.layers\.(?P<i>\d+)\.(?P<b>tada2?)\.(?P<rest>.+)", "blocks.{i}.{b}", group="branch"),
    Rule(r"backbone\.layers\.(?P<i>\d+)\." + _CLIP_BLOCK, "blocks.{i}.{rest}"),
)
#: one released TAda branch (keys relative to it) -> :class:`TAdaBlock` keys under ``{dst}``; T-Pool's
#: ``bn_a`` normalises y, ``bn_b`` the pooled y; the projections were released as pointwise Conv3d
RELEASED_BRANCH_RULES = (
    Rule(r"tadaconv\.rf_func\.(?P<rest>.+)", "{dst}.conv.routing", group="route_attn"),
    Rule(r"tadaconv\.weight", "{dst}.conv.weight", squeeze_tada_weight),
    Rule(r"tadaconv\.bias", "{dst}.conv.bias", squeeze_tada_bias),
    Rule(r"tadaconv\.bn_a\." + _NORM, "{dst}.tpool.norm1.{p}"),
    Rule(r"tadaconv\.bn_b\." + _NORM, "{dst}.tpool.norm2.{p}"),
    Rule(r"tada_pre_proj\.weight", "{dst}.pre_proj.weight", "pre_proj"),
    Rule(r"tada_pre_proj\.bias", "{dst}.pre_proj.bias"),
    Rule(r"tada_proj\.weight", "{dst}.proj.weight", conv_to_linear),
    Rule(r"tada_proj\.bias", "{dst}.proj.bias"),
)


class VideoViT(VideoClassifier):
    """CLIP ViT for video: TAdaFormer (``tada=True``) or the per-frame CLIP baseline (``tada=False``).

    Input ``(B, 3, T, H, W)`` with H and W multiples of ``patch_size`` (the positional embedding is
    resampled bicubically when H x W differs from ``img_size``) and, with the tubelet stem, T even.

    Args:
        width, layers, heads, patch_size: the CLIP ViT (B/16: 768, 12, 12, 16; L/14: 1024, 24, 16, 14).
        img_size: the resolution the positional embedding is laid out for (224).
        tada: add a TAda branch before each block's attention (TAdaFormer); ``False`` is CLIP per frame.
        tubelet: tubelet patch embedding (Conv3d (3,p,p), stride 2 in time, T -> T/2); default
            ``tada``. ``False`` embeds every frame with CLIP's 2D patch embedding (T kept).
        temp_enhance: the TAda branch's input projection is a temporal conv (3,1,1) (SSV2 recipe).
        double_tada: a second TAda branch between attention and MLP (SSV2 recipe).
        tada_head_dim: head size of the routing's self-attention (64 in the paper; ``"v2"`` only).
        tada_routing: the routing of the TAda branch's TAdaConv: ``"v2"`` (RouteFuncAttn, not
            zero-initialised, the paper's and the released checkpoints'), ``"v1"`` or a calibration
            generator of :mod:`tada.nn.calibration` (any name of :func:`tada.nn.routing_names`).
        tada_routing_kwargs: routing arguments, over the branch's own for ``"v1"`` / ``"v2"``
            (``reduction=2``, ``head_dim=tada_head_dim``, ``zero_init=False``; ``init`` replaces
            ``zero_init``); a calibration generator gets these alone (``init``, ``frames``, ...).
        mlp_act: ``"quick_gelu"`` (OpenAI CLIP, the paper) or ``"gelu"`` (open_clip models trained with
            exact GELU, e.g. LAION ``ViT-B-16``).
        drop_path_rate: stochastic depth, linearly increasing over blocks, one decision per video.
        drop_rate: head dropout (0.5 in every paper recipe).
        num_classes: classifier size (0: ``forward`` returns the ln_post-ed features).
        embed_dim: size of the joint video-text embedding (CLIP B/16: 512, L/14: 768): adds ``proj``
            ``(width, embed_dim)``, loaded from a CLIP checkpoint's ``visual.proj``, and
            :meth:`forward_embed`. ``None`` (default): no projection; a checkpoint's is dropped.
    """

    def __init__(
        self,
        *,
        width: int = 768,
        layers: int = 12,
        heads: int = 12,
        patch_size: int = 16,
        img_size: int = 224,
        tada: bool = True,
        tubelet: Optional[bool] = None,
        temp_enhance: bool = False,
        double_tada: bool = False,
        tada_head_dim: int = 64,
        tada_routing: str = "v2",
        tada_routing_kwargs: Optional[Mapping[str, Any]] = None,
        mlp_ratio: float = 4.0,
        mlp_act: str = "quick_gelu",
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.5,
        num_classes: int = 400,
        embed_dim: Optional[int] = None,
    ):
        super().__init__()
        width, layers, heads = _pos_int(width, "width"), _pos_int(layers, "layers"), _pos_int(heads, "heads")
        patch_size, img_size = _pos_int(patch_size, "patch_size"), _pos_int(img_size, "img_size")
        tada_head_dim = _pos_int(tada_head_dim, "tada_head_dim")
        for name, v in (("tada", tada), ("temp_enhance", temp_enhance), ("double_tada", double_tada)):
            if not isinstance(v, bool):
                raise ValueError(f"{name} must be a bool, got {v!r}")
        tubelet = tada if tubelet is None else tubelet
        if not isinstance(tubelet, bool):
            raise ValueError(f"tubelet must be a bool or None, got {tubelet!r}")
        if width % heads:
            raise ValueError(f"width={width} must be divisible by heads={heads}")
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} must be a multiple of patch_size={patch_size}")
        if not tada and (temp_enhance or double_tada):
            raise ValueError("temp_enhance and double_tada modify the TAda branch: they need tada=True")
        _check_routing(tada_routing, tada_routing_kwargs, "tada_routing")
        tada_routing_kwargs = dict(tada_routing_kwargs or {})
        if not tada and (tada_routing != "v2" or tada_routing_kwargs):
            raise ValueError("tada_routing and tada_routing_kwargs configure the TAda branch: they need tada=True")
        if tada and tada_routing == "v2":
            # the widths the routing gets (routing kwargs override the branch's; bad values there are
            # the routing's to report)
            r = tada_routing_kwargs.get("reduction", 2)
            hd = tada_routing_kwargs.get("head_dim", tada_head_dim)
            if _is_pos_int(r) and _is_pos_int(hd):
                if width % (2 * r) or (width // (2 * r)) % hd:
                    raise ValueError(
                        f"the TAda branch works on width/2 = {width / 2:g} channels and its routing on "
                        f"width/{2 * r} = {width / (2 * r):g}, which must be a multiple of tada_head_dim={hd}"
                    )
                tada_head_dim = hd  # what the released-checkpoint conversion must use
        elif tada and width % 2:
            raise ValueError(f"the TAda branch works on width/2 channels: width must be even, got {width}")
        if mlp_act not in MLP_ACTS:
            raise ValueError(f"unknown mlp_act {mlp_act!r}; expected one of {MLP_ACTS}")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be a positive number, got {mlp_ratio!r}")
        drop_path_rate, drop_rate = _rate(drop_path_rate, "drop_path_rate"), _rate(drop_rate, "drop_rate")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative int, got {num_classes!r}")
        if embed_dim is not None:
            embed_dim = _pos_int(embed_dim, "embed_dim")

        self.width, self.layers, self.heads, self.patch_size, self.img_size = width, layers, heads, patch_size, img_size
        self.tada, self.tubelet, self.temp_enhance, self.double_tada = tada, tubelet, temp_enhance, double_tada
        self.tada_head_dim, self.grid_size = tada_head_dim, img_size // patch_size
        self.tada_routing, self.tada_routing_kwargs = tada_routing, tada_routing_kwargs
        self.embed_dim = embed_dim
        self.frame_multiple = 2 if tubelet else 1

        p = patch_size
        if tubelet:
            self.patch_embed = nn.Conv3d(3, width, (3, p, p), stride=(2, p, p), padding=(1, 0, 0), bias=False)
        else:
            self.patch_embed = nn.Conv2d(3, width, p, stride=p, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(self.grid_size ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        dpr = [drop_path_rate * i / max(layers - 1, 1) for i in range(layers)]  # linear over depth
        self.blocks = nn.ModuleList(
            VideoViTBlock(
                width, heads, mlp_ratio=mlp_ratio, mlp_act=mlp_act, tada=tada, temp_enhance=temp_enhance,
                double_tada=double_tada, tada_head_dim=tada_head_dim, drop_path=dpr[i],
                tada_routing=tada_routing, tada_routing_kwargs=tada_routing_kwargs or None,
            )
            for i in range(layers)
        )
        if embed_dim is None:
            self.register_parameter("proj", None)
        else:
            self.proj = nn.Parameter(torch.empty(width, embed_dim))
        self._init_weights()
        self._init_head(width, num_classes, drop_rate, head_norm=nn.LayerNorm(width))

    def _init_weights(self) -> None:
        # CLIP-like: embeddings ~ N(0, width^-0.5), transformer linears ~ N(0, 0.02), zero biases.
        # The TAda branches keep their own init (TAdaConv2d / routing defaults, zeroed last Linear).
        scale = self.width ** -0.5
        nn.init.normal_(self.class_embedding, std=scale)
        nn.init.normal_(self.positional_embedding, std=scale)
        if self.proj is not None:
            nn.init.normal_(self.proj, std=scale)
        for blk in self.blocks:
            nn.init.normal_(blk.attn.in_proj_weight, std=0.02)
            nn.init.zeros_(blk.attn.in_proj_bias)
            for lin in (blk.attn.out_proj, blk.mlp.c_fc, blk.mlp.c_proj):
                nn.init.normal_(lin.weight, std=0.02)
                nn.init.zeros_(lin.bias)

    # -- forward ------------------------------------------------------------------------------
    def pos_embed(self, gh: int, gw: int) -> Tensor:
        """The positional embedding for a ``gh x gw`` patch grid (resampled if it is not ``img_size``'s)."""
        return resample_pos_embed(self.positional_embedding, (gh, gw))

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, 3, T, H, W)`` -> per-frame CLS tokens *before* ln_post, ``(B, D, T', 1, 1)``
        (``T' = T/2`` with the tubelet stem, ``T`` otherwise)."""
        self.check_input(x)
        b, _, t, h, w = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(
                f"{type(self).__name__} with patch_size={p} needs H and W that are multiples of {p}, "
                f"got {h}x{w}"
            )
        if self.tubelet:
            x = self.patch_embed(x)  # (B, D, T', gh, gw)
        else:
            x = self.patch_embed(x.transpose(1, 2).reshape(b * t, 3, h, w))  # (B*T, D, gh, gw)
            x = x.reshape(b, t, *x.shape[1:]).transpose(1, 2)
        t, gh, gw = x.shape[2:]
        x = x.permute(0, 2, 3, 4, 1).reshape(b * t, gh * gw, self.width)
        cls = self.class_embedding.to(x.dtype).expand(b * t, 1, self.width)
        x = torch.cat([cls, x], dim=1) + self.pos_embed(gh, gw).to(x.dtype)
        x = self.ln_pre(x)
        for blk in self.blocks:
            x = blk(x, b, (t, gh, gw))
        return x[:, 0].reshape(b, t, self.width).permute(0, 2, 1)[..., None, None]

    def forward_embed(self, x: Tensor) -> Tensor:
        """``(B, 3, T, H, W)`` -> the video embedding ``(B, embed_dim)``, un-normalised:
        ``proj(ln_post(mean over T' of the CLS tokens))`` (``forward_head(..., pre_logits=True)``
        projected by CLIP's ``proj``). Needs a model built with ``embed_dim``."""
        if self.proj is None:
            raise ValueError(
                f"{type(self).__name__} was built without a projection: pass embed_dim= (CLIP B/16: 512, "
                "L/14: 768) to the constructor or create_model to get forward_embed"
            )
        return self.forward_head(self.forward_features(x), pre_logits=True) @ self.proj

    # -- optimiser helpers --------------------------------------------------------------------
    def no_weight_decay(self) -> set:
        """Parameters CLIP fine-tuning usually exempts from weight decay (besides norms and biases)."""
        return {"class_embedding", "positional_embedding"}

    def layer_id(self, name: str) -> int:
        """Depth of a parameter for layer-wise lr decay: 0 embeddings, ``i + 1`` for ``blocks.i``,
        ``layers + 1`` for ``head_norm`` / ``head``."""
        if name.startswith(("patch_embed", "class_embedding", "positional_embedding", "ln_pre")):
            return 0
        m = re.match(r"blocks\.(\d+)\.", name)
        return int(m.group(1)) + 1 if m else self.layers + 1

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoint_filter_fn(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Convert a checkpoint to this model's keys (pure: returns a new dict). Detected formats, each
        a rule set below:

        * OpenAI CLIP / open_clip full model (``visual.conv1.weight``, ``visual.transformer.resblocks.N``;
          the text tower and TorchScript extras are dropped);
        * a CLIP visual tower alone (the same without ``visual.``);
        * the paper's released TAdaFormer (``backbone.conv1``, ``backbone.layers.N.{tada, tada2, attn,
          …}``, ``head.out``);
        * this project's own keys (``patch_embed.weight``, ``blocks.N``…).

        A 2D patch embedding is centre-inflated into the tubelet; a positional embedding laid out for
        another square grid is resampled to ``img_size``'s. TAda branches absent from CLIP keep their
        init (new by design). CLIP's ``proj`` (also in this project's own checkpoints) is loaded into
        ``proj`` when the model has one (``embed_dim``) and dropped when it has none.
        """
        sd = dict(state_dict)
        fits = {"patch_embed": self._fit_patch_embed, "pos": self._fit_pos, "branch": self._released_branch}
        own = set(self.state_dict())
        if "patch_embed.weight" in sd or any(k.startswith("blocks.") for k in sd):
            return apply_rules(sd, OWN_RULES, transforms=fits, targets=own)
        if any(k.startswith("backbone.") for k in sd):
            if self.tada and self.tada_routing != "v2":
                raise ValueError(
                    "this is a released TAdaFormer checkpoint (backbone.layers.N.tada...), whose branches route "
                    f"with 'v2'; this model has tada_routing={self.tada_routing!r}: build it with tada_routing='v2'"
                )
            return apply_rules(sd, RELEASED_RULES, transforms=fits, targets=own, unmatched="error", what=(
                "released checkpoint with keys that are not a TAdaFormer's (expected backbone.{conv1, "
                "class_embedding, positional_embedding, ln_pre, ln_post}, backbone.layers.N.*, head.out.*)"))
        if any(k.startswith("visual.trunk.") for k in sd):
            raise ValueError("open_clip models with a timm trunk (visual.trunk.*) are not CLIP ViTs; "
                             "expected visual.conv1.weight / visual.transformer.resblocks.N.*")
        if "visual.conv1.weight" in sd:
            visual = apply_rules(sd, (Rule.prefix("visual.", ""),), unmatched="drop")  # the text tower goes
        elif "conv1.weight" in sd and "class_embedding" in sd:
            visual = apply_rules(sd, OPENAI_EXTRAS_RULES)
        else:
            raise ValueError(
                "unrecognised checkpoint format for a CLIP ViT; expected OpenAI CLIP / open_clip "
                "(visual.conv1.weight, visual.transformer.resblocks.N.*), a CLIP visual tower (conv1.weight, "
                "class_embedding, transformer.resblocks.N.*), a released TAdaFormer (backbone.conv1.weight, "
                f"backbone.layers.N.*) or this model's own keys (patch_embed.weight, blocks.N.*); got keys like "
                f"{sorted(sd)[:6]}"
            )
        return apply_rules(visual, CLIP_VISUAL_RULES, transforms=fits, targets=own, unmatched="error",
                           what="CLIP visual tower with keys this ViT does not have")

    def _fit_patch_embed(self, w: Tensor) -> Tensor:
        target = self.patch_embed.weight
        if self.tubelet and w.dim() == 4:
            return centre_inflate(w, target.shape[2])
        if not self.tubelet and w.dim() == 5 and w.shape[2] == 1:
            return w[:, :, 0]
        return w  # anything else is left for the strict loader's shape check

    def _fit_pos(self, pos: Tensor) -> Tensor:
        own = self.positional_embedding
        if pos.dim() == 2 and pos.shape != own.shape and pos.shape[1] == own.shape[1]:
            g = math.isqrt(pos.shape[0] - 1)
            if g * g == pos.shape[0] - 1:
                return resample_pos_embed(pos, (self.grid_size, self.grid_size))
        return pos

    def _fit_pre_proj(self, w: Tensor) -> Tensor:
        # released as a pointwise Conv3d (or a Linear); ours is a (3,1,1) Conv3d with temp_enhance
        if self.temp_enhance:
            return w[:, :, None, None, None] if w.dim() == 2 else w
        return conv_to_linear(w)

    def _released_branch(self, rel: Dict[str, Tensor], dst: str) -> Dict[str, Tensor]:
        """One released TAda branch ``{tada_pre_proj, tadaconv.{weight, bias, rf_func, bn_a, bn_b},
        tada_proj}`` -> :class:`TAdaBlock` keys under ``dst`` (:data:`RELEASED_BRANCH_RULES`)."""
        return apply_rules(
            rel, RELEASED_BRANCH_RULES, fields={"dst": dst}, unmatched="error",
            what=f"released TAda branch {dst} with unknown keys",
            transforms={"pre_proj": self._fit_pre_proj,
                        "route_attn": partial(convert_released_route_attn, head_dim=self.tada_head_dim)},
        )

    def extra_repr(self) -> str:
        return (
            f"width={self.width}, layers={self.layers}, heads={self.heads}, patch_size={self.patch_size}, "
            f"img_size={self.img_size}, tada={self.tada}, tubelet={self.tubelet}, "
            f"temp_enhance={self.temp_enhance}, double_tada={self.double_tada}"
            + (f", tada_routing={self.tada_routing!r}" if self.tada and self.tada_routing != "v2" else "")
            + (f", embed_dim={self.embed_dim}" if self.embed_dim is not None else "")
        )


# ---------------------------------------------------------------------------------------------
# registered factories
# ---------------------------------------------------------------------------------------------
_B16 = dict(width=768, layers=12, heads=12, patch_size=16)
_L14 = dict(width=1024, layers=24, heads=16, patch_size=14)


@register_model
def tsn_vit_b16_clip(**kwargs) -> VideoViT:
    """CLIP ViT-B/16 applied per frame (TSN baseline), frames averaged."""
    return VideoViT(**{**_B16, "tada": False, **kwargs})


@register_model
def tsn_vit_l14_clip(**kwargs) -> VideoViT:
    """CLIP ViT-L/14 applied per frame (TSN baseline), frames averaged."""
    return VideoViT(**{**_L14, "tada": False, **kwargs})


@register_model
def tadaformer_b16(**kwargs) -> VideoViT:
    """TAdaFormer-B/16 (paper: 104.1M params, 153 GFLOPs at 16x224²; SSV2 recipe adds
    ``temp_enhance=True, double_tada=True``)."""
    return VideoViT(**{**_B16, "tada": True, **kwargs})


@register_model
def tadaformer_l14(**kwargs) -> VideoViT:
    """TAdaFormer-L/14 (paper: 364M params, 703 GFLOPs at 16x224²)."""
    return VideoViT(**{**_L14, "tada": True, **kwargs})


VideoViT.grad_checkpoint_types = (VideoViTBlock,)  # set_grad_checkpointing wraps these
