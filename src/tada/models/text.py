"""CLIP's text tower for video-text models (SPEC §9): the BPE tokenizer, :class:`TextTransformer`, and
loading it (with ``logit_scale``) from the CLIP checkpoints the ViT is loaded from.

What comes from where:

* **The tokenizer** is open_clip's ``SimpleTokenizer`` (CLIP's byte-level BPE, whose vocabulary file
  ships with open_clip, so nothing is downloaded); :func:`tokenize` adds the start / end tokens, pads
  with 0 and truncates as CLIP does (the end-of-text token kept last). open_clip is an optional
  dependency (``pip install tada[text]``), imported on first use.
* **The transformer** is written here, from the project's ViT layers (:class:`tada.models.vit.Attention`
  with a causal mask, :class:`tada.models.vit.Mlp`), so that it trains, checkpoints and layer-decays like
  the rest of the zoo and needs no open_clip at run time. Its state-dict keys are OpenAI's:

```
token_embedding.weight          (vocab_size, width)
positional_embedding            (context_length, width)
transformer.resblocks.{i}       TextBlock: ln_1, attn.{in_proj_weight, in_proj_bias, out_proj}, ln_2,
                                mlp.{c_fc, c_proj}  (pre-norm, causal self-attention)
ln_final
text_projection                 (width, embed_dim): x @ text_projection
```

  ``forward(tokens)`` embeds the tokens, runs the causal blocks, applies ``ln_final``, takes the
  features at the end-of-text token (the position of the largest token id, as CLIP does) and projects
  them: what open_clip's ``encode_text(normalize=False)`` returns.
* **Checkpoints**: :func:`load_clip_text` reads an OpenAI CLIP ``.pt`` TorchScript archive (as data,
  through :func:`tada.models.pretrained.read_checkpoint`), an OpenAI state dict or an open_clip one
  (``CLIP`` keys at the top level, or ``CustomTextCLIP``'s under ``text.``; a ``module.`` prefix is
  removed); :func:`clip_text_config` reads the architecture from the tensor shapes. The activation
  cannot be read from shapes: OpenAI's models (and open_clip's ``*-quickgelu``) use QuickGELU, the
  default; open_clip's LAION-trained models use exact GELU (``act="gelu"``).

Not supported (a clear error): HF text towers, layer scale, class-token pooling, a projection with a bias.
"""
from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from .convert import Rule, apply_rules
from .pretrained import read_checkpoint, unwrap_state_dict
from .vit import MLP_ACTS, Attention, Mlp

__all__ = [
    "tokenize",
    "TextBlock",
    "TextTransformer",
    "TEXT_CONFIGS",
    "clip_text_state_dict",
    "clip_text_config",
    "load_clip_text",
]

#: CLIP's BPE vocabulary: 49,152 byte-pair tokens, then <start_of_text> (49406) and <end_of_text> (49407)
CLIP_VOCAB_SIZE = 49408
HEAD_WIDTH = 64  # every CLIP text tower (B, L, H, g, bigG) has 64-wide heads

#: text towers by name: CLIP ViT-B/16's and ViT-L/14's, and a tiny one for from-scratch CPU training
TEXT_CONFIGS: Dict[str, Dict[str, int]] = {
    "clip_b16": dict(vocab_size=CLIP_VOCAB_SIZE, context_length=77, width=512, layers=12, heads=8, embed_dim=512),
    "clip_l14": dict(vocab_size=CLIP_VOCAB_SIZE, context_length=77, width=768, layers=12, heads=12, embed_dim=768),
    "tiny": dict(vocab_size=CLIP_VOCAB_SIZE, context_length=16, width=64, layers=2, heads=2, embed_dim=64),
}


# ---------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _bpe():
    """open_clip's CLIP BPE tokenizer, built once (it reads the vocabulary shipped with open_clip)."""
    try:
        from open_clip.tokenizer import SimpleTokenizer
    except ImportError as e:
        raise ImportError(
            f"CLIP's tokenizer comes from open_clip, which could not be imported ({e}); install the text "
            "extra: pip install tada[text]"
        ) from e
    return SimpleTokenizer()


def tokenize(texts: Union[str, Sequence[str]], context_length: int = 77) -> Tensor:
    """CLIP tokens of ``texts`` (one string or a sequence of them) as a ``(N, context_length)`` int64
    tensor: ``<start_of_text>``, the BPE tokens of the cleaned, lower-cased text, ``<end_of_text>``,
    then zeros. A text too long is cut to ``context_length`` tokens with ``<end_of_text>`` kept last
    (as open_clip's ``tokenize``)."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Sequence):
        raise ValueError(f"tokenize takes a string or a sequence of strings, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"tokenize: text {i} is a {type(t).__name__}, not a str ({t!r})")
    if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 2:
        raise ValueError(f"context_length must be an int >= 2 (start and end tokens), got {context_length!r}")
    bpe = _bpe()
    sot, eot = bpe.sot_token_id, bpe.eot_token_id
    out = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = [sot] + bpe.encode(t)[: context_length - 2] + [eot]
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


# ---------------------------------------------------------------------------------------------
# the transformer
# ---------------------------------------------------------------------------------------------
class TextBlock(nn.Module):
    """CLIP's pre-norm residual block with causal self-attention:
    ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, width: int, heads: int, *, mlp_ratio: float = 4.0, act: str = "quick_gelu"):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, causal=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(round(width * mlp_ratio)), act)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _Blocks(nn.Module):
    """``transformer.resblocks.{i}``, as OpenAI's and open_clip's keys are laid out."""

    def __init__(self, blocks: Sequence[TextBlock]):
        super().__init__()
        self.resblocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.resblocks:
            x = blk(x)
        return x


def _check_int(v, name: str, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    return v


class TextTransformer(nn.Module):
    """CLIP's text tower (see the module docstring for its layout).

    Args:
        vocab_size: token embedding rows (CLIP's BPE: 49408; :func:`tokenize`'s ids are below it).
        context_length: positions of the positional embedding (CLIP: 77); inputs may be shorter.
        width, layers, heads: the transformer (CLIP B/16: 512, 12, 8; L/14: 768, 12, 12).
        embed_dim: size of the joint embedding, ``text_projection``'s columns (B/16: 512, L/14: 768).
        mlp_ratio: hidden width of the MLP over ``width`` (4).
        act: ``"quick_gelu"`` (OpenAI CLIP) or ``"gelu"`` (open_clip's LAION models).

    For from-scratch training on a CPU, :meth:`tiny` (context 16, width 64, 2 layers, 2 heads, embed 64).
    """

    def __init__(
        self,
        *,
        vocab_size: int = CLIP_VOCAB_SIZE,
        context_length: int = 77,
        width: int = 512,
        layers: int = 12,
        heads: int = 8,
        embed_dim: int = 512,
        mlp_ratio: float = 4.0,
        act: str = "quick_gelu",
    ):
        super().__init__()
        vocab_size, context_length = _check_int(vocab_size, "vocab_size", 2), _check_int(context_length, "context_length", 2)
        width, layers, heads = _check_int(width, "width"), _check_int(layers, "layers"), _check_int(heads, "heads")
        embed_dim = _check_int(embed_dim, "embed_dim")
        if width % heads:
            raise ValueError(f"width={width} must be divisible by heads={heads}")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be a positive number, got {mlp_ratio!r}")
        if act not in MLP_ACTS:
            raise ValueError(f"unknown act {act!r}; expected one of {MLP_ACTS}")
        self.vocab_size, self.context_length, self.width = vocab_size, context_length, width
        self.layers, self.heads, self.embed_dim, self.mlp_ratio, self.act = layers, heads, embed_dim, mlp_ratio, act

        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = _Blocks([TextBlock(width, heads, mlp_ratio=mlp_ratio, act=act) for _ in range(layers)])
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        self._init_weights()

    @classmethod
    def from_config(cls, name: str, **overrides) -> "TextTransformer":
        """A tower of :data:`TEXT_CONFIGS` (``"clip_b16"``, ``"clip_l14"``, ``"tiny"``), with overrides."""
        if name not in TEXT_CONFIGS:
            raise ValueError(f"unknown text tower {name!r}; expected one of {sorted(TEXT_CONFIGS)}")
        return cls(**{**TEXT_CONFIGS[name], **overrides})

    @classmethod
    def tiny(cls, **overrides) -> "TextTransformer":
        """A small tower for from-scratch training on a CPU: context 16, width 64, 2 layers of 2 heads,
        embedding 64, CLIP's BPE vocabulary (so :func:`tokenize` feeds it). Its heads are 32 wide, not
        CLIP's 64: loading its state dict with :func:`load_clip_text` needs ``heads=2``."""
        return cls.from_config("tiny", **overrides)

    def _init_weights(self) -> None:
        # CLIP's scheme: embeddings N(0, 0.02) / N(0, 0.01), attention and MLP scaled by width and
        # depth, the projection N(0, width^-0.5); zero biases
        w = self.width
        out_std = w ** -0.5 * (2 * self.layers) ** -0.5
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        for blk in self.transformer.resblocks:
            nn.init.normal_(blk.attn.in_proj_weight, std=w ** -0.5)
            nn.init.zeros_(blk.attn.in_proj_bias)
            for lin, std in ((blk.attn.out_proj, out_std), (blk.mlp.c_fc, (2 * w) ** -0.5), (blk.mlp.c_proj, out_std)):
                nn.init.normal_(lin.weight, std=std)
                nn.init.zeros_(lin.bias)
        nn.init.normal_(self.text_projection, std=w ** -0.5)

    # -- forward ------------------------------------------------------------------------------
    def _check_tokens(self, tokens: Tensor) -> None:
        if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            shape = f"{tuple(tokens.shape)} {tokens.dtype}" if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"TextTransformer expects integer token ids (N, L) (from tada.models.text.tokenize), got {shape}")
        length = tokens.shape[1]
        if not 1 <= length <= self.context_length:
            raise ValueError(
                f"token sequences of length {length}; this text tower takes 1..{self.context_length} "
                f"(tokenize(texts, context_length={self.context_length}))"
            )
        if tokens.numel():
            low, high = int(tokens.min()), int(tokens.max())
            if low < 0 or high >= self.vocab_size:
                raise ValueError(
                    f"token id {low if low < 0 else high} is outside this text tower's vocabulary of "
                    f"{self.vocab_size}; tokenize with the tokenizer the tower was built for"
                )

    def forward_tokens(self, tokens: Tensor) -> Tensor:
        """Token ids ``(N, L)`` -> per-token features after ``ln_final``, ``(N, L, width)``. With the
        causal mask, position ``i`` depends on tokens ``0..i`` only, so trailing padding changes nothing."""
        self._check_tokens(tokens)
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]].to(self.token_embedding.weight.dtype)
        return self.ln_final(self.transformer(x))

    def forward(self, tokens: Tensor) -> Tensor:
        """Token ids ``(N, L)`` (L <= ``context_length``) -> text embeddings ``(N, embed_dim)``,
        un-normalised: the end-of-text token's features (at the largest id of each row) @ ``text_projection``."""
        x = self.forward_tokens(tokens)
        eot = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return eot @ self.text_projection

    def encode(self, texts: Union[str, Sequence[str]]) -> Tensor:
        """Tokenize ``texts`` (:func:`tokenize`, this tower's context length) and embed them
        (``(N, embed_dim)``, un-normalised), on the tower's device."""
        return self(tokenize(texts, self.context_length).to(self.text_projection.device))

    # -- optimiser helpers --------------------------------------------------------------------
    def no_weight_decay(self) -> set:
        """Exempt from weight decay besides norms and biases (as CLIP fine-tuning does)."""
        return {"positional_embedding", "token_embedding.weight"}

    def layer_id(self, name: str) -> int:
        """Depth for layer-wise lr decay: 0 embeddings, ``i + 1`` for ``transformer.resblocks.i``,
        ``layers + 1`` for ``ln_final`` / ``text_projection``."""
        if name.startswith(("token_embedding", "positional_embedding")):
            return 0
        m = re.match(r"transformer\.resblocks\.(\d+)\.", name)
        return int(m.group(1)) + 1 if m else self.layers + 1

    def extra_repr(self) -> str:
        return (
            f"vocab_size={self.vocab_size}, context_length={self.context_length}, width={self.width}, "
            f"layers={self.layers}, heads={self.heads}, embed_dim={self.embed_dim}, act={self.act!r}"
        )


# ---------------------------------------------------------------------------------------------
# CLIP checkpoints
# ---------------------------------------------------------------------------------------------
_BLOCK = (r"(?P<rest>(?:ln_1|ln_2|attn\.out_proj|mlp\.c_fc|mlp\.c_proj)\.(?:weight|bias)"
          r"|attn\.in_proj_weight|attn\.in_proj_bias)")


def _linear_to_matrix(w: Tensor) -> Tensor:
    """An ``nn.Linear`` projection's weight ``(embed_dim, width)`` -> CLIP's ``(width, embed_dim)``."""
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D projection weight, got shape {tuple(w.shape)}")
    return w.t().contiguous()


#: the text tower of an OpenAI / open_clip CLIP (keys relative to the tower) -> TextTransformer keys;
#: the rest of a full CLIP (its visual tower, logit_scale, TorchScript extras) is dropped
CLIP_TEXT_RULES = (
    Rule(r"token_embedding\.weight", "token_embedding.weight"),
    Rule(r"positional_embedding", "positional_embedding"),
    Rule(r"transformer\.resblocks\.(?P<i>\d+)\." + _BLOCK, "transformer.resblocks.{i}.{rest}"),
    Rule(r"ln_final\.(?P<p>weight|bias)", "ln_final.{p}"),
    Rule(r"text_projection", "text_projection"),
    Rule(r"text_projection\.weight", "text_projection", _linear_to_matrix),  # open_clip's Linear form
    Rule(r"visual\..*|logit_scale|logit_bias|input_resolution|context_length|vocab_size|attn_mask", None),
)


def clip_text_state_dict(state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """The text tower of a CLIP state dict, under :class:`TextTransformer`'s keys (pure: a new dict).

    Accepts OpenAI's layout (also what :func:`read_checkpoint` reads from OpenAI's ``.pt`` archives),
    open_clip's ``CLIP`` (the same keys) and ``CustomTextCLIP`` (the tower under ``text.``), and this
    project's own TextTransformer keys. Raises ``ValueError`` naming what the checkpoint holds instead.
    """
    sd = dict(state_dict)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if "token_embedding.weight" in sd:
        tower = sd
    elif "text.token_embedding.weight" in sd:
        tower = apply_rules(sd, (Rule.prefix("text.", ""),), unmatched="drop")
    elif any(k.startswith("text.transformer.") or (k.startswith("text.") and "embeddings" in k) for k in sd):
        raise ValueError("the checkpoint's text tower is a Hugging Face model (text.transformer.*), not CLIP's "
                         "text transformer; only OpenAI-style towers (token_embedding, transformer.resblocks.N) load")
    elif any(k.startswith("visual.") for k in sd) or ("conv1.weight" in sd and "class_embedding" in sd):
        raise ValueError(
            "the checkpoint holds a CLIP visual tower but no text tower (no token_embedding.weight); "
            "use the full CLIP checkpoint (OpenAI .pt or open_clip state dict), which holds both"
        )
    elif any(k.startswith("backbone.") for k in sd) or "patch_embed.weight" in sd:
        raise ValueError("the checkpoint is a video model's (backbone.* / patch_embed.*), with no CLIP text tower; "
                         "load the text tower from the CLIP checkpoint the video model was initialised from")
    else:
        raise ValueError(
            "unrecognised checkpoint for a CLIP text tower: expected token_embedding.weight, "
            f"positional_embedding, transformer.resblocks.N.*, ln_final.*, text_projection; got keys like {sorted(sd)[:6]}"
        )
    if "text_projection.bias" in tower:
        raise ValueError("the checkpoint's text projection has a bias (text_projection.bias), which CLIP's does "
                         "not; this text tower is not supported")
    return apply_rules(tower, CLIP_TEXT_RULES, unmatched="error",
                       what="CLIP text tower with keys this TextTransformer does not have (layer scale, class "
                            "token, custom attention are not supported)")


def _shape(sd: Mapping[str, Tensor], key: str, dims: int) -> Tuple[int, ...]:
    if key not in sd:
        raise ValueError(f"the CLIP text tower has no {key}")
    shape = tuple(sd[key].shape)
    if len(shape) != dims:
        raise ValueError(f"{key} has shape {shape}, expected a {dims}-D tensor")
    return shape


def clip_text_config(state_dict: Mapping[str, Tensor], *, heads: Optional[int] = None) -> Dict[str, object]:
    """The :class:`TextTransformer` arguments of a CLIP checkpoint's text tower, from its tensor shapes:
    ``vocab_size`` / ``width`` (token embedding), ``context_length`` (positional embedding), ``layers``
    (the ``transformer.resblocks.N``), ``mlp_ratio`` (``c_fc``), ``embed_dim`` (``text_projection``) and
    ``heads = width // 64`` (CLIP's head width; pass ``heads=`` for another). Takes any layout
    :func:`clip_text_state_dict` does. The activation is not in the shapes (see the module docstring)."""
    sd = clip_text_state_dict(state_dict)  # idempotent on TextTransformer keys
    vocab_size, width = _shape(sd, "token_embedding.weight", 2)
    context_length, pos_width = _shape(sd, "positional_embedding", 2)
    proj_in, embed_dim = _shape(sd, "text_projection", 2)
    if pos_width != width or proj_in != width:
        raise ValueError(f"inconsistent text tower: token embedding width {width}, positional embedding "
                         f"{pos_width}, text_projection rows {proj_in}")
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))})
    if not blocks or blocks != list(range(len(blocks))):
        raise ValueError(f"the text tower's blocks transformer.resblocks.N are not numbered 0..N-1: {blocks[:12]}")
    hidden, fc_in = _shape(sd, "transformer.resblocks.0.mlp.c_fc.weight", 2)
    if fc_in != width:
        raise ValueError(f"inconsistent text tower: width {width}, but the first MLP takes {fc_in} features")
    if heads is None:
        if width % HEAD_WIDTH:
            raise ValueError(f"text width {width} is not a multiple of CLIP's head width {HEAD_WIDTH}: pass heads=")
        heads = width // HEAD_WIDTH
    _check_int(heads, "heads")
    if width % heads:
        raise ValueError(f"text width {width} is not divisible by heads={heads}")
    return dict(vocab_size=vocab_size, context_length=context_length, width=width, layers=len(blocks),
                heads=heads, embed_dim=embed_dim, mlp_ratio=hidden / width)


def _logit_scale(sd: Mapping[str, Tensor], default: Optional[float]) -> Tensor:
    v = sd.get("logit_scale")
    if v is None:
        if default is None:
            raise ValueError("the checkpoint has no logit_scale (a text tower alone?); pass default_logit_scale= "
                             f"(CLIP's initial value is log(1/0.07) = {math.log(1 / 0.07):.4f})")
        return torch.tensor(float(default))
    if v.numel() != 1:
        raise ValueError(f"logit_scale has shape {tuple(v.shape)}, expected a scalar")
    return v.detach().reshape(()).float().clone()


def load_clip_text(
    path_or_state_dict,
    *,
    act: str = "quick_gelu",
    heads: Optional[int] = None,
    default_logit_scale: Optional[float] = None,
) -> Tuple[TextTransformer, Tensor]:
    """CLIP's text tower and ``logit_scale`` from a checkpoint.

    Args:
        path_or_state_dict: a local file (OpenAI CLIP ``.pt`` TorchScript archive, read as data; a
            ``torch.save`` or safetensors state dict, in a container or not) or a state dict, in any
            layout :func:`clip_text_state_dict` accepts.
        act: ``"quick_gelu"`` (OpenAI CLIP, open_clip ``*-quickgelu``) or ``"gelu"`` (LAION models).
        heads: attention heads, when not ``width // 64``.
        default_logit_scale: used when the checkpoint has no ``logit_scale``; otherwise that is an error.

    Returns:
        ``(tower, logit_scale)``: the loaded :class:`TextTransformer` and the checkpoint's (log-space)
        temperature as a 0-d float tensor; logits are ``exp(logit_scale) * cos``.
    """
    if isinstance(path_or_state_dict, Mapping):
        sd = unwrap_state_dict(path_or_state_dict)
    else:
        sd = read_checkpoint(path_or_state_dict)
    text = clip_text_state_dict(sd)
    cfg = clip_text_config(text, heads=heads)
    tower = TextTransformer(**cfg, act=act)
    try:
        tower.load_state_dict(text, strict=True)
    except RuntimeError as e:
        raise ValueError(f"the checkpoint's text tower does not fit the architecture read from its shapes {cfg}: {e}") from e
    return tower, _logit_scale(sd, default_logit_scale)
