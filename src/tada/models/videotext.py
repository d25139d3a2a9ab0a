"""Video-text models (SPEC §9): any registered video backbone paired with CLIP's text tower.

```
video        a registered video model (tada.models.create_model, no classifier: num_classes=0)
video_proj   Linear(num_features, embed_dim), no bias, new by design -- only for backbones without
             CLIP's projection (TSN / TAda2D / ConvNeXt); a VideoViT built with embed_dim uses its
             own ``proj`` (CLIP's ``visual.proj``) through ``forward_embed``
text         tada.models.text.TextTransformer (CLIP's text tower)
logit_scale  0-d parameter, log of the temperature (CLIP: log(1/0.07) at init, ~log(100) trained)
```

:meth:`VideoTextModel.encode_video` and :meth:`~VideoTextModel.encode_text` give L2-normalised
embeddings, and ``forward(x, text_features)`` the logits ``exp(logit_scale) * v @ t.T`` (``(B, N)``),
the scale clamped at 100 as CLIP does. For a TAdaFormer the video embedding is
``proj(ln_post(mean over frames of the CLS tokens))``: at init, on a clip of identical frames, CLIP's
image embedding of that frame.

Class texts: a class is described by several prompts (templates); :meth:`~VideoTextModel.encode_classes`
takes their tokens ``(C, K, L)``, normalises each prompt's embedding, averages over the K prompts and
normalises again (CLIP's prompt ensembling). ``forward(x, class_tokens=...)`` does that inside the
forward, so a text tower that is trained sees its gradient through the same call (and through DDP).

Optimiser hooks (read by :func:`tada.engine.optim.param_groups`): ``no_weight_decay``,
``new_parameter_names`` (the video tower's, plus ``video_proj``), ``layer_id`` (the video tower's depth;
every other parameter at the top), and :meth:`~VideoTextModel.param_lr_scales`: the text tower's own lr
multiplier and layer-wise decay (:meth:`~VideoTextModel.set_text_lr`).

:func:`create_video_text_model` builds one from a backbone name and a text-tower description or a CLIP
checkpoint (whose visual weights go to a CLIP ViT video tower, and its text tower and ``logit_scale``
to the text side, through :func:`tada.models.text.load_clip_text`).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Set, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .registry import create_model
from .text import TEXT_CONFIGS, TextTransformer, load_clip_text
from .vit import VideoViT

__all__ = ["VideoTextModel", "create_video_text_model", "CLIP_INIT_LOGIT_SCALE", "text_kwargs_of"]

#: CLIP's initial temperature, log(1 / 0.07)
CLIP_INIT_LOGIT_SCALE = math.log(1 / 0.07)
_ARCH_KEYS = ("vocab_size", "context_length", "width", "layers", "heads", "embed_dim", "mlp_ratio", "act")


class VideoTextModel(nn.Module):
    """A video tower and CLIP's text tower in one embedding space (see the module docstring).

    Args:
        video: a video model with ``forward_features`` / ``forward_head`` (any of the zoo). A
            :class:`~tada.models.vit.VideoViT` built with ``embed_dim`` is used through its
            ``forward_embed``; any other gets a new ``video_proj`` from its ``num_features``.
        text: the text tower; its ``embed_dim`` is the joint embedding size.
        logit_scale: initial log-temperature (CLIP's init by default).
        max_logit_scale: the temperature is clamped at this (CLIP: 100).
    """

    def __init__(self, video: nn.Module, text: TextTransformer, *, logit_scale: float = CLIP_INIT_LOGIT_SCALE,
                 max_logit_scale: float = 100.0):
        super().__init__()
        if not isinstance(text, TextTransformer):
            raise ValueError(f"text must be a tada.models.text.TextTransformer, got {type(text).__name__}")
        if not math.isfinite(float(logit_scale)):
            raise ValueError(f"logit_scale must be a finite number (a log-temperature), got {logit_scale!r}")
        if not max_logit_scale > 0:
            raise ValueError(f"max_logit_scale must be > 0, got {max_logit_scale!r}")
        self.video, self.text = video, text
        dim = text.embed_dim
        if getattr(video, "proj", None) is not None and hasattr(video, "forward_embed"):
            if video.embed_dim != dim:
                raise ValueError(f"the video tower projects to {video.embed_dim} dimensions and the text tower to "
                                 f"{dim}; build them with the same embed_dim")
            self.video_proj = None
        else:
            features = getattr(video, "num_features", None)
            if not isinstance(features, int) or features < 1:
                raise ValueError(f"{type(video).__name__} has no num_features: the video tower must be a model of the "
                                 "zoo (forward_features / forward_head(pre_logits=True))")
            self.video_proj = nn.Linear(features, dim, bias=False)
            nn.init.normal_(self.video_proj.weight, std=features ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))
        self.max_log_scale = math.log(max_logit_scale)
        self.text_lr_mult: float = 1.0
        self.text_layer_decay: Optional[float] = None

    @property
    def embed_dim(self) -> int:
        return self.text.embed_dim

    # -- embeddings ----------------------------------------------------------------------------
    def video_embed(self, x: Tensor) -> Tensor:
        """The un-normalised video embedding ``(B, embed_dim)``."""
        if self.video_proj is None:
            return self.video.forward_embed(x)
        return self.video_proj(self.video.forward_head(self.video.forward_features(x), pre_logits=True))

    def encode_video(self, x: Tensor) -> Tensor:
        """``(B, 3, T, H, W)`` -> L2-normalised video embeddings ``(B, embed_dim)``."""
        return F.normalize(self.video_embed(x), dim=-1)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """Token ids ``(N, L)`` (:func:`tada.models.text.tokenize`) -> L2-normalised ``(N, embed_dim)``."""
        return F.normalize(self.text(tokens), dim=-1)

    def encode_classes(self, tokens: Tensor) -> Tensor:
        """One embedding per class from the tokens of its K prompts ``(C, K, L)`` (or one prompt per class,
        ``(C, L)``): each prompt's embedding normalised, averaged over the K prompts, normalised again."""
        if not isinstance(tokens, Tensor) or tokens.dim() not in (2, 3):
            shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"class tokens must be (classes, prompts, length) or (classes, length), got {shape}")
        if tokens.dim() == 2:
            return self.encode_text(tokens)
        c, k, length = tokens.shape
        emb = self.encode_text(tokens.reshape(c * k, length)).reshape(c, k, -1)
        return F.normalize(emb.mean(dim=1), dim=-1)

    def scale(self) -> Tensor:
        """``exp(logit_scale)``, clamped at ``max_logit_scale``."""
        return self.logit_scale.clamp(max=self.max_log_scale).exp()

    def forward(self, x: Tensor, text_features: Optional[Tensor] = None, *,
                class_tokens: Optional[Tensor] = None) -> Tensor:
        """Logits ``(B, N) = exp(logit_scale) * encode_video(x) @ t.T`` against ``text_features`` ``(N, D)``
        (normalised again here, so any scale works) or against the classes of ``class_tokens``
        (:meth:`encode_classes`, computed in this call: the text tower gets gradients)."""
        if (text_features is None) == (class_tokens is None):
            raise ValueError("VideoTextModel.forward(x, text_features) needs exactly one of text_features (N, D) "
                             "(e.g. model.encode_text(tokens)) or class_tokens=(C, K, L)")
        if class_tokens is not None:
            t = self.encode_classes(class_tokens)
        else:
            if not isinstance(text_features, Tensor) or text_features.dim() != 2 or \
                    text_features.shape[1] != self.embed_dim:
                got = tuple(text_features.shape) if isinstance(text_features, Tensor) else type(text_features).__name__
                raise ValueError(f"text_features must be (N, {self.embed_dim}), got {got}")
            t = F.normalize(text_features, dim=-1)
        v = self.encode_video(x)
        return self.scale() * v @ t.to(v.dtype).t()

    # -- training helpers ----------------------------------------------------------------------
    def freeze_text(self, frozen: bool = True) -> "VideoTextModel":
        """Stop (or restart) gradients to the text tower: its parameters leave the optimiser."""
        for p in self.text.parameters():
            p.requires_grad_(not frozen)
        return self

    @property
    def text_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.text.parameters())

    def set_text_lr(self, mult: float = 1.0, layer_decay: Optional[float] = None) -> "VideoTextModel":
        """The text tower's lr: ``mult`` x the base lr, times ``layer_decay ** (depth - i)`` for its
        layer ``i`` (``TextTransformer.layer_id``) when ``layer_decay`` is set."""
        if isinstance(mult, bool) or not isinstance(mult, (int, float)) or not mult > 0:
            raise ValueError(f"the text tower's lr multiplier must be > 0, got {mult!r}")
        if layer_decay is not None and (isinstance(layer_decay, bool) or not 0 < layer_decay <= 1):
            raise ValueError(f"the text tower's layer decay must be in (0, 1] or None, got {layer_decay!r}")
        self.text_lr_mult, self.text_layer_decay = float(mult), layer_decay
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.video.set_grad_checkpointing(enable)

    # -- optimiser hooks -----------------------------------------------------------------------
    def no_weight_decay(self) -> Set[str]:
        out = {f"video.{n}" for n in (self.video.no_weight_decay() if hasattr(self.video, "no_weight_decay") else ())}
        out |= {f"text.{n}" for n in self.text.no_weight_decay()}
        return out | {"logit_scale"}

    def new_parameter_names(self) -> Set[str]:
        """The video tower's new-by-design parameters, and ``video_proj`` (no checkpoint has it)."""
        own = self.video.new_parameter_names() if hasattr(self.video, "new_parameter_names") else set()
        out = {f"video.{n}" for n in own}
        if self.video_proj is not None:
            out |= {f"video_proj.{n}" for n, _ in self.video_proj.named_parameters()}
        return out

    def head_keys(self) -> Set[str]:
        """No classifier: the class 'weights' are text embeddings."""
        return set()

    def layer_id(self, name: str) -> int:
        """Depth for the video tower's layer-wise lr decay (``optim.layer_decay``): the video tower's
        ``layer_id``; the text tower, ``video_proj`` and ``logit_scale`` sit at the top (the text tower's
        own decay is :meth:`param_lr_scales`)."""
        if not hasattr(self.video, "layer_id"):
            raise ValueError(f"optim.layer_decay is set but the video tower {type(self.video).__name__} defines no "
                             "layer_id(); layer-wise lr decay applies to TAdaFormer / ViT towers")
        if name.startswith("video."):
            return int(self.video.layer_id(name[len("video."):]))
        return int(self.video.layer_id("head"))

    def param_lr_scales(self) -> Dict[str, float]:
        """The lr scale of each text-tower parameter, replacing the one the video rules give it:
        ``text_lr_mult * text_layer_decay ** (depth - layer_id)``."""
        depth = self.text.layers + 1
        out = {}
        for n, _ in self.text.named_parameters():
            s = self.text_lr_mult
            if self.text_layer_decay is not None:
                s *= self.text_layer_decay ** (depth - self.text.layer_id(n))
            out[f"text.{n}"] = s
        return out


# ---------------------------------------------------------------------------------------------
# the builder
# ---------------------------------------------------------------------------------------------
def text_kwargs_of(text: Union[None, str, Mapping[str, Any]]) -> Dict[str, Any]:
    """A text-tower description as :class:`TextTransformer` keyword arguments: a name of
    :data:`~tada.models.text.TEXT_CONFIGS` (``"tiny"``, ``"clip_b16"``...), a mapping of the arguments,
    or a mapping with ``name`` plus overrides (``{"name": "tiny", "layers": 1}``); None: ``{}``."""
    if text is None:
        return {}
    if isinstance(text, str):
        text = {"name": text}
    if not isinstance(text, Mapping):
        raise ValueError(f"text must be a TEXT_CONFIGS name ({', '.join(sorted(TEXT_CONFIGS))}) or a mapping of "
                         f"TextTransformer arguments, got {text!r}")
    kwargs = dict(text)
    name = kwargs.pop("name", None)
    if name is not None:
        if name not in TEXT_CONFIGS:
            raise ValueError(f"unknown text tower {name!r}; expected one of {sorted(TEXT_CONFIGS)}")
        kwargs = {**TEXT_CONFIGS[name], **kwargs}
    unknown = sorted(set(kwargs) - set(_ARCH_KEYS))
    if unknown:
        raise ValueError(f"unknown text-tower argument(s) {unknown}; expected some of {list(_ARCH_KEYS)} (or name)")
    return kwargs


def _text_tower(text: Dict[str, Any], clip, *, load: bool):
    """``(tower, logit_scale or None)`` from the description and / or a CLIP checkpoint."""
    if clip is not None and (load or not text):
        tower, scale = load_clip_text(clip, act=text.get("act", "quick_gelu"), heads=text.get("heads"),
                                      default_logit_scale=CLIP_INIT_LOGIT_SCALE)
        got = {k: getattr(tower, k) for k in _ARCH_KEYS}
        differ = {k: (v, got[k]) for k, v in text.items() if got[k] != v}
        if differ:
            raise ValueError("the text tower described does not match the CLIP checkpoint's "
                             f"{clip}: " + ", ".join(f"{k}={a!r} vs {b!r} in the file" for k, (a, b) in differ.items()))
        return tower, (scale if load else None)
    if not text:
        raise ValueError("a video-text model needs a text tower: give text= (a TEXT_CONFIGS name such as 'tiny' or "
                         "TextTransformer arguments) or clip= (a CLIP checkpoint with a text tower)")
    return TextTransformer(**text), None


def create_video_text_model(video_name: str, *, text: Union[None, str, Mapping[str, Any]] = None,
                            clip: Optional[str] = None, embed_dim: Optional[int] = None,
                            video_pretrained: Optional[str] = None, pretrained: bool = True,
                            logit_scale: Optional[float] = None, **video_kwargs) -> VideoTextModel:
    """A :class:`VideoTextModel` of the registered video backbone ``video_name``.

    Args:
        text: the text tower (see :func:`text_kwargs_of`); with ``clip`` it may describe the architecture
            (checked against the file) or give only ``act`` / ``heads`` for reading the file.
        clip: a CLIP checkpoint (OpenAI ``.pt`` archive, read as data, or an OpenAI / open_clip state dict):
            its text tower and ``logit_scale``, and, for a CLIP ViT video tower (TAdaFormer, TSN-ViT), its
            visual weights including ``visual.proj`` (unless ``video_pretrained`` is given).
        embed_dim: the joint embedding size (over a named text config's); None: the text tower's (a CLIP
            file's is fixed: a different value is an error).
        video_pretrained: a checkpoint for the video tower (e.g. ImageNet weights for a TAda2D).
        pretrained: False builds the architecture only (a CLIP file is still read for the text tower's
            shapes when ``text`` does not give them), for loading a trained model's state dict.
        logit_scale: initial log-temperature; default the CLIP file's, else log(1/0.07).
        video_kwargs: constructor arguments of the video backbone (``drop_path_rate``, ``width``...).
    """
    if embed_dim is not None and (isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1):
        raise ValueError(f"embed_dim must be a positive int or None, got {embed_dim!r}")
    if "num_classes" in video_kwargs:
        raise ValueError("a video-text model has no classifier (its classes are texts); do not pass num_classes")
    described = text_kwargs_of(text)
    if embed_dim is not None and clip is None and not (isinstance(text, Mapping) and "embed_dim" in text):
        described["embed_dim"] = embed_dim  # over a named config's default
    tower, clip_scale = _text_tower(described, clip, load=pretrained)
    if embed_dim is not None and tower.embed_dim != embed_dim:
        raise ValueError(f"embed_dim={embed_dim} but the text tower embeds into {tower.embed_dim} dimensions")
    with torch.device("meta"):  # which family is it? (a CLIP ViT projects with its own proj)
        is_vit = isinstance(create_model(video_name, num_classes=0, **video_kwargs), VideoViT)
    if is_vit:
        video_kwargs["embed_dim"] = tower.embed_dim  # CLIP's proj into the joint space
    weights = video_pretrained if video_pretrained is not None else (clip if is_vit else None)
    video = create_model(video_name, num_classes=0, pretrained=weights if pretrained else None, **video_kwargs)
    scale = logit_scale if logit_scale is not None else clip_scale
    scale = CLIP_INIT_LOGIT_SCALE if scale is None else scale
    model = VideoTextModel(video, tower, logit_scale=float(scale))
    model.model_name = f"video_text:{video_name}"
    return model
