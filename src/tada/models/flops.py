"""Parameter and FLOP counts per view, side by side with the paper's figures (SPEC §3).

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` on the meta device (no memory,
no compute) and halved, so that one multiply-add is one FLOP as fvcore and the paper count them.
Like fvcore, only matrix products and convolutions are counted (norms, activations and elementwise
ops are not), which is why the operator's feature scaling adds almost nothing.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .registry import create_model

__all__ = ["PaperFigure", "PAPER", "count_params", "count_flops", "profile", "profile_model"]


@dataclass(frozen=True)
class PaperFigure:
    """One row of SPEC §3: a registered model at the paper's frames and resolution."""

    model: str
    frames: int
    size: int
    params_m: float
    gflops: float
    note: str = ""
    overrides: tuple = ()  # constructor overrides, as (key, value) pairs
    params_tol: float = 0.015
    gflops_tol: float = 0.03


def _plug_in(model: str, frames: int, params_m: float, gflops: float, note: str = "", overrides: tuple = ()) -> PaperFigure:
    """A plug-in row of Table 3c (SPEC §7) at the 256² test crop, within 0.1M params and 0.02 GFLOPs."""
    return PaperFigure(model, frames, 256, params_m, gflops, ("Table 3c" + (", " + note if note else "")), overrides,
                       params_tol=0.1 / params_m, gflops_tol=0.02 / gflops)


PAPER: List[PaperFigure] = [
    PaperFigure("tsn_r50", 8, 224, 24.3, 33.00, "Table 1 'Net'"),
    PaperFigure("tada2d_r50", 8, 224, 27.5, 33.02, "Table 1"),
    PaperFigure("tada2d_r50", 16, 256, 27.5, 86, "Table 7"),
    PaperFigure("r2plus1d_r50", 8, 224, 28.1, 37.94, "Table 1"),
    PaperFigure("tadaconvnextv2_tiny", 16, 256, 45.9, 47),
    PaperFigure("tadaconvnextv2_small", 16, 256, 82.2, 91),
    PaperFigure("tadaconvnextv2_base", 16, 256, 145.7, 162),
    # SPEC §3 lists this row at 224², but 94 GFLOPs is what 32 frames (16 after T-Down) cost at 256²,
    # the ConvNeXt test resolution (SPEC §4): 16 x 4.47 x (256/224)² = 93.4; at 224² it is 72.
    PaperFigure("tadaconvnext_tiny", 32, 256, 38.6, 94, "V1 (at 256²)", params_tol=0.05, gflops_tol=0.05),
    PaperFigure("tadaformer_b16", 16, 224, 104.1, 153),
    PaperFigure("tadaformer_b16", 16, 224, 0.0, 187, "temp_enhance + double_tada",
                overrides=(("temp_enhance", True), ("double_tada", True))),
    PaperFigure("tadaformer_l14", 16, 224, 364, 703),
    PaperFigure("tadaformer_l14", 16, 224, 0.0, 858, "temp_enhance + double_tada",
                overrides=(("temp_enhance", True), ("double_tada", True))),
    # plug-in backbones (Table 3c): SlowOnly reads 8 frames, SlowFast 32 (the slow pathway every alpha-th)
    _plug_in("slowonly_r50", 8, 32.45, 54.52),
    _plug_in("tada_slowonly_r50", 8, 35.60, 54.53),
    _plug_in("slowfast_r50_4x16", 32, 34.48, 36.10),
    _plug_in("tada_slowfast_r50_4x16", 32, 37.63, 36.11, "slow pathway"),
    _plug_in("tada_slowfast_r50_4x16", 32, 37.68, 36.11, "both pathways", (("tada_fast", True),)),
    _plug_in("slowfast_r50_8x8", 32, 34.57, 65.71),
    _plug_in("tada_slowfast_r50_8x8", 32, 37.72, 65.73),
    _plug_in("r2plus1d_r50", 8, 28.11, 49.55),
    _plug_in("tada_r2plus1d_r50", 8, 31.26, 49.57, "2d"),
    _plug_in("tada_r2plus1d_r50_2d1d", 8, 34.41, 49.58, "2d+1d"),
    _plug_in("r3d_r50", 8, 46.98, 84.23),
    _plug_in("tada_r3d_r50", 8, 50.13, 84.25),
]
"""``params_m == 0`` means the paper gives no parameter count for that row."""


def _extra_formulas() -> dict:
    """FLOP formulas torch lacks: the CPU flash-attention kernel that real CPU tensors dispatch to."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: _sdpa_cpu_flop} if op is not None else {}


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, frames: int, size: int, batch: int = 1) -> float:
    """GFLOPs (multiply-adds) of one forward pass on a ``(batch, 3, frames, size, size)`` input, on
    whatever device the model is on (use the meta device to count without computing)."""
    ref = next(model.parameters())
    x = torch.zeros(batch, getattr(model, "in_chans", 3), frames, size, size, device=ref.device, dtype=ref.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_extra_formulas()) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9


def _build(name: str, num_classes: int, overrides: Dict) -> nn.Module:
    try:
        with torch.device("meta"):
            return create_model(name, num_classes=num_classes, **overrides)
    except (NotImplementedError, RuntimeError):  # an init that needs real data: build it for real
        return create_model(name, num_classes=num_classes, **overrides)


@dataclass
class Profile:
    model: str
    frames: int
    size: int
    params_m: float
    gflops: float
    paper_params_m: Optional[float] = None
    paper_gflops: Optional[float] = None
    note: str = ""

    @property
    def params_diff(self) -> Optional[float]:
        return None if not self.paper_params_m else 100 * (self.params_m / self.paper_params_m - 1)

    @property
    def gflops_diff(self) -> Optional[float]:
        return None if not self.paper_gflops else 100 * (self.gflops / self.paper_gflops - 1)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["params_diff_pct"], d["gflops_diff_pct"] = self.params_diff, self.gflops_diff
        return d


def profile_model(model: nn.Module, frames: int, size: int) -> tuple:
    """``(params in millions, GFLOPs per view)`` of a built model."""
    return count_params(model) / 1e6, count_flops(model, frames, size)


def profile(name: str, frames: int, size: int, num_classes: int = 400, overrides: Optional[Dict] = None,
            paper: Optional[PaperFigure] = None) -> Profile:
    model = _build(name, num_classes, dict(overrides or {}))
    try:
        params_m, gflops = profile_model(model, frames, size)
    except NotImplementedError:  # an op without a meta kernel in the forward: count on real tensors
        if next(model.parameters()).device.type != "meta":
            raise
        params_m, gflops = profile_model(create_model(name, num_classes=num_classes, **dict(overrides or {})),
                                         frames, size)
    return Profile(
        name, frames, size, params_m, gflops,
        paper.params_m if paper and paper.params_m else None,
        paper.gflops if paper else None,
        paper.note if paper else "",
    )
