"""``tada.nn``: the TAdaConv operator, its routing functions and temporal aggregation.

Knows nothing about models, data or configs.
"""
from . import functional
from .aggregation import ChannelNorm, TemporalAggregation, temporal_pool
from .functional import tada_conv2d
from .layers import DropPath, drop_path
from .routing import QuickGELU, RouteFuncAttn, RouteFuncMLP, quick_gelu
from .tadaconv import TAdaConv2d

__all__ = [
    "functional",
    "tada_conv2d",
    "TAdaConv2d",
    "RouteFuncMLP",
    "RouteFuncAttn",
    "TemporalAggregation",
    "temporal_pool",
    "ChannelNorm",
    "QuickGELU",
    "quick_gelu",
    "DropPath",
    "drop_path",
]
