"""BMN: the Boundary-Matching Network (Lin et al., ICCV 2019) for temporal action proposals.

Input: clip features ``(B, C_in, T)`` of one window, ``T = temporal_scale`` positions (100 for
ActivityNet / HACS, the whole video rescaled; SPEC §8). Output: start and end probabilities per
position, and two confidence maps over all proposals.

**Proposal indexing** (the reference's convention). Proposal ``(d, t)`` starts at position ``t`` and
lasts ``d + 1`` positions: in window units ``[t / T, (t + d + 1) / T]``. Maps are indexed
``[duration, start]``: shape ``(D, T)`` with ``D = max_duration`` (default ``T``). A proposal is
*valid* when it ends inside the window, ``t + d + 1 <= T`` (:func:`bm_valid_mask`); the reference's
sampling mask is zero for the others, so the boundary-matching features of invalid proposals are 0
(only the Conv3d bias reaches them), and losses and post-processing ignore them. Because the 2D
3x3 convolutions mix neighbouring cells, this matters for valid cells next to the diagonal: keeping
the reference's zeros keeps outputs identical to a reference-trained model.

**Sample points** (the reference's ``_get_interp1d_mask``, re-derived). A valid proposal ``(d, t)``
is extended by ``boundary_ratio * (d + 1)`` positions on both sides: ``[t - r(d+1), t + d + r(d+1)]``
(note the right end is the *last* position ``t + d``, not ``t + d + 1``). ``N * S`` points are spread
evenly over that range (both ends included; ``N = num_samples`` bins of ``S = num_samples_per_bin``
consecutive points); bin ``n`` is the mean of its ``S`` points, each linearly interpolated from the
two positions around it. Positions outside ``[0, T - 1]`` read as 0 with one quirk kept on
purpose: the reference splits a point ``p`` with ``math.modf`` (truncation toward zero), so a point
in ``(-1, 0)`` reads position 0 with full weight instead of weight ``1 + p``; points ``<= -1`` or
``> T - 1`` (beyond the last position) contribute nothing to the missing side.

**The boundary-matching layer** ``(B, C, T) -> (B, C, N, D, T)`` is a fixed linear map along time.
The reference builds it as a dense ``(T, N*D*T)`` matrix and multiplies (``impl="dense"``, kept as
the test reference). Every sample point reads at most two positions, so the map has at most
``2 S`` non-zeros per output: ``impl="sparse"`` stores it in CSR layout (row pointers, positions,
weights) and applies it as a weighted gather-sum (``F.embedding_bag``, one bag per output; backward:
the same with the transposed matrix), never building the dense matrix.

**Boundary matching + Conv3d** is what BMN actually needs: the Conv3d with kernel ``(N, 1, 1)``
contracts the ``C x N`` sample features into ``C_out`` channels. :class:`BMProjection` reorders it
exactly: first project with the conv weight of each sample index ``n`` (``y_n = W[:, :, n] x``, a
``(N, C_out, T)`` tensor per item), then apply one sparse ``(D*T, N*T)`` matrix that interpolates
and sums the ``y_n`` at their sample positions. The ``(B, C, N, D, T)`` tensor (2.6 GB at T = 100,
C = 256, batch 8) never exists.

**Layers** (reference defaults, SPEC §8): base ``2 x Conv1d(k3, groups 4) + ReLU`` to 256 channels;
start / end branches ``Conv1d(256, 256, 3, groups 4) + ReLU + Conv1d(256, 1, 1) + Sigmoid``;
proposal branch ``Conv1d(256, 256, 3) + ReLU -> BM layer + Conv3d(256 -> 512, (N, 1, 1)) + ReLU ->
Conv2d 1x1 (512 -> 128) + ReLU -> 3x3 + ReLU -> 3x3 + ReLU -> 1x1 (-> 2) + Sigmoid``; channel 0 of
the confidence output is the regression map, channel 1 the classification map. Submodule names
(``x_1d_b``, ``x_1d_s``, ``x_1d_e``, ``x_1d_p``, ``x_3d_p``, ``x_2d_p``) and parameter shapes follow
the reference so its state dicts load after dropping its ``sample_mask`` entry; weights keep
PyTorch's default initialisation, as in the reference.

**Labels** (:func:`bmn_targets`): the IoU of every proposal with the ground truth (max over
segments); start / end targets: the largest fraction of each position's anchor
``[(i - 0.5) / T, (i + 0.5) / T]`` covered by a region of width ``3 / T`` centred on a ground-truth
start (end).

**Losses** (:func:`bmn_loss`, MMAction2's port of the reference): TEM = weighted binary logistic
loss of start and of end at threshold 0.5; PEM-reg = squared error on IoU > 0.7, plus a random
subset of (0.3, 0.7] and of (0, 0.3] each drawn to the number of > 0.7 cells; PEM-cls = weighted
logistic at 0.9 over valid cells; total = TEM + 10 PEM-reg + PEM-cls. Weighted logistic: ratio
``r = #entries / max(#pos, 1)`` clamped to ``[1.05, 21]``, positive weight ``0.5 r``, negative
weight ``0.5 r / (r - 1)``. Every division is guarded (the reference divides by zero-able counts).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_choice, check_pos_int

__all__ = [
    "BoundaryMatchingLayer",
    "BMProjection",
    "BMN",
    "bm_valid_mask",
    "bm_sampling_matrix",
    "bmn_targets",
    "bmn_loss",
]

_IMPLS = ("sparse", "dense")


# --------------------------------------------------------------------------------------------
# geometry


def _check_geometry(temporal_scale, max_duration, num_samples, num_samples_per_bin, boundary_ratio):
    t = check_pos_int(temporal_scale, "temporal_scale")
    d = t if max_duration is None else check_pos_int(max_duration, "max_duration")
    if d > t:
        raise ValueError(f"max_duration ({d}) cannot exceed temporal_scale ({t})")
    n = check_pos_int(num_samples, "num_samples")
    s = check_pos_int(num_samples_per_bin, "num_samples_per_bin")
    if n * s < 2:
        raise ValueError("num_samples * num_samples_per_bin must be at least 2 (points span each proposal)")
    if isinstance(boundary_ratio, bool) or not isinstance(boundary_ratio, (int, float)) or not (
        math.isfinite(boundary_ratio) and boundary_ratio >= 0
    ):
        raise ValueError(f"boundary_ratio must be a finite number >= 0, got {boundary_ratio!r}")
    return t, d, n, s, float(boundary_ratio)


def bm_valid_mask(temporal_scale: int, max_duration: Optional[int] = None, device=None) -> Tensor:
    """Bool ``(D, T)``: True where proposal ``(d, t)`` ends inside the window (``t + d + 1 <= T``)."""
    t = check_pos_int(temporal_scale, "temporal_scale")
    d = t if max_duration is None else check_pos_int(max_duration, "max_duration")
    if d > t:
        raise ValueError(f"max_duration ({d}) cannot exceed temporal_scale ({t})")
    dd = torch.arange(d, device=device)[:, None]
    tt = torch.arange(t, device=device)[None, :]
    return tt + dd < t


def bm_sampling_matrix(
    temporal_scale: int,
    max_duration: Optional[int] = None,
    num_samples: int = 32,
    num_samples_per_bin: int = 3,
    boundary_ratio: float = 0.5,
) -> Tensor:
    """The boundary-matching map as a coalesced sparse COO float64 matrix ``(N*D*T, T)``.

    Row ``n*D*T + d*T + t`` holds the weights with which bin ``n`` of proposal ``(d, t)`` reads the
    ``T`` positions (see the module docstring). Entries are summed per (row, position) before the
    ``1 / S`` bin average, as the reference accumulates them; exact zeros are dropped.
    """
    t_, d_, n_, s_, ratio = _check_geometry(temporal_scale, max_duration, num_samples, num_samples_per_bin,
                                            boundary_ratio)
    f64 = torch.float64
    dd, tt = torch.meshgrid(torch.arange(d_), torch.arange(t_), indexing="ij")
    valid = tt + dd < t_
    dv, tv = dd[valid], tt[valid]  # (P,) proposals that end inside the window
    p_min, p_max = tv.to(f64), (tv + dv).to(f64)
    center_len = (p_max - p_min) + 1.0
    s_min = p_min - center_len * ratio
    s_max = p_max + center_len * ratio
    step = (s_max - s_min) / (n_ * s_ - 1.0)
    k = torch.arange(n_ * s_)
    points = s_min[:, None] + step[:, None] * k.to(f64)[None, :]  # (P, N*S)
    down = torch.trunc(points)  # math.modf: integral part toward zero, exact fractional part
    frac = points - down
    up = torch.ceil(points)
    rows = ((k // s_) * (d_ * t_))[None, :] + (dv * t_ + tv)[:, None]  # (P, N*S)
    idx, val, row = [], [], []
    for pos, w in ((down, 1.0 - frac), (up, frac)):
        ok = (pos >= 0) & (pos <= t_ - 1)
        idx.append(pos[ok].long())
        val.append(w[ok])
        row.append(rows[ok])
    coo = torch.sparse_coo_tensor(
        torch.stack([torch.cat(row), torch.cat(idx)]), torch.cat(val), (n_ * d_ * t_, t_), dtype=f64,
        check_invariants=True,
    ).coalesce()
    values = coo.values() * (1.0 / s_)
    keep = values != 0
    return torch.sparse_coo_tensor(coo.indices()[:, keep], values[keep], coo.shape, is_coalesced=True,
                                   check_invariants=True)


# --------------------------------------------------------------------------------------------
# sparse product with a fixed matrix


def _csr_parts(coo: Tensor, dtype: torch.dtype) -> Tuple[Tensor, Tensor, Tensor]:
    """Row pointers, column indices and values of a coalesced COO matrix (CSR layout)."""
    rows, cols = coo.indices()
    counts = torch.bincount(rows, minlength=coo.shape[0])
    crow = torch.zeros(coo.shape[0] + 1, dtype=torch.long)
    crow[1:] = torch.cumsum(counts, 0)
    return crow, cols.clone(), coo.values().to(dtype).clone()


def _transpose(coo: Tensor) -> Tensor:
    rows, cols = coo.indices()
    return torch.sparse_coo_tensor(torch.stack([cols, rows]), coo.values(), (coo.shape[1], coo.shape[0]),
                                   check_invariants=True).coalesce()


class _FixedSparse(nn.Module):
    """A fixed matrix ``M`` (and ``M^T``) in CSR layout, applied as ``M @ rhs``.

    Each output row is a weighted sum of a few rows of ``rhs``: ``F.embedding_bag`` in ``sum`` mode
    with per-sample weights computes exactly that (one bag per output row; empty bags give 0) and is
    several times faster on the CPU than ``torch.sparse`` CSR products for the tall BM-layer output.
    Backward is the same operation with ``M^T``. The parts are non-persistent buffers, so state
    dicts do not depend on ``impl``.
    """

    def __init__(self, coo: Tensor):
        super().__init__()
        dtype = torch.get_default_dtype()
        self.shape = tuple(coo.shape)
        for name, m in (("fwd", coo), ("bwd", _transpose(coo))):
            crow, col, val = _csr_parts(m, dtype)
            self.register_buffer(f"{name}_crow", crow, persistent=False)
            self.register_buffer(f"{name}_col", col, persistent=False)
            self.register_buffer(f"{name}_val", val, persistent=False)

    @property
    def nnz(self) -> int:
        return int(self.fwd_col.numel())

    def forward(self, rhs: Tensor) -> Tensor:
        if rhs.shape[0] != self.shape[1]:
            raise ValueError(f"expected {self.shape[1]} rows, got {rhs.shape[0]}")
        fwd = (self.fwd_crow, self.fwd_col, self.fwd_val.to(rhs.dtype))
        bwd = (self.bwd_crow, self.bwd_col, self.bwd_val.to(rhs.dtype))
        return _SparseMatmul.apply(rhs.contiguous(), fwd, bwd)


def _bag_matmul(rhs: Tensor, parts: Tuple[Tensor, Tensor, Tensor]) -> Tensor:
    crow, col, val = parts
    return F.embedding_bag(col, rhs, crow, mode="sum", per_sample_weights=val, include_last_offset=True)


class _SparseMatmul(torch.autograd.Function):
    """``M @ rhs`` for a constant ``M``; the gradient is ``M^T @ grad`` (itself differentiable)."""

    @staticmethod
    def forward(ctx, rhs: Tensor, fwd, bwd) -> Tensor:  # type: ignore[override]
        ctx.parts = (fwd, bwd)
        return _bag_matmul(rhs, fwd)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        fwd, bwd = ctx.parts
        return _SparseMatmul.apply(grad.contiguous(), bwd, fwd), None, None


# --------------------------------------------------------------------------------------------
# layers


class BoundaryMatchingLayer(nn.Module):
    """``(B, C, T) -> (B, C, N, D, T)``: ``out[b, c, n, d, t]`` is bin ``n`` of proposal (start ``t``,
    duration ``d + 1``); zero for proposals that end beyond the window.

    ``impl="dense"``: the reference's fixed ``(T, N*D*T)`` weight matrix and one matmul (128 MB of
    float32 at T = D = 100, N = 32). ``impl="sparse"``: the same map in CSR layout (at most ``2 S``
    non-zeros per output) applied as a weighted gather-sum; its output is a permuted view of a
    ``(N*D*T, B*C)`` buffer (non-contiguous: the large result is not copied).
    """

    def __init__(self, temporal_scale: int, max_duration: Optional[int] = None, num_samples: int = 32,
                 num_samples_per_bin: int = 3, boundary_ratio: float = 0.5, impl: str = "sparse"):
        super().__init__()
        self.temporal_scale, self.max_duration, self.num_samples, self.num_samples_per_bin, self.boundary_ratio = (
            _check_geometry(temporal_scale, max_duration, num_samples, num_samples_per_bin, boundary_ratio)
        )
        self.impl = check_choice(impl, "impl", _IMPLS)
        coo = bm_sampling_matrix(temporal_scale, max_duration, num_samples, num_samples_per_bin, boundary_ratio)
        if impl == "dense":
            mask = torch.sparse_coo_tensor(coo.indices().flip(0), coo.values().to(torch.get_default_dtype()),
                                           coo.shape[::-1], check_invariants=True).to_dense()  # (T, N*D*T)
            self.register_buffer("mask", mask, persistent=False)
        else:
            self.sampler = _FixedSparse(coo)

    def extra_repr(self) -> str:
        return (f"temporal_scale={self.temporal_scale}, max_duration={self.max_duration}, "
                f"num_samples={self.num_samples}, num_samples_per_bin={self.num_samples_per_bin}, "
                f"boundary_ratio={self.boundary_ratio}, impl={self.impl!r}")

    def forward(self, x: Tensor) -> Tensor:
        b, c, t = _check_input(x, self.temporal_scale, "BoundaryMatchingLayer")
        n, d = self.num_samples, self.max_duration
        if self.impl == "dense":
            return torch.matmul(x, self.mask.to(x.dtype)).view(b, c, n, d, t)
        rhs = x.permute(2, 0, 1).reshape(t, b * c)
        return self.sampler(rhs).view(n, d, t, b, c).permute(3, 4, 0, 1, 2)


class BMProjection(nn.Module):
    """Boundary matching followed by BMN's ``Conv3d(C -> C_out, kernel (N, 1, 1), stride (N, 1, 1))``
    (no nonlinearity between them): ``(B, C, T) -> (B, C_out, D, T)``.

    Parameters are a Conv3d's ``weight (C_out, C, N, 1, 1)`` and ``bias (C_out,)`` with its default
    initialisation, whatever ``impl``. ``impl="dense"``: :class:`BoundaryMatchingLayer` (dense) and
    the Conv3d, as the reference. ``impl="sparse"``: ``y_n = W[:, :, n] @ x`` for every ``n``, then one
    sparse ``(D*T, N*T)`` matrix interpolates and sums the ``y_n`` at the sample positions; the
    ``(B, C, N, D, T)`` tensor is never built.
    """

    def __init__(self, in_channels: int, out_channels: int, temporal_scale: int,
                 max_duration: Optional[int] = None, num_samples: int = 32, num_samples_per_bin: int = 3,
                 boundary_ratio: float = 0.5, impl: str = "sparse", bias: bool = True):
        super().__init__()
        self.in_channels = check_pos_int(in_channels, "in_channels")
        self.out_channels = check_pos_int(out_channels, "out_channels")
        geo = _check_geometry(temporal_scale, max_duration, num_samples, num_samples_per_bin, boundary_ratio)
        self.temporal_scale, self.max_duration, self.num_samples = geo[:3]
        self.impl = check_choice(impl, "impl", _IMPLS)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, self.num_samples, 1, 1))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()
        if impl == "dense":
            self.bm = BoundaryMatchingLayer(temporal_scale, max_duration, num_samples, num_samples_per_bin,
                                            boundary_ratio, impl="dense")
        else:
            self.sampler = _FixedSparse(_fuse_bins(bm_sampling_matrix(
                temporal_scale, max_duration, num_samples, num_samples_per_bin, boundary_ratio), geo))

    def reset_parameters(self) -> None:
        """Conv3d's default initialisation (what the reference uses)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, temporal_scale={self.temporal_scale}, "
                f"max_duration={self.max_duration}, num_samples={self.num_samples}, impl={self.impl!r}")

    def forward(self, x: Tensor) -> Tensor:
        b, c, t = _check_input(x, self.temporal_scale, "BMProjection", self.in_channels)
        n, d, o = self.num_samples, self.max_duration, self.out_channels
        if self.impl == "dense":
            return F.conv3d(self.bm(x), self.weight, self.bias, stride=(n, 1, 1)).squeeze(2)
        w = self.weight.view(o, c, n).permute(2, 1, 0)  # (N, C, C_out)
        y = torch.matmul(x.permute(2, 0, 1).reshape(1, t * b, c), w)  # (N, T*B, C_out): rows (n, t)
        z = self.sampler(y.reshape(n * t, b * o))  # (D*T, B*C_out)
        if self.bias is not None:  # in place (the gather's backward does not need z): no output copy
            z = z.add_(self.bias.repeat(b))
        return z.view(d, t, b, o).permute(2, 3, 0, 1)


def _fuse_bins(coo: Tensor, geo) -> Tensor:
    """``(N*D*T, T)`` -> ``(D*T, N*T)``: entry (n, d, t; t') moves to row ``d*T + t``, column ``n*T + t'``."""
    t_, d_ = geo[0], geo[1]
    rows, cols = coo.indices()
    n = rows // (d_ * t_)
    return torch.sparse_coo_tensor(torch.stack([rows % (d_ * t_), n * t_ + cols]), coo.values(),
                                   (d_ * t_, geo[2] * t_), check_invariants=True).coalesce()


def _check_input(x: Tensor, temporal_scale: int, who: str, channels: Optional[int] = None):
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"{who} expects features (B, C, T), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if x.shape[-1] != temporal_scale:
        raise ValueError(f"{who} was built for temporal_scale={temporal_scale} but got T={x.shape[-1]}; "
                         f"rescale the features to {temporal_scale} positions (or build it for {x.shape[-1]})")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{who} expects {channels} channels, got {x.shape[1]}")
    return x.shape


class BMN(nn.Module):
    """Boundary-Matching Network on ``(B, in_channels, temporal_scale)`` features.

    ``forward`` returns ``{"confidence": (B, 2, D, T)`` (channel 0 regression, 1 classification;
    after sigmoid), ``"start": (B, T)``, ``"end": (B, T)}``. Cells of proposals that end beyond the
    window (``~bm_valid_mask``) carry no meaning.
    """

    def __init__(self, in_channels: int = 400, temporal_scale: int = 100, max_duration: Optional[int] = None,
                 num_samples: int = 32, num_samples_per_bin: int = 3, boundary_ratio: float = 0.5,
                 hidden_1d: int = 256, hidden_2d: int = 128, hidden_3d: int = 512, impl: str = "sparse"):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("hidden_1d", hidden_1d)):
            if check_pos_int(v, name) % 4:
                raise ValueError(f"{name} must be divisible by 4 (the base convs use groups=4), got {v}")
        h1, h2, h3 = hidden_1d, check_pos_int(hidden_2d, "hidden_2d"), check_pos_int(hidden_3d, "hidden_3d")
        self.in_channels = in_channels
        self.temporal_scale, self.max_duration = _check_geometry(
            temporal_scale, max_duration, num_samples, num_samples_per_bin, boundary_ratio)[:2]
        self.x_1d_b = nn.Sequential(
            nn.Conv1d(in_channels, h1, 3, padding=1, groups=4), nn.ReLU(inplace=True),
            nn.Conv1d(h1, h1, 3, padding=1, groups=4), nn.ReLU(inplace=True),
        )
        self.x_1d_s = self._boundary_branch(h1)
        self.x_1d_e = self._boundary_branch(h1)
        self.x_1d_p = nn.Sequential(nn.Conv1d(h1, h1, 3, padding=1), nn.ReLU(inplace=True))
        self.x_3d_p = nn.Sequential(
            BMProjection(h1, h3, temporal_scale, max_duration, num_samples, num_samples_per_bin, boundary_ratio,
                         impl=impl),
            nn.ReLU(),  # not in place: on the sparse path's permuted view that makes backward ~2x slower
        )
        self.x_2d_p = nn.Sequential(
            nn.Conv2d(h3, h2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(h2, h2, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(h2, h2, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(h2, 2, 1), nn.Sigmoid(),
        )

    @staticmethod
    def _boundary_branch(h1: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv1d(h1, h1, 3, padding=1, groups=4), nn.ReLU(inplace=True),
                             nn.Conv1d(h1, 1, 1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        _check_input(x, self.temporal_scale, "BMN", self.in_channels)
        base = self.x_1d_b(x)
        start = self.x_1d_s(base).squeeze(1)
        end = self.x_1d_e(base).squeeze(1)
        confidence = self.x_2d_p(self.x_3d_p(self.x_1d_p(base)))
        return {"confidence": confidence, "start": start, "end": end}


# --------------------------------------------------------------------------------------------
# labels


def _as_segments(seg, i: int) -> Tensor:
    s = torch.as_tensor(seg, dtype=torch.float64).detach().cpu()
    if s.numel() == 0:
        return s.reshape(0, 2)
    if s.dim() != 2 or s.shape[1] != 2:
        raise ValueError(f"segments[{i}] must have shape (n, 2) [start, end], got {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError(f"segments[{i}] has non-finite values")
    tol = 1e-6
    if (s < -tol).any() or (s > 1 + tol).any():
        raise ValueError(f"segments[{i}] must be in window units [0, 1] (divide seconds by the window "
                         f"length and clip to the window first), got min {s.min().item():.4g}, "
                         f"max {s.max().item():.4g}")
    if (s[:, 1] < s[:, 0]).any():
        raise ValueError(f"segments[{i}] has a segment with end < start")
    return s.clamp(0.0, 1.0)


def bmn_targets(segments: Sequence[Tensor], temporal_scale: int,
                max_duration: Optional[int] = None) -> Dict[str, Tensor]:
    """Training labels of a batch from ground-truth segments in window units.

    ``segments[i]``: ``(n_i, 2)`` ``[start, end]`` in ``[0, 1]`` (``n_i`` may be 0). Returns float32
    ``{"iou": (B, D, T), "start": (B, T), "end": (B, T)}``:

    * ``iou[b, d, t]``: max over segments of the IoU of ``[t / T, (t + d + 1) / T]`` with the segment;
      0 for proposals that end beyond the window (as the loss sees them);
    * ``start[b, i]`` (``end``): max over segments of the fraction of the anchor
      ``[(i - 0.5) / T, (i + 0.5) / T]`` covered by ``[g - 1.5 / T, g + 1.5 / T]``, ``g`` the
      segment's start (end) — the reference's boundary regions of fixed width ``3 / T``.
    """
    t_ = check_pos_int(temporal_scale, "temporal_scale")
    d_ = t_ if max_duration is None else check_pos_int(max_duration, "max_duration")
    if d_ > t_:
        raise ValueError(f"max_duration ({d_}) cannot exceed temporal_scale ({t_})")
    if isinstance(segments, Tensor) and segments.dim() == 2:
        raise ValueError("segments must be a sequence with one (n_i, 2) tensor per batch item")
    gap = 1.0 / t_
    f64 = torch.float64
    dd = torch.arange(d_, dtype=f64)[:, None]
    tt = torch.arange(t_, dtype=f64)[None, :]
    p_min = (gap * tt).expand(d_, t_)
    p_max = p_min + gap * (dd + 1)
    valid = bm_valid_mask(t_, d_)
    a_min = gap * (torch.arange(t_, dtype=f64) - 0.5)
    a_max = gap * (torch.arange(t_, dtype=f64) + 0.5)
    pad = 3 * gap
    ious, starts, ends = [], [], []
    device = None
    for i, seg in enumerate(segments):
        if isinstance(seg, Tensor) and device is None:
            device = seg.device
        s = _as_segments(seg, i)
        g_min, g_max = s[:, 0, None, None], s[:, 1, None, None]
        inter = (torch.minimum(p_max, g_max) - torch.maximum(p_min, g_min)).clamp(min=0)
        union = (p_max - p_min) + (g_max - g_min) - inter
        iou = (inter / union).amax(0) if len(s) else torch.zeros(d_, t_, dtype=f64)
        ious.append(iou * valid)
        starts.append(_ioa(a_min, a_max, s[:, 0] - pad / 2, s[:, 0] + pad / 2))
        ends.append(_ioa(a_min, a_max, s[:, 1] - pad / 2, s[:, 1] + pad / 2))
    if not ious:
        raise ValueError("segments is empty: pass one (n_i, 2) tensor per batch item")
    out = {"iou": torch.stack(ious), "start": torch.stack(starts), "end": torch.stack(ends)}
    return {k: v.to(device=device, dtype=torch.float32) for k, v in out.items()}


def _ioa(a_min: Tensor, a_max: Tensor, r_min: Tensor, r_max: Tensor) -> Tensor:
    """Max over regions of the fraction of each anchor covered: ``(T,)``; zeros without regions."""
    if r_min.numel() == 0:
        return torch.zeros_like(a_min)
    inter = (torch.minimum(a_max[None], r_max[:, None]) - torch.maximum(a_min[None], r_min[:, None])).clamp(min=0)
    return (inter / (a_max - a_min)[None]).amax(0)


# --------------------------------------------------------------------------------------------
# losses

_RATIO_RANGE = (1.05, 21.0)
_EPS = 1e-5


def _weighted_logistic(pred: Tensor, pmask: Tensor, nmask: Tensor, num_entries: Tensor) -> Tensor:
    """``-sum(0.5 r pos log p + 0.5 r/(r-1) neg log(1-p)) / num_entries``,
    ``r = num_entries / max(#pos, 1)`` clamped to [1.05, 21] (finite with no positives or negatives)."""
    num_pos = pmask.sum().clamp(min=1)
    num_entries = num_entries.clamp(min=1)
    ratio = (num_entries / num_pos).clamp(*_RATIO_RANGE)
    coef_1 = 0.5 * ratio
    coef_0 = 0.5 * ratio / (ratio - 1)
    loss = coef_1 * pmask * torch.log(pred + _EPS) + coef_0 * nmask * torch.log(1.0 - pred + _EPS)
    return -loss.sum() / num_entries


def _tem_loss(pred: Tensor, gt: Tensor) -> Tensor:
    pmask = (gt > 0.5).to(pred.dtype)
    return _weighted_logistic(pred, pmask, 1.0 - pmask, torch.tensor(float(pred.numel()), device=pred.device))


def _pem_reg_loss(pred: Tensor, gt: Tensor, mask: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    high = (gt > 0.7).to(pred.dtype)
    mid = ((gt <= 0.7) & (gt > 0.3)).to(pred.dtype)
    low = ((gt <= 0.3) & (gt > 0.0)).to(pred.dtype) * mask
    num_h = high.sum()
    weights = high
    for band in (mid, low):  # keep each band cell with probability min(#high / #band, 1)
        r = (num_h / band.sum().clamp(min=1)).clamp(max=1.0)
        u = _uniform(gt, generator)
        weights = weights + ((band * u) > (1.0 - r)).to(pred.dtype)
    return 0.5 * (weights * (pred - gt) ** 2).sum() / weights.sum().clamp(min=1)


def _uniform(like: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    if generator is None:
        return torch.rand(like.shape, device=like.device, dtype=like.dtype)
    return torch.rand(like.shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


def _pem_cls_loss(pred: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
    pmask = (gt > 0.9).to(pred.dtype)
    nmask = (gt <= 0.9).to(pred.dtype) * mask
    return _weighted_logistic(pred, pmask, nmask, pmask.sum().clamp(min=1) + nmask.sum())


def bmn_loss(outputs: Dict[str, Tensor], targets: Dict[str, Tensor], *, reg_weight: float = 10.0,
             generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
    """BMN's loss: ``TEM + reg_weight * PEM-reg + PEM-cls`` over the whole batch.

    ``outputs``: :class:`BMN`'s dict; ``targets``: :func:`bmn_targets`' dict. Proposals that end
    beyond the window are masked (the reference's ``bm_mask``). PEM-reg draws its random subsets
    of the (0.3, 0.7] and (0, 0.3] IoU bands from ``generator`` (``torch.rand`` on its device) for
    reproducibility, else from the global RNG; each band cell is kept when ``u > 1 - r`` with
    ``r = min(#(IoU > 0.7) / #band, 1)`` (the reference leaves ``r`` unclamped, which selects cells
    outside the band when ``r > 1``). Returns ``(total, {"tem", "pem_reg", "pem_cls"})``, the parts
    detached for logging.
    """
    for key, d in (("outputs", outputs), ("targets", targets)):
        missing = {"start", "end", "confidence" if key == "outputs" else "iou"} - set(d)
        if missing:
            raise ValueError(f"bmn_loss: {key} lacks {sorted(missing)}")
    conf, gt_iou = outputs["confidence"], targets["iou"]
    if conf.dim() != 4 or conf.shape[1] != 2:
        raise ValueError(f"outputs['confidence'] must be (B, 2, D, T), got {tuple(conf.shape)}")
    b, _, d, t = conf.shape
    if tuple(gt_iou.shape) != (b, d, t):
        raise ValueError(f"targets['iou'] must be {(b, d, t)} to match the confidence map, got {tuple(gt_iou.shape)}")
    for k in ("start", "end"):
        for name, src in (("outputs", outputs), ("targets", targets)):
            if tuple(src[k].shape) != (b, t):
                raise ValueError(f"{name}['{k}'] must be {(b, t)}, got {tuple(src[k].shape)}")
    dtype = conf.dtype
    mask = bm_valid_mask(t, d, device=conf.device).to(dtype)
    gt = gt_iou.to(dtype) * mask
    tem = _tem_loss(outputs["start"], targets["start"].to(dtype)) + _tem_loss(outputs["end"], targets["end"].to(dtype))
    pem_reg = _pem_reg_loss(conf[:, 0], gt, mask, generator)
    pem_cls = _pem_cls_loss(conf[:, 1], gt, mask)
    total = tem + reg_weight * pem_reg + pem_cls
    return total, {"tem": tem.detach(), "pem_reg": pem_reg.detach(), "pem_cls": pem_cls.detach()}
