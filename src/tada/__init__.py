"""TAda: temporally-adaptive video models (TAdaConv, TAda2D, TAdaConvNeXtV2, TAdaFormer)."""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("tada")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"

from . import models, nn  # noqa: E402
from .models import create_model, list_models, tadaify  # noqa: E402

__all__ = ["nn", "models", "create_model", "list_models", "tadaify", "__version__"]
