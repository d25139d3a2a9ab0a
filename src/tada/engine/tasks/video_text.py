"""Text-supervised video training (``task.name=video_text``): the classes are texts.

Every class name of the label space is cleaned (:func:`tada.data.classnames.clean_class_name`, unless
``clean_names: false``) and put into every prompt template; a class's text embedding is the average of
its prompts' normalised embeddings, normalised again. The logits of a clip are
``exp(logit_scale) * cos(video, class text)`` over *all* classes, and the loss is the soft-target
cross-entropy of :mod:`.classification` (label smoothing, mixup / cutmix: ViFi-CLIP's objective).
Evaluation is classification's: multi-view top-1 / top-5 of the logits, per-class CSV, JSON, plots.

The text tower is frozen (default) or trained:

* **frozen** (``text_trainable: false``): the class embeddings are computed once per run (per task
  object) without gradients and reused by every training step and every evaluation;
* **trained** (``text_trainable: true``): every training step encodes the class prompts inside the
  model's forward (so gradients reach the text tower, through DDP too), at its own lr
  (``text_lr_mult`` x the base lr, and ``text_layer_decay`` over its layers: the model's
  ``param_lr_scales`` hook); an evaluation encodes them once, before its first batch.

:attr:`VideoText.text_encodes` counts the encodings of the class texts (the tests read it).

Options (``task.kwargs``, :class:`VideoTextOptions`): the text tower (``text``: a name of
:data:`tada.models.text.TEXT_CONFIGS` or TextTransformer arguments; and / or ``clip``: a CLIP
checkpoint whose text tower, ``logit_scale`` and, for a CLIP ViT video tower, visual weights are
loaded), ``templates``, ``clean_names``, ``text_trainable``, ``text_lr_mult``, ``text_layer_decay``,
``logit_scale`` (initial value when no CLIP file gives one), ``train_logit_scale``. The video tower is
``model.name`` with ``model.kwargs`` / ``model.drop_path_rate``, and ``model.pretrained`` its own weights
(e.g. ImageNet for a TAda2D). ``model.num_classes`` is not used: there is one logit per class name.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor

from ...data.classnames import DEFAULT_TEMPLATES, check_templates, clean_class_names, prompts
from ...models.text import clip_text_config, tokenize
from ...models.videotext import VideoTextModel, create_video_text_model, text_kwargs_of
from . import register_task
from .classification import Classification

__all__ = ["VideoText", "VideoTextOptions", "unwrap_model"]


@dataclasses.dataclass
class VideoTextOptions:
    templates: List[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    clean_names: bool = True
    text: Optional[Union[str, Dict[str, Any]]] = None  # TEXT_CONFIGS name or TextTransformer arguments
    clip: Optional[str] = None  # a CLIP checkpoint: text tower + logit_scale (+ a CLIP ViT video tower)
    embed_dim: Optional[int] = None  # default: the text tower's
    text_trainable: bool = False
    text_lr_mult: float = 1.0  # x the base lr, for the text tower (when trained)
    text_layer_decay: Optional[float] = None  # layer-wise lr decay over the text tower (when trained)
    logit_scale: Optional[float] = None  # initial log-temperature; default the CLIP file's, else log(1/0.07)
    train_logit_scale: bool = True


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module under ``torch.compile`` (``_orig_mod``) and DDP / DataParallel (``module``) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            inner = model.module
        if inner is None:
            return model
        model = inner


def _check_options(o: VideoTextOptions) -> None:
    check_templates(o.templates)
    if o.text is None and o.clip is None:
        raise ValueError("task video_text needs a text tower: set task.kwargs.text (e.g. tiny, clip_b16, or "
                         "TextTransformer arguments) or task.kwargs.clip (a CLIP checkpoint)")
    text_kwargs_of(o.text)  # a bad description fails here, not when the model is built
    if not o.text_lr_mult > 0:
        raise ValueError(f"task.kwargs.text_lr_mult must be > 0, got {o.text_lr_mult}")
    if o.text_layer_decay is not None and not 0 < o.text_layer_decay <= 1:
        raise ValueError(f"task.kwargs.text_layer_decay must be in (0, 1] or null, got {o.text_layer_decay}")


@register_task
class VideoText(Classification):
    """Classification whose classifier is the text embeddings of the class names (module docstring)."""

    name = "video_text"
    Options = VideoTextOptions

    def __init__(self, labels, cfg, options: Optional[VideoTextOptions] = None):
        options = options if options is not None else VideoTextOptions()
        _check_options(options)
        if labels.multi_head:
            raise ValueError(f"task video_text takes one head of class names, got heads {list(labels.heads)}")
        super().__init__(labels, cfg, options)
        self.templates = check_templates(options.templates)
        self.text_encodes = 0  # encodings of the class texts (all classes at once)
        self._tokens: Dict[Any, Tensor] = {}
        self._frozen: Optional[Tensor] = None  # frozen tower: the class embeddings of this run
        self._eval: Dict[int, Tensor] = {}  # trained tower: this evaluation's, per model

    def num_outputs(self) -> int:
        return self.labels.num_classes

    # -- the class texts -----------------------------------------------------------------------
    def class_texts(self) -> List[List[str]]:
        """The prompts of every class: ``[[template(name) for template] for class]``."""
        names = list(self.labels.class_names)
        if self.options.clean_names:
            names = clean_class_names(names)
        return [prompts(n, self.templates) for n in names]

    def class_tokens(self, context_length: int, device) -> Tensor:
        """Token ids ``(C, K, L)`` of the class prompts (tokenised once per context length and device)."""
        key = (context_length, str(device))
        if key not in self._tokens:
            texts = self.class_texts()
            flat = tokenize([t for cls in texts for t in cls], context_length)
            self._tokens[key] = flat.reshape(len(texts), len(self.templates), -1).to(device)
        return self._tokens[key]

    def _encode(self, model: VideoTextModel) -> Tensor:
        """The class embeddings ``(C, D)``, float32, without gradients."""
        device = model.logit_scale.device
        tokens = self.class_tokens(model.text.context_length, device)
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            feats = model.encode_classes(tokens).float()
        self.text_encodes += 1
        return feats

    def text_features(self, model: nn.Module) -> Tensor:
        """The class embeddings ``(C, D)`` for ``model``: cached for the run when its text tower is
        frozen, for the current evaluation when it is trained."""
        m = _video_text(model)
        if not self.options.text_trainable:  # the option, not requires_grad: an EMA copy has none either
            if self._frozen is None:
                self._frozen = self._encode(m)
            return self._frozen.to(m.logit_scale.device)
        if id(m) not in self._eval:
            self._eval[id(m)] = self._encode(m)
        return self._eval[id(m)]

    # -- the model -----------------------------------------------------------------------------
    def forward(self, model, x: Tensor) -> Tensor:
        m = _video_text(model)
        if self.options.text_trainable and m.training and torch.is_grad_enabled():
            self._eval.clear()  # the tower changes with this step
            self.text_encodes += 1
            return model(x, class_tokens=self.class_tokens(m.text.context_length, x.device))
        return model(x, text_features=self.text_features(m))

    def accumulator(self):
        self._eval.clear()  # a trained tower is encoded again for each evaluation
        return super().accumulator()

    def _create(self, *, pretrained: bool, text=None, clip=None) -> VideoTextModel:
        o, m = self.options, self.cfg.model
        kwargs = dict(m.kwargs)
        if m.drop_path_rate:
            kwargs["drop_path_rate"] = m.drop_path_rate
        kwargs.setdefault("drop_rate", m.drop_rate)
        model = create_video_text_model(
            m.name, text=text, clip=clip, embed_dim=o.embed_dim, video_pretrained=m.pretrained,
            pretrained=pretrained, logit_scale=o.logit_scale, **kwargs)
        model.freeze_text(not o.text_trainable)
        model.set_text_lr(o.text_lr_mult, o.text_layer_decay)
        model.logit_scale.requires_grad_(o.train_logit_scale)
        if self.cfg.train.grad_checkpoint:
            model.set_grad_checkpointing(True)
        return model

    def build_model(self, device=torch.device("cpu"), *, pretrained: bool = True) -> VideoTextModel:
        """The video-text model of ``model.name`` and the text options (CLIP file loaded when
        ``pretrained``; without it, a CLIP file is still read for the text tower's shapes unless
        ``task.kwargs.text`` gives them)."""
        o = self.options
        return self._create(pretrained=pretrained, text=o.text, clip=o.clip).to(device)

    def build_model_for_state(self, state_dict: Mapping[str, Tensor], device=torch.device("cpu")) -> VideoTextModel:
        """The model a trained state dict (``model_state`` of a checkpoint) fits, built from the config and
        the text tower's shapes in the state (no CLIP file is needed), with the state loaded."""
        if not any(k.startswith("text.") for k in state_dict):
            raise ValueError("the checkpoint's model_state has no text.* tensors: it is not a video-text model's "
                             "(train it with task.name=video_text)")
        given = text_kwargs_of(self.options.text)
        arch = clip_text_config(state_dict, heads=given.get("heads"))
        arch["act"] = given.get("act", "quick_gelu")
        model = self._create(pretrained=False, text=arch)
        try:
            model.load_state_dict(dict(state_dict))
        except RuntimeError as e:
            raise ValueError(f"the checkpoint does not fit the video-text model of {self.cfg.model.name!r}: "
                             f"{str(e).strip().splitlines()[0]}") from e
        return model.to(device)

    # -- reports -------------------------------------------------------------------------------
    def write(self, res, out, name: str = "test", history: Sequence[dict] = ()) -> Dict[str, str]:
        files = super().write(res, out, name, history)
        path = Path(files["results_json"])
        summary = json.loads(path.read_text())
        summary.update(templates=list(self.templates), clean_names=self.options.clean_names,
                       text_encodes=self.text_encodes)
        path.write_text(json.dumps(summary, indent=1))
        return files


def _video_text(model: nn.Module) -> VideoTextModel:
    m = unwrap_model(model)
    if not isinstance(m, VideoTextModel):
        raise ValueError(f"task video_text runs a VideoTextModel (its build_model), got {type(m).__name__}")
    return m
