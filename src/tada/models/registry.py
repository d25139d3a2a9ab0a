"""Model registry: ``@register_model`` factories, ``create_model`` and ``list_models``."""
from __future__ import annotations

import difflib
import fnmatch
from typing import Callable, Dict, List, Optional, Union

import torch.nn as nn

__all__ = ["register_model", "create_model", "list_models", "is_model", "TADAIFY_PREFIX"]

# ``create_model("tadaify:<timm name>")`` / ``("tadaify:torchvision.<name>")``: a 2D CNN made a TAda
# video model by :func:`tada.models.tadaify.tadaify` (not listed by ``list_models``)
TADAIFY_PREFIX = "tadaify:"

_MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a factory ``fn(*, num_classes=400, **kwargs) -> model`` under its function name."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = fn
    return fn


def is_model(name: str) -> bool:
    return name in _MODELS


def list_models(pattern: str = "*") -> List[str]:
    """Registered model names matching a shell-style ``pattern`` (e.g. ``"tada*"``), sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def _unknown(name: str) -> ValueError:
    close = difflib.get_close_matches(str(name), list(_MODELS), n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(
        f"unknown model {name!r}{hint} (tada.list_models() lists all {len(_MODELS)}; "
        f"'{TADAIFY_PREFIX}<timm name>' or '{TADAIFY_PREFIX}torchvision.<name>' tadaify a 2D CNN)"
    )


def create_model(
    name: str,
    *,
    pretrained: Optional[Union[str, "os.PathLike"]] = None,  # noqa: F821
    num_classes: int = 400,
    **overrides,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`, or ``"tadaify:<timm name>"`` /
            ``"tadaify:torchvision.<name>"`` for a 2D CNN turned into a TAda video model
            (:func:`tada.models.tadaify.create_tadaified`; ``overrides`` then go to ``tadaify`` or to the
            timm / torchvision builder, and ``pretrained`` is a checkpoint of the 2D network).
        pretrained: a local checkpoint path (ImageNet / CLIP / released TAda / this project's
            checkpoints; the format is detected). Loading is strict: see
            :func:`tada.models.pretrained.load_pretrained`.
        num_classes: classifier size (0 for no classifier: ``forward`` returns pooled features).
        overrides: constructor arguments of the family (e.g. ``drop_path_rate``, ``cal_dim``).
    """
    tadaified = isinstance(name, str) and name.startswith(TADAIFY_PREFIX)
    if not tadaified and name not in _MODELS:
        raise _unknown(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be a non-negative int, got {num_classes!r}")
    if tadaified:
        from .tadaify import create_tadaified

        model = create_tadaified(name[len(TADAIFY_PREFIX):], num_classes=num_classes, **overrides)
    else:
        model = _MODELS[name](num_classes=num_classes, **overrides)
    model.model_name = name
    if pretrained is not None:
        from .pretrained import load_pretrained

        load_pretrained(model, pretrained)
    return model
