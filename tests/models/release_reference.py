"""An independent reference of the released checkpoints' V2 routing (SPEC §1 and §6), written from the
spec's words only, operating directly on tensors in the *released* layout. Tests compare this
project's converted models against it; nothing here imports the converter.

Released layout of a V2 routing module (prefix ``rf``): ``a`` Conv3d ``(c', C, k1, 1, 1)`` + bias,
``norm`` / ``norm_transformer`` LayerNorm ``(c',)``, ``qkv_proj`` pointwise conv ``(3c', c', 1, 1, 1)``
+ bias, ``attn_out`` pointwise conv ``(c', c', 1, 1, 1)`` + bias, ``b`` (and ``b_bias``) Conv3d
``(C, c', k2, 1, 1)`` without bias. Inside each of q, k, v the channel of head ``h`` and dimension
``d`` is ``d * n_heads + h``; the attention output fed to ``attn_out`` is ``h * head_dim + d``.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def make_released_route_attn(channels: int, reduction: int, k1: int = 3, k2: int = 3, bias_cal: bool = True,
                             generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
    """Random tensors of one released V2 routing module, keys relative to it; nothing zero, so the
    layout matters everywhere."""
    c = channels // reduction
    g = generator

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    t = {
        "a.weight": r(c, channels, k1, 1, 1), "a.bias": r(c),
        "norm.weight": 1 + r(c), "norm.bias": r(c),
        "norm_transformer.weight": 1 + r(c), "norm_transformer.bias": r(c),
        "qkv_proj.weight": r(3 * c, c, 1, 1, 1, scale=0.5), "qkv_proj.bias": r(3 * c),
        "attn_out.weight": r(c, c, 1, 1, 1), "attn_out.bias": r(c),
        "b.weight": r(channels, c, k2, 1, 1),
    }
    if bias_cal:
        t["b_bias.weight"] = r(channels, c, k2, 1, 1)
    return t


def _tconv(v: Tensor, w: Tensor, bias: Optional[Tensor]) -> Tensor:
    """Temporal conv of (B, C, T) with a (O, I, k, 1, 1) weight, 'same' padding."""
    k = w.shape[2]
    return F.conv1d(v, w[:, :, :, 0, 0], bias, padding=k // 2)


def _ln(v: Tensor, w: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """LayerNorm over the channel dim of (B, C, T)."""
    mu = v.mean(1, keepdim=True)
    var = v.var(1, unbiased=False, keepdim=True)
    return (v - mu) / torch.sqrt(var + eps) * w[None, :, None] + b[None, :, None]


def released_route_attn(t: Dict[str, Tensor], x: Tensor, head_dim: int, zero_init: bool) -> List[Tensor]:
    """Calibrations ``[alpha, (beta)]`` of the released routing for ``x`` (B, C, T, H, W)."""
    v = x.mean(dim=(3, 4))  # (B, C, T)
    h = _tconv(v, t["a.weight"], t["a.bias"])
    h = _ln(h, t["norm.weight"], t["norm.bias"])
    h = h * torch.sigmoid(1.702 * h)
    c = h.shape[1]
    n_heads = c // head_dim
    z = _ln(h, t["norm_transformer.weight"], t["norm_transformer.bias"])
    qkv = torch.einsum("oi,bit->bot", t["qkv_proj.weight"].flatten(1), z) + t["qkv_proj.bias"][None, :, None]
    scale = 1.0 / math.sqrt(c)  # the release scales by the whole reduced width
    heads_out = []
    for hd in range(n_heads):
        idx = torch.tensor([d * n_heads + hd for d in range(head_dim)])
        q, k, val = qkv[:, idx], qkv[:, c + idx], qkv[:, 2 * c + idx]  # (B, head_dim, T)
        att = torch.softmax(torch.einsum("bdt,bds->bts", q, k) * scale, dim=-1)
        heads_out.append(torch.einsum("bts,bds->bdt", att, val))  # (B, head_dim, T)
    o = torch.cat(heads_out, dim=1)  # channel h*head_dim + d
    o = torch.einsum("oi,bit->bot", t["attn_out.weight"].flatten(1), o) + t["attn_out.bias"][None, :, None]
    h = h + o
    outs = [_tconv(h, t["b.weight"], None)]
    if "b_bias.weight" in t:
        outs.append(_tconv(h, t["b_bias.weight"], None))
    return [a + 1 for a in outs] if zero_init else outs
