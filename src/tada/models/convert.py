"""Pure ``state_dict -> state_dict`` helpers shared by the families' checkpoint converters.

The paper's released checkpoints (SPEC §6) store TAdaConv weights 6-D ``(1, 1, C_out, C_in/g, kh, kw)``
and biases ``(1, 1, C_out)``, run their routing functions as ``Conv3d`` with ``(k, 1, 1)`` kernels, and
lay out the V2 routing's q/k/v projection with heads interleaved. The helpers here turn those pieces
into this project's layout; each family's ``checkpoint_filter_fn`` maps its own key names.
"""
from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional

import torch
from torch import Tensor

__all__ = [
    "squeeze_tada_weight",
    "squeeze_tada_bias",
    "conv3d_to_conv1d",
    "conv_to_linear",
    "interleaved_to_head_major",
    "convert_released_route_mlp",
    "convert_released_route_attn",
    "pop_prefix",
    "strip_prefix",
]


def squeeze_tada_weight(w: Tensor) -> Tensor:
    """Released 6-D TAdaConv weight ``(1, 1, O, I, kh, kw)`` -> Conv2d layout ``(O, I, kh, kw)``."""
    if w.dim() == 4:
        return w
    if w.dim() != 6 or w.shape[0] != 1 or w.shape[1] != 1:
        raise ValueError(f"expected a TAdaConv weight (1, 1, C_out, C_in/g, kh, kw), got shape {tuple(w.shape)}")
    return w.reshape(w.shape[2:])


def squeeze_tada_bias(b: Tensor) -> Tensor:
    """Released TAdaConv bias ``(1, 1, O)`` -> ``(O,)``."""
    if b.dim() == 1:
        return b
    if b.dim() != 3 or b.shape[0] != 1 or b.shape[1] != 1:
        raise ValueError(f"expected a TAdaConv bias (1, 1, C_out), got shape {tuple(b.shape)}")
    return b.reshape(-1)


def conv3d_to_conv1d(w: Tensor) -> Tensor:
    """A temporal ``Conv3d`` weight ``(O, I, k, 1, 1)`` (or a Conv1d/Conv2d one) -> Conv1d ``(O, I, k)``."""
    if w.dim() == 3:
        return w
    if w.dim() < 3 or any(s != 1 for s in w.shape[3:]):
        raise ValueError(f"expected a temporal conv weight (O, I, k, 1, 1), got shape {tuple(w.shape)}")
    return w.reshape(w.shape[:3])


def conv_to_linear(w: Tensor) -> Tensor:
    """A pointwise conv weight ``(O, I, 1, ...)`` -> Linear ``(O, I)``."""
    if w.dim() == 2:
        return w
    if any(s != 1 for s in w.shape[2:]):
        raise ValueError(f"expected a pointwise (kernel 1) conv weight, got shape {tuple(w.shape)}")
    return w.reshape(w.shape[:2])


def interleaved_to_head_major(t: Tensor, num_heads: int) -> Tensor:
    """Reorder a q/k/v projection's output channels from the release's ``[q | k | v]`` with channel
    ``d * num_heads + h`` inside each part to ``[q | k | v]`` with ``h * head_dim + d``.

    Works on the projection's weight ``(3c', c')`` and bias ``(3c',)`` (dim 0 is permuted).
    """
    three_c = t.shape[0]
    if three_c % 3 or (three_c // 3) % num_heads:
        raise ValueError(f"q/k/v projection with {three_c} outputs cannot hold 3 x {num_heads} heads")
    c = three_c // 3
    head_dim = c // num_heads
    j = torch.arange(c)
    src = (j % head_dim) * num_heads + j // head_dim  # our channel h*hd+d comes from release d*nh+h
    perm = torch.cat([src + i * c for i in range(3)])
    return t[perm]


def pop_prefix(sd: Dict[str, Tensor], prefix: str) -> Dict[str, Tensor]:
    """Remove and return every entry under ``prefix.`` (keys relative to it)."""
    p = prefix + "."
    keys = [k for k in sd if k.startswith(p)]
    return {k[len(p):]: sd.pop(k) for k in keys}


def strip_prefix(sd: Mapping[str, Tensor], prefix: str) -> Dict[str, Tensor]:
    """Keys starting with ``prefix`` lose it; others are kept as they are."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}


def _put(out: Dict[str, Tensor], dst: str, rf: Mapping[str, Tensor], names: Iterable[str], src: str, fn=None):
    for n in names:
        key = f"{src}.{n}"
        if key in rf:
            v = rf[key]
            out[f"{dst}.{n}"] = fn(v) if (fn is not None and n == "weight") else v


_NORM_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def convert_released_route_mlp(rf: Mapping[str, Tensor], dst: str) -> Dict[str, Tensor]:
    """Released V1 routing ``{g, a, bn, b}`` (Conv3d temporal convs, keys relative to the routing
    module) -> :class:`tada.nn.RouteFuncMLP` keys under ``dst``."""
    out: Dict[str, Tensor] = {}
    _put(out, f"{dst}.g", rf, ("weight", "bias"), "g", conv3d_to_conv1d)
    _put(out, f"{dst}.a", rf, ("weight", "bias"), "a", conv3d_to_conv1d)
    _put(out, f"{dst}.bn", rf, _NORM_KEYS, "bn")
    _put(out, f"{dst}.heads.b", rf, ("weight",), "b", conv3d_to_conv1d)
    _check_consumed(rf, {"g", "a", "bn", "b"}, "V1 routing")
    return out


def convert_released_route_attn(rf: Mapping[str, Tensor], dst: str, num_heads: Optional[int] = None,
                                head_dim: Optional[int] = None) -> Dict[str, Tensor]:
    """Released V2 routing ``{a, norm, norm_transformer, qkv_proj, attn_out, b, b_bias}`` (keys relative
    to the routing module) -> :class:`tada.nn.RouteFuncAttn` keys under ``dst``.

    The q/k/v projection is permuted from the release's interleaved head layout to head-major
    (:func:`interleaved_to_head_major`); the attention output is head-major in both, so ``attn_out`` is
    copied as it is. Give ``num_heads`` or ``head_dim``.
    """
    if "qkv_proj.weight" not in rf:
        raise ValueError(f"not a released V2 routing: no qkv_proj.weight among {sorted(rf)[:8]}")
    c = rf["qkv_proj.weight"].shape[0] // 3
    if num_heads is None:
        if head_dim is None:
            raise ValueError("give num_heads or head_dim")
        if c % head_dim:
            raise ValueError(f"reduced width {c} is not a multiple of head_dim={head_dim}")
        num_heads = c // head_dim
    out: Dict[str, Tensor] = {}
    _put(out, f"{dst}.a", rf, ("weight", "bias"), "a", conv3d_to_conv1d)
    _put(out, f"{dst}.norm", rf, ("weight", "bias"), "norm")
    _put(out, f"{dst}.norm_attn", rf, ("weight", "bias"), "norm_transformer")
    out[f"{dst}.qkv.weight"] = interleaved_to_head_major(conv_to_linear(rf["qkv_proj.weight"]), num_heads)
    if "qkv_proj.bias" in rf:
        out[f"{dst}.qkv.bias"] = interleaved_to_head_major(rf["qkv_proj.bias"], num_heads)
    _put(out, f"{dst}.proj", rf, ("weight", "bias"), "attn_out", conv_to_linear)
    _put(out, f"{dst}.heads.b", rf, ("weight",), "b", conv3d_to_conv1d)
    _put(out, f"{dst}.heads.b_bias", rf, ("weight",), "b_bias", conv3d_to_conv1d)
    _check_consumed(rf, {"a", "norm", "norm_transformer", "qkv_proj", "attn_out", "b", "b_bias"}, "V2 routing")
    return out


def _check_consumed(rf: Mapping[str, Tensor], known: set, what: str) -> None:
    unknown = sorted(k for k in rf if k.split(".")[0] not in known)
    if unknown:
        raise ValueError(f"unexpected keys in a released {what}: {unknown[:8]}")
