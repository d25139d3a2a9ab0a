"""``tada.nn``: the TAdaConv operator, its routing functions and temporal aggregation.

Knows nothing about models, data or configs.
"""
from . import functional, functional3d
from .calibration import (CALIBRATIONS, DynamicCalibration, LearnableCalibration, PartialCalibration,
                          TAMCalibration, build_routing, routing_names)
from .aggregation import ChannelNorm, TemporalAggregation, temporal_pool
from .functional import recompute_scaled_input, tada_conv2d
from .functional3d import tada_conv3d
from .layers import DropPath, drop_path
from .routing import QuickGELU, RouteFuncAttn, RouteFuncMLP, quick_gelu
from .tadaconv import TAdaConv2d, has_forward_hooks
from .tadaconv3d import TAdaConv3d

__all__ = [
    "functional",
    "functional3d",
    "tada_conv2d",
    "recompute_scaled_input",
    "tada_conv3d",
    "TAdaConv2d",
    "TAdaConv3d",
    "has_forward_hooks",
    "RouteFuncMLP",
    "RouteFuncAttn",
    "CALIBRATIONS",
    "LearnableCalibration",
    "DynamicCalibration",
    "TAMCalibration",
    "PartialCalibration",
    "build_routing",
    "routing_names",
    "TemporalAggregation",
    "temporal_pool",
    "ChannelNorm",
    "QuickGELU",
    "quick_gelu",
    "DropPath",
    "drop_path",
]
