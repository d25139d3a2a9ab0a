"""``tada.models``: the model zoo (one file per family), the registry and checkpoint loading."""
from . import convnext, resnet, vit  # noqa: F401  (registers the families)
from .base import VideoClassifier, mark_new_by_design
from .pretrained import LoadReport, load_pretrained, read_checkpoint
from .registry import create_model, is_model, list_models, register_model

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
]
