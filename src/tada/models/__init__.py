"""``tada.models``: the model zoo (one file per family), the registry and checkpoint loading; and
:class:`~tada.models.bmn.BMN`, the localiser on clip features (not in the registry of video models:
its input is ``(B, C, T)`` features)."""
from . import builders, convnext, resnet, resnet3d, vit  # noqa: F401  (registers the families)
from .base import VideoClassifier, mark_new_by_design
from .bmn import BMN, bmn_loss, bmn_targets
from .pretrained import LoadReport, load_pretrained, read_checkpoint
from .registry import create_model, is_model, list_models, register_model
from .tadaify import TAdaified, tadaify

__all__ = [
    "create_model",
    "list_models",
    "is_model",
    "register_model",
    "load_pretrained",
    "read_checkpoint",
    "LoadReport",
    "VideoClassifier",
    "mark_new_by_design",
    "tadaify",
    "TAdaified",
    "BMN",
    "bmn_targets",
    "bmn_loss",
]
